"""recipes/real_tweets.py end to end at a tiny scale (two small corpora cut from the demo world), and the
pretraining-text / vocabulary-report helpers it uses (flair_riva.pretraining_text)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flair_riva.datasets import TwitterMNERCorpus
from flair_riva.demo import generate_demo_world
from flair_riva.pretraining_text import corpus_unk_rates, disjoint_pretraining_text, tweet_key
from flair_riva.text import Vocabulary

ROOT = Path(__file__).resolve().parents[1]


def _cut(source: Path, target: Path, keep: dict[str, slice]) -> Path:
    """A corpus folder with a slice of each split's tweets (IMGID blocks)."""
    target.mkdir(parents=True)
    for split, part in keep.items():
        blocks = source.joinpath(f"{split}.txt").read_text(encoding="utf-8").strip().split("\n\n")
        target.joinpath(f"{split}.txt").write_text("\n\n".join(blocks[part]) + "\n", encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    world = generate_demo_world(root / "demo", scale=0.1)
    a = _cut(world.ner_dir, root / "alpha", {"train": slice(0, 24), "dev": slice(0, 8), "test": slice(0, 8)})
    # beta shares alpha's dev tweets: they must not reach alpha's pretraining text
    b = _cut(world.ner_dir, root / "beta", {"train": slice(24, 40), "dev": slice(0, 8), "test": slice(8, 14)})
    return root, a, b


def test_disjoint_pretraining_text_drops_dev_and_test_tweets(corpora, tmp_path):
    _, a, b = corpora
    alpha, beta = TwitterMNERCorpus(a, name="alpha"), TwitterMNERCorpus(b, name="beta")
    counts = disjoint_pretraining_text(alpha, [beta], tmp_path / "text.jsonl")
    held_out = {tweet_key([t.text for t in s.tokens]) for s in list(alpha.dev) + list(alpha.test)}
    written = [json.loads(line)["text"].split(" ") for line in (tmp_path / "text.jsonl").read_text().splitlines()]
    assert counts["target_train"] == 24 and counts["other"] == 16 + 8 + 6
    assert counts["dropped"] >= 8, "beta's dev tweets are alpha's dev tweets"
    assert counts["written"] == len(written) == 24 + 30 - counts["dropped"]
    assert not any(tweet_key(w) in held_out for w in written)


def test_unk_rates_count_tokens_and_entity_tokens(corpora):
    _, a, _ = corpora
    alpha = TwitterMNERCorpus(a, name="alpha")
    rates = corpus_unk_rates(Vocabulary.build([[]], min_count=1), alpha)  # specials only: everything is <unk>
    assert rates["dev"]["unk"] == 100.0 and rates["dev"]["entity_unk"] == 100.0
    assert 0 < rates["train"]["entity_tokens"] < rates["train"]["tokens"]


def test_driver_end_to_end(corpora):
    root, a, b = corpora
    words = sorted({line.split("\t")[0].lower() for f in (a / "test.txt", b / "train.txt")
                    for line in f.read_text(encoding="utf-8").splitlines() if "\t" in line})
    glove = root / "vectors.txt"
    glove.write_text("".join(f"{w} " + " ".join(f"{(i * 7 + j) % 11 / 10:.1f}" for j in range(8)) + "\n"
                             for i, w in enumerate(words)), encoding="utf-8")
    out = root / "out"
    cmd = [sys.executable, str(ROOT / "recipes" / "real_tweets.py"), "--output", str(out), "--corpus",
           f"alpha={a}", "--corpus", f"beta={b}", "--targets", "alpha", "--word-vectors", str(glove),
           "--seeds", "1", "--workers", "2", "--epochs", "1", "--hidden-size", "8", "--batch-size", "8",
           "--pretrain-epochs", "1", "--no-probe", "--pretrain-args", "--vlcn-hidden-size", "16", "--vlcn-layers",
           "1", "--batch-size", "8", "--heldout-fraction", "0.2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    md = (out / "results.md").read_text(encoding="utf-8")
    assert "biLSTM-CRF text" in md and "biLSTM-CRF +RIVA(text)" in md and "<unk> before" in md
    assert "hidden size 8 for every configuration" in md
    unk = json.loads((out / "alpha" / "unk_rates.json").read_text())
    # every test word is in the vectors: none is <unk> for the new token encoder
    assert unk["after"]["test"]["unk"] == 0.0 < unk["before"]["test"]["unk"]
    results = sorted((out / "alpha" / "ner" / "runs").glob("*/result.json"))
    assert len(results) == 2
    # a second run reuses everything it finished
    again = subprocess.run(cmd[:2] + ["--stage", "taggers"] + cmd[2:], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (again.stdout + again.stderr).count("finished before, reusing") == 2
