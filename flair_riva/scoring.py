"""Span scores for multimodal NER, as the recipes and ``python -m flair_riva.tag --evaluate`` report them.

Every score is given twice (README, Recipes): span micro F1 as Flair reports it (BIO decoded with Flair's
``get_spans_from_bio``, the conlleval convention: an orphan ``I-`` starts an entity), and seqeval's strict
IOB2 mode (orphans are not entities; this matters for Twitter-2015).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flair.data import Sentence, get_spans_from_bio


def predicted_bio(sentence: Sentence, label_type: str = "predicted", offset: int = 0) -> list[str]:
    """BIO tags of the spans of ``label_type`` on a sentence (``offset`` drops leading pseudo-tokens)."""
    tags = ["O"] * len(sentence)
    for span in sentence.get_spans(label_type):
        value = span.get_label(label_type).value
        idx = [t.idx - 1 for t in span.tokens]
        tags[idx[0]] = f"B-{value}"
        for i in idx[1:]:
            tags[i] = f"I-{value}"
    return tags[offset:]


def require_seqeval() -> None:
    """Raise an ImportError that names the install command when seqeval (the ``recipes`` extra) is missing.

    The experiment runners call it before they train anything, so a missing package fails at once rather than
    after the first tagger's minutes of training."""
    try:
        import seqeval  # noqa: F401
    except ImportError as err:
        raise ImportError("seqeval scores the taggers in strict IOB2 mode and is not installed: "
                          "pip install 'flair-riva[recipes]' (or pip install seqeval)") from err


def strict_f1(gold: list[list[str]], pred: list[list[str]]) -> float:
    """Span micro F1 in seqeval's strict IOB2 mode (an orphan ``I-`` is no entity), in %."""
    require_seqeval()
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    return 100 * f1_score(gold, pred, mode="strict", scheme=IOB2) if gold else float("nan")


def bio_spans(tags: Sequence[str]) -> set[tuple[int, int, str]]:
    """``{(start, end, type)}`` (token offsets, end exclusive) of BIO tags, decoded as Flair decodes them."""
    return {(idx[0], idx[-1] + 1, value) for idx, _, value in get_spans_from_bio(list(tags))}


@dataclass
class SpanF1:
    """Streaming span micro F1 in Flair's convention: add one sentence at a time, constant memory."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, gold_tags: Sequence[str], pred_tags: Sequence[str]) -> None:
        gold, pred = bio_spans(gold_tags), bio_spans(pred_tags)
        self.tp += len(gold & pred)
        self.fp += len(pred - gold)
        self.fn += len(gold - pred)

    @property
    def f1(self) -> float:
        """Micro F1 in % (``nan`` when there is neither a gold nor a predicted entity)."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 100 * 2 * self.tp / denominator if denominator else float("nan")
