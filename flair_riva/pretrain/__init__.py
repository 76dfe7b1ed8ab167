"""RIVA pretraining (Sun et al., COLING 2020, §3.1 and Algorithm 1): ``python -m flair_riva.pretrain``.

Python API::

    from flair_riva.pretrain import PretrainArgs, run_pretraining
    result = run_pretraining(PretrainArgs(output="runs/riva-demo"))      # the demo world
    result.history[-1]["FINETUNED_TEST_F1"], result.best_dir
"""

from __future__ import annotations

from flair_riva.pretrain.metrics import RelationScores, relation_scores, select_best
from flair_riva.pretrain.trainer import (
    DEMO_DEFAULTS,
    PAPER_DEFAULTS,
    PretrainArgs,
    PretrainError,
    PretrainResult,
    build_parser,
    main,
    resolve_args,
    run_pretraining,
)

__all__ = [
    "DEMO_DEFAULTS", "PAPER_DEFAULTS", "PretrainArgs", "PretrainError", "PretrainResult", "RelationScores",
    "build_parser", "main", "relation_scores", "resolve_args", "run_pretraining", "select_best",
]
