"""pretrain.metrics: relation scores and the choice of the best epoch on dev."""

from __future__ import annotations

import pytest

from flair_riva.pretrain.metrics import relation_scores, select_best


def test_relation_scores_and_best_selection():
    s = relation_scores([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert s.accuracy == pytest.approx(0.6)
    assert s.f1 == pytest.approx(2 / 3)                     # p = r = 2/3 for "image adds"
    assert s.macro_f1 == pytest.approx((2 / 3 + 0.5) / 2)
    rows = [{"FINETUNED_DEV_F1": 0.7, "HELDOUT_PPL": 9.0, "FINETUNED_TEST_F1": 0.1},
            {"FINETUNED_DEV_F1": 0.8, "HELDOUT_PPL": 5.0, "FINETUNED_TEST_F1": 0.2},
            {"FINETUNED_DEV_F1": 0.8, "HELDOUT_PPL": 4.0, "FINETUNED_TEST_F1": 0.3},
            {"FINETUNED_DEV_F1": 0.6, "HELDOUT_PPL": 1.0, "FINETUNED_TEST_F1": 0.99}]
    assert select_best(rows) == 2                            # highest dev F1, tie -> lower perplexity
    assert select_best([{"FINETUNED_DEV_F1": None, "HELDOUT_PPL": p} for p in (5.0, 3.0, 4.0)]) == 1
