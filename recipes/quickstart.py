"""The quickstart: the whole RIVA pipeline on the built-in demo world, in minutes on a CPU.

1. generate the demo world (flair_riva.demo);
2. pretrain RIVA models with ``python -m flair_riva.pretrain`` (teacher, pseudo-labels, Algorithm 1):
   RIVA (image+text) and RIVA(text) (``--no-image``), and -RGN (``--no-gate``) when its tagger or probe is
   asked for, two at a time;
3. the evidence that the image is used: each model's image gain and gate separation on its held-out
   pairs (``metrics.tsv``), the entity-type probe on frozen vectors (``python -m flair_riva.probe``: own,
   shuffled and no images), and the mean s_G on test tweets whose image adds or not;
4. train Flair's biLSTM-CRF on the demo MNER corpus for: text; the image+text ``[IMG]`` baseline;
   + RIVA(text); + RIVA(image+text) (and with ``--all-configs`` -RGN), two at a time, and print the F1 table,
   with the test tweets split by whether their image adds (the demo world's ground truth);
5. draw one Table 7 figure.

Usage: ``python recipes/quickstart.py [--output runs/quickstart] [--seeds 1] [--jobs 2]``
The README's 3-seed figures come from ``--seeds 3 --epochs 10 --all-configs --probe riva riva-text
riva-nogate`` (mean ± std over the tagger seeds); ``--pretrain-seed N`` (one ``--output`` per N) varies the
pretraining seed too (``recipes/table6_by_image.py`` pools such outputs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch

from flair_riva import experiments as mner
from flair_riva.datasets import TwitterMNERCorpus, read_relation_truth
from flair_riva.demo import default_demo_root, generate_demo_world
from flair_riva.experiments_cli import add_configs_argument
from flair_riva.pretrain.run_folder import read_run_args
from flair_riva.pretrain.state import read_metrics
from flair_riva.scoring import require_seqeval

log = logging.getLogger("flair")

#: Pretraining settings of the quickstart: the demo world is small, so the RGN and VLCN are smaller than
#: Table 2's (which overfit the labelled demo pairs and take three times longer); see the README.
QUICK_MODEL = ["--rgn-hidden-size", "64", "--rgn-layers", "1", "--vlcn-hidden-size", "128", "--vlcn-layers", "1"]
MODELS = {"riva": [], "riva-text": ["--no-image"], "riva-nogate": ["--no-gate"]}
#: The pretrained model each tagger configuration stacks.
MODEL_OF = {"+RIVA(image+text)": "riva", "-RGN": "riva-nogate", "+RIVA(text)": "riva-text"}
#: ... and the model whose ResNet the image+text [IMG] baseline reads (the same frozen backbone as RIVA's).
BACKBONE_OF = {"image+text": "riva"}
CONFIGS = ["text", "image+text", "+RIVA(text)", "+RIVA(image+text)", "-RGN"]
#: What the quickstart trains and probes by default (to stay within ~10 minutes on 2 cores with 12 epochs of
#: Algorithm 1); the README's 3-seed figures add -RGN (--all-configs), which needs a third pretraining run.
QUICK_CONFIGS = ["text", "image+text", "+RIVA(text)", "+RIVA(image+text)"]
QUICK_PROBES = ["riva", "riva-text"]
#: Row labels of the probe's conditions (``flair_riva.probe``).
PROBE_CONDITIONS = {"own": "own images", "shuffled": "shuffled images", "no_image": "no image",
                    "gate_open": "own images, gate forced open (s_G = 1)"}


@dataclass
class Job:
    """One step of the quickstart: a command (a subprocess), a ``python -m`` module run or a tagger
    (configuration, seed) in a worker process. It starts once every path in ``needs`` exists (each written
    atomically by an earlier job)."""

    name: str
    needs: list[Path] = field(default_factory=list)
    command: list[str] | None = None
    #: ``[module, *args]``: ``python -m module args`` inside a worker, which imported torch and Flair once
    #: (~12 s of a 2-core machine per process) for all the jobs it runs
    module: list[str] | None = None
    tagger: tuple[str, int] | None = None


def _module_job(module: list[str]) -> None:
    """``python -m module args`` in this worker: the module runs as ``__main__`` with ``sys.argv`` set."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    saved = sys.argv
    sys.argv = [module[0], *module[1:]]
    try:
        runpy.run_module(module[0], run_name="__main__", alter_sys=True)
    except SystemExit as done:
        if done.code not in (None, 0):
            raise subprocess.CalledProcessError(done.code if isinstance(done.code, int) else 1,
                                                ["python", "-m", *module]) from None
    finally:
        sys.argv = saved


