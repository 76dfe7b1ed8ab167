"""The quickstart: the whole RIVA pipeline on the built-in demo world, in minutes on a CPU.

1. generate the demo world (flair_riva.demo);
2. pretrain three RIVA models with ``python -m flair_riva.pretrain`` (teacher, pseudo-labels,
   Algorithm 1): RIVA (image+text), RIVA(text) (``--no-image``) and -RGN (``--no-gate``), two at a time;
3. the evidence that the image is used: each model's image gain and gate separation on its held-out
   pairs (``metrics.tsv``), the entity-type probe on frozen vectors (``python -m flair_riva.probe``: own,
   shuffled and no images), and the mean s_G on test tweets whose image adds or not;
4. train Flair's biLSTM-CRF on the demo MNER corpus for: text; + RIVA(text); + RIVA(image+text); -RGN
   (and with ``--configs`` the image+text ``[IMG]`` baseline), two at a time, and print the F1 table,
   with the test tweets split by whether their image adds (the demo world's ground truth);
5. draw one Table 7 figure.

Usage: ``python recipes/quickstart.py [--output runs/quickstart] [--seeds 1] [--jobs 2]``
The README's 3-seed figures come from ``--seeds 3 --epochs 10 --all-configs --probe riva riva-text
riva-nogate`` (mean ± std over the tagger seeds).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from flair_riva import experiments as mner
from flair_riva.datasets import TwitterMNERCorpus, read_relation_truth
from flair_riva.demo import default_demo_root, generate_demo_world
from flair_riva.pretrain.state import read_metrics

log = logging.getLogger("flair")

#: Pretraining settings of the quickstart: the demo world is small, so the RGN and VLCN are smaller than
#: Table 2's (which overfit the labelled demo pairs and take three times longer); see the README.
QUICK_MODEL = ["--rgn-hidden-size", "64", "--rgn-layers", "1", "--vlcn-hidden-size", "128", "--vlcn-layers", "1"]
MODELS = {"riva": [], "riva-text": ["--no-image"], "riva-nogate": ["--no-gate"]}
CONFIGS = ["text", "image+text", "+RIVA(text)", "+RIVA(image+text)", "-RGN"]
#: What the quickstart trains and probes by default (to stay within ~10 minutes on 2 cores); the README's
#: 3-seed figures add the image+text [IMG] baseline and the -RGN probe (--configs ... --probe ...).
QUICK_CONFIGS = ["text", "+RIVA(text)", "+RIVA(image+text)", "-RGN"]
QUICK_PROBES = ["riva", "riva-text"]


def _run_all(commands: list[list[str] | tuple[list[str], Path]], jobs: int) -> None:
    """Run commands, ``jobs`` at a time (each single-threaded); fail if any fails. A ``(command, path)``
    item starts only once ``path`` exists (written atomically by an earlier command)."""
    running: list[tuple[list[str], subprocess.Popen]] = []
    pending = [item if isinstance(item, tuple) else (item, None) for item in commands]
    while pending or running:
        ready = [item for item in pending if item[1] is None or item[1].exists()]
        while ready and len(running) < jobs:
            item = ready.pop(0)
            pending.remove(item)
            log.info("running: %s", " ".join(item[0]))
            running.append((item[0], subprocess.Popen(item[0])))
        if pending and not running and not ready:
            raise RuntimeError(f"waiting for {pending[0][1]}, which no running command writes")
        time.sleep(0.5)
        for item in list(running):
            cmd, proc = item
            if proc.poll() is not None:
                running.remove(item)
                if proc.returncode != 0:
                    for _, other in running:
                        other.kill()
                    raise subprocess.CalledProcessError(proc.returncode, cmd)


def pretrain_commands(world, output: Path, epochs: int, teacher_epochs: int) -> list:
    """``python -m flair_riva.pretrain`` on the demo world for each model not yet finished. The -RGN run
    reuses the image model's teacher (the same network on the same data), so it waits for it."""
    commands: list = []
    for name, extra in MODELS.items():
        if (output / name / "final" / "config.json").exists():
            log.info("reusing %s", output / name / "final")
            continue
        wait = None
        if name == "riva-nogate":
            wait = output / "riva" / "teacher"
            extra = extra + ["--teacher", str(wait)]
        commands.append(([sys.executable, "-m", "flair_riva.pretrain", "--demo-dir", str(world.root),
                         "--output", str(output / name), "--freeze-backbone", "--backbone-weights", "none",
                         "--feature-cache", str(world.root / "feature-cache"), "--overwrite", "--no-progress",
                         "--epochs", str(epochs), "--teacher-epochs", str(teacher_epochs)] + QUICK_MODEL + extra, wait))
    return commands


