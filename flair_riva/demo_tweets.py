"""The tweets of the demo world (:mod:`flair_riva.demo`): templates, ambiguous names and the two mixtures.

Entity names are ambiguous (Jordan, Paris, Washington, ... can be a person, a place or an organisation).
A tweet whose image *adds* shows an image of its entity's kind (:data:`TYPE_KIND`); an unrelated one
shows food, a meme (:data:`UNRELATED_KINDS`) or an image of another kind. :func:`_pair_tweet` draws the
relation/unlabelled mixture and :func:`_ner_tweet` the NER one (see :mod:`flair_riva.demo` for why);
:func:`image_information` is what an ideal language model gains from the image (world v2).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

TYPE_KIND = {"PER": "person", "LOC": "location", "ORG": "organisation"}
UNRELATED_KINDS = ("food", "meme")


AMBIGUOUS_NAMES = (
    "Jordan", "Paris", "Washington", "Phoenix", "Georgia", "Madison", "Chelsea", "Austin", "Sydney",
    "Florence", "Lincoln", "Victoria", "Dallas", "Charlotte", "Orlando", "Houston", "Jackson", "Savannah",
    "Kingston", "Memphis",
)
UNAMBIGUOUS = {
    "PER": ("Nina Park", "Omar Haddad", "Lena Fischer", "Kofi Mensah", "Rosa Delgado", "Tomasz Nowak",
            "Aiko Tanaka", "Marcus Bell"),
    "LOC": ("Silver Lake", "New Harbor", "Mount Kerr", "Brookfield", "Port Alder", "Greenvale",
            "Cedar Falls", "Lake Orin"),
    "ORG": ("Nova Bank", "Zenith Motors", "Orbit Labs", "Acme", "Bluebird Airlines", "Helix",
            "Northwind Foods", "Vertex Media"),
    "OTHER": ("Super Bowl", "World Cup", "Game of Thrones", "Coachella", "Olympics", "Black Friday",
              "Star Wars", "Comic Con"),
}
# a photo cue said on its own, and an inline photo phrasing that ends right before the entity
PHOTO_CUES = ("look at this", "pic of the day", "this photo", "here is the pic", "check out this shot",
              "snapped this earlier")
PHOTO_INLINE = ("look at {E}", "pic of {E}", "this photo of {E}", "here is {E}", "a shot of {E}",
                "just took a pic of {E}")
OPINION_CUES = ("honestly", "breaking news", "I think", "unpopular opinion", "news update", "hot take",
                "not gonna lie", "reminder")
NEUTRAL = ("can't stop thinking about {E} today", "so much love for {E}", "everyone is talking about {E}",
           "thoughts on {E} ?", "{E} is trending right now", "still not over {E}", "what a day for {E}",
           "{E} again", "all about {E} this week", "missing {E} already", "{E} never disappoints",
           "nothing but {E} tonight")
NEUTRAL_TAILS = ("today", "right now", "this morning", "again", "tonight", "this weekend", "once more")
REVEAL = {
    "PER": ("{E} scored {N} points last night", "{E} signed autographs after the game",
            "{E} just released a new song", "{E} said in an interview that she is retiring",
            "happy birthday to {E} , the best coach ever", "{E} won the match in three sets",
            "{E} and his wife at the premiere", "interview with {E} about her new album",
            "{E} was named player of the week"),
    "LOC": ("flying to {E} tomorrow morning", "the weather in {E} is amazing", "living in {E} since {Y}",
            "traffic in downtown {E} is terrible", "road trip to {E} this summer",
            "beaches near {E} are crowded", "storm hits {E} tonight", "hotels in {E} are fully booked",
            "moved back to {E} last year"),
    "ORG": ("{E} announced record profits", "{E} shares fell {N} % today", "{E} hired a new CEO",
            "{E} opens a new store", "just signed a contract with {E}", "{E} launches a new app",
            "{E} reported quarterly earnings", "customer service at {E} is awful",
            "{E} is hiring engineers"),
}
SECONDARY = {
    "PER": ("with {E}", "says {E}", "thanks to {E}"),
    "LOC": ("in {E}", "near {E}", "from {E}"),
    "ORG": ("via {E}", "sponsored by {E}", "powered by {E}"),
    "OTHER": ("during {E}", "while watching {E}", "ahead of {E}"),
}
#: With ``unseen_ner_contexts`` (:func:`flair_riva.demo.generate_demo_world`), the NER train split reveals
#: types only through the first ``SEEN_REVEAL`` contexts of each type, dev and test only through the others;
#: the relation and unlabelled pairs use all of them, so only a pretrained model has seen the latter.
SEEN_REVEAL = 6
# World v2: what a related picture shows, said right after the entity ("look at Jordan on stage"): in
# the pretraining pairs whose image adds, these words are predictable from the image (and, for an
# ambiguous name in a neutral context, from nothing else), so the language model gains from the image.
SHOWN = {
    "PER": ("smiling", "on stage", "in a suit", "waving", "posing", "with a big smile"),
    "LOC": ("at sunset", "skyline", "under blue skies", "from the hills", "from above", "landscape"),
    "ORG": ("logo", "headquarters", "storefront", "brand sign", "new logo", "office sign"),
}
# ... and an opening word that names what the picture is ("portrait : look at Jordan ...")
OPENER = {"PER": ("portrait", "selfie"), "LOC": ("view", "scenery"), "ORG": ("branding", "signage")}
FILLERS = ("lol", "wow", "so good", "!", "?", "omg", "yes", "love it", "no way", "haha")
HASHTAGS = ("#tbt", "#love", "#news", "#nba", "#travel", "#business", "#photo", "#weekend", "#mood",
            "#sports", "#music", "#food")
MENTIONS = ("@sportsdesk", "@citynews", "@jess_m", "@daily_pics", "@markets_now", "@tom_r", "@the_feed",
            "@weather_now")
EMOJI = ("😂", "🔥", "👍", "📸", "🙌", "😍", "⚽", "🌞")
_URL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
MIN_TOKENS, MAX_TOKENS = 5, 30


@dataclass
class _Tweet:
    tokens: list[str]
    tags: list[str]
    image_kind: str
    entity_type: str
    related: int
    context: str  # "neutral" | "reveal"
    cue: str  # "photo" | "opinion"

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


class _TweetMaker:
    """Builds token/tag sequences from the templates with one seeded ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _fill(self, template: str, entity: str | None, etype: str | None) -> tuple[list[str], list[str]]:
        r = self.rng
        tokens: list[str] = []
        tags: list[str] = []
        for word in template.split():
            if word == "{E}":
                assert entity is not None and etype is not None
                for i, part in enumerate(entity.split()):
                    tokens.append(part)
                    tags.append(("B-" if i == 0 else "I-") + etype)
            else:
                word = word.replace("{N}", str(r.choice((3, 5, 7, 12, 21, 30, 41)))).replace(
                    "{Y}", str(r.choice((2009, 2012, 2015, 2018))))
                tokens.append(word)
                tags.append("O")
        return tokens, tags

    def _entity(self, etype: str, p_ambiguous: float) -> str:
        if etype != "OTHER" and self.rng.random() < p_ambiguous:
            return self.rng.choice(AMBIGUOUS_NAMES)
        return self.rng.choice(UNAMBIGUOUS[etype])

    def tweet(self, *, related: int, context: str, etype: str, image_kind: str, p_photo: float,
              p_ambiguous: float = 0.8, p_secondary: float = 0.3, p_shown: float = 0.0,
              p_opener: float = 0.0, reveal: dict[str, tuple[str, ...]] | None = None) -> _Tweet:
        """One tweet. ``p_shown`` / ``p_opener``: probability of :data:`SHOWN` words after the entity / an
        :data:`OPENER` word first, both naming what an image of ``image_kind`` shows (world v2). ``reveal``:
        the revealing contexts to draw from, by type (default :data:`REVEAL`)."""
        r = self.rng
        cue = "photo" if r.random() < p_photo else "opinion"
        entity = self._entity(etype, p_ambiguous)
        shown_type = {v: k for k, v in TYPE_KIND.items()}.get(image_kind)
        parts: list[tuple[list[str], list[str]]] = []
        if shown_type is not None and r.random() < p_opener:
            parts.append(self._fill(f"{r.choice(OPENER[shown_type])} :", None, None))
        if r.random() < 0.15:
            parts.append(self._fill(f"RT {r.choice(MENTIONS)} :", None, None))
        if context == "neutral":
            if cue == "photo" and r.random() < 0.5:
                core = f"{r.choice(PHOTO_INLINE)} {r.choice(NEUTRAL_TAILS)}"
            else:
                phrase = r.choice(PHOTO_CUES if cue == "photo" else OPINION_CUES)
                core = f"{phrase} {r.choice((':', ','))} {r.choice(NEUTRAL)}"
        else:
            phrase = r.choice(PHOTO_CUES if cue == "photo" else OPINION_CUES)
            core = f"{phrase} {r.choice((':', ','))} {r.choice((reveal or REVEAL)[etype])}"
        if shown_type is not None and context == "neutral" and r.random() < p_shown:
            core = core.replace("{E}", "{E} " + r.choice(SHOWN[shown_type]), 1)
        parts.append(self._fill(core, entity, etype))
        if r.random() < p_secondary:
            stype = r.choice(("PER", "LOC", "ORG", "OTHER"))
            parts.append(self._fill(r.choice(SECONDARY[stype]), r.choice(UNAMBIGUOUS[stype]), stype))
        if r.random() < 0.3:
            parts.append(self._fill(r.choice(FILLERS), None, None))
        if r.random() < 0.3:
            parts.append(self._fill(r.choice(MENTIONS), None, None))
        for _ in range(r.choice((0, 0, 1, 1, 2))):
            parts.append(self._fill(r.choice(HASHTAGS), None, None))
        if r.random() < 0.15:
            parts.append(self._fill(r.choice(EMOJI), None, None))
        if r.random() < 0.6:
            url = "http://t.co/" + "".join(r.choice(_URL_CHARS) for _ in range(10))
            parts.append(([url], ["O"]))
        tokens = [t for p in parts for t in p[0]]
        tags = [t for p in parts for t in p[1]]
        while len(tokens) < MIN_TOKENS:
            tokens.append(r.choice(("today", "wow", "!")))
            tags.append("O")
        if len(tokens) > MAX_TOKENS:  # cannot happen with these templates; keep the bound anyway
            tokens, tags = tokens[:MAX_TOKENS], tags[:MAX_TOKENS]
            if tags[-1].startswith("B-") or tags[-1].startswith("I-"):
                tokens, tags = tokens[:-1], tags[:-1]
        return _Tweet(tokens, tags, image_kind, etype, related, context, cue)


