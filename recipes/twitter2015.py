"""Twitter-2015 ("Fudan Univ.", Zhang et al. 2018): the paper's MNER experiments (Tables 4-6).

Example (real text of ../shared/data, GloVe 50d subset, RIVA(text) pretrained on the training tweets):

    python recipes/twitter2015.py ../shared/data/twitter2015 --image-dir IMAGES --output runs/tw15 \
        --word-vectors ../shared/data/glove_6B_50d_mner_vocab_subset/glove.6B.50d.mner_subset.txt.gz \
        --riva-text runs/riva-text-tw15/best --configs text +RIVA(text) --seeds 3

See ``flair_riva/experiments.py`` for every option, configuration and the protocol; ``recipes/real_tweets.py``
runs the whole real-data experiment (disjoint pretraining text, RIVA(text), taggers in parallel).
"""

from __future__ import annotations

import sys

from flair_riva.datasets import TWITTER2015
from flair_riva.experiments_cli import main_for

if __name__ == "__main__":
    sys.exit(main_for(TWITTER2015, __doc__))
