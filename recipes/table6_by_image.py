"""Table 6 on the demo world, one level finer: the tweets whose image doesn't add, split by what it shows.

An NER tweet of the demo world whose image doesn't add carries either an unrelated picture (food, a meme)
or a *misleading* one: a picture of another entity kind than its entity's (a person photo beside a place).
The paper's Table 6 claim, that the gate keeps such images from hurting, is about the second kind. This
script reads the taggers' test predictions of a quickstart or experiments output (``RUNS/<config>-seed<N>/
test.tsv``, Flair's ``token gold predicted`` lines) and the world's ``ner/relation_truth.tsv`` and prints
span F1 (as Flair decodes spans), mean ± std over the seeds, on three subsets of the test tweets: image adds;
doesn't add, misleading image; doesn't add, unrelated picture. Given ``--riva``, it adds that model's mean
s_G on each subset and the share of tweets with s_G > 0.5 (the gate opened where it should not, or not),
and Table 6 as the paper splits the test set (§4.5: "by classification of the RGN"): image adds where that
model's s_G >= 0.5, doesn't add where it is below, whatever the world's truth.

Usage: ``python recipes/table6_by_image.py --runs OUT/ner/runs --world DEMO_WORLD [--riva OUT/riva/final]``.
Several ``--runs`` folders (quickstart outputs of several ``--pretrain-seed``), each with its ``--riva`` model in
the same order, are pooled: mean ± std over every tagger run of every pretraining run.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

from flair_riva.datasets import TwitterMNERCorpus
from flair_riva.demo_tweets import TYPE_KIND
from flair_riva.experiments import mean_std
from flair_riva.scoring import bio_spans

SUBSETS = ("image adds", "doesn't add, misleading image", "doesn't add, unrelated picture")
RGN_SUBSETS = ("RGN: image adds", "RGN: image doesn't add")  # the paper's split, by s_G >= 0.5
ALL = "all test tweets"
IMG_TOKEN = "[IMG]"  # the image+text baseline's pseudo-token, not a word of the tweet


def subset_of(row: dict[str, str]) -> str:
    """The subset of a ``relation_truth.tsv`` row (image_adds, image_kind)."""
    if row["image_adds"] == "1":
        return SUBSETS[0]
    return SUBSETS[1] if row["image_kind"] in TYPE_KIND.values() else SUBSETS[2]


def read_predictions(path: Path) -> list[list[tuple[str, str, str]]]:
    """Flair's ``test.tsv``: one ``token gold predicted`` line per token, a blank line after each sentence."""
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                sentences.append(current)
            current = []
            continue
        token, gold, pred = line.rsplit(" ", 2)
        if token != IMG_TOKEN:
            current.append((token, gold, pred))
    if current:
        sentences.append(current)
    return sentences


@dataclass
class Run:
    """One tagger run's test predictions, each sentence matched to its test tweet (read once)."""

    config: str
    spans: list[tuple[str, set, set]]
    """(image id, gold spans, predicted spans) per test sentence."""


def read_run(run: Path, image_of: dict[tuple[str, ...], list[str]]) -> Run:
    """A run folder's ``test.tsv``, each predicted sentence matched to a test tweet by its tokens (tweets with
    the same tokens in file order), and its configuration's name as the tables print it (``result.json``;
    else the folder's)."""
    queues = {tokens: deque(ids) for tokens, ids in image_of.items()}
    spans = []
    for sentence in read_predictions(run / "test.tsv"):
        tokens = tuple(t for t, _, _ in sentence)
        if not queues.get(tokens):
            raise SystemExit(f"{run / 'test.tsv'}: not a test tweet of this world: {' '.join(tokens)}")
        spans.append((queues[tokens].popleft(), bio_spans([g for _, g, _ in sentence]),
                      bio_spans([p for _, _, p in sentence])))
    result = run / "result.json"
    config = json.loads(result.read_text())["config"] if result.is_file() else run.name.rsplit("-seed", 1)[0]
    return Run(config, spans)


