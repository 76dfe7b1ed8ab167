"""Load the real Twitter-2015 and Twitter-2017 MNER corpora with flair-riva and print their counts.

    python recipes/check_corpora.py [--data-dir ../shared/data]

The corpora are read in place (they carry no licence and are never copied into the repository). The
script checks the tweet counts and the per-type ``B-`` entity counts against the figures of each
corpus's SOURCE.md, counts entities as Flair's spans give them (``B-`` plus orphan ``I-`` runs, the
lenient conlleval / seqeval-default convention), checks that Flair kept every token, and reports the
images found in ``tweet_images_sample``. Exit status 1 if a figure differs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from flair_riva.datasets import TWITTER2015, TWITTER2017

# tweets, B-PER, B-LOC, B-ORG, B-OTHER/MISC per split (SOURCE.md of each corpus)
EXPECTED = {
    "twitter2015": {"train": (4000, 2217, 2091, 927, 931), "dev": (1000, 552, 522, 247, 220),
                    "test": (3257, 1816, 1697, 839, 720)},
    "twitter2017": {"train": (3373, 2943, 731, 1674, 701), "dev": (723, 626, 173, 375, 150),
                    "test": (723, 621, 178, 395, 157)},
}
TYPES = ("PER", "LOC", "ORG", "OTHER/MISC")


def _other(counter: Counter) -> int:
    return counter.get("OTHER", 0) + counter.get("MISC", 0)


def check(name: str, cls, folder: Path, image_dir: Path) -> bool:
    start = time.perf_counter()
    corpus = cls(folder, image_dir=image_dir)
    seconds = time.perf_counter() - start
    ok = True
    print(f"\n{name}: {folder} (loaded in {seconds:.2f} s)")
    header = (f"{'split':5} {'tweets':>6} {'tokens':>6} | {'B-PER':>5} {'B-LOC':>5} {'B-ORG':>5} {'B-OTH':>5} "
              f"{'B- all':>6} | {'orphan I-':>9} | {'spans':>5} {'PER':>5} {'LOC':>5} {'ORG':>5} {'OTH':>5} | images")
    print(header)
    print("-" * len(header))
    for split in ("train", "dev", "test"):
        dataset = getattr(corpus, split)
        stats = corpus.split_stats[split]
        spans: Counter = Counter()
        flair_tokens = 0
        for sentence in dataset:
            flair_tokens += len(sentence)
            spans.update(span.tag for span in sentence.get_spans("ner"))
        b = stats.begin_tags
        row_b = (b["PER"], b["LOC"], b["ORG"], _other(b))
        images = corpus.image_stats[split]
        print(f"{split:5} {len(dataset):6d} {stats.tokens:6d} | {row_b[0]:5d} {row_b[1]:5d} {row_b[2]:5d} "
              f"{row_b[3]:5d} {stats.entities_b:6d} | {sum(stats.orphan_inside.values()):9d} | "
              f"{sum(spans.values()):5d} {spans['PER']:5d} {spans['LOC']:5d} {spans['ORG']:5d} {_other(spans):5d} | "
              f"{images['with_image']}/{images['tweets']}")
        expected = EXPECTED[name][split]
        if (len(dataset), *row_b) != expected:
            print(f"  MISMATCH {split}: expected tweets and B- counts {expected}, got {(len(dataset), *row_b)}")
            ok = False
        if flair_tokens != stats.tokens:
            print(f"  MISMATCH {split}: the file has {stats.tokens} tokens, Flair kept {flair_tokens}")
            ok = False
        if sum(spans.values()) != stats.entities_lenient:
            print(f"  MISMATCH {split}: {stats.entities_lenient} B- + orphan I- entities, Flair has "
                  f"{sum(spans.values())} spans")
            ok = False
    return ok


def main(argv: list[str] | None = None) -> int:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default, help=f"shared data folder (default {default})")
    args = parser.parse_args(argv)
    data = args.data_dir
    images = data / "tweet_images_sample"
    ok = check("twitter2015", TWITTER2015, data / "twitter2015", images / "twitter2015")
    ok &= check("twitter2017", TWITTER2017, data / "twitter2017_umt", images / "twitter2017")
    print("\nall figures match SOURCE.md" if ok else "\nSOME FIGURES DIFFER")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
