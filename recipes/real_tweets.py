"""The real-tweet experiment of issue 10, end to end: text vs + RIVA(text) on Twitter-2015 / Twitter-2017
(disjoint pretraining text, RIVA(text) with frozen word vectors, <unk> rates before and after, the probe,
text and + RIVA(text) taggers for N seeds in parallel processes, results.md). The implementation and every
option: ``flair_riva/real_tweets.py``; ``--help`` lists the options.

    python recipes/real_tweets.py --output runs/real --data-dir ../shared/data --workers 2 --seeds 3 \\
        --word-vectors ../shared/data/glove_6B_50d_mner_vocab_subset/glove.6B.50d.mner_subset.txt.gz \\
        [--targets twitter2017] [--stage pretrain|taggers|all] [--device cpu|cuda] [--time-budget MIN]
"""

from __future__ import annotations

import os
import sys

# one OpenMP thread before torch loads: the taggers run one thread each (and forking them is then safe)
os.environ["OMP_NUM_THREADS"] = "1"

from flair_riva.real_tweets import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