def subset_f1(run: Run, subset: dict[str, str], names: tuple[str, ...]) -> dict[str, float]:
    """Span micro F1 of one tagger run on each subset (``subset``: image id -> one of ``names``; :data:`ALL`
    among ``names`` scores every tweet); NaN for a subset without tweets."""
    counts = {name: [0, 0, 0] for name in names}  # true positives, predicted, gold
    for image_id, gold, pred in run.spans:
        for name in (subset[image_id], ALL):
            if name in counts:
                c = counts[name]
                c[0] += len(gold & pred)
                c[1] += len(pred)
                c[2] += len(gold)
    return {name: 200 * tp / (p + g) if p + g else float("nan") for name, (tp, p, g) in counts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, nargs="+", required=True,
                        help="the taggers' run folders (OUT/ner/runs), one per pretraining run; pooled")
    parser.add_argument("--world", type=Path, required=True, help="the demo world (its ner/ folder is read)")
    parser.add_argument("--riva", type=Path, nargs="+", default=None,
                        help="the RIVA model whose s_G to report, one per --runs folder, in the same order")
    args = parser.parse_args(argv)
    if args.riva is not None and len(args.riva) != len(args.runs):
        parser.error(f"--riva names {len(args.riva)} models for {len(args.runs)} --runs folders: give one per folder")
    with open(args.world / "ner" / "relation_truth.tsv", encoding="utf-8", newline="") as handle:
        subset = {row["image_id"]: subset_of(row) for row in csv.DictReader(handle, delimiter="\t")}
    test = list(TwitterMNERCorpus(args.world / "ner").test)
    image_of: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for sentence in test:
        image_of[tuple(t.text for t in sentence)].append(sentence.get_metadata("image_id"))
    groups = []
    for folder in args.runs:
        runs = sorted(p for p in folder.iterdir() if (p / "test.tsv").is_file())
        if not runs:
            raise SystemExit(f"no run folder with a test.tsv under {folder}")
        groups.append([read_run(run, image_of) for run in runs])
    print_table([(runs, subset) for runs in groups], test, (ALL, *SUBSETS))
    if args.riva is not None:
        from flair_riva.experiments import relevance_of

        gates = [relevance_of(test, model, args.world / "feature-cache") for model in args.riva]
        print("\ns_G of " + ", ".join(map(str, args.riva)) + " (one value per model):\n\n"
              "| subset | mean s_G | share with s_G > 0.5 |\n|---|---:|---:|")
        for name in SUBSETS:
            values = [[g for s, g in zip(test, model) if subset[s.get_metadata("image_id")] == name] for model in gates]
            print(f"| {name} | " + " / ".join(f"{statistics.mean(v):.3f}" for v in values) + " | "
                  + " / ".join(f"{sum(g > 0.5 for g in v) / len(v):.3f}" for v in values) + " |")
        by_rgn = [{s.get_metadata("image_id"): RGN_SUBSETS[0] if g >= 0.5 else RGN_SUBSETS[1]
                   for s, g in zip(test, model)} for model in gates]
        print("\nTable 6 as the paper splits it, each folder's runs by its model's RGN (s_G >= 0.5: image adds):\n")
        print_table(list(zip(groups, by_rgn)), test, RGN_SUBSETS)
    return 0


def print_table(groups: list[tuple[list[Run], dict[str, str]]], test: list, names: tuple[str, ...]) -> None:
    """One markdown row per configuration: span F1, mean ± std over all its runs, on each subset of ``names``.
    ``groups``: (runs, image id -> subset), one per pretraining run; the subsets' sizes are given per group
    when they differ."""
    sizes = [[sum(name in (subset[s.get_metadata("image_id")], ALL) for s in test) for _, subset in groups]
             for name in names]
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    n_runs: Counter = Counter()
    for runs, subset in groups:
        for run in runs:
            n_runs[run.config] += 1
            for name, f1 in subset_f1(run, subset, names).items():
                scores[run.config][name].append(f1)  # NaN (no tweets in this group) is left out by mean_std
    print("| tagger | runs | " + " | ".join(
        f"{name} (n = {' / '.join(map(str, n)) if len(set(n)) > 1 else n[0]})" for name, n in zip(names, sizes)) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for config, by_subset in scores.items():
        print(f"| {config} | {n_runs[config]} | " + " | ".join(mean_std(by_subset[n]) for n in names) + " |")


if __name__ == "__main__":
    sys.exit(main())
