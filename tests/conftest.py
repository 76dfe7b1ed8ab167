"""Shared fixtures: tiny RIVA configs and models that build in well under a second, offline."""

from __future__ import annotations

import random

import pytest
import torch

from flair_riva.config import RivaConfig
from flair_riva.text import Vocabulary, tokenize_tweet

# The models under test are tiny: one intra-op thread is as fast as two on a quiet machine, and on a
# busy one (other torch jobs on the same cores) two threads per process can be 10-100x slower.
torch.set_num_threads(1)

TINY = dict(word_dim=16, char_dim=8, char_hidden_size=8, rgn_hidden_size=32, vlcn_hidden_size=32,
            num_heads=8, backbone="resnet18", min_word_count=1)

SAMPLE_TWEETS = [
    "RT @JayKenMinaj _ : Me outside of where George Zimmerman got shot at . http://t.co/Z3neVBQ7vF",
    "Swan upping : first stop Hermitage Warf , Tower Bridge ( Tower and Olympic rings in the background )",
    "Look at Jordan in this photo #NBA 🏀",
    "Can't stop thinking about Paris today",
    "Jordan scored 30 points last night",
    "flying to Jordan tomorrow with @mike",
]


@pytest.fixture
def tiny_config() -> RivaConfig:
    return RivaConfig(**TINY)


@pytest.fixture
def tiny_token_lists() -> list[list[str]]:
    return [tokenize_tweet(t) for t in SAMPLE_TWEETS]


@pytest.fixture
def tiny_vocab(tiny_token_lists) -> Vocabulary:
    return Vocabulary.build(tiny_token_lists, max_size=1000, min_count=1)


def random_visual(batch: int, has_image: list[bool] | None = None, dim: int = 512, seed: int = 0):
    """Random region features as a frozen backbone would give them (ReLU outputs, so >= 0)."""
    from flair_riva.vision import VisualFeatures

    gen = torch.Generator().manual_seed(seed)
    regions = torch.rand(batch, 49, dim, generator=gen)
    flags = torch.tensor(has_image if has_image is not None else [True] * batch)
    regions = regions * flags[:, None, None]
    return VisualFeatures(regions, regions.mean(dim=1), flags,
                          [None if f else "missing" for f in flags.tolist()])


def random_tokens(n: int, vocab: Vocabulary, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = vocab.words[4:]
    return [rng.choice(words) for _ in range(n)]