def probe_commands(world, output: Path, names: list[str]) -> list[list[str]]:
    """``python -m flair_riva.probe`` for each named model that has no probe.json yet."""
    return [[sys.executable, "-m", "flair_riva.probe", "--model", str(output / name / "final"),
             "--corpus", str(world.ner_dir), "--feature-cache", str(world.root / "feature-cache"),
             "--relation-truth", str(world.relation_truth_file), "--output", str(output / name / "probe.json")]
            for name in names if not (output / name / "probe.json").exists()]


def _tagger_job(config: str, seed: int, settings: dict) -> dict:
    """One tagger in a worker process (spawned: the corpus is read again there)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    exp = experiment_args(settings)
    return mner.train_one(config, seed, exp, settings["relevance"])


def experiment_args(settings: dict) -> mner.ExperimentArgs:
    world_root = Path(settings["world"])
    corpus = TwitterMNERCorpus(world_root / "ner", image_dir=world_root / "ner" / "images", name="demo-world")
    truth = read_relation_truth(world_root / "ner" / "relation_truth.tsv")
    models = Path(settings["models"])
    return mner.ExperimentArgs(
        corpus=corpus, name="demo world", output=Path(settings["output"]),
        riva=models / "riva" / "final", riva_text=models / "riva-text" / "final",
        riva_nogate=models / "riva-nogate" / "final", feature_cache=world_root / "feature-cache",
        configs=list(settings["configs"]), seeds=settings["seeds"], epochs=settings["epochs"], learning_rate=0.1,
        batch_size=settings["batch_size"], hidden_size=128,
        relation_truth=truth,
    )


def pretraining_evidence(output: Path) -> str:
    """Image gain, gate separation and Table 3's relation F1 of each model (last epoch of metrics.tsv)."""
    lines = ["| model | held-out perplexity | image gain (nats/token) | gate separation | relation test F1: "
             "teacher / after pseudo pass / after fine-tuning |", "|---|---:|---:|---:|---|"]
    for name in MODELS:
        rows = read_metrics(output / name / "metrics.tsv")
        last = rows[-1]
        lines.append(f"| {name} | {float(last['HELDOUT_PPL']):.2f} | {last['IMAGE_GAIN']} | "
                     f"{last['GATE_SEPARATION']} | {last['TEACHER_TEST_F1']} / {last['PSEUDO_TEST_F1']} / "
                     f"{last['FINETUNED_TEST_F1']} |")
    return "\n".join(lines)


