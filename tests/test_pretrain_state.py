"""pretrain.state: RNG states through a weights-only trainer state file."""

from __future__ import annotations

import torch

from flair_riva.pretrain.state import capture_rng, load_state, restore_rng, save_state


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    save_state(tmp_path / "s.pt", {"format": 1, "rng": [capture_rng()]})
    expected = (torch.rand(3), random.random(), np.random.rand())
    restore_rng(load_state(tmp_path / "s.pt")["rng"][0])     # weights_only=True inside
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]
