"""The built-in demo world (DESIGN §4): a small, deterministic, synthetic multimodal tweet world in the
formats of :mod:`flair_riva.datasets`, on which RIVA's point shows in minutes on a CPU, even with a
randomly initialised ResNet.

What it contains (sizes at ``scale=1``; ``scale="tiny"`` = 0.1 for tests)::

    relation.tsv            ~1200 labelled text-image relation pairs (text, image, image_adds, text_is_represented)
    unlabelled.jsonl        ~3000 unlabelled pairs {"text", "image"}
    images/<kind>_<n>.png   25 images per kind, shared by the pairs (paths in the data files are relative to root)
    ner/train.txt dev.txt test.txt   ~600/200/200 tweets in the IMGID format, tags PER/LOC/ORG/OTHER
    ner/images/<id>.jpg     one JPEG per NER tweet (a JPEG encoding of a pool image; byte-identical copies
                            of the same pool image, so a content-hash feature cache computes each once)
    ner/relation_truth.tsv  per NER tweet: image_id, image_adds (ground truth), split, image_kind, entity_type
    README.txt, manifest.json (written last; a complete world with the same seed and scale is reused)

The world's logic (why the image matters):

* Image kinds differ in colour and layout statistics that survive random conv features and average
  pooling: ``person`` (skin-tone face on a plain mid-colour background), ``location`` (sky-blue top,
  green/brown ground, a sun), ``organisation`` (white background, saturated logo, dark text bars),
  and the unrelated kinds ``food`` (white plate on a red checkered cloth) and ``meme`` (white text bars
  on black). Every image has its own colour, position and noise jitter.
* Entity names are ambiguous (Jordan, Paris, Washington, ... can be a person, a place or an
  organisation). A tweet whose image *adds* (label 1) shows an image of its entity's kind
  (person photo for PER, landscape for LOC, logo for ORG); an unrelated tweet (label 0) shows food, a
  meme, or an image of another kind.
* Relation data: related tweets use photo phrasing ("look at", "pic of", ...) 75% of the time,
  unrelated tweets opinion/news phrasing 75% of the time; the entity context is type-neutral or
  type-revealing in both classes, so text alone is imperfect, and the label is a function of text and
  image together (image kind vs the type the context reveals).
* NER: in related tweets the context is type-neutral ("can't stop thinking about Jordan today"), so
  only the image tells PER/LOC/ORG; in unrelated tweets the context reveals the type ("Jordan scored
  30 points", "flying to Jordan", "Jordan announced record profits") and the image is unrelated and
  may mislead.
* Unlabelled pairs follow the relation-data mixture, so the teacher can pseudo-label them.
* World v2 (the image predicts words, so RIVA's language model has a reason to read it): in relation
  and unlabelled pairs whose image adds and whose context is neutral, half name what the image shows
  right after the entity (:data:`SHOWN`: "look at Jordan on stage", "Paris skyline", "Chelsea logo"),
  and 30% open with a word for the picture (:data:`OPENER`: "portrait :", "view :", "branding :").
  For an ambiguous name nothing but the image tells which words come. Pairs whose image doesn't add
  never carry them (their image predicts nothing), and the NER tweets never do (there only the image
  tells the type). The manifest records ``image_information_nats_per_token``: the nats per predicted
  word an ideal LM saves with the image (:func:`image_information`), the ceiling for a model's image gain.
  Only half of the related neutral pairs carry SHOWN words, so their absence is no text cue for
  "doesn't add" (with all of them carrying the words, the gate learnt that shortcut and stayed half
  closed on the related NER tweets).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from flair_riva.io import atomic_write_bytes

log = logging.getLogger("flair")

__all__ = ["DemoWorld", "generate_demo_world", "default_demo_root", "main", "WORLD_VERSION", "IMAGE_KINDS"]

WORLD_VERSION = 2
IMAGE_SIZE = 64
IMAGE_KINDS = ("person", "location", "organisation", "food", "meme")
TYPE_KIND = {"PER": "person", "LOC": "location", "ORG": "organisation"}
UNRELATED_KINDS = ("food", "meme")
SCALE_PRESETS = {"default": 1.0, "tiny": 0.1}

# base sizes at scale 1
# v2: 1200 labelled pairs (600 in v1): with 432 training pairs the teacher overfit (test F1 ~75)
_BASE = {"pool_per_kind": 25, "relation": 1200, "unlabelled": 3000, "ner_train": 600, "ner_dev": 200, "ner_test": 200}
_MIN = {"pool_per_kind": 4, "relation": 40, "unlabelled": 60, "ner_train": 30, "ner_dev": 12, "ner_test": 12}


@dataclass
class DemoWorld:
    """Where the files of a generated demo world are.

    The image paths inside ``relation_file`` and ``unlabelled_file`` are relative to ``root`` (the
    folder of those files, e.g. ``images/person_003.png``), so read them with ``image_dir=None``
    (or ``image_dir=root``). ``image_dir`` is the folder that holds those pool images. The NER corpus
    loads with ``TwitterMNERCorpus(ner_dir)`` (its images are in ``ner_dir / "images"``, the default).
    """

    root: Path
    relation_file: Path
    unlabelled_file: Path
    ner_dir: Path
    image_dir: Path
    ner_image_dir: Path | None = None
    relation_truth_file: Path | None = None
    manifest_file: Path | None = None
    seed: int = 13
    scale: float = 1.0
    counts: dict = field(default_factory=dict)

    def ner_corpus(self, **corpusargs):
        """The NER part as a :class:`~flair_riva.datasets.TwitterMNERCorpus` (tags PER/LOC/ORG/OTHER)."""
        from flair_riva.datasets import TwitterMNERCorpus

        corpusargs.setdefault("name", "demo-world")
        return TwitterMNERCorpus(self.ner_dir, **corpusargs)

    def relation_truth(self) -> dict[str, int]:
        """image_id -> image_adds (1 related, 0 unrelated) for every NER tweet."""
        from flair_riva.datasets import read_relation_truth

        assert self.relation_truth_file is not None
        return read_relation_truth(self.relation_truth_file)


def default_demo_root() -> Path:
    """``flair.cache_root / "riva" / "demo-world-v2"`` (``$FLAIR_CACHE_ROOT`` or ``~/.flair``)."""
    import flair

    return Path(flair.cache_root) / "riva" / f"demo-world-v{WORLD_VERSION}"


# --------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------

_SKIN = np.array([(233, 190, 160), (214, 160, 120), (180, 125, 85), (140, 90, 55), (250, 210, 180)], float)
_PERSON_BG = np.array([(100, 110, 140), (90, 130, 125), (125, 105, 140), (120, 120, 95), (140, 120, 110)], float)
_LOGO = np.array([(220, 30, 40), (30, 70, 210), (245, 130, 20), (140, 30, 170), (20, 160, 70)], float)
_FOOD = np.array([(170, 100, 40), (230, 160, 40), (90, 150, 50), (200, 60, 40)], float)


def _jitter(rng: np.random.Generator, colour, amount: float = 18.0) -> np.ndarray:
    return np.clip(np.asarray(colour, float) + rng.uniform(-amount, amount, 3), 0, 255)


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def draw_image(kind: str, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One synthetic image of ``kind`` as an (H, W, 3) uint8 array (see the module docstring)."""
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(float)
    img = np.zeros((s, s, 3), float)
    u = s / 64.0  # layout unit
    if kind == "person":
        img[:] = _jitter(rng, _PERSON_BG[rng.integers(len(_PERSON_BG))], 20)
        cy, cx = s * 0.46 + rng.uniform(-4, 4) * u, s * 0.5 + rng.uniform(-5, 5) * u
        ry, rx = rng.uniform(17, 21) * u, rng.uniform(13, 16) * u
        img[_ellipse(yy, xx, s * 1.05, cx, 18 * u, 26 * u)] = _jitter(rng, (60, 60, 80), 40)  # shoulders
        hair = _jitter(rng, (45, 30, 20), 20)
        img[_ellipse(yy, xx, cy - ry * 0.35, cx, ry * 0.85, rx * 1.1)] = hair
        img[_ellipse(yy, xx, cy, cx, ry, rx)] = _jitter(rng, _SKIN[rng.integers(len(_SKIN))], 10)
        for side in (-1, 1):
            img[_ellipse(yy, xx, cy - ry * 0.15, cx + side * rx * 0.42, 2.2 * u, 2.6 * u)] = (25, 20, 20)
        img[_ellipse(yy, xx, cy + ry * 0.45, cx, 1.6 * u, rx * 0.4)] = _jitter(rng, (150, 40, 50), 15)
    elif kind == "location":
        horizon = s * rng.uniform(0.45, 0.58)
        sky_top, sky_low = _jitter(rng, (70, 140, 230), 15), _jitter(rng, (170, 210, 245), 10)
        t = np.clip(yy / horizon, 0, 1)[..., None]
        img[:] = sky_top * (1 - t) + sky_low * t
        ground = _jitter(rng, [(60, 140, 50), (80, 150, 60), (130, 100, 60)][rng.integers(3)], 15)
        below = yy >= horizon
        img[below] = ground * (1 - 0.25 * (yy[below] - horizon)[:, None] / s)
        if rng.random() < 0.5:  # a hill / mountain
            peak_x, h = rng.uniform(0.2, 0.8) * s, rng.uniform(8, 16) * u
            hill = (yy < horizon) & (yy > horizon - h + np.abs(xx - peak_x) * 0.8)
            img[hill] = _jitter(rng, (110, 120, 110), 15)
        sx = rng.choice([rng.uniform(0.12, 0.3), rng.uniform(0.7, 0.88)]) * s
        img[_ellipse(yy, xx, rng.uniform(0.1, 0.22) * s, sx, 6 * u, 6 * u)] = _jitter(rng, (255, 225, 60), 10)
    elif kind == "organisation":
        img[:] = _jitter(rng, (246, 246, 246), 8)
        colour = _jitter(rng, _LOGO[rng.integers(len(_LOGO))], 15)
        cy, cx, r = rng.uniform(0.3, 0.45) * s, rng.uniform(0.3, 0.7) * s, rng.uniform(10, 14) * u
        if rng.random() < 0.5:
            img[(np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)] = colour
        else:
            img[_ellipse(yy, xx, cy, cx, r, r)] = colour
        y = cy + r + 5 * u
        for _ in range(rng.integers(2, 4)):
            w = rng.uniform(0.35, 0.75) * s
            x0 = rng.uniform(0.08, 0.92) * s - w / 2
            img[(yy >= y) & (yy < y + 3.5 * u) & (xx >= x0) & (xx < x0 + w)] = _jitter(rng, (40, 40, 50), 10)
            y += 7 * u
    elif kind == "food":
        check = max(3, int(rng.integers(5, 9) * u))
        off_y, off_x = rng.integers(0, check, 2)
        red = _jitter(rng, (200, 35, 40), 20)
        cells = (((yy + off_y) // check + (xx + off_x) // check) % 2).astype(bool)
        img[:] = _jitter(rng, (245, 240, 235), 8)
        img[cells] = red
        cy, cx, r = s * 0.5 + rng.uniform(-5, 5) * u, s * 0.5 + rng.uniform(-5, 5) * u, rng.uniform(19, 24) * u
        img[_ellipse(yy, xx, cy, cx, r, r)] = _jitter(rng, (250, 250, 250), 4)
        for _ in range(rng.integers(2, 5)):
            fy, fx = cy + rng.uniform(-0.45, 0.45) * r, cx + rng.uniform(-0.45, 0.45) * r
            img[_ellipse(yy, xx, fy, fx, rng.uniform(3, 7) * u, rng.uniform(3, 8) * u)] = _jitter(
                rng, _FOOD[rng.integers(len(_FOOD))], 15)
    elif kind == "meme":
        img[:] = _jitter(rng, (12, 12, 12), 10)
        for band_top in (rng.uniform(0.05, 0.12) * s, rng.uniform(0.72, 0.8) * s):
            for row in range(rng.integers(1, 3)):
                y0 = band_top + row * 7 * u
                x = rng.uniform(0.05, 0.15) * s
                while x < s * 0.9:  # words of the caption
                    w = rng.uniform(4, 12) * u
                    img[(yy >= y0) & (yy < y0 + 4.5 * u) & (xx >= x) & (xx < min(x + w, s * 0.92))] = _jitter(
                        rng, (245, 245, 245), 8)
                    x += w + rng.uniform(2, 4) * u
    else:
        raise ValueError(f"unknown image kind {kind!r} (one of {IMAGE_KINDS})")
    img += rng.normal(0.0, 6.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array, "RGB")
    if fmt == "PNG":
        image.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        image.save(buf, format="JPEG", quality=90, optimize=False)
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------------

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
              p_opener: float = 0.0) -> _Tweet:
        """One tweet. ``p_shown`` / ``p_opener``: probability of :data:`SHOWN` words after the entity / an
        :data:`OPENER` word first, both naming what an image of ``image_kind`` shows (world v2)."""
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
            core = f"{phrase} {r.choice((':', ','))} {r.choice(REVEAL[etype])}"
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
    the text), ln 3 for an OPENER in the forward direction (nothing precedes it). An estimate of the
    mutual information between image and text, to compare with the image gain a model reaches."""
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
    """A relation/unlabelled pair (the task-1 mixture, ~45% image adds; see the module docstring)."""
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


def _ner_tweet(maker: _TweetMaker) -> _Tweet:
    """An NER tweet: related = neutral context + image of the entity's kind; unrelated = revealing
    context + food/meme (60%) or a misleading image of another kind (40%)."""
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
                       p_ambiguous=0.85, p_secondary=0.35)


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def _tsv_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _resolve_scale(scale: float | str) -> float:
    if isinstance(scale, str):
        if scale in SCALE_PRESETS:
            return SCALE_PRESETS[scale]
        try:
            scale = float(scale)
        except ValueError:
            raise ValueError(f"scale must be a number or one of {sorted(SCALE_PRESETS)}, got {scale!r}") from None
    scale = float(scale)
    if not (0 < scale <= 50):
        raise ValueError(f"scale must be in (0, 50], got {scale}")
    return scale


def _sizes(scale: float) -> dict[str, int]:
    return {k: max(_MIN[k], round(v * scale)) for k, v in _BASE.items()}


def _world(root: Path, seed: int, scale: float, counts: dict | None = None) -> DemoWorld:
    return DemoWorld(
        root=root, relation_file=root / "relation.tsv", unlabelled_file=root / "unlabelled.jsonl",
        ner_dir=root / "ner", image_dir=root / "images", ner_image_dir=root / "ner" / "images",
        relation_truth_file=root / "ner" / "relation_truth.tsv", manifest_file=root / "manifest.json",
        seed=seed, scale=scale, counts=dict(counts or {}),
    )


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == "flair_riva.demo" else None


def _manifest_complete(root: Path, manifest: dict) -> bool:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, size in files.items():
        try:
            if (root / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


_README = """\
flair-riva demo world (generated by `python -m flair_riva.demo`, world version {version}, seed {seed}, scale {scale})
=================================================================================================