def run_jobs(jobs: list[Job], workers: int, settings: dict) -> list[dict]:
    """Run ``jobs`` ``workers`` at a time (one thread each), each as soon as its inputs exist, earlier jobs
    of the list first; returns the taggers' result rows. The first failure stops everything."""
    rows: list[dict] = []
    pending, running = list(jobs), []
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        try:
            while pending or running:
                for job in [j for j in pending if all(p.exists() for p in j.needs)]:
                    if len(running) >= workers:
                        break
                    pending.remove(job)
                    log.info("starting %s", job.name)
                    if job.command is not None:
                        handle = subprocess.Popen(job.command)
                    elif job.module is not None:
                        handle = pool.submit(_module_job, job.module)
                    else:
                        handle = pool.submit(_tagger_job, *job.tagger, settings)
                    running.append((job, handle))
                if pending and not running:
                    raise RuntimeError(f"{pending[0].name} waits for {pending[0].needs}, which no job writes")
                time.sleep(0.5)
                for item in list(running):
                    job, handle = item
                    if isinstance(handle, subprocess.Popen):
                        if handle.poll() is None:
                            continue
                        if handle.returncode != 0:
                            raise subprocess.CalledProcessError(handle.returncode, job.command)
                    elif not handle.done():
                        continue
                    elif job.tagger is not None:
                        rows.append(handle.result())
                    else:
                        handle.result()  # raises what the module raised
                    running.remove(item)
                    log.info("finished %s", job.name)
        finally:
            for _, handle in running:
                if isinstance(handle, subprocess.Popen) and handle.poll() is None:
                    handle.kill()
                elif not isinstance(handle, subprocess.Popen):
                    handle.cancel()
    return rows


def needed_models(configs: list[str], probes: list[str]) -> list[str]:
    """The models to pretrain: those the tagger configurations stack and the probed ones, and always RIVA
    (the gate and the Table 7 figure read it)."""
    wanted = {"riva", *probes, *(MODEL_OF[c] for c in configs if c in MODEL_OF)}
    return [name for name in MODELS if name in wanted]


def pretrain_jobs(world, output: Path, epochs: int, teacher_epochs: int, names: list[str] | None = None,
                  seed: int = 1) -> list[Job]:
    """``python -m flair_riva.pretrain --seed seed`` on the demo world for each model of ``names`` (default:
    all) not yet finished; a finished one pretrained with another seed is refused. The -RGN run reuses the
    image model's teacher (the same network on the same data), so it waits for it."""
    jobs: list[Job] = []
    for name, extra in MODELS.items():
        if names is not None and name not in names:
            continue
        if (output / name / "final" / "config.json").exists():
            used = (read_run_args(output / name) or {}).get("seed")
            if used is not None and used != seed:
                raise SystemExit(f"{output / name} was pretrained with seed {used}, not --pretrain-seed {seed}: "
                                 "use another --output, or the same --pretrain-seed")
            log.info("reusing %s", output / name / "final")
            continue
        needs = []
        if name == "riva-nogate":
            needs = [output / "riva" / "teacher" / "config.json"]
            extra = extra + ["--teacher", str(output / "riva" / "teacher")]
        jobs.append(Job(f"pretraining {name}", needs, module=[
            "flair_riva.pretrain", "--demo-dir", str(world.root), "--output", str(output / name),
            "--freeze-backbone", "--backbone-weights", "none", "--feature-cache", str(world.root / "feature-cache"),
            "--overwrite", "--no-progress", "--epochs", str(epochs), "--teacher-epochs", str(teacher_epochs),
            "--seed", str(seed), *QUICK_MODEL, *extra]))
    return jobs


