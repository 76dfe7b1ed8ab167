"""Shared fixtures: tiny RIVA configs and models that build in well under a second, offline."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

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


@pytest.fixture
def model(tiny_config, tiny_vocab):
    """A tiny RivaModel in eval mode (seeded)."""
    from flair_riva.model import RivaModel

    torch.manual_seed(0)
    return RivaModel(tiny_config, tiny_vocab).eval()


def keyed_vectors(words, dim: int = 16, seed: int = 0):
    """Seeded random gensim ``KeyedVectors`` for ``words``."""
    from gensim.models import KeyedVectors

    kv = KeyedVectors(dim)
    kv.add_vectors(list(words), torch.randn(len(words), dim, generator=torch.Generator().manual_seed(seed)).numpy())
    return kv


# -- the pretrainer on a tiny demo world ---------------------------------------------------------------------

#: The pretrainer's tiny model on the command line: one LSTM layer, a random-init frozen ResNet-18.
TINY_CLI = ["--word-dim", "16", "--char-dim", "8", "--char-hidden-size", "8", "--rgn-hidden-size", "32",
            "--vlcn-hidden-size", "32", "--rgn-layers", "1", "--vlcn-layers", "1", "--num-heads", "8",
            "--backbone", "resnet18", "--backbone-weights", "none", "--freeze-backbone", "--min-word-count", "1",
            "--teacher-epochs", "1", "--epochs", "2", "--no-progress", "--demo-scale", "tiny", "--threshold", "0.5"]


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The tiny demo world of the pretrainer tests (modules with a world of their own override it)."""
    from flair_riva.demo import generate_demo_world

    return generate_demo_world(tmp_path_factory.mktemp("world"), scale="tiny")


@pytest.fixture(scope="module")
def corpus(world):
    """The tiny demo world's MNER corpus, one per test module (tests add embeddings to its sentences)."""
    from flair_riva.datasets import TwitterMNERCorpus

    return TwitterMNERCorpus(world.ner_dir)  # images in ner_dir/images (the demo world's layout)


#: The real photos shipped with the tests (tests/data/images/SOURCE.md).
IMAGES = sorted((Path(__file__).parent / "data" / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feature-cache")


@pytest.fixture(scope="module")
def demo_run(world, cache_dir, tmp_path_factory):
    """One tiny end-to-end pretraining run through the CLI, shared by the tests of a module that read it."""
    from flair_riva.pretrain import main

    out = tmp_path_factory.mktemp("run") / "riva"
    handlers_before = list(logging.getLogger("flair").handlers)
    code = main(["--output", str(out), "--demo-dir", str(world.root), "--feature-cache", str(cache_dir), *TINY_CLI])
    assert code == 0
    assert logging.getLogger("flair").handlers == handlers_before, "the training.log handler must be removed"
    return out


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the pretrainer gets as far as training (bad input must stop it before)."""
    from flair_riva.pretrain import stages
    from flair_riva.pretrain import trainer as trainer_module

    def fail(*_args, **_kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(stages, "train_teacher", fail)
    monkeypatch.setattr(trainer_module, "AlgorithmOne", fail)



def tiny_args(world, output, cache_dir, **changes):
    """The pretrainer's options for a tiny run on ``world`` (the flat options of the command line)."""
    from flair_riva.pretrain import PretrainArgs

    values = dict(output=str(output), demo_dir=str(world.root), demo_scale="tiny", word_dim=16, char_dim=8,
                  char_hidden_size=8, rgn_hidden_size=32, vlcn_hidden_size=32, rgn_layers=1, vlcn_layers=1,
                  num_heads=8, backbone="resnet18", backbone_weights="none", freeze_backbone=True, min_word_count=1,
                  teacher_epochs=1, epochs=2, progress=False, feature_cache=str(cache_dir), threshold=0.5)
    values.update(changes)
    return PretrainArgs(**values)


class FlairRecords(logging.Handler):
    """Records of the "flair" logger (it does not propagate, so pytest's caplog misses them)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, contains: str = "") -> list[str]:
        return [r.getMessage() for r in self.records if contains in r.getMessage()]


@pytest.fixture
def flair_log():
    """What the "flair" logger writes during a test (:class:`FlairRecords`)."""
    handler = FlairRecords()
    logger = logging.getLogger("flair")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


REPO = Path(__file__).resolve().parents[1]


def run_python(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``script`` (dedented) in a child Python with this checkout first on the path, one OpenMP thread."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)
