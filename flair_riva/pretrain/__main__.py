"""``python -m flair_riva.pretrain`` (also ``torchrun --nproc_per_node N -m flair_riva.pretrain``)."""

from __future__ import annotations

import sys

from flair_riva.pretrain.trainer import main

if __name__ == "__main__":
    sys.exit(main())
