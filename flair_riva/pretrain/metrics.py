"""Scores of the pretrainer: text-image relation classification (Table 3) and model selection.

Table 3 of the paper reports the F1 score of the binary relation task with "image adds to the tweet
meaning" (R1 ∪ R2, label 1) as the positive class; the macro F1 (mean of both classes' F1) and the
accuracy are reported alongside.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class RelationScores:
    """Relation-classification scores on one labelled set."""

    accuracy: float
    f1: float
    """Binary F1 with "image adds" (label 1) as the positive class: the F1 of Table 3."""
    macro_f1: float
    """Mean of the F1 of both classes."""
    n: int
    """Pairs scored (pairs with a readable image)."""
    without_image: int = 0
    """Pairs left out because their image is missing or unreadable (the RGN needs an image)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RelationScores:
        return cls(**data)

    def __str__(self) -> str:
        extra = f", {self.without_image} without image" if self.without_image else ""
        return (f"F1 {100 * self.f1:.2f} (image adds) | macro F1 {100 * self.macro_f1:.2f} | "
                f"accuracy {100 * self.accuracy:.2f} | {self.n} pairs{extra}")


def _f1(tp: int, fp: int, fn: int) -> float:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def relation_scores(gold: Sequence[int], predicted: Sequence[int], without_image: int = 0) -> RelationScores:
    """Accuracy, binary F1 (positive = 1, "image adds") and macro F1 of 0/1 predictions."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    pairs = list(zip(gold, predicted))
    n = len(pairs)
    if n == 0:
        return RelationScores(0.0, 0.0, 0.0, 0, without_image)
    correct = sum(g == p for g, p in pairs)
    per_class = []
    for cls in (0, 1):
        tp = sum(g == cls and p == cls for g, p in pairs)
        fp = sum(g != cls and p == cls for g, p in pairs)
        fn = sum(g == cls and p != cls for g, p in pairs)
        per_class.append(_f1(tp, fp, fn))
    return RelationScores(correct / n, per_class[1], sum(per_class) / 2, n, without_image)


def select_best(history: Sequence[dict[str, Any]], dev_key: str = "FINETUNED_DEV_F1",
                ppl_key: str = "HELDOUT_PPL") -> int | None:
    """Index of the epoch to keep as ``best/``, chosen on the **dev** set only (never on test).

    Highest dev relation F1 after fine-tuning on the labelled data; ties go to the lower held-out
    perplexity, then to the earlier epoch. Rows without a dev F1 (the text-only ablation, which has no
    relation task) are compared on perplexity alone. Returns None for an empty history.
    """
    best, best_key = None, None
    for i, row in enumerate(history):
        f1 = row.get(dev_key)
        f1 = -math.inf if f1 is None or (isinstance(f1, float) and math.isnan(f1)) else float(f1)
        ppl = row.get(ppl_key)
        ppl = math.inf if ppl is None or (isinstance(ppl, float) and math.isnan(ppl)) else float(ppl)
        key = (f1, -ppl)
        if best_key is None or key > best_key:
            best, best_key = i, key
    return best
