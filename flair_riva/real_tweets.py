"""The real-tweet experiment of issue 10, end to end: text vs + RIVA(text) on Twitter-2015 / Twitter-2017.

The command line is ``recipes/real_tweets.py`` (a thin script over :func:`main`).

For each target corpus (``--targets``, default every ``--corpus``):

1. **pretraining text** (``TARGET/pretrain-text.jsonl``): the target's train tweets plus every tweet of the
   other corpora, minus those whose normalised text is that of a target dev/test tweet
   (:func:`flair_riva.pretraining_text.disjoint_pretraining_text`; the counts go to ``pretrain-text.json``);
2. **RIVA(text)** pretrained on it (``python -m flair_riva.pretrain --no-image``) with ``--word-vectors``
   (frozen; the token encoder reads every word the vectors know), in ``TARGET/riva-text``;
3. the ``<unk>`` rates of every split (tokens, entity tokens) for the token encoder, **before** (the 0.1.0
   vocabulary: pretraining words only) and **after** (this model's vocabulary), ``TARGET/unk_rates.json``;
4. the entity-type probe on frozen vectors on dev (``python -m flair_riva.probe``), ``TARGET/probe.json``;
5. the taggers: ``text`` and ``+RIVA(text)`` x ``--seeds``, in ``--workers`` processes of one thread each
   (:mod:`flair_riva.experiments` protocol: one hidden size, Flair's dropouts, annealing on dev);
   each run writes ``TARGET/ner/runs/<config>-seed<N>/result.json``, and a run that has one is skipped.

``results.md`` (top folder) gathers everything: unk rates, dev / test F1 (Flair) / test F1 (seqeval strict),
mean ± std, epochs, wall time and the settings. Stages 1-4 are ``--stage pretrain``, stage 5 ``--stage
taggers``; ``--stage all`` runs both. Re-running resumes: finished models, probes and runs are reused.

    python recipes/real_tweets.py --output runs/real --workers 2 --seeds 3 \\
        --corpus twitter2015=../shared/data/twitter2015 --corpus twitter2017=../shared/data/twitter2017_umt \\
        --word-vectors ../shared/data/glove_6B_50d_mner_vocab_subset/glove.6B.50d.mner_subset.txt.gz \\
        [--targets twitter2017] [--stage pretrain|taggers|all] [--device cpu|cuda] [--time-budget MIN]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import runpy
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

log = logging.getLogger("flair")

CONFIGS = ["text", "+RIVA(text)"]
DEFAULT_CORPORA = {"twitter2015": "twitter2015", "twitter2017": "twitter2017_umt"}


def load_corpus(name: str, folder: Path):
    from flair_riva.datasets import TWITTER2015, TWITTER2017, TwitterMNERCorpus

    cls = {"twitter2015": TWITTER2015, "twitter2017": TWITTER2017}.get(name)
    return cls(folder) if cls is not None else TwitterMNERCorpus(folder, name=name)


def riva_dir(output: Path, target: str) -> Path:
    run = output / target / "riva-text"
    return run / "best" if (run / "best" / "config.json").is_file() else run / "final"


# -- stage "pretrain" -------------------------------------------------------------------------------------

def pretrain(ns: argparse.Namespace, corpora: dict, target: str) -> dict:
    """Stages 1-4 for one target corpus; returns its summary (also ``TARGET/pretrain.json``)."""
    from flair_riva.pretraining_text import (
        corpus_unk_rates,
        disjoint_pretraining_text,
        format_unk_rates,
        old_policy_vocabulary,
        read_vocabulary,
    )
    from flair_riva.text import load_word_vectors, tokenize_tweet

    folder = ns.output / target
    folder.mkdir(parents=True, exist_ok=True)
    text_file = folder / "pretrain-text.jsonl"
    counts = disjoint_pretraining_text(corpora[target], [c for n, c in corpora.items() if n != target], text_file)
    (folder / "pretrain-text.json").write_text(json.dumps(counts, indent=2), encoding="utf-8")
    run = folder / "riva-text"
    start = time.time()
    if not (run / "final" / "config.json").is_file():
        cmd = ["--no-image", "--unlabelled", str(text_file),
               "--output", str(run), "--epochs", str(ns.pretrain_epochs), "--optimizer", "adam", "--lr",
               str(ns.pretrain_lr), "--seed", "1", "--device", ns.device, "--no-progress"]
        if ns.word_vectors is not None:
            cmd += ["--word-vectors", str(ns.word_vectors)]
        cmd += ["--resume"] if (run / "run_args.json").is_file() else []
        run_module("flair_riva.pretrain", cmd + ns.pretrain_args, ns.pretrain_threads)
    pretrain_seconds = time.time() - start
    if (folder / "pretrain.json").is_file() and pretrain_seconds < 1:  # trained by an earlier invocation
        pretrain_seconds = json.loads((folder / "pretrain.json").read_text(encoding="utf-8"))["pretrain_seconds"]
    model = riva_dir(ns.output, target)
    texts = [tokenize_tweet(json.loads(line)["text"]) for line in text_file.read_text(encoding="utf-8").splitlines()]
    vectors = load_word_vectors(ns.word_vectors) if ns.word_vectors is not None else None
    before = corpus_unk_rates(old_policy_vocabulary(texts, vectors), corpora[target])
    after = corpus_unk_rates(read_vocabulary(model), corpora[target])
    log.info("%s <unk> before (0.1.0 vocabulary): %s", target, format_unk_rates(before))
    log.info("%s <unk> after (this model): %s", target, format_unk_rates(after))
    (folder / "unk_rates.json").write_text(json.dumps({"before": before, "after": after}, indent=2))
    probe = folder / "probe.json"
    if ns.probe and not probe.is_file():
        run_module("flair_riva.probe", ["--model", str(model), "--corpus", str(ns.corpus_dirs[target]),
                                        "--output", str(probe)], 1)
    summary = {"pretrain_text": counts, "model": str(model), "pretrain_seconds": round(pretrain_seconds, 1),
               "unk": {"before": before, "after": after}}
    (folder / "pretrain.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def run_module(module: str, argv: list[str], threads: int) -> None:
    """``python -m MODULE ARGV`` in this process (its command line is the stable interface; no second start-up
    of torch and flair), with ``threads`` intra-op threads; an exit status other than 0 is an error."""
    import torch

    log.info("running: python -m %s %s", module, " ".join(argv))
    saved_argv, saved_threads = sys.argv, torch.get_num_threads()
    sys.argv = [module] + argv
    torch.set_num_threads(threads)
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
        status = 0
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(saved_threads)
    if status != 0:
        raise SystemExit(f"python -m {module} failed with exit status {status}")


# -- stage "taggers" --------------------------------------------------------------------------------------

def tagger_job(spec: dict) -> dict | None:
    """One tagger run in a worker process (one thread); None when the time budget is spent before it starts."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import flair
    import torch

    from flair_riva.experiments import ExperimentArgs, train_one

    torch.set_num_threads(1)
    if spec["deadline"] is not None and time.time() > spec["deadline"]:
        return None
    flair.device = torch.device(spec["device"])
    args = ExperimentArgs(corpus=load_corpus(spec["target"], Path(spec["corpus_dir"])), **spec["args"])
    return train_one(spec["config"], spec["seed"], args, None)


