"""flair_riva.scoring: Flair's (conlleval) span F1 streamed, and seqeval strict."""

from __future__ import annotations

import sys

import pytest

from flair_riva.scoring import SpanF1, bio_spans, require_seqeval, strict_f1


def test_bio_spans_decode_as_flair_orphans_start_an_entity():
    assert bio_spans(["O", "I-LOC", "O", "B-PER", "I-PER"]) == {(1, 2, "LOC"), (3, 5, "PER")}
    assert bio_spans(["B-PER", "I-LOC"]) == {(0, 1, "PER"), (1, 2, "LOC")}
    assert bio_spans([]) == set()


def test_span_f1_streams_and_differs_from_strict_on_orphans():
    gold = [["O", "I-LOC", "O", "B-PER", "I-PER"], ["B-ORG"]]
    pred = [["O", "B-LOC", "O", "B-PER", "O"], ["B-ORG"]]
    f1 = SpanF1()
    for g, p in zip(gold, pred):
        f1.add(g, p)
    assert (f1.tp, f1.fp, f1.fn) == (2, 1, 1)  # LOC and ORG match; PER is cut short
    assert f1.f1 == pytest.approx(100 * 4 / 6)
    # strict IOB2: the orphan I-LOC is no gold entity, so only ORG matches (P = 1/3, R = 1/2)
    assert strict_f1(gold, pred) == pytest.approx(40.0)
    assert SpanF1().f1 != SpanF1().f1  # nan without entities


def test_missing_seqeval_is_named_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "seqeval", None)  # what an environment without the package gives
    with pytest.raises(ImportError, match=r"flair-riva\[recipes\]"):
        require_seqeval()
    with pytest.raises(ImportError, match="seqeval"):
        strict_f1([["B-PER"]], [["B-PER"]])
