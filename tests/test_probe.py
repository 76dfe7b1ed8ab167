"""flair_riva.probe: the entity-type probe on frozen RIVA vectors (own, shuffled and no images)."""

from __future__ import annotations

import json

import pytest
import torch

from flair_riva.config import RivaConfig
from flair_riva.datasets import TwitterMNERCorpus
from flair_riva.model import RivaModel
from flair_riva.probe import (
    ProbeExample,
    bag_of_words,
    derangement,
    fit_logistic_regression,
    main,
    predict,
    read_relation_truth,
    run_probe,
)
from tests.conftest import TINY


@pytest.fixture(scope="module")
def model_dir(world, tmp_path_factory):
    corpus = TwitterMNERCorpus(world.ner_dir)
    texts = [[t.text for t in s] for s in list(corpus.train) + list(corpus.dev)]
    torch.manual_seed(0)
    model = RivaModel.from_texts(RivaConfig(**TINY), texts)
    path = tmp_path_factory.mktemp("model") / "riva"
    model.save(path)
    return path


def test_derangement_moves_every_item_and_is_seeded():
    for n in (2, 3, 10, 101):
        perm = derangement(n, seed=3)
        assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))
    assert derangement(10, 3) == derangement(10, 3) != derangement(10, 4)


def test_logistic_regression_separates_separable_classes():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=gen) * 3
    y = torch.arange(300) % 3
    x = centres[y] + torch.randn(300, 20, generator=gen)
    params = fit_logistic_regression(x[:200], y[:200], 3)
    assert float((predict(params, x[200:]) == y[200:]).float().mean()) > 0.95


def test_bag_of_words_control_reads_the_type_off_the_words_it_was_trained_on():
    """The text-only control sees train words and surface forms, nothing else: a cue word of the train
    tweets decides the type; a dev word never seen in train is no feature."""
    def example(words: str, label: str, surface: str = "jordan") -> ProbeExample:
        return ProbeExample(torch.zeros(1), label, surface, None, tuple(words.split()))

    train = [example(f"{cue} {surface} today", label, surface) for cue, label in (("scored", "PER"), ("visit", "LOC"))
             for surface in ("jordan", "paris", "georgia") for _ in range(5)]
    dev = [example("visit jordan unseen", "LOC"), example("scored paris", "PER"), example("brandnew", "PER")]
    x_train, x_dev = bag_of_words(train, dev)
    assert x_train.shape == (30, 6 + 3) and x_dev.shape == (3, 9)  # 6 train words + 3 surface forms
    assert x_dev[2].sum() == 1  # only the surface form "jordan" (the default) is known
    types = ["LOC", "PER"]
    y = torch.tensor([types.index(e.label) for e in train])
    predicted = predict(fit_logistic_regression(x_train, y, 2), x_dev)
    assert predicted[:2].tolist() == [0, 1]


def test_run_probe_reports_every_condition_and_leaves_the_sentences_clean(world, model_dir):
    corpus = TwitterMNERCorpus(world.ner_dir)
    train, dev = list(corpus.train), list(corpus.dev)
    truth = read_relation_truth(world.relation_truth_file)
    report = run_probe(model_dir, train, dev, relation_truth=truth, batch_size=16)
    assert set(report.accuracy) == {"own", "shuffled", "no_image", "gate_open", "text_bow"}
    assert report.counts["all"] > 0 and "image adds" in report.counts and report.train_entities > 0
    for condition in report.accuracy.values():
        assert set(condition) == set(report.counts)
        assert all(0.0 <= v <= 1.0 for v in condition.values())
    assert 0.0 < report.chance["all"] <= 1.0
    assert "| all |" in report.table()
    for sentence in train + dev:  # no vectors and no shuffled-image metadata left behind
        assert not sentence.has_metadata("riva_probe_shuffled_image")
        assert all("riva-probe" not in t._embeddings for t in sentence)


def test_cli_prints_the_table_and_writes_json(world, model_dir, tmp_path, capsys):
    out = tmp_path / "probe.json"
    code = main(["--model", str(model_dir), "--corpus", str(world.ner_dir), "--relation-truth",
                 str(world.relation_truth_file), "--output", str(out), "--batch-size", "16"])
    assert code == 0
    assert "| dev entities |" in capsys.readouterr().out
    assert set(json.loads(out.read_text())["accuracy"]) == {"own", "shuffled", "no_image", "gate_open", "text_bow"}


def test_cli_bad_model_is_one_error_line(world, tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nothing"), "--corpus", str(world.ner_dir)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_probe_stages_recipe_agrees_with_the_probe_on_the_token_vectors(world, model_dir, capsys):
    """recipes/probe_stages.py probes each stage of the image path; its last stage ([fwd; bwd]) is what
    the probe reads, so both score the same."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import probe_stages

    assert probe_stages.main(["--model", str(model_dir), "--world", str(world.root)]) == 0
    own = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| own"))
    cells = [c.strip() for c in own.strip("|").split("|")]
    assert len(cells) == 2 + len(probe_stages.STAGES) and int(cells[1]) > 0
    corpus = TwitterMNERCorpus(world.ner_dir)
    report = run_probe(RivaModel.load(model_dir), list(corpus.train), list(corpus.dev),
                       relation_truth=read_relation_truth(world.relation_truth_file))
    assert float(cells[-1]) == pytest.approx(100 * report.accuracy["own"]["image adds, text-ambiguous"], abs=0.06)