def tagger_jobs(configs: list[str], seeds: int, output: Path) -> list[Job]:
    """One job per configuration and seed, waiting for the pretrained model it reads; those that stack RIVA
    vectors first (the longest, so they start first once their model exists)."""
    jobs = []
    for config in sorted(configs, key=lambda c: c not in MODEL_OF):
        model = MODEL_OF.get(config) or BACKBONE_OF.get(config)
        needs = [output / model / "final" / "config.json"] if model else []
        jobs += [Job(f"tagger {config} seed {seed}", needs, tagger=(config, seed)) for seed in range(1, seeds + 1)]
    return jobs


def probe_jobs(world, output: Path, names: list[str]) -> list[Job]:
    """``python -m flair_riva.probe`` for each named model that has no probe.json yet, once it is pretrained."""
    return [Job(f"probe {name}", [output / name / "final" / "config.json"], module=[
        "flair_riva.probe", "--model", str(output / name / "final"), "--corpus",
        str(world.ner_dir), "--feature-cache", str(world.root / "feature-cache"), "--relation-truth",
        str(world.relation_truth_file), "--output", str(output / name / "probe.json")])
        for name in names if not (output / name / "probe.json").exists()]


def _tagger_job(config: str, seed: int, settings: dict) -> dict:
    """One tagger in a worker process (spawned: the corpus is read again there)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    exp = experiment_args(settings)
    return mner.train_one(config, seed, exp, None)  # Table 6 split by the world's ground truth


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


def pretraining_evidence(output: Path, names: list[str]) -> str:
    """Image gain, gate separation and Table 3's relation F1 of each model (last epoch of metrics.tsv)."""
    lines = ["| model | held-out perplexity | image gain (nats/token) | gate separation | relation test F1 (%): "
             "teacher / after pseudo pass / after fine-tuning |", "|---|---:|---:|---:|---|"]

    def percent(value: str) -> str:  # metrics.tsv holds F1 in [0, 1], "-" where there is none
        try:
            return f"{100 * float(value):.2f}"
        except ValueError:
            return value

    for name in names:
        rows = read_metrics(output / name / "metrics.tsv")
        last = rows[-1]
        f1 = " / ".join(percent(last[k]) for k in ("TEACHER_TEST_F1", "PSEUDO_TEST_F1", "FINETUNED_TEST_F1"))
        lines.append(f"| {name} | {float(last['HELDOUT_PPL']):.2f} | {last['IMAGE_GAIN']} | "
                     f"{last['GATE_SEPARATION']} | {f1} |")
    return "\n".join(lines)