def experiment_args(ns: argparse.Namespace, target: str) -> dict:
    """ExperimentArgs fields (except the corpus) of one target, picklable for the workers."""
    from flair_riva.experiments_cli import protocol_kwargs

    kwargs = protocol_kwargs(ns)
    kwargs.pop("seeds")
    return dict(name=target, output=ns.output / target / "ner", word_vectors=ns.word_vectors,
                riva_text=riva_dir(ns.output, target), configs=CONFIGS, seeds=ns.seeds, **kwargs)


def taggers(ns: argparse.Namespace, targets: list[str]) -> dict[str, list[dict]]:
    specs = []
    for target in targets:
        if not (riva_dir(ns.output, target) / "config.json").is_file():
            raise SystemExit(f"no RIVA(text) model for {target}: run --stage pretrain first")
        args = experiment_args(ns, target)
        specs += [{"target": target, "corpus_dir": str(ns.corpus_dirs[target]), "config": config, "seed": seed,
                   "device": ns.device, "deadline": args["deadline"], "args": args}
                  for seed in range(1, ns.seeds + 1) for config in CONFIGS]
    rows: dict[str, list[dict]] = {t: [] for t in targets}
    # fork (no second import of torch and flair) is safe on the CPU with one OpenMP thread; CUDA needs spawn
    method = "fork" if ns.device == "cpu" and ns.pretrain_threads == 1 and sys.platform == "linux" else "spawn"
    with ProcessPoolExecutor(max_workers=ns.workers, mp_context=get_context(method)) as pool:
        futures = [(spec, pool.submit(tagger_job, spec)) for spec in specs]
        for spec, future in futures:
            row = future.result()
            if row is None:
                log.warning("%s %s seed %d: not run (time budget)", spec["target"], spec["config"], spec["seed"])
            else:
                rows[spec["target"]].append(row)
    return rows


# -- results ----------------------------------------------------------------------------------------------

