"""Tests of flair_riva.demo_tweets: the tweet maker and the two mixtures (the written world: test_demo)."""

from __future__ import annotations

import math
import random

from flair_riva.demo_tweets import (
    AMBIGUOUS_NAMES,
    MAX_TOKENS,
    MIN_TOKENS,
    OPENER,
    SHOWN,
    TYPE_KIND,
    UNRELATED_KINDS,
    _ner_tweet,
    _pair_tweet,
    _Tweet,
    _TweetMaker,
    image_information,
)


def _tweets(make, seed: int, n: int = 300) -> list[_Tweet]:
    maker = _TweetMaker(random.Random(seed))
    return [make(maker) for _ in range(n)]


def test_tweets_are_seeded_bounded_and_bio_tagged():
    tweets = _tweets(_ner_tweet, 1)
    assert [t.tokens for t in tweets] == [t.tokens for t in _tweets(_ner_tweet, 1)]
    assert [t.tokens for t in tweets] != [t.tokens for t in _tweets(_ner_tweet, 2)]
    for t in tweets:
        assert MIN_TOKENS <= len(t.tokens) <= MAX_TOKENS and len(t.tags) == len(t.tokens)
        assert t.text == " ".join(t.tokens)
        for prev, tag in zip(["O", *t.tags], t.tags):
            assert tag == "O" or tag.startswith("B-") or (tag.startswith("I-") and prev[2:] == tag[2:])
        assert f"B-{t.entity_type}" in t.tags


def test_ner_mixture_related_shows_the_entity_kind_in_a_neutral_context():
    for t in _tweets(_ner_tweet, 5):
        if t.related:
            assert t.context == "neutral" and t.image_kind == TYPE_KIND[t.entity_type]
        else:
            assert t.context == "reveal" and t.image_kind != TYPE_KIND[t.entity_type]


def test_pair_mixture_and_image_information():
    tweets = _tweets(lambda m: _pair_tweet(m, p_neutral_related=0.85), 7, n=600)
    assert 0.35 <= sum(t.related for t in tweets) / len(tweets) <= 0.55  # ~45% image adds
    assert all(t.related == 0 for t in tweets if t.image_kind in UNRELATED_KINDS)
    gains = {image_information(t) for t in tweets}
    assert gains <= {0.0, math.log(3), 2 * math.log(3), 3 * math.log(3)} and len(gains) > 1
    for t in tweets:
        if image_information(t) >= 2 * math.log(3):  # the SHOWN words after an ambiguous name
            assert t.related and any(w in AMBIGUOUS_NAMES for w in t.tokens)
            assert any(p.split()[0] in t.tokens for p in SHOWN[t.entity_type])
        if not t.related:
            assert image_information(t) == 0.0  # an unrelated image predicts nothing
    openers = [t for t in tweets if t.related and t.tokens[0] in OPENER[t.entity_type] and t.tokens[1] == ":"]
    assert openers and all(image_information(t) >= math.log(3) for t in openers)
