"""Trainer state for exact resume: RNG states, checkpoint files and the metrics table.

Everything here is stored as **plain containers** (dicts, lists, numbers, strings and tensors), saved
with ``torch.save`` and read back with ``torch.load(weights_only=True)``: a trainer state file never
unpickles arbitrary objects, unlike Flair's ``LanguageModelTrainer.load_checkpoint``. Python's and
NumPy's RNG states are converted to lists for that reason.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flair_riva.io import atomic_write_bytes, atomic_write_text

STATE_FILE = "trainer_state.pt"
STATE_FORMAT = 1

#: Columns of ``metrics.tsv``, one row per epoch of Algorithm 1. The three F1 pairs are the three
#: columns of Table 3: the teacher trained on the labelled data only, the student after the pass over
#: the pseudo-labelled data (lines 2-6), and the student after fine-tuning its RGN on the labelled data
#: (lines 7-11). F1 is binary with "image adds" as positive; HELDOUT_PPL is the perplexity of the
#: bidirectional LM (Eq. 7) on the held-out pseudo-labelled pairs; IMAGE_GAIN is its loss per word with
#: the images shuffled among those pairs minus with their own images (> 0: the LM uses the image), and
#: GATE_SEPARATION the mean s_G of the held-out pairs pseudo-labelled "image adds" minus "doesn't add".
METRIC_COLUMNS = (
    "EPOCH", "TIMESTAMP", "LEARNING_RATE", "PSEUDO_LOSS", "PSEUDO_REL_LOSS", "PSEUDO_LM_LOSS", "LABELLED_LOSS",
    "TEACHER_DEV_F1", "TEACHER_TEST_F1", "PSEUDO_DEV_F1", "PSEUDO_TEST_F1", "FINETUNED_DEV_F1",
    "FINETUNED_TEST_F1", "FINETUNED_TEST_MACRO_F1", "FINETUNED_TEST_ACC", "HELDOUT_PPL", "IMAGE_GAIN",
    "GATE_SEPARATION", "PAIRS_PER_SECOND",
)
#: Columns that depend on the wall clock, not on the computation (left out of equality checks).
TIMING_COLUMNS = ("TIMESTAMP", "PAIRS_PER_SECOND")


# -- RNG -------------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The state of every global RNG the training loop draws from, as plain containers."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [int(version), [int(x) for x in internal], gauss],
        "numpy": [str(kind), [int(x) for x in keys], int(pos), int(has_gauss), float(cached)],
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [t.cpu() for t in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    if state.get("cuda") and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# -- trainer state files -----------------------------------------------------------------------------

def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` a plain-container trainer state atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a trainer state with ``torch.load(weights_only=True)``: never unpickles arbitrary objects."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a flair-riva trainer state (format {STATE_FORMAT})")
    return state


# -- metrics.tsv -------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4e}"
    return str(value)


def write_metrics(path: str | Path, history: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``metrics.tsv`` (atomically) from the epoch history kept in the trainer state, so the table
    always matches the latest checkpoint, also after a resume."""
    lines = ["\t".join(METRIC_COLUMNS)]
    for row in history:
        lines.append("\t".join(_cell(row.get(col)) for col in METRIC_COLUMNS))
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``metrics.tsv`` as dicts of strings."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]
