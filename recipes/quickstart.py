"""The quickstart: the whole RIVA pipeline on the built-in demo world, in minutes on a CPU.

1. generate the demo world (flair_riva.demo);
2. pretrain three RIVA models with ``python -m flair_riva.pretrain`` (teacher, pseudo-labels,
   Algorithm 1): RIVA (image+text), RIVA(text) (``--no-image``) and -RGN (``--no-gate``);
3. train Flair's biLSTM-CRF on the demo MNER corpus for: text; + RIVA(text); + RIVA(image+text); -RGN;
4. print the F1 table, the mean s_G on related vs unrelated test tweets (the gate opens for
   related images and closes for unrelated ones), and draw one Table 7 figure.

Usage: ``python recipes/quickstart.py [--output runs/quickstart] [--epochs 10] [--pretrain-epochs N]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mner  # noqa: E402

from flair_riva.datasets import TwitterMNERCorpus  # noqa: E402
from flair_riva.demo import default_demo_root, generate_demo_world  # noqa: E402

log = logging.getLogger("flair")


#: Pretraining settings of the quickstart: the demo world is small, so the RGN and VLCN are smaller than
#: Table 2's (which overfit 432 labelled pairs and take three times longer); see the README.
QUICK_MODEL = ["--rgn-hidden-size", "64", "--rgn-layers", "1", "--vlcn-hidden-size", "128", "--vlcn-layers", "1",
               "--teacher-epochs", "10"]


def pretrain(world, output: Path, extra: list[str], epochs: int | None) -> Path:
    """Run the standalone pretrainer on the demo world; returns the model after the last epoch (final/).

    ``best/`` is chosen by relation F1 on a dev part of 48 labelled pairs, too few to choose an LM by:
    on the demo world it often picks epoch 1, whose language model has barely started to learn."""
    if (output / "final" / "config.json").exists():
        log.info("reusing %s", output / "final")
        return output / "final"
    cmd = [sys.executable, "-m", "flair_riva.pretrain", "--demo-dir", str(world.root), "--output", str(output),
           "--freeze-backbone", "--backbone-weights", "none", "--feature-cache", str(world.root / "feature-cache"),
           "--overwrite", "--no-progress"] + QUICK_MODEL + extra
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    log.info("running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    return output / "final"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--demo-dir", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=12, help="biLSTM-CRF epochs")
    parser.add_argument("--batch-size", type=int, default=16, help="biLSTM-CRF mini-batch")
    parser.add_argument("--pretrain-epochs", type=int, default=3, help="epochs of Algorithm 1")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args(argv)
    # one intra-op thread is faster than two for these small LSTMs on 2 cores (measured here: 7 min 48 s with
    # one thread beside another job, 9 min 10 s with two threads alone)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the pretraining subprocesses
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    start = time.time()
    world = generate_demo_world(args.demo_dir or default_demo_root())
    models = {
        "riva": pretrain(world, args.output / "riva", [], args.pretrain_epochs),
        "riva_text": pretrain(world, args.output / "riva-text", ["--no-image"], args.pretrain_epochs),
        "riva_nogate": pretrain(world, args.output / "riva-nogate", ["--no-gate"], args.pretrain_epochs),
    }
    pretrain_seconds = time.time() - start

    corpus = TwitterMNERCorpus(world.ner_dir, image_dir=world.ner_image_dir, name="demo-world")
    gold = {split: mner.read_gold_tags(world.ner_dir / f"{split}.txt") for split in ("dev", "test")}
    exp = mner.ExperimentArgs(
        corpus=corpus, name="demo world", output=args.output / "ner", gold_tags=gold,
        riva=models["riva"], riva_text=models["riva_text"], riva_nogate=models["riva_nogate"],
        feature_cache=world.root / "feature-cache", configs=["text", "+RIVA(text)", "+RIVA(image+text)", "-RGN"],
        seeds=args.seeds, epochs=args.epochs, learning_rate=0.1, batch_size=args.batch_size,
        hidden_sizes={"text": 128, "riva": 128, "bert": 128},
    )
    rows, table = mner.run_experiments(exp)

    # the gate: mean s_G of the RGN on test tweets whose image adds (ground truth of the demo world) or not
    truth_rows = [line.split("\t") for line in world.relation_truth_file.read_text(encoding="utf-8").splitlines()[1:]]
    truth = {row[0]: row[1] for row in truth_rows}
    test = list(corpus.test)
    relevance = mner.relevance_of(test, models["riva"], world.root / "feature-cache")
    related = [r for s, r in zip(test, relevance) if truth.get(s.get_metadata("image_id")) == "1"]
    unrelated = [r for s, r in zip(test, relevance) if truth.get(s.get_metadata("image_id")) == "0"]
    gate = (f"mean s_G on test tweets whose image adds: {statistics.mean(related):.3f} (n={len(related)}); "
            f"whose image doesn't add: {statistics.mean(unrelated):.3f} (n={len(unrelated)})")

    figure = args.output / "table7.png"
    try:
        from flair.models import SequenceTagger

        from flair_riva.visualize import draw_table7

        model_file = next(r["model"] for r in rows if r["config"] == "+RIVA(image+text)")
        tagger = SequenceTagger.load(model_file)
        sentence = next(s for s in test if truth.get(s.get_metadata("image_id")) == "1")
        sentence.clear_embeddings()  # vectors (and s_G) stored by earlier configurations' runs
        tagger.predict(sentence, label_name="predicted")  # also sets riva_relevance / riva_attention
        draw_table7(sentence, figure)
    except Exception as exc:  # the figure is a bonus: report, don't fail the quickstart
        log.warning("could not draw the Table 7 figure: %s", exc)

    print(table)
    print(gate)
    print(f"Table 7 figure: {figure}")
    print(f"pretraining {pretrain_seconds:.0f} s, total {time.time() - start:.0f} s")
    (args.output / "quickstart.md").write_text(f"{table}\n{gate}\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
