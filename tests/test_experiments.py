"""experiments: the MNER experiment protocol (Tables 4-6) on a tiny demo world."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from flair_riva import experiments as mner
from flair_riva.config import RivaConfig
from flair_riva.datasets import TwitterMNERCorpus, iter_unlabelled_pairs
from flair_riva.demo import generate_demo_world
from flair_riva.model import RivaModel
from tests.conftest import TINY


def test_strict_scores_do_not_count_orphans():
    gold = [["O", "I-LOC", "O", "B-PER", "I-PER"]]       # an orphan I- (as in Twitter-2015)
    pred = [["O", "B-LOC", "O", "B-PER", "I-PER"]]
    # strict IOB2: the orphan is no entity, so the predicted LOC is a false positive
    assert mner.strict_f1(gold, pred) == pytest.approx(100 * 2 * (1 / 2) / (1 / 2 + 1))
    assert mner.strict_f1(pred, pred) == pytest.approx(100.0)


def test_read_gold_tags(tmp_path):
    path = tmp_path / "test.txt"
    path.write_text("IMGID:1\nA\tB-PER\nb\tO\n\nIMGID:2\nc\tI-LOC\n", encoding="utf-8")
    assert mner.read_gold_tags(path) == [["B-PER", "O"], ["I-LOC"]]


@pytest.mark.slow
def test_run_experiments_on_the_demo_world(tmp_path):
    world = generate_demo_world(tmp_path / "demo", scale=0.1)
    texts = [p.tokens for p in iter_unlabelled_pairs(world.unlabelled_file)]
    torch.manual_seed(0)
    riva = RivaModel.from_texts(RivaConfig(**TINY), texts)
    riva.save(tmp_path / "riva")
    RivaModel.from_texts(RivaConfig(**TINY, use_image=False), texts).save(tmp_path / "riva-text")
    corpus = TwitterMNERCorpus(world.ner_dir)
    gold = {split: mner.read_gold_tags(world.ner_dir / f"{split}.txt") for split in ("dev", "test")}
    assert gold == {split: mner.gold_tags_of(getattr(corpus, split)) for split in gold}, "parsed once"
    args = mner.ExperimentArgs(
        corpus=corpus, name="tiny demo", output=tmp_path / "out", riva=tmp_path / "riva",
        riva_text=tmp_path / "riva-text", configs=["text", "image+text", "+RIVA(image+text)", "-RGN"],
        epochs=1, learning_rate=0.1, batch_size=16, hidden_size=8,
    )
    rows, text = mner.run_experiments(args)
    assert [r["config"] for r in rows] == ["text", "image+text", "+RIVA(image+text)"]
    assert "-RGN (needs --riva-nogate)" in text
    for r in rows:
        assert 0 <= r["test_f1"] <= 100 and 0 <= r["test_f1_strict"] <= 100
        assert r["test_adds_n"] + r["test_not_adds_n"] == len(corpus.test)
        assert Path(r["model"]).is_file()
    with open(tmp_path / "out" / "results.csv", encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    md = (tmp_path / "out" / "results.md").read_text(encoding="utf-8")
    assert "### Table 4" in md and "### Table 6" in md and "train 60/60" in md
    assert not any(s.get_labels("predicted") for s in corpus.test), "no prediction leaks into the next run"


@pytest.mark.slow
def test_table5_stacks_with_local_bert_and_flair_models(tmp_path, monkeypatch):
    """+BERT and +RIVA+BERT+Flair from local files only (a tiny BERT directory, tiny Flair LM files)."""
    from flair.models import LanguageModel

    from tests.test_embeddings import _char_lm, _tiny_bert

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    world = generate_demo_world(tmp_path / "demo", scale=0.1)
    corpus = TwitterMNERCorpus(world.ner_dir)
    texts = [p.tokens for p in iter_unlabelled_pairs(world.unlabelled_file)]
    torch.manual_seed(0)
    RivaModel.from_texts(RivaConfig(**TINY), texts).save(tmp_path / "riva")
    bert = _tiny_bert(tmp_path / "bert", [w for t in texts for w in t])
    forward = _char_lm(corpus.train)
    forward.save(tmp_path / "fw.pt")
    LanguageModel(forward.dictionary, is_forward_lm=False, hidden_size=16, nlayers=1, embedding_size=8).save(
        tmp_path / "bw.pt")
    gold = {split: mner.read_gold_tags(world.ner_dir / f"{split}.txt") for split in ("dev", "test")}
    args = mner.ExperimentArgs(
        corpus=corpus, name="tiny demo", output=tmp_path / "out", gold_tags=gold, riva=tmp_path / "riva",
        bert=bert, flair_forward=tmp_path / "fw.pt", flair_backward=tmp_path / "bw.pt",
        configs=["+BERT", "+RIVA+BERT+Flair"], epochs=1, batch_size=16,
        hidden_size=8,
    )
    rows, text = mner.run_experiments(args)
    assert [r["config"] for r in rows] == ["+BERT", "+RIVA+BERT+Flair"]
    assert "### Table 5" in text


def test_time_budget_stops_before_an_epoch_that_would_end_too_late(monkeypatch):
    from flair.trainers.plugins.base import TrainingInterrupt

    clock = iter([100.0, 130.0, 160.0])  # epochs 1 and 2 took 30 s; the deadline is 185 s
    monkeypatch.setattr(mner.time, "time", lambda: next(clock))
    stop = mner.StopAtDeadline(deadline=185.0)
    stop.before_training_epoch(epoch=1)
    stop.before_training_epoch(epoch=2)   # 130 + 30 <= 185: epoch 2 runs
    with pytest.raises(TrainingInterrupt, match="time budget"):
        stop.before_training_epoch(epoch=3)  # 160 + 30 > 185


def test_protocol_is_the_same_for_every_configuration():
    args = mner.ExperimentArgs(corpus=None, name="x", output=Path("out"))
    assert args.hidden_size == 256 and (args.dropout, args.word_dropout, args.locked_dropout) == (0.0, 0.05, 0.5)
    line = mner.protocol_line(args)
    assert "hidden size 256 for every configuration" in line and "locked dropout 0.5" in line


def test_a_run_folder_trained_again_starts_clean(tmp_path):
    """Flair appends to an existing loss.tsv: a run trained again with other settings counted both runs'
    epochs (8 + 10 = 18 of at most 10)."""
    run = tmp_path / "text-seed1"
    run.mkdir()
    for name in mner.RUN_FILES:
        (run / name).write_text("old", encoding="utf-8")
    (run / "keep.txt").write_text("not Flair's", encoding="utf-8")
    mner.clear_run_dir(run)
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
    mner.clear_run_dir(tmp_path / "missing")  # nothing there: nothing to do


def test_configs_take_the_dash_rgn_configuration_among_other_values():
    """argparse reads '-RGN' as an option; the recipes' --configs accepts it anywhere, each config once."""
    from flair_riva.experiments_cli import build_parser

    def configs(*argv: str) -> list[str] | None:
        return build_parser("x").parse_args(["corpus", "--output", "out", *argv]).configs

    assert configs("--configs", "text", "-RGN", "+RIVA(text)") == ["text", "-RGN", "+RIVA(text)"]
    assert configs("-RGN", "--configs", "text") == ["-RGN", "text"]
    assert configs("--configs=-RGN") == ["-RGN"]
    assert configs() is None  # the caller's default: every configuration whose models were given
    with pytest.raises(SystemExit):
        configs("--configs", "nonsense")
    with pytest.raises(SystemExit):
        configs("--configs", "text", "-RGN", "nonsense")