A small synthetic multimodal tweet world in the formats of flair_riva.datasets. It is deterministic:
the same seed and scale give the same bytes. It shows what RIVA is for: entity names are ambiguous
(Jordan, Paris, Washington, ... can be a person, a place or an organisation), and in tweets whose
image adds to the meaning the image shows which; in the others the image is unrelated and can mislead.

Files
-----
relation.tsv           {relation} labelled text-image relation pairs (task 1): text, image, image_adds
                       (1 = the image adds to the meaning), text_is_represented. {relation_pos} are positive.
unlabelled.jsonl       {unlabelled} unlabelled pairs {{"text": ..., "image": ...}} (task 2, pseudo-labelling).
images/                {pool} images ({per_kind} per kind): person_*, location_*, organisation_*
                       (related kinds) and food_*, meme_* (unrelated kinds), 64x64 PNG. The image paths
                       in relation.tsv and unlabelled.jsonl are relative to this folder's parent (the root).
ner/train.txt dev.txt test.txt
                       {ner_train} / {ner_dev} / {ner_test} tweets in the IMGID format (IMGID:<id>, token<TAB>tag,
                       blank line), tags O, B-/I- PER, LOC, ORG, OTHER.
ner/images/<id>.jpg    the image of each NER tweet (JPEG; tweets that share a pool image have byte-identical files).
ner/relation_truth.tsv per NER tweet: image_id, image_adds (ground truth: 1 related, 0 unrelated), split,
                       image_kind, entity_type (of the tweet's main entity).
manifest.json          seed, scale, counts and the size of every file (written last).

How the world is built
----------------------
Image kinds differ in colour/layout statistics that survive a randomly initialised ResNet: person (a
face on a plain background), location (sky, ground, sun), organisation (logo and text bars on white),
food (a plate on a red checkered cloth), meme (white text bars on black).
Related tweets (image adds) show an image of the kind of their entity (person for PER, landscape for
LOC, logo for ORG) and use photo phrasing ("look at", "pic of", ...) 75% of the time; unrelated
tweets show food, a meme or another kind, and use opinion/news phrasing 75% of the time.
In the NER corpus, related tweets have a type-neutral context ("can't stop thinking about Jordan
today"): only the image tells the type. Unrelated tweets reveal the type in the text ("Jordan scored
30 points", "flying to Jordan", "Jordan announced record profits").
World v2: in the relation and unlabelled pairs whose image adds, the image predicts words of the text
(what it shows, right after the entity: "Paris skyline", "Jordan on stage"; an opening "portrait :" or
"view :"), so a language model gains from reading the image: about {info} nats per predicted word for
an ideal model (image_information_nats_per_token in manifest.json).

Use
---
    from flair_riva.datasets import TwitterMNERCorpus, read_relation_pairs, iter_unlabelled_pairs
    corpus = TwitterMNERCorpus("ROOT/ner")           # ROOT = the folder of this README
    pairs = read_relation_pairs("ROOT/relation.tsv")  # image paths resolve relative to ROOT
"""


def generate_demo_world(
    root: str | Path | None = None,
    seed: int = 13,
    scale: float | str = 1.0,
    *,
    size: float | str | None = None,
    force: bool = False,
) -> DemoWorld:
    """Write the demo world under ``root`` (default :func:`default_demo_root`) and return where its files are.

    Args:
        root: output folder (created if needed; files of a different world written there before are removed).
        seed: the seed of every random choice; the same seed and scale give byte-identical files.
        scale: size factor (1.0 = ~600 relation pairs, ~3000 unlabelled pairs, 600/200/200 NER tweets,
            125 pool images), or a preset name: ``"default"`` (1.0), ``"tiny"`` (0.1, for tests).
        size: alias of ``scale`` (takes precedence when given).
        force: regenerate even when ``root`` holds a complete world with the same seed and scale.

    Idempotent: when ``root/manifest.json`` describes a complete world (every file present with its
    recorded size) with the same seed, scale and world version, nothing is written and that world is
    returned. The manifest is written last, atomically, so an interrupted run is regenerated.
    """
    start = time.perf_counter()
    scale = _resolve_scale(size if size is not None else scale)
    seed = int(seed)
    root = Path(root).expanduser() if root is not None else default_demo_root()
    old = _read_manifest(root)
    if (not force and old is not None and old.get("world_version") == WORLD_VERSION and old.get("seed") == seed
            and old.get("scale") == scale and _manifest_complete(root, old)):
        log.info("reusing the demo world in %s (seed %d, scale %g)", root, seed, scale)
        return _world(root, seed, scale, old.get("counts"))
    root.mkdir(parents=True, exist_ok=True)
    if old is not None:
        (root / "manifest.json").unlink(missing_ok=True)  # the world is incomplete until the new manifest exists

    sizes = _sizes(scale)
    written: dict[str, int] = {}

    def put(rel: str, data: bytes) -> None:
        atomic_write_bytes(root / rel, data)
        written[rel] = len(data)

    # pool images: one numpy stream per kind, so the kinds do not shift each other
    pool: dict[str, list[str]] = {}
    pixels: dict[str, np.ndarray] = {}
    for k, kind in enumerate(IMAGE_KINDS):
        img_rng = np.random.default_rng([seed, 1000 + k])
        pool[kind] = []
        for n in range(sizes["pool_per_kind"]):
            rel = f"images/{kind}_{n:03d}.png"
            array = draw_image(kind, img_rng)
            pixels[rel] = array
            put(rel, _encode(array, "PNG"))
            pool[kind].append(rel)

    # relation pairs and unlabelled pairs
    relation_counts: Counter = Counter()
    maker = _TweetMaker(random.Random(f"flair-riva-demo/{seed}/relation"))
    lines = ["text\timage\timage_adds\ttext_is_represented"]
    for _ in range(sizes["relation"]):
        tw = _pair_tweet(maker, p_neutral_related=0.6, p_shown=0.0, p_opener=0.0)
        image = maker.rng.choice(pool[tw.image_kind])
        represented = int(maker.rng.random() < (0.7 if tw.related else 0.15))
        lines.append(f"{_tsv_field(tw.text)}\t{image}\t{tw.related}\t{represented}")
        relation_counts[tw.related] += 1
    put("relation.tsv", ("\n".join(lines) + "\n").encode("utf-8"))

    maker = _TweetMaker(random.Random(f"flair-riva-demo/{seed}/unlabelled"))
    rows = []
    info_nats, lm_predictions = 0.0, 0
    for _ in range(sizes["unlabelled"]):
        tw = _pair_tweet(maker, p_neutral_related=0.85)
        info_nats += image_information(tw)
        lm_predictions += 2 * len(tw.tokens)
        rows.append(json.dumps({"text": tw.text, "image": maker.rng.choice(pool[tw.image_kind])},
                               ensure_ascii=False))
    put("unlabelled.jsonl", ("\n".join(rows) + "\n").encode("utf-8"))

    # NER corpus: one JPEG per tweet, byte-identical for tweets that share a pool image
    jpeg_cache: dict[str, bytes] = {}
    truth = ["image_id\timage_adds\tsplit\timage_kind\tentity_type"]
    ner_counts: dict[str, int] = {}
    for split in ("train", "dev", "test"):
        maker = _TweetMaker(random.Random(f"flair-riva-demo/{seed}/ner/{split}"))
        blocks = []
        n_split = sizes[f"ner_{split}"]
        for i in range(n_split):
            tw = _ner_tweet(maker)
            image_id = f"{split}_{i:04d}"
            pool_rel = maker.rng.choice(pool[tw.image_kind])
            if pool_rel not in jpeg_cache:
                jpeg_cache[pool_rel] = _encode(pixels[pool_rel], "JPEG")
            put(f"ner/images/{image_id}.jpg", jpeg_cache[pool_rel])
            body = "\n".join(f"{tok}\t{tag}" for tok, tag in zip(tw.tokens, tw.tags))
            blocks.append(f"IMGID:{image_id}\n{body}\n")
            truth.append(f"{image_id}\t{tw.related}\t{split}\t{tw.image_kind}\t{tw.entity_type}")
        ner_counts[split] = n_split
        put(f"ner/{split}.txt", "\n".join(blocks).encode("utf-8"))
    put("ner/relation_truth.tsv", ("\n".join(truth) + "\n").encode("utf-8"))

    counts = {
        "relation": sizes["relation"], "relation_positive": relation_counts[1], "unlabelled": sizes["unlabelled"],
        "ner_train": ner_counts["train"], "ner_dev": ner_counts["dev"], "ner_test": ner_counts["test"],
        "pool_images": len(pixels), "pool_per_kind": sizes["pool_per_kind"],
        "unique_ner_images": len(jpeg_cache),
        "image_information_nats_per_token": round(info_nats / max(lm_predictions, 1), 5),
    }
    put("README.txt", _README.format(
        version=WORLD_VERSION, seed=seed, scale=scale, relation=counts["relation"],
        relation_pos=counts["relation_positive"], unlabelled=counts["unlabelled"], pool=counts["pool_images"],
        per_kind=counts["pool_per_kind"], ner_train=counts["ner_train"], ner_dev=counts["ner_dev"],
        ner_test=counts["ner_test"], info=counts["image_information_nats_per_token"],
    ).encode("utf-8"))

    # files of the previous world that this one does not have
    if old is not None and isinstance(old.get("files"), dict):
        for rel in old["files"]:
            if rel not in written and ".." not in Path(rel).parts and not Path(rel).is_absolute():
                (root / rel).unlink(missing_ok=True)

    manifest = {
        "generator": "flair_riva.demo", "world_version": WORLD_VERSION, "seed": seed, "scale": scale,
        "counts": counts, "files": dict(sorted(written.items())),
    }
    atomic_write_bytes(root / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    log.info("wrote the demo world to %s in %.1f s (seed %d, scale %g: %d relation pairs, %d unlabelled pairs, "
             "NER %d/%d/%d tweets, %d images)", root, time.perf_counter() - start, seed, scale, counts["relation"],
             counts["unlabelled"], counts["ner_train"], counts["ner_dev"], counts["ner_test"], counts["pool_images"])
    return _world(root, seed, scale, counts)


def main(argv: list[str] | None = None) -> int:
    """``python -m flair_riva.demo --out DIR [--seed N] [--scale X|tiny|default] [--force]``."""
    parser = argparse.ArgumentParser(
        prog="python -m flair_riva.demo",
        description="Write the flair-riva demo world: a deterministic synthetic multimodal tweet world "
                    "(relation pairs, unlabelled pairs, an IMGID NER corpus and images).",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: FLAIR_CACHE_ROOT/riva/demo-world-v2)")
    parser.add_argument("--seed", type=int, default=13, help="random seed (default 13)")
    parser.add_argument("--scale", default="1.0",
                        help="size factor, or 'tiny' (0.1) / 'default' (1.0); default 1.0")
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete world is there")
    args = parser.parse_args(argv)
    try:
        scale = _resolve_scale(args.scale)
    except ValueError as err:
        parser.error(str(err))
    world = generate_demo_world(args.out, seed=args.seed, scale=scale, force=args.force)
    c = world.counts
    print(f"demo world in {world.root} (seed {world.seed}, scale {world.scale:g})")
    print(f"  relation pairs:   {world.relation_file} ({c.get('relation')} pairs, "
          f"{c.get('relation_positive')} image adds)")
    print(f"  unlabelled pairs: {world.unlabelled_file} ({c.get('unlabelled')} pairs)")
    print(f"  NER corpus:       {world.ner_dir} ({c.get('ner_train')}/{c.get('ner_dev')}/{c.get('ner_test')} tweets)")
    print(f"  images:           {world.image_dir} ({c.get('pool_images')} pool images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