P_SHOWN, P_OPENER = 0.75, 0.5  # world v2: in related unlabelled pairs (neutral context for SHOWN)


def image_information(tweet: _Tweet) -> float:
    """Nats an ideal language model saves on ``tweet`` (both directions together) by seeing its image:
    ln 3 per direction for the SHOWN words after an ambiguous entity (three types are equally likely from
    the text), ln 3 for an OPENER in the forward direction (nothing precedes it). The part of the mutual
    information between image and text that these words carry; the image also predicts the phrasing
    (photo vs opinion cues) and rules out a type in unrelated pairs, so a model's image gain can exceed it."""
    if not tweet.related or tweet.entity_type not in OPENER:
        return 0.0
    words = set(tweet.tokens)
    gain = 0.0
    if words & {w for w in OPENER[tweet.entity_type]} and tweet.tokens[1] == ":":
        gain += math.log(3)
    ambiguous = any(t in AMBIGUOUS_NAMES for t, g in zip(tweet.tokens, tweet.tags) if g == f"B-{tweet.entity_type}")
    shown_first = {p.split()[0] for p in SHOWN[tweet.entity_type]}
    if ambiguous and words & shown_first:
        gain += 2 * math.log(3)
    return gain


def _pair_tweet(maker: _TweetMaker, p_neutral_related: float, p_shown: float = P_SHOWN,
                p_opener: float = P_OPENER) -> _Tweet:
    """A relation/unlabelled pair (the task-1 mixture, ~45% image adds; see :mod:`flair_riva.demo`)."""
    r = maker.rng
    if r.random() < 0.45:
        etype = r.choice(("PER", "LOC", "ORG"))
        context = "neutral" if r.random() < p_neutral_related else "reveal"
        return maker.tweet(related=1, context=context, etype=etype, image_kind=TYPE_KIND[etype], p_photo=0.75,
                           p_shown=p_shown, p_opener=p_opener)
    etype = r.choice(("PER", "LOC", "ORG"))
    if r.random() < 0.5:  # an unrelated picture: food or meme
        context = "neutral" if r.random() < 0.5 else "reveal"
        kind = r.choice(UNRELATED_KINDS)
    else:  # a picture of another kind than the entity the text talks about
        context = "reveal"
        kind = TYPE_KIND[r.choice([t for t in ("PER", "LOC", "ORG") if t != etype])]
    return maker.tweet(related=0, context=context, etype=etype, image_kind=kind, p_photo=0.25)


def _ner_tweet(maker: _TweetMaker, reveal: dict[str, tuple[str, ...]] | None = None) -> _Tweet:
    """An NER tweet: related = neutral context + image of the entity's kind; unrelated = revealing
    context (drawn from ``reveal``, default :data:`REVEAL`) + food/meme (60%) or a misleading image of
    another kind (40%)."""
    r = maker.rng
    etype = r.choice(("PER", "LOC", "ORG"))
    if r.random() < 0.5:
        return maker.tweet(related=1, context="neutral", etype=etype, image_kind=TYPE_KIND[etype], p_photo=0.75,
                           p_ambiguous=0.85, p_secondary=0.35)
    if r.random() < 0.6:
        kind = r.choice(UNRELATED_KINDS)
    else:
        kind = TYPE_KIND[r.choice([t for t in ("PER", "LOC", "ORG") if t != etype])]
    return maker.tweet(related=0, context="reveal", etype=etype, image_kind=kind, p_photo=0.25,
                       p_ambiguous=0.85, p_secondary=0.35, reveal=reveal)
