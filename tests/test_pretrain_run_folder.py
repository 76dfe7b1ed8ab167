"""pretrain.run_folder: the files a run writes, the check against ``run_args.json`` (another run refused,
a 0.1.0 run, resolved paths), ``--overwrite`` and an unwritable output, on tiny runs of the demo world."""

from __future__ import annotations

import json
import shutil

import pytest

from flair_riva.model import RivaModel
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
