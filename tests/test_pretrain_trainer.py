"""pretrain.trainer: whole runs on a tiny demo world with tiny configs: what the run writes (pseudo-labels,
metrics, image gain), best-on-dev, bad input, exact kill/resume and 2-process DDP equivalence. The parts have
their own modules (test_pretrain_run_folder, _options, _steps, _stages, _data, _state, _metrics)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flair_riva.datasets import read_pseudo_labelled
from flair_riva.model import RivaModel
from flair_riva.pretrain import (
    PretrainError,
    main,
    relation_scores,
    run_pretraining,
)
from flair_riva.pretrain import trainer as trainer_module
from flair_riva.pretrain.algorithm import AlgorithmOne
from flair_riva.pretrain.data import (
    VisualSource,
    heldout_split,
)
from flair_riva.pretrain.distributed import DistContext
from flair_riva.pretrain.state import (
    METRIC_COLUMNS,
    TIMING_COLUMNS,
    load_state,
    read_metrics,
)
from tests.conftest import TINY_CLI, tiny_args

REPO = Path(__file__).resolve().parents[1]


# -- what a run writes --------------------------------------------------------------------------------------------


def test_pseudo_labelled_tsv_and_per_class_counts(demo_run):
    out = demo_run
    lines = (out / "pseudo_labelled.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["text", "image", "label", "score"]
    pairs = read_pseudo_labelled(out / "pseudo_labelled.tsv")
    state = json.loads((out / "run_state.json").read_text())["pseudo"]
    assert len(pairs) == state["kept"] > 0
    assert all(p.score > state["threshold"] for p in pairs), "only scores above the threshold are kept"
    assert all(p.label in (0, 1) and p.image is not None and p.image.is_file() for p in pairs)
    per_class = state["kept_per_class"]
    assert per_class["image adds"] == sum(p.label == 1 for p in pairs)
    assert per_class["image does not add"] == sum(p.label == 0 for p in pairs)
    assert state["kept"] + state["below_threshold"] + state["without_image"] == state["seen"] == 300
    assert f"kept {state['kept']} of 300 pairs" in (out / "training.log").read_text(encoding="utf-8")


def test_metrics_tsv_columns(demo_run):
    rows = read_metrics(demo_run / "metrics.tsv")
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [r["EPOCH"] for r in rows] == ["1", "2"]
    for row in rows:
        for col in ("TEACHER_DEV_F1", "TEACHER_TEST_F1", "PSEUDO_DEV_F1", "PSEUDO_TEST_F1", "FINETUNED_DEV_F1",
                    "FINETUNED_TEST_F1"):
            assert 0.0 <= float(row[col]) <= 1.0
        assert float(row["HELDOUT_PPL"]) > 1.0 and float(row["PAIRS_PER_SECOND"]) > 0
        assert math.isfinite(float(row["IMAGE_GAIN"]))
        # "-" when the few held-out pairs of the tiny world hold one pseudo-label class only
        assert row["GATE_SEPARATION"] == "-" or -1.0 <= float(row["GATE_SEPARATION"]) <= 1.0
    assert rows[0]["TEACHER_TEST_F1"] == rows[1]["TEACHER_TEST_F1"]
    log_text = (demo_run / "training.log").read_text(encoding="utf-8")
    assert "image gain" in log_text and "gate separation" in log_text


def test_image_gain_is_measured_with_images_rotated_among_the_pairs(demo_run, world, cache_dir):
    """evaluate_lm: own vs rotated images on the same pairs; a model whose VLCN ignores the image has gain 0."""
    from flair_riva.datasets import read_pseudo_labelled
    from flair_riva.pretrain.steps import evaluate_lm
    from flair_riva.vision import ImageFeaturizer

    model = RivaModel.load(demo_run / "final")
    pairs = read_pseudo_labelled(demo_run / "pseudo_labelled.tsv")
    source = VisualSource(ImageFeaturizer(model.backbone, cache_dir))
    result = evaluate_lm(model, pairs, source, batch_size=16)
    assert result["ppl"] == pytest.approx(math.exp(result["lm_loss"]))
    assert math.isfinite(result["image_gain"]) and result["image_gain"] != 0.0
    assert result["lm_loss_shuffled"] == pytest.approx(result["lm_loss"] + result["image_gain"])
    labels = {p.label for p in pairs}
    if labels == {0, 1}:
        assert 0.0 <= result["gate_adds"] <= 1.0 and 0.0 <= result["gate_not"] <= 1.0
        assert result["gate_separation"] == pytest.approx(result["gate_adds"] - result["gate_not"])
    with torch.no_grad():  # cut the visual route: the image cannot change the LM loss any more
        model.vlcn.visual_step.weight.zero_()
        model.vlcn.visual_step.bias.zero_()
        model.vlcn.visual_start.weight.zero_()
        model.vlcn.visual_start.bias.zero_()
    assert evaluate_lm(model, pairs, source, batch_size=16)["image_gain"] == pytest.approx(0.0, abs=1e-6)


def test_best_is_chosen_on_dev_only(world, cache_dir, tmp_path, monkeypatch):
    """Scripted scores: test F1 and perplexity favour epoch 3, dev favours epochs 1-2 (tie -> lower ppl: 2)."""
    script = iter([(0.8, 0.1, 50.0), (0.8, 0.2, 40.0), (0.3, 0.99, 10.0)])

    def fake_evaluate(self, perplexity):
        def s(f1):
            return relation_scores([0, 1], [0, 1]).to_dict() | {"f1": f1}
        if not perplexity:
            return {"dev": s(0.5), "test": s(0.5)}
        dev, test, ppl = next(script)
        return {"dev": s(dev), "test": s(test), "lm": {"ppl": ppl}}

    monkeypatch.setattr(AlgorithmOne, "evaluate", fake_evaluate)
    result = run_pretraining(tiny_args(world, tmp_path / "run", cache_dir, epochs=3))
    assert result.best_epoch == 2
    selection = json.loads((tmp_path / "run" / "best" / "selection.json").read_text())
    assert selection["epoch"] == 2
    best = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    epoch2 = load_file(str(tmp_path / "run" / "epoch-2" / "model.safetensors"))
    assert all(torch.equal(best[k], epoch2[k]) for k in best)


def test_text_only_ablation_runs(world, cache_dir, tmp_path):
    steps = []  # a step callback sees every update of Algorithm 1, in order (the kill hook is one)
    result = run_pretraining(tiny_args(world, tmp_path / "run", cache_dir, use_image=False, epochs=1),
                             callbacks=[lambda progress: steps.append(progress.position.global_step)])
    assert steps and steps == list(range(1, len(steps) + 1))
    row = read_metrics(tmp_path / "run" / "metrics.tsv")[0]
    assert row["FINETUNED_DEV_F1"] == "-" and float(row["HELDOUT_PPL"]) > 1
    assert not (tmp_path / "run" / "teacher").exists() and result.best_epoch == 1


# -- bad input: a clear PretrainError before any training -------------------------------------------------------


def _relation_file(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    path.write_text("text\timage\timage_adds\n" + "".join(f"{t}\t{i}\t{y}\n" for t, i, y in rows), encoding="utf-8")
    return path


def _data_args(world, tmp_path, cache_dir, relation, unlabelled=None, **changes):
    args = tiny_args(world, tmp_path / "out", cache_dir, **changes)
    args.relation_data, args.unlabelled = str(relation), str(unlabelled or world.unlabelled_file)
    args.image_dir = str(world.root)
    return args


@pytest.mark.parametrize("case", ["empty", "missing", "directory", "single_class", "images_missing",
                                  "unlabelled_empty", "unlabelled_images_missing", "threshold_one"])
def test_bad_input_fails_before_training(case, world, cache_dir, tmp_path, no_training):
    good = [(f"look at {w} today", f"images/person_00{i % 4}.png", i % 2) for i, w in enumerate("abcdefghij")]
    relation, unlabelled, expect, changes = tmp_path / "rel.tsv", None, None, {}
    if case == "empty":
        relation.write_text("", encoding="utf-8")
        expect = "rel.tsv"
    elif case == "missing":
        relation = tmp_path / "nope.tsv"
        expect = "nope.tsv"
    elif case == "directory":
        relation = tmp_path
        expect = str(tmp_path)
    elif case == "single_class":
        _relation_file(relation, [(t, i, 1) for t, i, _ in good])
        expect = "single class"
    elif case == "images_missing":
        _relation_file(relation, [(t, "images/gone.png", y) for t, _, y in good])
        expect = "every image"
    else:
        _relation_file(relation, good)
        if case == "unlabelled_empty":
            unlabelled = tmp_path / "u.jsonl"
            unlabelled.write_text("", encoding="utf-8")
            expect = "u.jsonl"
        elif case == "unlabelled_images_missing":
            unlabelled = tmp_path / "u.jsonl"
            unlabelled.write_text('{"text": "hello there", "image": "gone.png"}\n' * 5, encoding="utf-8")
            expect = "every image"
        else:
            changes, expect = {"threshold": 1.0}, "keeps nothing"
    with pytest.raises(PretrainError, match=expect.replace("(", r"\(")):
        run_pretraining(_data_args(world, tmp_path, cache_dir, relation, unlabelled, **changes))


def test_threshold_that_keeps_nothing_stops_before_algorithm_one(world, cache_dir, tmp_path, monkeypatch):
    def fail(*_args, **_kwargs):
        raise AssertionError("Algorithm 1 started although no pseudo label was kept")

    monkeypatch.setattr(trainer_module, "AlgorithmOne", fail)
    with pytest.raises(PretrainError, match="keeps none of the 300 unlabelled pairs.*lower --threshold"):
        run_pretraining(tiny_args(world, tmp_path / "out", cache_dir, threshold=0.9999999))
    assert not (tmp_path / "out" / "pseudo_labelled.tsv").exists()


# -- exact resume after a real kill ----------------------------------------------------------------------------


def _cli(args: list[str], env_extra: dict[str, str] | None = None, torchrun: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env_extra or {}))
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               "-m", "flair_riva.pretrain", *args]
    else:
        cmd = [sys.executable, "-m", "flair_riva.pretrain", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=str(REPO))


def _assert_same_run(a: Path, b: Path, atol: float) -> None:
    rows_a, rows_b = read_metrics(a / "metrics.tsv"), read_metrics(b / "metrics.tsv")
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        for col in METRIC_COLUMNS:
            if col in TIMING_COLUMNS:
                continue
            if ra[col] == "-" or rb[col] == "-":
                assert ra[col] == rb[col], col
            else:
                # perplexities are in the hundreds here: 4 decimals of them are compared relatively
                assert float(ra[col]) == pytest.approx(float(rb[col]), rel=1e-6, abs=max(atol, 2e-4)), (col, ra, rb)
    wa = load_file(str(a / "final" / "model.safetensors"))
    wb = load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_kill_and_resume_ends_where_an_uninterrupted_run_ends(world, cache_dir, tmp_path):
    common = ["--demo-dir", str(world.root), "--feature-cache", str(cache_dir), "--checkpoint-every", "3",
              "--dropout", "0.5", *TINY_CLI]
    full, killed = tmp_path / "full", tmp_path / "killed"
    done = _cli(["--output", str(full), *common])
    assert done.returncode == 0, done.stderr[-3000:]
    kept = json.loads((full / "run_state.json").read_text())["pseudo"]["kept"]
    pseudo_batches = -(-len(heldout_split(kept, 0.05, seed=1)[0]) // 16)
    steps_epoch1 = int(load_state(full / "epoch-1" / "trainer_state.pt")["position"]["global_step"])
    kill_at = steps_epoch1 + pseudo_batches + 1            # epoch 2, first batch of the labelled pass
    crashed = _cli(["--output", str(killed), *common], {trainer_module.KILL_ENV: str(kill_at)})
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    assert (killed / "checkpoint" / "trainer_state.pt").is_file() and not (killed / "final").exists()
    resumed = _cli(["--output", str(killed), "--resume", *common])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log_text = (killed / "training.log").read_text(encoding="utf-8")
    assert "stage 1 done before" in log_text and "stage 2 done before" in log_text
    assert f"resuming from {killed / 'checkpoint'}: epoch 2" in log_text
    assert log_text.count("stage 0: vocabulary") == 1, "the resumed run appends to the log of the killed one"
    _assert_same_run(full, killed, atol=1e-6)


@pytest.mark.slow
def test_two_process_gloo_ddp_matches_one_process(world, cache_dir, tmp_path):
    # The per-feature standardisation uses batch statistics in training (as BatchNorm without
    # SyncBatchNorm): each rank's half batch gives other statistics. The exact equivalence of the
    # distributed loop is checked on the batch-independent path (per-vector norm, paper-mode start input,
    # no gate dropout, whose random draws differ per rank).
    common = ["--demo-dir", str(world.root), "--feature-cache", str(cache_dir), "--dropout", "0",
              "--checkpoint-every", "0", "--visual-norm", "layer", "--vlcn-visual", "paper", "--gate-dropout", "0",
              *TINY_CLI]
    single = _cli(["--output", str(tmp_path / "one"), *common])
    assert single.returncode == 0, single.stderr[-3000:]
    double = _cli(["--output", str(tmp_path / "two"), *common], torchrun=2)
    assert double.returncode == 0, (double.stdout[-3000:], double.stderr[-3000:])
    assert "distributed run: 2 processes, backend gloo" in (tmp_path / "two" / "training.log").read_text()
    _assert_same_run(tmp_path / "one", tmp_path / "two", atol=1e-4)


# -- hostile files and bad options (issue 11) -------------------------------------------------------------------


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _base_cli(world, out, cache_dir) -> list[str]:
    return ["--output", str(out), "--demo-dir", str(world.root), "--feature-cache", str(cache_dir), *TINY_CLI]


def test_pickled_backbone_weights_error_is_one_line(world, cache_dir, tmp_path, no_training, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Payload(str(marker))}, evil)
    base = _base_cli(world, tmp_path / "out", cache_dir)
    base[base.index("--backbone-weights") + 1] = str(evil)
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "evil.pth" in err and not marker.exists()


def test_pickled_word_vectors_are_refused_by_the_pretrainer(world, cache_dir, tmp_path, no_training, capsys):
    import pickle

    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.kv"
    evil.write_bytes(pickle.dumps(_Payload(str(marker))))
    assert main([*_base_cli(world, tmp_path / "out", cache_dir), "--word-vectors", str(evil)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "convert_vectors" in err, err
    assert not marker.exists()


@pytest.mark.parametrize("option", [["--lr", "-1"], ["--lr", "nan"], ["--word-dim", "0"], ["--rgn-layers", "0"],
                                    ["--vlcn-hidden-size", "0"], ["--num-heads", "0"], ["--backbone-lr", "-1"],
                                    ["--clip", "-1"], ["--patience", "-1"], ["--dropout", "1.5"], ["--seed", "-1"]])
def test_bad_numeric_options_exit_2_before_writing(option, world, cache_dir, tmp_path, no_training, capsys):
    out = tmp_path / "out"
    assert main([*_base_cli(world, out, cache_dir), *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {option[0]} ") and err.count("\n") == 1, err
    assert not out.exists(), "nothing may be written for a bad option"


def test_relation_images_must_be_images_and_fail_early(world, cache_dir, tmp_path, no_training):
    """Rows pointing at system files pass an existence check; they must fail as unusable, before any write."""
    (tmp_path / "notes.jpg").write_text("not a picture")
    hostile = ["/etc/passwd", "/proc/self/environ", "~/.bashrc", "notes.jpg", "../../../../etc/passwd"]
    rows = [(f"look at {w} today", hostile[i % len(hostile)], i % 2) for i, w in enumerate("abcdefghij")]
    relation = _relation_file(tmp_path / "rel.tsv", rows)
    args = _data_args(world, tmp_path, cache_dir, relation)
    args.image_dir = str(tmp_path)
    with pytest.raises(PretrainError, match=r"every image of the relation data .* is unusable: 10 pairs") as info:
        run_pretraining(args)
    assert "corrupt" in str(info.value) and "no path" in str(info.value)  # ../ escapes the image folder: no path
    assert not (tmp_path / "out").exists(), "bad input must not leave a run folder"


def test_a_run_that_failed_on_its_data_does_not_block_the_corrected_rerun(world, cache_dir, tmp_path, no_training):
    good = [(f"look at {w} today", f"images/person_00{i % 4}.png", i % 2) for i, w in enumerate("abcdefghij")]
    relation = _relation_file(tmp_path / "rel.tsv", good)
    unlabelled = tmp_path / "u.jsonl"
    unlabelled.write_text('{"text": "hello there", "image": "/etc/passwd"}\n' * 5, encoding="utf-8")
    args = _data_args(world, tmp_path, cache_dir, relation, unlabelled)
    with pytest.raises(PretrainError, match=r"every image of the 5 unlabelled pairs .* unusable \(5 corrupt"):
        run_pretraining(args)
    unlabelled.write_text('{"text": "hello there", "image": "images/person_000.png"}\n' * 5, encoding="utf-8")
    with pytest.raises(AssertionError, match="training started"):  # the same command now gets to training
        run_pretraining(args)
    assert (tmp_path / "out" / "vocab.json").is_file()


def test_unusable_feature_cache_warns_and_computes(world, tmp_path):
    from flair_riva.pretrain.trainer import Pretrainer

    blocker = tmp_path / "file"
    blocker.write_text("x")
    pretrainer = Pretrainer(tiny_args(world, tmp_path / "out", blocker / "cache"), DistContext())
    featurizer = pretrainer.setup().featurizer()
    assert featurizer.cache is None
    features = featurizer([str(world.root / "images" / "person_000.png")])
    assert bool(features.has_image[0])


def test_teacher_is_reused_across_runs_and_a_mismatch_is_refused(demo_run, world, cache_dir, tmp_path, capsys):
    """--teacher OTHER_RUN/teacher (the -RGN ablation reuses the image model's teacher): same test scores."""
    out = tmp_path / "nogate"
    base = ["--demo-dir", str(world.root), "--feature-cache", str(cache_dir), *TINY_CLI]
    assert main(["--output", str(out), "--no-gate", "--teacher", str(demo_run / "teacher"), *base]) == 0
    assert "stage 1: reusing the teacher" in (out / "training.log").read_text(encoding="utf-8")
    first, reused = read_metrics(demo_run / "metrics.tsv")[0], read_metrics(out / "metrics.tsv")[0]
    assert first["TEACHER_TEST_F1"] == reused["TEACHER_TEST_F1"]
    assert main(["--output", str(tmp_path / "bad"), "--teacher", str(demo_run / "teacher"), *base,
                 "--rgn-hidden-size", "16"]) == 2
    assert "does not fit this run's model" in capsys.readouterr().err


def test_a_teacher_of_another_seed_is_refused(demo_run, world, cache_dir, tmp_path, capsys):
    """A teacher of another --seed was trained on another split (its training pairs would be scored as test
    pairs) and, with a random-init backbone, on other features: reusing it gave test F1 3.6 instead of 85."""

    base = ["--demo-dir", str(world.root), "--feature-cache", str(cache_dir), *TINY_CLI, "--seed", "7"]
    assert main(["--output", str(tmp_path / "other-seed"), "--teacher", str(demo_run / "teacher"), *base]) == 2
    err = capsys.readouterr().err
    assert "another split" in err and "seed" in err
    alone = tmp_path / "copied-teacher"  # no run_args.json beside it: the backbone still tells
    shutil.copytree(demo_run / "teacher", alone)
    assert main(["--output", str(tmp_path / "other-seed-2"), "--teacher", str(alone), *base]) == 2
    assert "another frozen backbone" in capsys.readouterr().err


def test_word_vectors_widen_the_input_vocabulary_are_frozen_and_stored_once(world, cache_dir, tmp_path):
    """Issue 10: every word the vectors know is an input word (not a softmax class), the vectors are frozen
    and every model folder of the run shares one vectors file; the <unk> rate of the text is logged."""
    from flair_riva.model import VECTORS_FILE, RivaModel

    words = ["the", "a", "to", "kardashian", "cleveland"]  # the last two never occur in the demo world
    glove = tmp_path / "vectors.txt"
    glove.write_text("".join(f"{w} " + " ".join(f"{(i + j) / 10:.1f}" for j in range(16)) + "\n"
                             for i, w in enumerate(words)), encoding="utf-8")
    out = tmp_path / "run"
    run_pretraining(tiny_args(world, out, cache_dir, use_image=False, epochs=1, word_dim=None,
                              word_vectors=str(glove)))
    assert "<unk> in the pretraining text" in (out / "training.log").read_text(encoding="utf-8")
    model = RivaModel.load(out / "final")
    assert model.config.freeze_word_vectors and not model.token_encoder.word_embedding.weight.requires_grad
    assert model.vocab.word_id("Kardashian") >= model.vocab.output_size > 0
    inodes = {p.stat().st_ino for p in out.glob(f"*/{VECTORS_FILE}")}
    assert len(list(out.glob(f"*/{VECTORS_FILE}"))) >= 2 and len(inodes) == 1