def probe_table(output: Path) -> str:
    """One row per model and condition: accuracy on related text-ambiguous dev entities and on all."""
    lines = ["| vectors | dev entities, all | text-ambiguous, image adds | text-ambiguous, image doesn't add |",
             "|---|---:|---:|---:|"]
    subsets = ("all", "image adds, text-ambiguous", "image doesn't add, text-ambiguous")

    def row(label: str, acc: dict) -> str:
        cells = ("–" if acc.get(k) is None else f"{100 * acc[k]:.1f}" for k in subsets)
        return f"| {label} | " + " | ".join(cells) + " |"

    for name in MODELS:
        if not (output / name / "probe.json").exists():
            continue
        report = json.loads((output / name / "probe.json").read_text(encoding="utf-8"))
        lines += [row(f"{name}, {PROBE_CONDITIONS[c]}", acc) for c, acc in report["accuracy"].items()
                  if c in PROBE_CONDITIONS and not (c == "gate_open" and name == "riva-nogate")]  # -RGN: = own
    report = json.loads((output / "riva" / "probe.json").read_text(encoding="utf-8"))
    if "text_bow" in report["accuracy"]:  # the same for every model: the text alone, no RIVA
        lines.append(row("no RIVA: bag of words of the tweet (text-only control)", report["accuracy"]["text_bow"]))
    chance = report["chance"]
    lines.append("| chance (most frequent type) | " + " | ".join(
        f"{100 * chance[k]:.1f}" if k in chance else "–"
        for k in ("all", "image adds, text-ambiguous", "image doesn't add, text-ambiguous")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--demo-dir", type=Path, default=None)
    parser.add_argument("--unseen-ner-contexts", action="store_true",
                        help="the demo world's variant whose NER dev/test tweets reveal types through contexts that "
                             "NER train never uses, only the pretraining pairs (flair_riva.demo; README)")
    parser.add_argument("--epochs", type=int, default=8, help="biLSTM-CRF epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="biLSTM-CRF mini-batch")
    parser.add_argument("--pretrain-epochs", type=int, default=12,
                        help="epochs of Algorithm 1 (at 6 the LM states carry the image type only weakly; README)")
    parser.add_argument("--teacher-epochs", type=int, default=40,
                        help="teacher epochs (at 20 some teachers stay near 80 F1 and the LM learns the image late)")
    parser.add_argument("--seeds", type=int, default=1, help="tagger seeds 1..N (%(default)s)")
    parser.add_argument("--pretrain-seed", type=int, default=1,
                        help="seed of RIVA's pretraining runs (%(default)s): the teacher, the pseudo-labels and the "
                             "student, so the gate, vary with it; one --output per pretraining seed")
    parser.add_argument("--jobs", type=int, default=2, help="processes at a time (one thread each)")
    add_configs_argument(parser, CONFIGS, f"tagger configurations (default {QUICK_CONFIGS}; -RGN may be among them)")
    parser.add_argument("--all-configs", action="store_true", help=f"train every configuration: {CONFIGS}")
    parser.add_argument("--probe", nargs="+", default=QUICK_PROBES, choices=list(MODELS),
                        help="models to probe (%(default)s)")
    args = parser.parse_args(argv)
    require_seqeval()  # before minutes of pretraining
    if args.all_configs:
        args.configs = list(CONFIGS)
    args.configs = list(dict.fromkeys(args.configs or QUICK_CONFIGS))  # in the order given, each once
    # one intra-op thread per process: faster than two for these small LSTMs, and two processes use both cores
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the subprocesses
    torch.set_num_threads(1)
    start = time.time()
    output = args.output.resolve()
    world = generate_demo_world(args.demo_dir or default_demo_root(args.unseen_ner_contexts),
                                unseen_ner_contexts=args.unseen_ner_contexts)
    settings = {"world": str(world.root), "models": str(output), "output": str(output / "ner"),
                "configs": args.configs, "seeds": args.seeds, "epochs": args.epochs, "batch_size": args.batch_size}
    # One queue for everything, in order of priority: each job starts as soon as its inputs exist, so the
    # text tagger and the probes fill the gaps while the longer pretraining runs go on.
    taggers = tagger_jobs(args.configs, args.seeds, output)
    # the probes last: they are short and fill the end, when one worker would otherwise wait for the other
    names = needed_models(args.configs, args.probe)
    jobs = (pretrain_jobs(world, output, args.pretrain_epochs, args.teacher_epochs, names, args.pretrain_seed)
            + [t for t in taggers if t.needs]
            + [t for t in taggers if not t.needs] + probe_jobs(world, output, args.probe))
    rows = run_jobs(jobs, args.jobs, settings)
    rows.sort(key=lambda r: (args.configs.index(r["config"]), r["seed"]))
    pretrain_seconds = max(0.0, max((output / n / "final" / "config.json").stat().st_mtime for n in names) - start)

    exp = experiment_args(settings)
    test = list(exp.corpus.test)
    relevance = mner.relevance_of(test, exp.riva, exp.feature_cache)
    truth = exp.relation_truth
    related = [r for s, r in zip(test, relevance) if truth.get(s.get_metadata("image_id")) == 1]
    unrelated = [r for s, r in zip(test, relevance) if truth.get(s.get_metadata("image_id")) == 0]
    gate = (f"mean s_G on test tweets whose image adds: {statistics.mean(related):.3f} (n={len(related)}); "
            f"whose image doesn't add: {statistics.mean(unrelated):.3f} (n={len(unrelated)}); "
            f"difference {statistics.mean(related) - statistics.mean(unrelated):.3f}")
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

    evidence = pretraining_evidence(output, names)
    probe = probe_table(output)
    summary = (f"## Pretraining (held-out pairs)\n\n{evidence}\n\n## Entity-type probe on frozen vectors "
               f"(dev accuracy, %)\n\n{probe}\n\n## The gate\n\n{gate}\n\n{table}\n")
    print(summary)
    print(f"Table 7 figure: {figure}")
    print(f"pretraining done after {pretrain_seconds:.0f} s, total {time.time() - start:.0f} s")
    (output / "quickstart.md").write_text(summary, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