def write_summary(ns: argparse.Namespace, targets: list[str], seconds: float) -> str:
    from flair_riva.experiments import ExperimentArgs, protocol_line, run_name, write_results

    lines = ["# Real tweets: text vs + RIVA(text) (recipes/real_tweets.py)", "",
             f"Command: `{' '.join(sys.argv)}`; wall time of this invocation {seconds / 60:.1f} min; "
             f"{ns.workers} worker processes, one thread each, device {ns.device}.", ""]
    for target in targets:
        folder = ns.output / target
        lines += [f"## {target}", ""]
        if (folder / "pretrain.json").is_file():
            info = json.loads((folder / "pretrain.json").read_text(encoding="utf-8"))
            c = info["pretrain_text"]
            lines += [f"Pretraining text: {c['target_train']} train tweets of {target} + {c['other']} tweets of the "
                      f"other corpora, {c['dropped']} dropped as duplicates of a {target} dev/test tweet "
                      f"(normalised text), {c['written']} written. RIVA(text): {info['model']} (pretraining "
                      f"{info['pretrain_seconds'] / 60:.1f} min).", "",
                      "| split | tokens | <unk> before (0.1.0 vocabulary) | <unk> after | entity tokens | "
                      "entity <unk> before | entity <unk> after |", "|---|---:|---:|---:|---:|---:|---:|"]
            for split, a in info["unk"]["after"].items():
                b = info["unk"]["before"][split]
                lines.append(f"| {split} | {a['tokens']} | {b['unk']:.1f} % | {a['unk']:.1f} % | {a['entity_tokens']} "
                             f"| {b['entity_unk']:.1f} % | {a['entity_unk']:.1f} % |")
            lines.append("")
        if (folder / "probe.json").is_file():
            report = json.loads((folder / "probe.json").read_text(encoding="utf-8"))
            cells = ", ".join(f"{cond} {100 * a['all']:.1f}" for cond, a in report["accuracy"].items() if "all" in a)
            cells += f" (chance {100 * report['chance']['all']:.1f}, {report['counts']['all']} dev entities)"
            lines += [f"Entity-type probe on frozen RIVA(text) vectors, dev accuracy (%): {cells}.", ""]
        args = ExperimentArgs(corpus=None, **experiment_args(ns, target))
        rows = []
        for seed in range(1, ns.seeds + 1):
            for config in CONFIGS:
                path = args.output / "runs" / run_name(config, seed) / "result.json"
                if path.is_file():
                    rows.append(json.loads(path.read_text(encoding="utf-8")))
        if rows:
            table = write_results(rows, args, {}, {})
            lines += [line for line in table.splitlines()[2:] if not line.startswith("Tweets with")] + [""]
        else:
            lines += [f"No tagger finished yet. Protocol: {protocol_line(args)}.", ""]
    text = "\n".join(lines)
    (ns.output / "results.md").write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    # one OpenMP thread before torch starts (the taggers run one thread each, and forking is safe then)
    os.environ["OMP_NUM_THREADS"] = "1"
    from flair_riva.experiments_cli import add_protocol_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"),
                        help="folder of the default corpora (%(default)s)")
    parser.add_argument("--corpus", action="append", default=[], metavar="NAME=DIR",
                        help="a corpus (IMGID format); default: twitter2015 and twitter2017 under --data-dir")
    parser.add_argument("--targets", nargs="+", default=None, help="corpora to tag (default: every --corpus)")
    parser.add_argument("--word-vectors", type=Path, default=None)
    parser.add_argument("--stage", choices=("all", "pretrain", "taggers"), default="all")
    parser.add_argument("--workers", type=int, default=2, help="tagger processes, one thread each (%(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (%(default)s)")
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--pretrain-lr", type=float, default=1e-3, help="Adam learning rate (%(default)s)")
    parser.add_argument("--pretrain-threads", type=int, default=1)
    parser.add_argument("--pretrain-args", nargs=argparse.REMAINDER, default=[],
                        help="more options for python -m flair_riva.pretrain (last on the line)")
    parser.add_argument("--no-probe", dest="probe", action="store_false")
    add_protocol_arguments(parser)
    ns = parser.parse_args(argv)
    from flair_riva.scoring import require_seqeval

    require_seqeval()  # before minutes of pretraining
    logging.basicConfig(level=logging.INFO)
    given = dict(item.split("=", 1) for item in ns.corpus) or {
        name: str(ns.data_dir / sub) for name, sub in DEFAULT_CORPORA.items()}
    ns.corpus_dirs = {name: Path(path).resolve() for name, path in given.items()}
    ns.output = ns.output.resolve()
    ns.word_vectors = ns.word_vectors.resolve() if ns.word_vectors else None
    targets = ns.targets or list(ns.corpus_dirs)
    start = time.time()
    if ns.stage in ("all", "pretrain"):
        corpora = {name: load_corpus(name, path) for name, path in ns.corpus_dirs.items()}
        for target in targets:
            pretrain(ns, corpora, target)
    if ns.stage in ("all", "taggers"):
        taggers(ns, targets)
    print(write_summary(ns, targets, time.time() - start))
    return 0

