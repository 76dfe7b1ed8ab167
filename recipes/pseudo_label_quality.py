"""How good are a pretraining run's pseudo-labels, and what would the student do with the true ones?

Stage 2 of the pretrainer keeps the unlabelled pairs whose teacher score exceeds ``--threshold`` (§3.1) and
Algorithm 1 trains the student's RGN on those labels (Eq. 2). On the demo world the true relation of every
unlabelled pair is known (:meth:`flair_riva.demo.DemoWorld.unlabelled_truth` replays the generator), so this
script scores a run's ``pseudo_labelled.tsv`` against it:

* accuracy of the kept pairs, per pseudo-label and at stricter thresholds (what a higher ``--threshold``
  would keep);
* the errors by cell (true relation, whether the text reveals the entity's type, the image's kind):
  errors that gather in a few cells are systematic, and a student trained on them learns them.

``--true-labels OUT`` writes the control the README's "Table 3 on the demo world" uses: a copy of the run's
stages 0-2 (arguments, state, vocabulary, teacher) whose ``pseudo_labelled.tsv`` carries the true labels of
the same pairs, so that ``python -m flair_riva.pretrain ... --output OUT --resume`` (the run's own arguments)
trains the same student, with the same held-out part and seeds, on true labels instead of the teacher's.

Usage: ``python recipes/pseudo_label_quality.py --run RUN [--true-labels OUT]`` (the world is the run's
``--demo-dir``, or ``--demo-dir``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

from flair_riva.demo import DemoWorld, PairTruth, generate_demo_world
from flair_riva.pairs import RelationPair, read_pseudo_labelled, write_pseudo_labelled
from flair_riva.pretrain.run_folder import PSEUDO_FILE, RUN_ARGS_FILE, RUN_STATE_FILE, VOCAB_FILE, read_run_args

#: What --true-labels copies besides the pseudo-labels: everything stage 3 reads from stages 0-2.
STAGE_FILES = (RUN_ARGS_FILE, RUN_STATE_FILE, VOCAB_FILE, "teacher")


def world_of(run: Path, demo_dir: Path | None) -> DemoWorld:
    """The demo world the run was pretrained on (its ``--demo-dir``), reused as it is on disk."""
    if demo_dir is None:
        args = read_run_args(run) or {}
        if not args.get("demo_dir"):
            raise SystemExit(f"{run} was not pretrained on a demo world (no demo_dir in run_args.json): "
                             "pass --demo-dir")
        demo_dir = Path(args["demo_dir"])
    manifest = json.loads((demo_dir / "manifest.json").read_text(encoding="utf-8"))
    return generate_demo_world(demo_dir, seed=manifest["seed"], scale=manifest["scale"])


def truth_of(pairs: list[RelationPair], truth: dict[tuple[str, str], PairTruth]) -> list[PairTruth]:
    """The true relation of each pseudo-labelled pair (matched on text and image file name)."""
    found = []
    for i, pair in enumerate(pairs):
        key = (pair.text, Path(str(pair.image)).name)
        if key not in truth:
            raise SystemExit(f"pseudo-labelled pair {i + 1} is not an unlabelled pair of this world: {key}")
        found.append(truth[key])
    return found


def report(pairs: list[RelationPair], truth: list[PairTruth], thresholds: list[float], cells: int) -> str:
    """Markdown: accuracy overall, per pseudo-label, at stricter thresholds, and the most frequent error cells."""
    right = [p.label == t.image_adds for p, t in zip(pairs, truth)]
    lines = [f"pseudo-labelled pairs: {len(pairs)}, correct {sum(right)} ({100 * sum(right) / len(pairs):.1f} %)",
             "", "| pseudo-label | pairs | correct (%) |", "|---|---:|---:|"]
    for label, name in ((1, "image adds"), (0, "image doesn't add")):
        idx = [i for i, p in enumerate(pairs) if p.label == label]
        lines.append(f"| {name} | {len(idx)} | {100 * sum(right[i] for i in idx) / max(len(idx), 1):.1f} |")
    lines += ["", "| kept if the teacher's score exceeds | pairs | correct (%) |", "|---:|---:|---:|"]
    for th in thresholds:
        idx = [i for i, p in enumerate(pairs) if p.score is not None and p.score > th]
        lines.append(f"| {th:g} | {len(idx)} | {100 * sum(right[i] for i in idx) / max(len(idx), 1):.1f} |")
    errors = Counter((t.image_adds, t.context, t.image_kind) for t, ok in zip(truth, right) if not ok)
    lines += ["", f"errors by cell ({sum(errors.values())} in all; the {cells} most frequent):", "",
              "| true relation | text context | image kind | errors |", "|---|---|---|---:|"]
    for (adds, context, kind), n in errors.most_common(cells):
        lines.append(f"| {'adds' if adds else 'does not add'} | {context} | {kind} | {n} |")
    return "\n".join(lines)


def write_true_labels(run: Path, out: Path, pairs: list[RelationPair], truth: list[PairTruth]) -> None:
    """``out``: the run's stage 0-2 files, with the pseudo-labels replaced by the true labels (same order)."""
    if out.exists():
        raise SystemExit(f"{out} exists: choose a new folder")
    out.mkdir(parents=True)
    for name in STAGE_FILES:
        src = run / name
        if not src.exists():
            raise SystemExit(f"{run} has no {name}: it has not finished stages 0-2")
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, out / name)
    write_pseudo_labelled(out / PSEUDO_FILE, (dataclasses.replace(p, label=t.image_adds)
                                              for p, t in zip(pairs, truth)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a pretraining run folder (with pseudo_labelled.tsv)")
    parser.add_argument("--demo-dir", type=Path, default=None, help="the demo world (default: the run's --demo-dir)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.8, 0.9, 0.95, 0.99])
    parser.add_argument("--cells", type=int, default=8, help="error cells to list (%(default)s)")
    parser.add_argument("--true-labels", type=Path, default=None, metavar="OUT",
                        help="write the run's stages 0-2 with true labels to OUT (the control run's folder)")
    args = parser.parse_args(argv)
    if not (args.run / PSEUDO_FILE).is_file():
        raise SystemExit(f"{args.run / PSEUDO_FILE} not found: pass a run folder that finished stage 2")
    world = world_of(args.run, args.demo_dir)
    pairs = read_pseudo_labelled(args.run / PSEUDO_FILE)
    truth = truth_of(pairs, world.unlabelled_truth())
    print(report(pairs, truth, args.thresholds, args.cells))
    if args.true_labels is not None:
        write_true_labels(args.run, args.true_labels, pairs, truth)
        print(f"\nwrote {args.true_labels}: continue it with the run's own arguments, --output {args.true_labels} "
              "and --resume")
    return 0


if __name__ == "__main__":
    sys.exit(main())
