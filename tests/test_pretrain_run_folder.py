"""pretrain.run_folder: the files a run writes, the check against ``run_args.json`` (another run refused,
a 0.1.0 run, resolved paths), ``--overwrite`` and an unwritable output, on tiny runs of the demo world."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from flair_riva.model import RivaModel
from flair_riva.pairs import read_pseudo_labelled
from flair_riva.pretrain import PretrainError, main, run_pretraining
from tests.conftest import TINY_CLI, tiny_args


def test_run_folder_layout(demo_run):
    out = demo_run
    for name in ("training.log", "metrics.tsv", "run_args.json", "run_state.json", "vocab.json", "pseudo_labelled.tsv"):
        assert (out / name).is_file(), name
    for name in ("teacher", "epoch-1", "epoch-2", "best", "final"):
        RivaModel.load(out / name)                            # every one is a RivaModel directory
    assert (out / "epoch-2" / "trainer_state.pt").is_file()
    assert not (out / "checkpoint").exists(), "the mid-epoch checkpoint is removed at the end of its epoch"
    assert not list(out.glob(".*.tmp"))
    log_text = (out / "training.log").read_text(encoding="utf-8")
    assert "-" * 100 in log_text and "stage 1: teacher" in log_text and "stage 3: Algorithm 1" in log_text
    assert "demo-world defaults" in log_text and "kept" in log_text
    teacher = RivaModel.load(out / "teacher")
    final = RivaModel.load(out / "final")
    assert teacher.vocab.words == final.vocab.words, "the student shares the teacher's vocabulary"


def test_output_holding_another_run_is_refused(demo_run, world, cache_dir, no_training, capsys):
    before = (demo_run / "metrics.tsv").read_bytes()
    base = ["--output", str(demo_run), "--demo-dir", str(world.root), "--feature-cache", str(cache_dir), *TINY_CLI]
    assert main([*base, "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "holds another run with different arguments (epochs: 2 -> 3)" in err
    with pytest.raises(PretrainError, match=r"different arguments \(epochs: 2 -> 3\)"):
        run_pretraining(tiny_args(world, demo_run, cache_dir, epochs=3))
    with pytest.raises(PretrainError, match="pass --resume"):
        run_pretraining(tiny_args(world, demo_run, cache_dir))
    assert (demo_run / "metrics.tsv").read_bytes() == before


def test_run_folder_of_0_1_0_resumes_only_with_its_plain_batches(demo_run, world, cache_dir, tmp_path):
    """0.1.0's run_args.json has no length_buckets: its runs drew plain batches (pool 0), and resuming one with
    bucketed batches would skip the wrong pairs, so the default is refused there, naming the option."""
    from flair_riva.pretrain.run_folder import read_run_args

    old = tmp_path / "old-run"
    old.mkdir()
    for name in ("run_state.json", "vocab.json"):
        shutil.copy(demo_run / name, old / name)
    record = json.loads((demo_run / "run_args.json").read_text())
    assert record["args"]["length_buckets"] == 50
    del record["args"]["length_buckets"]
    (old / "run_args.json").write_text(json.dumps(record))
    assert read_run_args(old)["length_buckets"] == 0
    with pytest.raises(PretrainError, match=r"different arguments \(length_buckets: 0 -> 50\)"):
        run_pretraining(tiny_args(world, old, cache_dir, resume=True))


def test_overwrite_starts_again(world, cache_dir, tmp_path):
    out = tmp_path / "run"
    run_pretraining(tiny_args(world, out, cache_dir, epochs=1))
    (out / "marker.txt").write_text("user file")
    result = run_pretraining(tiny_args(world, out, cache_dir, epochs=2, overwrite=True))
    assert len(result.history) == 2 and (out / "marker.txt").exists(), "--overwrite deletes run files only"
    assert json.loads((out / "run_args.json").read_text())["args"]["epochs"] == 2


def test_resume_compares_resolved_paths_and_never_suggests_deleting(demo_run, world, cache_dir, tmp_path,
                                                                     no_training, monkeypatch):
    monkeypatch.chdir(demo_run.parent)
    moved = tmp_path / "moved"
    shutil.copytree(demo_run, moved)
    for output in (f"{demo_run}/", f"./{demo_run.name}", demo_run.name, str(moved)):
        with pytest.raises(AssertionError, match="training started"):  # accepted as the same run, resumed
            run_pretraining(tiny_args(world, output, cache_dir, resume=True))
    for changes in ({}, {"epochs": 3}):
        with pytest.raises(PretrainError, match="--resume") as info:
            run_pretraining(tiny_args(world, f"./{demo_run.name}/", cache_dir, **changes))
        assert "overwrite" not in str(info.value)


def test_unwritable_output_is_a_one_line_error(world, cache_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--output", str(blocker / "run"), "--demo-dir", str(world.root), "--feature-cache", str(cache_dir),
                 *TINY_CLI]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output") and "not a writable folder" in err and err.count("\n") == 1


def test_pseudo_label_quality_scores_a_run_and_writes_the_true_label_control(demo_run, world, cache_dir, tmp_path,
                                                                             capsys):
    """recipes/pseudo_label_quality.py scores the run's pseudo-labels against the world's truth and writes the
    control of README "Table 3 on the demo world": the run's stages 0-2 with the true labels of the same pairs,
    which the pretrainer resumes at stage 3 (the teacher and the pairs reused, not redone)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
    import pseudo_label_quality

    truth = world.unlabelled_truth()
    pseudo = read_pseudo_labelled(demo_run / "pseudo_labelled.tsv")
    true_labels = [truth[(p.text, p.image.name)].image_adds for p in pseudo]
    correct = sum(p.label == t for p, t in zip(pseudo, true_labels))
    assert 0 < correct < len(pseudo), "the tiny teacher (1 epoch) makes mistakes, so the control differs"
    out = tmp_path / "true-labels"
    assert pseudo_label_quality.main(["--run", str(demo_run), "--true-labels", str(out)]) == 0
    assert f"pseudo-labelled pairs: {len(pseudo)}, correct {correct} " in capsys.readouterr().out
    control = read_pseudo_labelled(out / "pseudo_labelled.tsv")
    assert [(p.text, p.image, p.score) for p in control] == [(p.text, p.image, p.score) for p in pseudo]
    assert [p.label for p in control] == true_labels
    teacher_before = (out / "teacher" / "model.safetensors").read_bytes()
    result = run_pretraining(tiny_args(world, out, cache_dir, resume=True))
    assert len(result.history) == 2 and (out / "final" / "config.json").is_file()
    assert (out / "teacher" / "model.safetensors").read_bytes() == teacher_before
    assert [p.label for p in read_pseudo_labelled(out / "pseudo_labelled.tsv")] == true_labels
    with pytest.raises(SystemExit, match="exists"):
        pseudo_label_quality.main(["--run", str(demo_run), "--true-labels", str(out)])