def probe_table(output: Path) -> str:
    """One row per model and condition: accuracy on related text-ambiguous dev entities and on all."""
    lines = ["| vectors | dev entities, all | text-ambiguous, image adds | text-ambiguous, image doesn't add |",
             "|---|---:|---:|---:|"]
    for name in MODELS:
        if not (output / name / "probe.json").exists():
            continue
        report = json.loads((output / name / "probe.json").read_text(encoding="utf-8"))
        for condition, acc in report["accuracy"].items():
            cells = [acc.get(k) for k in ("all", "image adds, text-ambiguous", "image doesn't add, text-ambiguous")]
            lines.append(f"| {name}, {condition} images | " + " | ".join(
                "–" if c is None else f"{100 * c:.1f}" for c in cells) + " |")
    report = json.loads((output / "riva" / "probe.json").read_text(encoding="utf-8"))
    chance = report["chance"]
    lines.append("| chance (most frequent type) | " + " | ".join(
        f"{100 * chance[k]:.1f}" if k in chance else "–"
        for k in ("all", "image adds, text-ambiguous", "image doesn't add, text-ambiguous")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--demo-dir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=8, help="biLSTM-CRF epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="biLSTM-CRF mini-batch")
    parser.add_argument("--pretrain-epochs", type=int, default=6, help="epochs of Algorithm 1")
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time (one thread each)")
    parser.add_argument("--configs", nargs="+", default=QUICK_CONFIGS, choices=CONFIGS,
                        help="tagger configurations (%(default)s); -RGN must follow '--configs=' or use --all-configs")
    parser.add_argument("--all-configs", action="store_true", help=f"train every configuration: {CONFIGS}")
    parser.add_argument("--probe", nargs="+", default=QUICK_PROBES, choices=list(MODELS),
                        help="models to probe (%(default)s)")
    args = parser.parse_args(argv)
    if args.all_configs:
        args.configs = list(CONFIGS)
    # one intra-op thread per process: faster than two for these small LSTMs, and two processes use both cores
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses
    torch.set_num_threads(1)
    start = time.time()
    output = args.output.resolve()
    world = generate_demo_world(args.demo_dir or default_demo_root())
    _run_all(pretrain_commands(world, output, args.pretrain_epochs, args.teacher_epochs), args.jobs)
    pretrain_seconds = time.time() - start
    _run_all(probe_commands(world, output, args.probe), args.jobs)

    settings = {"world": str(world.root), "models": str(output), "output": str(output / "ner"),
                "configs": args.configs, "seeds": args.seeds, "epochs": args.epochs, "batch_size": args.batch_size}
    exp = experiment_args(settings)
    test = list(exp.corpus.test)
    relevance = mner.relevance_of(test, exp.riva, exp.feature_cache)
    settings["relevance"] = relevance
    truth = exp.relation_truth
    related = [r for s, r in zip(test, relevance) if truth.get(s.get_metadata("image_id")) == 1]
    unrelated = [r for s, r in zip(test, relevance) if truth.get(s.get_metadata("image_id")) == 0]
    gate = (f"mean s_G on test tweets whose image adds: {statistics.mean(related):.3f} (n={len(related)}); "
            f"whose image doesn't add: {statistics.mean(unrelated):.3f} (n={len(unrelated)}); "
            f"difference {statistics.mean(related) - statistics.mean(unrelated):.3f}")

    jobs = [(config, seed) for config in args.configs for seed in range(1, args.seeds + 1)]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_tagger_job, config, seed, settings) for config, seed in jobs]
        rows = [f.result() for f in futures]
    table = mner.write_results(rows, exp, {}, mner.image_coverage(exp.corpus))

    figure = output / "table7.png"
    try:
        from flair.models import SequenceTagger

        from flair_riva.visualize import draw_table7

        model_file = next(r["model"] for r in rows if r["config"] == "+RIVA(image+text)")
        tagger = SequenceTagger.load(model_file)
        sentence = next(s for s in test if truth.get(s.get_metadata("image_id")) == 1)
        sentence.clear_embeddings()
        tagger.predict(sentence, label_name="predicted")  # also sets riva_relevance / riva_attention
        draw_table7(sentence, figure)
    except Exception as exc:  # the figure is a bonus: report, don't fail the quickstart
        log.warning("could not draw the Table 7 figure: %s", exc)

    evidence = pretraining_evidence(output)
    probe = probe_table(output)
    summary = (f"## Pretraining (held-out pairs)\n\n{evidence}\n\n## Entity-type probe on frozen vectors "
               f"(dev accuracy, %)\n\n{probe}\n\n## The gate\n\n{gate}\n\n{table}\n")
    print(summary)
    print(f"Table 7 figure: {figure}")
    print(f"pretraining {pretrain_seconds:.0f} s, total {time.time() - start:.0f} s")
    (output / "quickstart.md").write_text(summary, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
