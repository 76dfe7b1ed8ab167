"""RIVA pretraining (Sun et al., COLING 2020, §3.1 and Algorithm 1): ``python -m flair_riva.pretrain``.

Python API::

    from flair_riva.pretrain import PretrainArgs, run_pretraining
    result = run_pretraining(PretrainArgs(output="runs/riva-demo"))      # the demo world
    result.history[-1]["FINETUNED_TEST_F1"], result.best_dir

``PretrainArgs`` takes the flat options of the command line; :class:`PretrainConfig` is the same run as a
config holding a :class:`~flair_riva.config.RivaConfig` (``PretrainConfig(output=..., model=RivaConfig(...))``).

Modules: :mod:`~flair_riva.pretrain.options` (the config, its defaults and the command line),
:mod:`~flair_riva.pretrain.run_folder` (files, run records, checkpoints), :mod:`~flair_riva.pretrain.inputs`
(data, word vectors, backbone), :mod:`~flair_riva.pretrain.stages` (stages 0-2),
:mod:`~flair_riva.pretrain.algorithm` (stage 3), :mod:`~flair_riva.pretrain.steps` (the batch loop, the
optimisation step, evaluation), :mod:`~flair_riva.pretrain.trainer` (the run and ``main``), and
:mod:`~flair_riva.pretrain.data`, :mod:`~flair_riva.pretrain.state`, :mod:`~flair_riva.pretrain.metrics`,
:mod:`~flair_riva.pretrain.distributed`.
"""

from __future__ import annotations

from flair_riva.pretrain.metrics import RelationScores, relation_scores, select_best
from flair_riva.pretrain.options import (
    DEMO_DEFAULTS,
    PAPER_DEFAULTS,
    PretrainArgs,
    PretrainConfig,
    PretrainError,
    build_parser,
    resolve_args,
)
from flair_riva.pretrain.trainer import PretrainResult, main, run_pretraining

__all__ = [
    "DEMO_DEFAULTS", "PAPER_DEFAULTS", "PretrainArgs", "PretrainConfig", "PretrainError", "PretrainResult",
    "RelationScores", "build_parser", "main", "relation_scores", "resolve_args", "run_pretraining", "select_best",
]
