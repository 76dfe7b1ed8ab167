"""The quickstart's job queue: each job starts once its inputs exist, at most `workers` at a time, and the
first failure stops the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import quickstart  # noqa: E402


def _writer(path: Path, code: int = 0) -> list[str]:
    """A command that appends its name to a log, then writes ``path`` (or exits with ``code``)."""
    log = path.parent / "order.log"
    script = (f"import pathlib,sys,time; time.sleep(0.2); "
              f"pathlib.Path({str(log)!r}).open('a').write({path.name!r}+'\\n'); "
              f"sys.exit({code}) if {code} else pathlib.Path({str(path)!r}).write_text('x')")
    return [sys.executable, "-c", script]


def test_jobs_wait_for_their_inputs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    jobs = [quickstart.Job("c", [b], _writer(c)), quickstart.Job("b", [a], _writer(b)),
            quickstart.Job("a", [], _writer(a))]
    assert quickstart.run_jobs(jobs, workers=2, settings={}) == []
    assert (tmp_path / "order.log").read_text().split() == ["a", "b", "c"]


def test_a_failing_job_stops_the_queue(tmp_path):
    jobs = [quickstart.Job("bad", [], _writer(tmp_path / "bad", code=3)),
            quickstart.Job("never", [tmp_path / "bad"], _writer(tmp_path / "never"))]
    with pytest.raises(subprocess.CalledProcessError):
        quickstart.run_jobs(jobs, workers=1, settings={})
    assert not (tmp_path / "never").exists()


def test_a_job_whose_input_nobody_writes_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="waits for"):
        quickstart.run_jobs([quickstart.Job("orphan", [tmp_path / "missing"], _writer(tmp_path / "x"))], 2, {})


def test_only_the_models_the_taggers_and_probes_need_are_pretrained():
    assert quickstart.needed_models(quickstart.QUICK_CONFIGS, quickstart.QUICK_PROBES) == ["riva", "riva-text"]
    assert quickstart.needed_models(quickstart.CONFIGS, []) == ["riva", "riva-text", "riva-nogate"]
    assert quickstart.needed_models(["text"], ["riva-nogate"]) == ["riva", "riva-nogate"]


def test_module_jobs_run_in_the_workers_as_python_dash_m(tmp_path):
    """``Job(module=...)`` runs ``python -m`` inside a warm worker: its arguments reach the module, and a
    failing run stops the queue."""
    source = tmp_path / "a.txt"
    source.write_text("x")
    archive = tmp_path / "a.zip"
    jobs = [quickstart.Job("zip", [source], module=["zipfile", "-c", str(archive), str(source)]),
            quickstart.Job("list", [archive], module=["zipfile", "-l", str(archive)])]
    assert quickstart.run_jobs(jobs, workers=1, settings={}) == []
    assert archive.is_file()
    with pytest.raises(FileNotFoundError):  # what the module raised, raised by the queue
        quickstart.run_jobs([quickstart.Job("bad", [], module=["zipfile", "-t", str(tmp_path / "missing.zip")]),
                             quickstart.Job("never", [tmp_path / "nothing"], _writer(tmp_path / "never"))], 1, {})
    assert not (tmp_path / "never").exists()


def test_each_tagger_waits_for_the_model_it_reads(tmp_path):
    """The image+text [IMG] baseline reads RIVA's ResNet, so it waits for RIVA like + RIVA(image+text)."""
    jobs = {job.tagger: job for job in quickstart.tagger_jobs(quickstart.CONFIGS, 2, tmp_path)}
    assert len(jobs) == 2 * len(quickstart.CONFIGS)
    riva = [tmp_path / "riva" / "final" / "config.json"]
    assert jobs[("image+text", 1)].needs == riva == jobs[("+RIVA(image+text)", 2)].needs
    assert jobs[("+RIVA(text)", 1)].needs == [tmp_path / "riva-text" / "final" / "config.json"]
    assert jobs[("-RGN", 1)].needs == [tmp_path / "riva-nogate" / "final" / "config.json"]
    assert jobs[("text", 1)].needs == []
    order = [job.tagger[0] for job in quickstart.tagger_jobs(quickstart.CONFIGS, 1, tmp_path)]
    assert order.index("+RIVA(image+text)") < order.index("image+text")


def test_pretraining_evidence_prints_the_relation_f1_in_percent(tmp_path):
    columns = ["EPOCH", "HELDOUT_PPL", "IMAGE_GAIN", "GATE_SEPARATION", "TEACHER_TEST_F1", "PSEUDO_TEST_F1",
               "FINETUNED_TEST_F1"]
    rows = {"riva": ["1", "5.3123", "0.0915", "0.9659", "0.9372", "0.9261", "0.9469"],
            "riva-text": ["1", "6.01", "-", "-", "-", "-", "-"]}
    for name, values in rows.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.tsv").write_text("\t".join(columns) + "\n" + "\t".join(values) + "\n")
    table = quickstart.pretraining_evidence(tmp_path, ["riva", "riva-text"]).splitlines()
    assert table[2] == "| riva | 5.31 | 0.0915 | 0.9659 | 93.72 / 92.61 / 94.69 |"
    assert table[3] == "| riva-text | 6.01 | - | - | - / - / - |"


def test_pretraining_seed_is_passed_and_a_model_of_another_seed_is_refused(tmp_path):
    world = type("World", (), {"root": tmp_path / "world"})()
    jobs = quickstart.pretrain_jobs(world, tmp_path, 12, 40, ["riva", "riva-nogate"], seed=2)
    for job in jobs:
        assert job.module[job.module.index("--seed") + 1] == "2"
    (tmp_path / "riva" / "final").mkdir(parents=True)
    (tmp_path / "riva" / "final" / "config.json").write_text("{}")
    (tmp_path / "riva" / "run_args.json").write_text(json.dumps({"args": {"seed": 2}}))
    assert [job.name for job in quickstart.pretrain_jobs(world, tmp_path, 12, 40, ["riva"], seed=2)] == []
    with pytest.raises(SystemExit, match="pretrained with seed 2, not --pretrain-seed 1"):
        quickstart.pretrain_jobs(world, tmp_path, 12, 40, ["riva"], seed=1)


def test_probe_table_rows_per_model_and_condition(tmp_path):
    subsets = ("all", "image adds, text-ambiguous", "image doesn't add, text-ambiguous")
    accuracy = {c: dict(zip(subsets, values)) for c, values in
                {"own": (0.9, 0.95, 0.8), "shuffled": (0.7, 0.3, 0.8), "no_image": (0.7, 0.3, 0.8),
                 "gate_open": (0.91, 0.95, 0.85), "text_bow": (0.6, 0.2, 0.9)}.items()}
    for name in ("riva", "riva-nogate"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "probe.json").write_text(json.dumps(
            {"accuracy": accuracy, "chance": dict(zip(subsets, (0.34, 0.39, 0.35)))}))
    lines = quickstart.probe_table(tmp_path).splitlines()
    assert "| riva, own images, gate forced open (s_G = 1) | 91.0 | 95.0 | 85.0 |" in lines
    assert not any(line.startswith("| riva-nogate, own images, gate forced open") for line in lines)  # = own
    assert sum(line.startswith("| riva-nogate,") for line in lines) == 3
    assert lines[-2] == "| no RIVA: bag of words of the tweet (text-only control) | 60.0 | 20.0 | 90.0 |"
    assert lines[-1] == "| chance (most frequent type) | 34.0 | 39.0 | 35.0 |"
