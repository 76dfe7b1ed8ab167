"""The RIVA pretrainer: teacher, pseudo-labels and Algorithm 1 (Sun et al., COLING 2020, §3.1, §3.3).

Stages (each skipped on ``--resume`` when its output is already on disk):

0. **Vocabulary**: one streamed count over the labelled and unlabelled texts (``vocab.json``).
1. **Teacher** (§3.1): a :class:`~flair_riva.model.RivaModel` trained with ``relation_logits`` +
   ``relation_loss`` only (the RGN's architecture) on the train part of the labelled relation data,
   split 8:2 train/test as in the paper (seeded, stratified) with a dev part carved from train for
   model selection (``teacher/``).
2. **Pseudo-labels** (§3.1): the teacher labels the unlabelled pairs in one streaming pass; pairs
   whose top class score exceeds the threshold (0.6) are written with that score
   (``pseudo_labelled.tsv``). A seeded 5% of them is held out for the LM perplexity.
3. **RIVA, Algorithm 1**: a fresh student sharing the teacher's vocabulary. Each epoch runs task 1 +
   task 2 on the pseudo-labelled pairs updating all parameters (lines 2-6), then task 1 on the labelled
   train part updating θ_RGN only (lines 7-11, a separate optimizer over ``rgn_parameters()``).
   Per epoch: relation F1 on dev and test after each half and the held-out perplexity
   (``metrics.tsv``), a checkpoint (``epoch-N/``), ``best/`` (chosen on dev only) and at the end
   ``final/``.

The run folder follows Flair's ``LanguageModelTrainer`` (``training.log`` through
``flair.training_utils.add_file_handler``, ``log_line`` separators, a metrics table, a checkpoint per
epoch) and does resume properly: optimizers, schedulers, every RNG and the data position are restored,
finished batches and finished stages are skipped, and trainer state is read with
``torch.load(weights_only=True)``. Under ``torchrun`` the same code runs with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from flair_riva.config import RivaConfig
from flair_riva.io import atomic_directory, atomic_write_text
from flair_riva.model import CheckpointError, RivaModel
from flair_riva.pretrain.data import (
    PreparedBatch,
    VisualSource,
    chunked,
    epoch_batches,
    heldout_split,
    prefetched,
    prepare_batch,
    rank_slice,
    stratified_split,
)
from flair_riva.pretrain.distributed import DistContext
from flair_riva.pretrain.metrics import RelationScores, relation_scores, select_best
from flair_riva.pretrain.state import (
    STATE_FILE,
    STATE_FORMAT,
    capture_rng,
    load_state,
    restore_rng,
    save_state,
    seed_everything,
    write_metrics,
)
from flair_riva.text import Vocabulary, build_vocabulary
from flair_riva.vision import VisualFeatures

log = logging.getLogger("flair")

RUN_ARGS_FILE = "run_args.json"
RUN_STATE_FILE = "run_state.json"
VOCAB_FILE = "vocab.json"
PSEUDO_FILE = "pseudo_labelled.tsv"
METRICS_FILE = "metrics.tsv"
LOG_FILE = "training.log"
MID_EPOCH_DIR = "checkpoint"
#: Files and folders a run writes (what ``--overwrite`` removes; the feature cache is kept: its entries
#: are keyed by backbone fingerprint and image content, so they stay valid).
RUN_ARTIFACTS = (RUN_ARGS_FILE, RUN_STATE_FILE, VOCAB_FILE, PSEUDO_FILE, METRICS_FILE, LOG_FILE, "teacher",
                 MID_EPOCH_DIR, "best", "final")

#: Test-only hook: after this global step of stage 3 (and its checkpoint, if one is due), the process
#: SIGKILLs itself, so tests can check that ``--resume`` continues exactly where an uninterrupted run goes.
KILL_ENV = "FLAIR_RIVA_TEST_KILL_AFTER_STEP"

CLASS_NAMES = {0: "image does not add", 1: "image adds"}

#: Defaults on real data: the paper (Table 2, §4.3; 35 epochs, ResNet-34 fine-tuned from ImageNet).
PAPER_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd", "lr": 2e-2, "epochs": 35, "teacher_epochs": 10,
    "backbone_weights": "IMAGENET1K_V1", "freeze_backbone": False,
    "word_dim": 100, "rgn_hidden_size": 256, "rgn_layers": 2, "vlcn_hidden_size": 256, "vlcn_layers": 2,
}
#: Defaults on the built-in demo world (no data options), chosen so that a bare
#: ``python -m flair_riva.pretrain`` finishes in about 2-3 minutes on 2 CPU cores: no download is possible
#: (random-init ResNet, frozen, features cached under the output folder), fewer epochs, and Adam, because
#: plain SGD at 2e-2 barely moves in the few hundred steps of a demo run. The Table 2 sizes are kept.
DEMO_DEFAULTS: dict[str, Any] = {
    "optimizer": "adam", "lr": 1e-3, "epochs": 3, "teacher_epochs": 15,
    "backbone_weights": "none", "freeze_backbone": True,
    "word_dim": 100, "rgn_hidden_size": 256, "rgn_layers": 2, "vlcn_hidden_size": 256, "vlcn_layers": 2,
}


#: Unlabelled images checked to be images in stage 0 (the file is streamed: checking all would read every image
#: twice); checking goes on past this number until one usable image is found.
UNLABELLED_PROBES = 2000


#: run_args.json entries that are paths: compared resolved (symlinks, ``..``, trailing slashes).
PATH_ARGS = frozenset({"relation_data", "unlabelled", "image_dir", "word_vectors", "demo_dir", "backbone_weights"})


def _same_arg(name: str, previous: Any, current: Any) -> bool:
    if previous == current:
        return True
    if name in PATH_ARGS and isinstance(previous, str) and isinstance(current, str):
        if name == "backbone_weights" and not (os.path.exists(previous) or os.path.exists(current)):
            return False  # a torchvision weights name, not a path
        return os.path.realpath(os.path.expanduser(previous)) == os.path.realpath(os.path.expanduser(current))
    return False


def _reason_summary(reasons: Counter, examples: dict[str, Any]) -> str:
    """``"3 missing (e.g. a.jpg), 2 corrupt (e.g. /etc/passwd)"``: why rows had no usable image."""
    return ", ".join(f"{n} {reason} (e.g. {examples.get(reason)})" for reason, n in reasons.most_common())


class PretrainError(Exception):
    """Bad input, arguments or run folder, found before training starts (the CLI exits with code 2)."""


@dataclass
class PretrainArgs:
    """Every option of ``python -m flair_riva.pretrain``. ``None`` means "the default": the paper's on real
    data, :data:`DEMO_DEFAULTS` on the demo world (used when neither data file is given)."""

    # data
    relation_data: str | None = None
    unlabelled: str | None = None
    image_dir: str | None = None
    word_vectors: str | None = None
    output: str = "riva-pretrain"
    demo_dir: str | None = None
    demo_scale: str = "default"
    # model (Table 2)
    word_dim: int | None = None
    char_dim: int = 25
    char_hidden_size: int = 25
    rgn_hidden_size: int | None = None
    rgn_layers: int | None = None
    vlcn_hidden_size: int | None = None
    vlcn_layers: int | None = None
    num_heads: int = 8
    backbone: str = "resnet34"
    backbone_weights: str | None = None
    freeze_backbone: bool | None = None
    feature_cache: str | None = None
    use_image: bool = True
    gate: bool = True
    vlcn_visual: str = "step"
    visual_norm: str = "standardize"
    gate_dropout: float = 0.1
    max_vocab_size: int = 50000
    min_word_count: int = 2
    fine_tune_word_vectors: bool = False
    """Train the --word-vectors with the model (default: frozen, issue 10)."""
    # optimisation (Table 2 "Misc.")
    epochs: int | None = None
    teacher_epochs: int | None = None
    batch_size: int = 16
    dropout: float = 0.5
    optimizer: str | None = None
    lr: float | None = None
    backbone_lr: float = 1e-4
    rgn_lr_factor: float = 0.1
    """Learning rate of Algorithm 1's labelled pass (θ_RGN only, lines 7-11) as a factor of ``lr``."""
    student_init: str = "teacher"
    teacher: str | None = None
    """A teacher model folder another run trained on the same data (``OTHER_RUN/teacher``): stage 1 reuses it."""
    """``"teacher"``: the student's token encoder and RGN start from the teacher's weights; ``"fresh"``: random."""
    clip: float = 5.0
    anneal_factor: float = 1.0
    patience: int = 3
    # semi-supervision and splits
    threshold: float = 0.6
    heldout_fraction: float = 0.05
    test_fraction: float = 0.2
    dev_fraction: float = 0.1
    seed: int = 1
    # run control (not part of run_args.json: they do not change what is computed)
    resume: bool = False
    overwrite: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    device: str | None = None
    progress: bool = True


#: Options that do not change what a run computes: a resumed run may change them.
CONTROL_ARGS = frozenset({"resume", "overwrite", "checkpoint_every", "keep_checkpoints", "device", "progress",
                          "feature_cache"})


@dataclass
class PretrainResult:
    """What :func:`run_pretraining` returns (the same on every rank)."""

    output: Path
    final_dir: Path
    best_dir: Path | None
    best_epoch: int | None
    teacher: dict[str, Any] = field(default_factory=dict)
    """Teacher scores: ``{"dev": RelationScores dict, "test": ..., "epoch": best teacher epoch}``."""
    pseudo: dict[str, Any] = field(default_factory=dict)
    """Stage-2 counts: ``kept``, ``kept_per_class``, ``below_threshold``, ``without_image``, ``seen``."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per epoch with the columns of ``metrics.tsv``."""
    seconds: float = 0.0


def resolve_args(args: PretrainArgs) -> tuple[PretrainArgs, bool, list[str]]:
    """Fill the ``None`` defaults. Returns ``(args, on_demo_world, notes on demo defaults)``."""
    demo = args.relation_data is None and args.unlabelled is None
    defaults = DEMO_DEFAULTS if demo else PAPER_DEFAULTS
    changes: dict[str, Any] = {}
    notes: list[str] = []
    for name, value in defaults.items():
        if getattr(args, name) is not None:
            continue
        if name == "word_dim" and args.word_vectors is not None:
            continue  # taken from the word-vector file
        changes[name] = value
        if demo and value != PAPER_DEFAULTS[name]:
            notes.append(f"{name}={value} (paper: {PAPER_DEFAULTS[name]})")
    return replace(args, **changes), demo, notes


# --------------------------------------------------------------------------------------------------
# one optimisation step of Algorithm 1
# --------------------------------------------------------------------------------------------------


def _relation_sum(logits: torch.Tensor, labels: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of task 1 (Eq. 1-2) over the items that have an image and a label."""
    keep = has_image & (labels >= 0)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum")


class LossModule(nn.Module):
    """The loss terms of one step, as a module so DistributedDataParallel can synchronise gradients.

    Modes:

    * ``"teacher"``: task 1 through ``relation_logits`` (token encoder + RGN, and the backbone when it is
      fine-tuned): the teacher of §3.1.
    * ``"joint"``: Algorithm 1 lines 3-4, task 1 + task 2 through the whole model.
    * ``"rgn"``: Algorithm 1 lines 8-9, task 1 with gradients for θ_RGN only: the token inputs and the
      image features are computed without gradients, so nothing else can change.

    ``forward`` returns the *summed* relation cross-entropy and LM negative log-likelihood of this
    rank's share; :class:`StepRunner` divides by the global counts.
    """

    def __init__(self, model: RivaModel, source: VisualSource) -> None:
        super().__init__()
        self.model = model
        self.source = source

    def forward(self, mode: str, batch: PreparedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        if batch.text is None:  # an empty share of a small final batch: zero loss, zero gradients
            zero = sum((p.sum() for p in model.parameters() if p.requires_grad),
                       torch.zeros((), device=model.device)) * 0.0
            return zero, zero
        text = batch.text.to(model.device)
        labels = batch.labels.to(model.device)
        has_image = batch.has_image.to(model.device)
        if mode == "joint":
            visual = self.source.features(model, batch.visual, grad=True)
            out = model(text, visual)
            lm, _ = model.lm_loss_sum(out, text)
            if out.relation_logits is None:  # RIVA(text): task 2 only
                return lm.new_zeros(()), lm
            return _relation_sum(out.relation_logits, labels, has_image), lm
        if mode == "teacher":
            logits = model.relation_logits(text, self.source.features(model, batch.visual, grad=True))
            return _relation_sum(logits, labels, has_image), logits.new_zeros(())
        if mode == "rgn":
            with torch.no_grad():
                visual = self.source.features(model, batch.visual, grad=False)
                tokens = model.token_inputs(text)
            logits = model.rgn.classify(model.rgn.text_vector(tokens, text.lengths), visual.pooled, visual.has_image)
            return _relation_sum(logits, labels, has_image), logits.new_zeros(())
        raise ValueError(f"unknown step mode {mode!r}")


class StepRunner:
    """Forward, normalise, backward, clip and step, for one mode, on one rank.

    Loss normalisation: with global counts N_rel (pairs with an image and a label) and N_tok (LM
    predictions) of the *global* batch, rank r minimises ``W * (CE_r / N_rel + NLL_r / N_tok)``;
    DistributedDataParallel averages gradients over the W ranks, so the update equals the one of a
    single process on the whole batch with ``relation_loss`` + ``lm_loss`` (both means).
    """

    def __init__(self, model: RivaModel, source: VisualSource, ctx: DistContext,
                 optimizers: dict[str, torch.optim.Optimizer], clip: float) -> None:
        self.model = model
        self.ctx = ctx
        self.optimizers = optimizers
        self.clip = clip
        self.updates: Counter = Counter()  # successful updates per mode, for error messages
        self.module = LossModule(model, source)
        self.wrapped: nn.Module = self.module
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            # find_unused_parameters: the "rgn" step uses θ_RGN only, and [BOS]/[EOS] are unused with images
            self.wrapped = DDP(self.module, device_ids=device_ids, find_unused_parameters=True,
                               broadcast_buffers=False)

    def autocast(self):
        """bf16 autocast on CUDA only (the CPU path runs in float32)."""
        if self.model.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    STAGES = {"teacher": "stage 1 (teacher)", "joint": "stage 3 (Algorithm 1, pseudo-labelled pass)",
              "rgn": "stage 3 (Algorithm 1, labelled θ_RGN pass)"}

    def _diverged(self, mode: str, what: str) -> PretrainError:
        step = self.updates.get(mode, 0) + 1
        return PretrainError(
            f"non-finite {what} in {self.STAGES.get(mode, mode)}, update {step} of this run: training diverged "
            "(lower --lr / --backbone-lr, or set --clip); nothing from this update was saved")

    def step(self, mode: str, batch: PreparedBatch) -> tuple[float, float]:
        """One update; returns the global-batch means (relation CE, LM NLL per token).

        A non-finite loss, gradient norm or updated weight stops the run with a :class:`PretrainError`
        naming the stage and update (the same on every rank: the checks use all-reduced values)."""
        n_rel = int((batch.has_image & (batch.labels >= 0)).sum()) if batch.text is not None else 0
        n_tok = batch.num_lm_tokens if mode == "joint" else 0
        with self.autocast():
            rel_sum, lm_sum = self.wrapped(mode, batch)
        totals = self.ctx.all_reduce_sum([n_rel, n_tok, float(rel_sum.detach()), float(lm_sum.detach())])
        n_rel_g, n_tok_g, rel_g, lm_g = totals
        if not (math.isfinite(rel_g) and math.isfinite(lm_g)):
            raise self._diverged(mode, f"loss (relation {rel_g}, LM {lm_g})")
        world = self.ctx.world_size
        loss = world * (rel_sum / max(n_rel_g, 1.0) + lm_sum / max(n_tok_g, 1.0))
        optimizer = self.optimizers[mode]
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.clip if self.clip > 0 else float("inf"))
        if not math.isfinite(float(norm)):
            raise self._diverged(mode, "gradient norm")
        optimizer.step()
        # one fused norm per parameter instead of four element-wise passes: a non-finite weight has a
        # non-finite norm
        if params and not bool(torch.stack(torch._foreach_norm(params)).isfinite().all()):
            raise self._diverged(mode, "weights after the update")
        self.updates[mode] += 1
        return rel_g / max(n_rel_g, 1.0), lm_g / max(n_tok_g, 1.0)


def make_optimizer(name: str, groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """SGD (Table 2) or Adam/AdamW over parameter groups with their own learning rates."""
    groups = [g for g in groups if g["params"]]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=groups[0]["lr"])
    if name == "adam":
        return torch.optim.Adam(groups, lr=groups[0]["lr"])
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"])
    raise PretrainError(f"unknown optimizer {name!r}: choose sgd, adam or adamw")


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------


def _autocast_for(model: RivaModel):
    if model.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_relation(model: RivaModel, pairs: Sequence[Any], source: VisualSource,
                      batch_size: int = 64) -> RelationScores:
    """Relation scores of ``model``'s RGN on labelled pairs (pairs without a readable image are counted
    and left out: the RGN needs an image)."""
    was_training = model.training
    model.eval()
    gold: list[int] = []
    pred: list[int] = []
    without = 0
    try:
        batches = prefetched(chunked(pairs, batch_size), lambda ch: prepare_batch(ch, model.vocab, source))
        for batch in batches:
            keep = batch.has_image & (batch.labels >= 0)
            without += int((~batch.has_image).sum())
            if not bool(keep.any()):
                continue
            with _autocast_for(model):
                logits = model.relation_logits(batch.text.to(model.device),
                                               source.features(model, batch.visual, grad=False))
            predicted = logits.float().argmax(dim=-1).cpu()
            gold += batch.labels[keep].tolist()
            pred += predicted[keep].tolist()
    finally:
        model.train(was_training)
    return relation_scores(gold, pred, without)


def _permuted(visual: VisualFeatures, perm: torch.Tensor) -> VisualFeatures:
    """The batch's images given to other items of the batch (item i gets the image of ``perm[i]``)."""
    return VisualFeatures(visual.regions[perm], visual.pooled[perm], visual.has_image[perm],
                          [visual.reasons[int(j)] for j in perm])


@torch.no_grad()
def evaluate_lm(model: RivaModel, pairs: Sequence[Any], source: VisualSource, batch_size: int = 64
                ) -> dict[str, float]:
    """The bidirectional LM (Eq. 6-7) on held-out pairs, and the evidence that it uses the image.

    Returns ``ppl`` (exp of the NLL per predicted word, both directions), ``lm_loss`` (that NLL) and, for
    an image model: ``lm_loss_shuffled`` (the same pairs with the images rotated by one inside each batch,
    so every pair gets another pair's image), ``image_gain`` = lm_loss_shuffled - lm_loss (> 0 when the
    LM uses the image), ``gate_adds`` / ``gate_not`` (mean s_G of the pairs labelled "image adds" /
    "doesn't add") and ``gate_separation`` (their difference)."""
    nan = float("nan")
    result = {"ppl": nan, "lm_loss": nan, "lm_loss_shuffled": nan, "image_gain": nan,
              "gate_adds": nan, "gate_not": nan, "gate_separation": nan}
    if not pairs:
        return result
    was_training = model.training
    model.eval()
    total, shuffled, count = 0.0, 0.0, 0
    gates: dict[int, list[float]] = {0: [], 1: []}
    try:
        for batch in prefetched(chunked(pairs, batch_size), lambda ch: prepare_batch(ch, model.vocab, source)):
            text = batch.text.to(model.device)
            visual = source.features(model, batch.visual, grad=False)
            with _autocast_for(model):
                out = model(text, visual)
                nll, n = model.lm_loss_sum(out, text)
                if visual is not None and len(batch.labels) > 1:
                    perm = torch.roll(torch.arange(len(batch.labels)), 1)
                    nll_shuffled, _ = model.lm_loss_sum(model(text, _permuted(visual, perm.to(model.device))), text)
                    shuffled += float(nll_shuffled)
                else:
                    shuffled += float(nll)
            total += float(nll)
            count += n
            if visual is not None:
                for label, s_g, has in zip(batch.labels.tolist(), out.s_g.float().cpu().tolist(),
                                           batch.has_image.tolist()):
                    if has and label in gates:
                        gates[label].append(s_g)
    finally:
        model.train(was_training)
    result["lm_loss"] = total / max(count, 1)
    result["ppl"] = math.exp(min(result["lm_loss"], 50.0))
    if model.config.use_image:
        result["lm_loss_shuffled"] = shuffled / max(count, 1)
        result["image_gain"] = result["lm_loss_shuffled"] - result["lm_loss"]
        if gates[0] and gates[1]:
            result["gate_adds"] = sum(gates[1]) / len(gates[1])
            result["gate_not"] = sum(gates[0]) / len(gates[0])
            result["gate_separation"] = result["gate_adds"] - result["gate_not"]
    return result


# --------------------------------------------------------------------------------------------------
# the pretrainer
# --------------------------------------------------------------------------------------------------


def _number(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _fmt_plain(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


class Pretrainer:
    """One pretraining run (see the module docstring). Use :func:`run_pretraining`."""

    def __init__(self, args: PretrainArgs, ctx: DistContext) -> None:
        self.given = args
        self.args, self.demo, self.demo_notes = resolve_args(args)
        self.ctx = ctx
        self.device = ctx.device
        self.out = Path(os.path.abspath(Path(self.args.output).expanduser()))
        self.show_progress = bool(self.args.progress) and ctx.is_main
        self.eval_batch_size = max(64, 4 * self.args.batch_size)
        self.frozen = bool(self.args.freeze_backbone) and self.args.use_image
        self.relation_path: Path | None = None
        self.unlabelled_path: Path | None = None
        self.image_dir: Path | None = None
        self.labelled: list[Any] | None = None
        self.labelled_dropped = 0
        self.run_state: dict[str, Any] = {}
        self.resuming = False
        self._word_vectors = None
        self._initial_backbone: dict[str, torch.Tensor] | None = None
        self._featurizer = None

    # -- small helpers -----------------------------------------------------------------------------
    def _bar(self, **kwargs) -> tqdm:
        kwargs.setdefault("unit", "pair")
        kwargs.setdefault("dynamic_ncols", True)
        kwargs.setdefault("mininterval", 1.0)
        return tqdm(disable=not self.show_progress, file=sys.stderr, **kwargs)

    def _log_line(self) -> None:
        log.info("-" * 100)

    def _write_run_state(self) -> None:
        if self.ctx.is_main:
            atomic_write_text(self.out / RUN_STATE_FILE, json.dumps(self.run_state, indent=2, sort_keys=True))

    def _read_run_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.out / RUN_STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    # -- arguments, data location, run folder ---------------------------------------------------------
    def check_args(self) -> None:
        """Pure argument checks (no file access)."""
        a = self.args
        if not 0.0 <= a.threshold < 1.0:
            raise PretrainError(f"--threshold {a.threshold} keeps nothing: a class score is at most 1; "
                                "use a value in [0, 1) (the paper uses 0.6)")
        for name in ("epochs", "teacher_epochs", "batch_size", "keep_checkpoints", "max_vocab_size",
                     "min_word_count"):
            if getattr(a, name) is not None and getattr(a, name) < 1:
                raise PretrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
        if a.checkpoint_every < 0:
            raise PretrainError(f"--checkpoint-every must be >= 0 (0 = end of epoch only), got {a.checkpoint_every}")
        if a.batch_size < self.ctx.world_size:
            raise PretrainError(f"--batch-size {a.batch_size} is the global batch, split over "
                                f"{self.ctx.world_size} processes: it must be at least the number of processes")
        for name in ("test_fraction", "dev_fraction"):
            if not 0.0 < getattr(a, name) < 1.0:
                raise PretrainError(f"--{name.replace('_', '-')} must be in (0, 1), got {getattr(a, name)}")
        if not 0.0 <= a.heldout_fraction < 1.0:
            raise PretrainError(f"--heldout-fraction must be in [0, 1), got {a.heldout_fraction}")
        if not 0.0 < a.anneal_factor <= 1.0:
            raise PretrainError(f"--anneal-factor must be in (0, 1] (1 = no annealing), got {a.anneal_factor}")
        if a.optimizer not in ("sgd", "adam", "adamw"):
            raise PretrainError(f"unknown --optimizer {a.optimizer!r}: choose sgd, adam or adamw")
        from flair_riva.config import INT_RANGES

        for name in ("word_dim", "char_dim", "char_hidden_size", "rgn_hidden_size", "rgn_layers", "vlcn_hidden_size",
                     "vlcn_layers", "num_heads", "max_vocab_size"):
            value, (lo, hi) = getattr(a, name), INT_RANGES[name]
            if value is not None and not lo <= value <= hi:
                raise PretrainError(f"--{name.replace('_', '-')} must be in [{lo}, {hi}], got {value}")
        for option, value, lo, hi, low_open in (("--lr", a.lr, 0.0, 1e6, True),
                                                ("--backbone-lr", a.backbone_lr, 0.0, 1e6, False),
                                                ("--rgn-lr-factor", a.rgn_lr_factor, 0.0, 1e6, False),
                                                ("--gate-dropout", a.gate_dropout, 0.0, 1.0, False),
                                                ("--clip", a.clip, 0.0, 1e12, False),
                                                ("--dropout", a.dropout, 0.0, 1.0, False)):
            if value is None:
                continue
            below = value <= lo if low_open else value < lo
            open_high = option in ("--dropout", "--gate-dropout")
            if not math.isfinite(value) or below or value > hi or (open_high and value >= hi):
                bounds = f"{'(' if low_open else '['}{lo:g}, {hi:g}{')' if open_high else ']'}"
                raise PretrainError(f"{option} must be a finite number in {bounds}, got {value}"
                                    + (" (0 = no clipping)" if option == "--clip" else ""))
        if a.patience < 0:
            raise PretrainError(f"--patience must be >= 0, got {a.patience}")
        if not 0 <= a.seed < 2**32:
            raise PretrainError(f"--seed must be in [0, 2**32), got {a.seed}")
        if a.backbone not in ("resnet18", "resnet34"):
            raise PretrainError(f"unknown --backbone {a.backbone!r}: choose resnet34 (paper) or resnet18")
        if not self.demo:
            if a.unlabelled is None:
                raise PretrainError("--relation-data needs --unlabelled (the unlabelled pairs to pseudo-label); "
                                    "give neither to run on the built-in demo world")
            if a.relation_data is None and a.use_image:
                raise PretrainError("--unlabelled needs --relation-data (the labelled pairs of the teacher); "
                                    "give neither to run on the built-in demo world, or --no-image for RIVA(text)")
        try:
            self.make_config(a.word_dim or 100)
        except ValueError as err:
            raise PretrainError(f"invalid model options: {err}") from err

    def check_inputs(self) -> None:
        """Rank 0, before anything is written: read and check the labelled data (images included), the word
        vectors and the backbone weights, so that bad input leaves no run folder behind. (The unlabelled
        file is streamed once, in stage 0; a run that fails there never finished stage 0 and its folder
        counts as empty, see :meth:`prepare_output`.)"""
        from flair_riva.datasets import _require_file

        if self.unlabelled_path is not None:
            try:
                _require_file(self.unlabelled_path, "unlabelled pairs file")
            except (ValueError, OSError) as err:
                raise PretrainError(f"cannot read the unlabelled pairs {self.unlabelled_path}: {err}") from err
        if self.args.use_image:
            self.labelled = self.read_labelled()
            self.initial_backbone()
        _ = self.word_vectors

    def make_config(self, word_dim: int) -> RivaConfig:
        a = self.args
        return RivaConfig(
            word_dim=word_dim, char_dim=a.char_dim, char_hidden_size=a.char_hidden_size,
            max_vocab_size=a.max_vocab_size, min_word_count=a.min_word_count,
            freeze_word_vectors=a.word_vectors is not None and not a.fine_tune_word_vectors,
            rgn_hidden_size=a.rgn_hidden_size, rgn_layers=a.rgn_layers, backbone=a.backbone,
            num_heads=a.num_heads, vlcn_hidden_size=a.vlcn_hidden_size, vlcn_layers=a.vlcn_layers,
            dropout=a.dropout, learning_rate=a.lr, backbone_learning_rate=a.backbone_lr, optimizer=a.optimizer,
            batch_size=a.batch_size, clip_grad_norm=a.clip, use_image=a.use_image, gate=a.gate,
            vlcn_visual=a.vlcn_visual, visual_norm=a.visual_norm, gate_dropout=a.gate_dropout,
        )

    def locate_data(self) -> None:
        """Data paths; on the demo world, generate it (rank 0 first; idempotent)."""
        a = self.args
        if self.demo:
            from flair_riva.demo import default_demo_root, generate_demo_world

            root = Path(a.demo_dir).expanduser() if a.demo_dir else default_demo_root()
            try:
                world = generate_demo_world(root, scale=a.demo_scale)
            except (ValueError, OSError) as err:
                raise PretrainError(f"cannot write the demo world to {root}: {err}") from err
            self.relation_path, self.unlabelled_path, self.image_dir = world.relation_file, world.unlabelled_file, None
            self.demo_root = world.root
        else:
            self.relation_path = Path(a.relation_data).expanduser().absolute() if a.relation_data else None
            self.unlabelled_path = Path(a.unlabelled).expanduser().absolute()
            self.image_dir = Path(a.image_dir).expanduser().absolute() if a.image_dir else None
            self.demo_root = None

    def run_args(self) -> dict[str, Any]:
        """The arguments that define what this run computes (``run_args.json``)."""
        values = {k: v for k, v in asdict(self.args).items() if k not in CONTROL_ARGS}
        values["output"] = str(self.out)  # for the record: a run folder may be moved, so resume ignores it
        values["relation_data"] = str(self.relation_path) if self.relation_path else None
        values["unlabelled"] = str(self.unlabelled_path) if self.unlabelled_path else None
        values["image_dir"] = str(self.image_dir) if self.image_dir else None
        values["word_vectors"] = str(Path(self.args.word_vectors).expanduser().absolute()) \
            if self.args.word_vectors else None
        values["demo_dir"] = str(self.demo_root) if self.demo_root else None
        if not self.demo:
            values["demo_scale"] = None
        return values

    def prepare_output(self) -> bool:
        """Check the run folder against ``run_args.json``; returns True when resuming (rank 0 only).

        A folder whose run never finished stage 0 (no vocabulary in ``run_state.json``: it failed on bad
        input, or was killed early) holds nothing worth keeping and counts as empty. Paths are compared
        resolved (``r3/``, ``./r3`` and ``/abs/r3`` are one folder), and the output folder itself is left out
        of the comparison, so a moved run folder resumes."""
        a = self.args
        out = self.out
        if out.exists() and not out.is_dir():
            raise PretrainError(f"--output {out} exists and is not a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=out, prefix=".write-test-"):
                pass
        except OSError as err:
            raise PretrainError(f"--output {out} is not a writable folder: {err.strerror or err}") from err
        current = self.run_args()
        present = [name for name in RUN_ARTIFACTS if (out / name).exists()] + \
            sorted(p.name for p in out.glob("epoch-*") if p.is_dir())
        args_file = out / RUN_ARGS_FILE
        if present and "vocab" not in self._read_run_state() and \
                not set(present) - {RUN_ARGS_FILE, LOG_FILE, RUN_STATE_FILE, VOCAB_FILE}:
            log.info("%s holds a run that never finished stage 0 (%s): starting afresh", out, ", ".join(present))
            for name in present:
                (out / name).unlink(missing_ok=True)
            present = []
        if args_file.exists() or present:
            previous = None
            with contextlib.suppress(OSError, ValueError, AttributeError):
                previous = json.loads(args_file.read_text(encoding="utf-8")).get("args")
            if a.overwrite:
                self._wipe(present)
            elif previous is None:
                raise PretrainError(
                    f"--output {out} holds files of a pretraining run ({', '.join(present)}) without a readable "
                    f"{RUN_ARGS_FILE}: choose another folder, or pass --overwrite to delete them")
            else:
                diffs = [f"{k}: {previous.get(k)!r} -> {current.get(k)!r}"
                         for k in sorted(set(previous) | set(current))
                         if k != "output" and not _same_arg(k, previous.get(k), current.get(k))]
                if diffs:
                    raise PretrainError(
                        f"--output {out} holds another run with different arguments ({'; '.join(diffs)}): "
                        "choose another --output for this run, or continue that one with its own arguments "
                        "and --resume")
                if not a.resume:
                    raise PretrainError(
                        f"--output {out} already holds a run with these arguments: pass --resume to continue "
                        "it, or choose another --output")
                return True
        elif a.resume:
            log.info("--resume: nothing to resume in %s, starting a new run", out)
        from flair_riva import __version__

        atomic_write_text(args_file, json.dumps({"flair_riva_version": __version__, "args": current},
                                                indent=2, sort_keys=True))
        return False

    def _wipe(self, present: list[str]) -> None:
        log.info("--overwrite: deleting the previous run in %s (%s)", self.out, ", ".join(present) or "-")
        for name in present:
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def _clean_temp(self) -> None:
        """Remove temporary folders/files a killed run left behind (atomic writes in progress)."""
        for path in self.out.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in self.out.glob(".*.old"):
            shutil.rmtree(path, ignore_errors=True)

    # -- models ------------------------------------------------------------------------------------------
    @property
    def word_vectors(self):
        if self._word_vectors is None and self.args.word_vectors:
            from flair_riva.text import load_word_vectors

            try:
                self._word_vectors = load_word_vectors(self.args.word_vectors)
            except Exception as err:  # gensim raises many types for a bad file
                raise PretrainError(f"cannot read --word-vectors {self.args.word_vectors}: "
                                    f"{type(err).__name__}: {err}") from err
        return self._word_vectors

    def initial_backbone(self) -> dict[str, torch.Tensor]:
        """The ResNet weights every model of the run starts from (named, a file, or a seeded random init)."""
        if self._initial_backbone is None:
            from flair_riva.vision import RegionExtractor

            seed_everything(self.args.seed)
            weights = self.args.backbone_weights
            if weights is not None and weights.strip().lower() == "none":
                weights = None
            try:
                extractor = RegionExtractor(self.args.backbone, weights=weights)
            except (RuntimeError, ValueError, FileNotFoundError, TypeError) as err:
                raise PretrainError(f"backbone weights: {err}") from err
            self._initial_backbone = {k: v.detach().clone() for k, v in extractor.state_dict().items()}
            self.backbone_source = extractor.weights_source
        return self._initial_backbone

    def featurizer(self):
        """The frozen backbone's :class:`~flair_riva.vision.ImageFeaturizer` with its on-disk cache."""
        if self._featurizer is None:
            from flair_riva.vision import FeatureCache, ImageFeaturizer, RegionExtractor

            extractor = RegionExtractor(self.args.backbone, weights=None)
            extractor.load_state_dict(self.initial_backbone())
            extractor.to(self.device).eval().requires_grad_(False)
            root = Path(self.args.feature_cache).expanduser() if self.args.feature_cache \
                else self.out / "feature-cache"
            try:
                cache = FeatureCache(root, extractor.fingerprint())
            except (OSError, ValueError) as err:  # the same policy as RivaEmbeddings: warn and compute
                log.warning("cannot use the feature cache %s (%s): computing image features without a cache",
                            root, err)
                cache = None
            self._featurizer = ImageFeaturizer(extractor, cache, batch_size=64)
            if self.ctx.is_main and cache is not None:
                log.info("frozen backbone: region features cached in %s", cache.directory)
        return self._featurizer

    def visual_source(self) -> VisualSource:
        if not self.args.use_image:
            return VisualSource(None, use_image=False)
        return VisualSource(self.featurizer() if self.frozen else None)

    def fresh_model(self, vocab: Vocabulary, config: RivaConfig, seed: int) -> RivaModel:
        """A new model: seeded init, the run's initial backbone, the word vectors if given."""
        seed_everything(seed)
        model = RivaModel(config, vocab, backbone_weights=None)
        if model.backbone is not None:
            model.backbone.load_state_dict(self.initial_backbone())
            if self.frozen:
                model.backbone.requires_grad_(False)
        if self.word_vectors is not None:
            model.init_word_vectors(self.word_vectors)
        return model.to(self.device)

    # -- stage 0: labelled data and vocabulary -------------------------------------------------------------
    def read_labelled(self) -> list[Any]:
        """Labelled relation pairs with an existing image file; checks for the teacher's needs."""
        from flair_riva.datasets import read_relation_pairs

        path = self.relation_path
        try:
            pairs = read_relation_pairs(path, self.image_dir)
        except (ValueError, OSError, UnicodeError) as err:  # CorpusFormatError is a ValueError
            raise PretrainError(f"cannot read the relation data {path}: {err}") from err
        labels = Counter(p.label for p in pairs)
        if len(labels) < 2:
            (only,) = labels
            raise PretrainError(
                f"the relation data {path} has a single class: all {len(pairs)} pairs are "
                f"'{CLASS_NAMES.get(only, only)}'; the teacher needs pairs of both classes (image_adds 0 and 1)")
        from flair_riva.vision import probe_image

        reasons: Counter = Counter()
        examples: dict[str, Any] = {}
        with_image = []
        for pair in pairs:
            reason = probe_image(pair.image)  # a regular file that identifies as an image, within the limits
            if reason is None:
                with_image.append(pair)
            else:
                reasons[reason] += 1
                examples.setdefault(reason, pair.image)
        if not with_image:
            raise PretrainError(
                f"every image of the relation data {path} is unusable: {len(pairs)} pairs without a usable image "
                f"({_reason_summary(reasons, examples)}); relative image paths resolve inside --image-dir (or the "
                "data file's folder when it is not given), absolute paths are used as written")
        counts = Counter(p.label for p in with_image)
        for cls in (0, 1):
            if counts[cls] < 3:
                raise PretrainError(
                    f"the relation data {path} has {counts[cls]} pairs with an image for class '{CLASS_NAMES[cls]}': "
                    "at least 3 per class are needed for the train/dev/test split")
        self.labelled_dropped = len(pairs) - len(with_image)
        if self.labelled_dropped and self.ctx.is_main:
            log.warning("%d of %d labelled pairs have no usable image (%s) and are left out of the relation task",
                        self.labelled_dropped, len(pairs), _reason_summary(reasons, examples))
        return with_image

    def build_vocabulary(self) -> tuple[Vocabulary, dict[str, Any]]:
        """Stage 0: one streamed pass over the labelled and unlabelled texts (the unlabelled file is never
        loaded whole). Also counts the unlabelled pairs and those with an existing image file."""
        from flair_riva.datasets import iter_unlabelled_pairs
        from flair_riva.vision import probe_image

        counts: Counter = Counter()
        reasons: Counter = Counter()
        examples: dict[str, Any] = {}
        bar = self._bar(desc="vocabulary")
        check_images = self.args.use_image

        def texts():
            for pair in self.labelled or []:
                yield pair.tokens
            for pair in iter_unlabelled_pairs(self.unlabelled_path, self.image_dir):
                counts["unlabelled"] += 1
                if pair.image is not None and pair.image.is_file():
                    counts["unlabelled_with_image"] += 1
                # the first UNLABELLED_PROBES images (and on, until one is usable) are checked to be images
                if check_images and (counts["probed"] < UNLABELLED_PROBES or not counts["usable"]):
                    counts["probed"] += 1
                    reason = probe_image(pair.image)
                    if reason is None:
                        counts["usable"] += 1
                    else:
                        reasons[reason] += 1
                        examples.setdefault(reason, pair.image)
                bar.update(1)
                yield pair.tokens

        vectors = self.word_vectors
        a = self.args
        unk: dict[str, int] = {}
        try:  # output vocabulary: the frequent words; input: + every word the vectors know (issue 10)
            vocab = build_vocabulary(texts(), a.max_vocab_size, a.min_word_count, vectors, unk)
        except (ValueError, OSError, UnicodeError) as err:
            raise PretrainError(f"cannot read the unlabelled pairs {self.unlabelled_path}: {err}") from err
        finally:
            bar.close()
        if counts["unlabelled"] == 0:
            raise PretrainError(f"the unlabelled pairs file {self.unlabelled_path} holds no pair with text")
        if a.use_image and counts["usable"] == 0:
            raise PretrainError(
                f"every image of the {counts['unlabelled']} unlabelled pairs in {self.unlabelled_path} is unusable "
                f"({_reason_summary(reasons, examples)}): relative image paths resolve inside --image-dir (or the "
                "file's folder when it is not given), absolute paths are used as written")
        if reasons and self.ctx.is_main:
            log.warning("%d of the first %d unlabelled pairs have no usable image (%s)", sum(reasons.values()),
                        counts["probed"], _reason_summary(reasons, examples))
        word_dim = a.word_dim
        if vectors is not None:
            if word_dim is not None and word_dim != vectors.vector_size:
                raise PretrainError(f"--word-dim {word_dim} does not match the {vectors.vector_size}-d word "
                                    f"vectors of {a.word_vectors}")
            word_dim = vectors.vector_size
        info = {"words": len(vocab), "output_words": vocab.output_size, "unk": unk, "chars": vocab.num_chars,
                "word_dim": word_dim,
                "unlabelled": counts["unlabelled"], "unlabelled_with_image": counts["unlabelled_with_image"]}
        log.info("vocabulary: %d words, %d characters (from %d labelled and %d unlabelled texts; "
                 "%d unlabelled pairs have an image file)", len(vocab), vocab.num_chars,
                 len(self.labelled or []), counts["unlabelled"], counts["unlabelled_with_image"])
        return vocab, info

    def labelled_splits(self, pairs: list[Any]) -> tuple[list[Any], list[Any], list[Any]]:
        a = self.args
        train, dev, test = stratified_split([p.label for p in pairs], a.seed, a.test_fraction, a.dev_fraction)
        return [pairs[i] for i in train], [pairs[i] for i in dev], [pairs[i] for i in test]

    # -- stage 1: teacher --------------------------------------------------------------------------------
    def train_teacher(self, vocab: Vocabulary, config: RivaConfig) -> tuple[RivaModel, dict[str, Any]]:
        """§3.1: the teacher, a RivaModel trained with relation_logits + relation_loss only, selected on dev."""
        a = self.args
        train, dev, test = self.labelled_splits(self.labelled)
        teacher = self.fresh_model(vocab, config, a.seed + 11)
        groups = teacher.parameter_groups()
        trainable = [{"params": [p for p in groups["text"] + groups["rgn"] if p.requires_grad], "lr": a.lr}]
        if not self.frozen:
            trainable.append({"params": [p for p in groups["backbone"] if p.requires_grad], "lr": a.backbone_lr})
        source = self.visual_source()
        runner = StepRunner(teacher, source, DistContext(device=self.device),
                            {"teacher": make_optimizer(a.optimizer, trainable)}, a.clip)
        self._log_line()
        log.info("stage 1: teacher (RGN architecture) on %d labelled pairs (dev %d, test %d), %d epochs",
                 len(train), len(dev), len(test), a.teacher_epochs)
        best_f1, best_epoch, best_state = -1.0, 0, None
        seed_everything(a.seed + 12)
        for epoch in range(1, a.teacher_epochs + 1):
            teacher.train()
            batches = epoch_batches(len(train), a.batch_size, a.seed, epoch, "teacher")
            bar = self._bar(total=len(train), desc=f"teacher epoch {epoch}/{a.teacher_epochs}")
            loss_sum, start = 0.0, time.perf_counter()
            for idx, batch in zip(batches, prefetched(
                    batches, lambda b: prepare_batch([train[i] for i in b], vocab, source))):
                rel, _ = runner.step("teacher", batch)
                loss_sum += rel
                bar.update(len(idx))
                bar.set_postfix(loss=f"{rel:.3f}", refresh=False)
            bar.close()
            seconds = time.perf_counter() - start
            scores = evaluate_relation(teacher, dev, source, self.eval_batch_size)
            improved = scores.f1 > best_f1
            if improved:
                best_f1, best_epoch = scores.f1, epoch
                best_state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
            log.info("teacher epoch %d/%d | loss %.4f | dev %s | %.1f pairs/s%s", epoch, a.teacher_epochs,
                     loss_sum / max(len(batches), 1), scores, len(train) / max(seconds, 1e-9),
                     " | best so far" if improved else "")
        teacher.load_state_dict(best_state)
        dev_scores = evaluate_relation(teacher, dev, source, self.eval_batch_size)
        test_scores = evaluate_relation(teacher, test, source, self.eval_batch_size)
        log.info("teacher: epoch %d chosen on dev | dev %s", best_epoch, dev_scores)
        log.info("teacher: test %s", test_scores)
        return teacher, {"epoch": best_epoch, "dev": dev_scores.to_dict(), "test": test_scores.to_dict(),
                         "train_pairs": len(train), "dev_pairs": len(dev), "test_pairs": len(test)}

    def reuse_teacher(self, vocab: Vocabulary, config: RivaConfig) -> tuple[RivaModel, dict[str, Any]]:
        """Stage 1 from ``--teacher DIR``: a teacher another run trained on the same data (e.g. the image
        model's, for the -RGN ablation, whose teacher is the same network), checked and scored here."""
        a = self.args
        try:
            teacher = RivaModel.load(a.teacher, map_location=self.device)
        except CheckpointError as err:
            raise PretrainError(f"--teacher {a.teacher}: {err}") from err
        if teacher.vocab.words != vocab.words:
            raise PretrainError(f"--teacher {a.teacher} was trained with another vocabulary than this run's")
        fields = ("word_dim", "char_dim", "char_hidden_size", "rgn_hidden_size", "rgn_layers", "backbone",
                  "visual_norm", "visual_dim")
        differ = [f for f in fields if getattr(teacher.config, f) != getattr(config, f)]
        if differ or not teacher.config.use_image:
            raise PretrainError(f"--teacher {a.teacher} does not fit this run's model "
                                f"(differs in {differ or 'use_image'})")
        if self.frozen and teacher.backbone is not None:
            teacher.backbone.load_state_dict(self.initial_backbone())  # the run's features (and cache key)
            teacher.backbone.requires_grad_(False)
        _, dev, test = self.labelled_splits(self.labelled)
        source = self.visual_source()
        self._log_line()
        log.info("stage 1: reusing the teacher %s", a.teacher)
        dev_scores = evaluate_relation(teacher, dev, source, self.eval_batch_size)
        test_scores = evaluate_relation(teacher, test, source, self.eval_batch_size)
        log.info("teacher: dev %s", dev_scores)
        log.info("teacher: test %s", test_scores)
        return teacher, {"epoch": 0, "dev": dev_scores.to_dict(), "test": test_scores.to_dict(),
                         "train_pairs": 0, "dev_pairs": len(dev), "test_pairs": len(test), "from": str(a.teacher)}

    # -- stage 2: pseudo-labels ----------------------------------------------------------------------------
    def pseudo_label(self, teacher: RivaModel, expected: int | None) -> dict[str, Any]:
        """§3.1: label the unlabelled pairs in one streaming pass; keep top class score > threshold."""
        from flair_riva.datasets import RelationPair, iter_unlabelled_pairs, write_pseudo_labelled

        a = self.args
        source = self.visual_source()
        teacher.eval()
        counts: Counter = Counter()
        highest = [0.0]
        self._log_line()
        log.info("stage 2: pseudo-labelling %s with the teacher (keep top class score > %g)",
                 self.unlabelled_path, a.threshold)
        bar = self._bar(total=expected, desc="pseudo-labels")

        def kept():
            stream = iter_unlabelled_pairs(self.unlabelled_path, self.image_dir)
            work = prefetched(chunked(stream, self.eval_batch_size),
                              lambda ch: (ch, prepare_batch(ch, teacher.vocab, source)))
            for chunk, batch in work:
                probs = None
                if bool(batch.has_image.any()):
                    with torch.no_grad(), _autocast_for(teacher):
                        logits = teacher.relation_logits(batch.text.to(self.device),
                                                         source.features(teacher, batch.visual, grad=False))
                    probs = logits.float().softmax(dim=-1).cpu()
                for i, pair in enumerate(chunk):
                    counts["seen"] += 1
                    if not bool(batch.has_image[i]):
                        counts["without_image"] += 1
                        continue
                    score, label = probs[i].max(dim=0)
                    score, label = float(score), int(label)
                    highest[0] = max(highest[0], score)
                    if score > a.threshold:
                        counts[f"kept_{label}"] += 1
                        yield RelationPair(text=pair.text, tokens=pair.tokens, image=pair.image, label=label,
                                           score=score)
                    else:
                        counts["below_threshold"] += 1
                bar.update(len(chunk))

        path = self.out / PSEUDO_FILE
        try:
            written = write_pseudo_labelled(path, kept())
        except (ValueError, OSError, UnicodeError) as err:
            raise PretrainError(f"cannot read the unlabelled pairs {self.unlabelled_path}: {err}") from err
        finally:
            bar.close()
        info = {"seen": counts["seen"], "kept": written, "threshold": a.threshold,
                "kept_per_class": {CLASS_NAMES[c]: counts[f"kept_{c}"] for c in (0, 1)},
                "below_threshold": counts["below_threshold"], "without_image": counts["without_image"],
                "highest_score": highest[0]}
        self._log_pseudo(info)
        if written == 0:
            path.unlink(missing_ok=True)
            if counts["without_image"] == counts["seen"]:
                raise PretrainError(
                    f"none of the {counts['seen']} unlabelled pairs in {self.unlabelled_path} has a usable image "
                    "(every image failed to decode): the teacher cannot label them")
            raise PretrainError(
                f"--threshold {a.threshold} keeps none of the {counts['seen']} unlabelled pairs "
                f"({counts['without_image']} without a readable image; the highest teacher score was "
                f"{highest[0]:.3f}): lower --threshold")
        return info

    @staticmethod
    def _log_pseudo(info: dict[str, Any]) -> None:
        per = info["kept_per_class"]
        log.info("pseudo-labels: kept %d of %d pairs (threshold %g): %s; %d below the threshold, %d without a "
                 "readable image", info["kept"], info["seen"], info["threshold"],
                 ", ".join(f"{n} '{name}'" for name, n in per.items()), info["below_threshold"],
                 info["without_image"])
        if info["kept"] and min(per.values()) == 0:
            log.warning("pseudo-labels: every kept pair has the same class; task 1 on them teaches one class only")

    # -- stages 0-2 on rank 0 --------------------------------------------------------------------------------
    def prepare_stages(self) -> None:
        """Rank 0: validate the data and run (or skip, when done) stages 0-2. Writes files only."""
        a = self.args
        state = self.run_state = self._read_run_state() if self.resuming else {}
        if a.use_image:
            if self.labelled is None:
                self.labelled = self.read_labelled()
            self.initial_backbone()  # fails now (not after the teacher) when named weights cannot be loaded
        elif self.relation_path is not None:
            log.info("--no-image: the relation data is not used (RIVA(text) has no RGN)")
        vocab_path = self.out / VOCAB_FILE
        if "vocab" in state and vocab_path.is_file():
            vocab = Vocabulary.from_json(vocab_path.read_text(encoding="utf-8"))
            log.info("stage 0 done before: reusing %s (%d words)", vocab_path, len(vocab))
        else:
            self._log_line()
            log.info("stage 0: vocabulary")
            vocab, state["vocab"] = self.build_vocabulary()
            atomic_write_text(vocab_path, vocab.to_json())
            state.pop("teacher", None)
            state.pop("pseudo", None)
            self._write_run_state()
        if not a.use_image:
            return
        config = self.make_config(state["vocab"]["word_dim"])
        teacher_dir = self.out / "teacher"
        teacher = None
        if "teacher" in state and teacher_dir.is_dir():
            try:
                teacher = RivaModel.load(teacher_dir, map_location=self.device)
                log.info("stage 1 done before: reusing %s (test %s)", teacher_dir,
                         RelationScores.from_dict(state["teacher"]["test"]))
            except CheckpointError as err:
                log.warning("cannot reuse %s (%s): training the teacher again", teacher_dir, err)
                teacher = None
        if teacher is None:
            if a.teacher is not None:
                teacher, state["teacher"] = self.reuse_teacher(vocab, config)
            else:
                teacher, state["teacher"] = self.train_teacher(vocab, config)
            teacher.save(teacher_dir)
            state.pop("pseudo", None)
            self._write_run_state()
        if "pseudo" in state and (self.out / PSEUDO_FILE).is_file():
            log.info("stage 2 done before: reusing %s", self.out / PSEUDO_FILE)
            self._log_pseudo(state["pseudo"])
        else:
            if self.frozen:
                teacher.backbone.requires_grad_(False)
            state["pseudo"] = self.pseudo_label(teacher, state["vocab"].get("unlabelled"))
            self._write_run_state()
        del teacher

    # -- stage 3: Algorithm 1 ------------------------------------------------------------------------------
    def load_prepared(self) -> dict[str, Any]:
        """All ranks: the files of stages 0-2 (vocabulary, splits, pseudo-labelled pairs, held-out part)."""
        a = self.args
        self.run_state = self._read_run_state()
        vocab = Vocabulary.from_json((self.out / VOCAB_FILE).read_text(encoding="utf-8"))
        data: dict[str, Any] = {"vocab": vocab, "config": self.make_config(self.run_state["vocab"]["word_dim"])}
        if a.use_image:
            from flair_riva.datasets import read_pseudo_labelled

            if self.labelled is None:
                self.labelled = self.read_labelled()
            data["train"], data["dev"], data["test"] = self.labelled_splits(self.labelled)
            corpus = read_pseudo_labelled(self.out / PSEUDO_FILE)
        else:
            from flair_riva.datasets import iter_unlabelled_pairs

            corpus = list(iter_unlabelled_pairs(self.unlabelled_path, self.image_dir))
            data["train"] = data["dev"] = data["test"] = []
        train_idx, held_idx = heldout_split(len(corpus), a.heldout_fraction, a.seed)
        data["pseudo"] = [corpus[i] for i in train_idx]
        data["heldout"] = [corpus[i] for i in held_idx]
        return data

    def _init_from_teacher(self, student: RivaModel) -> None:
        """The student's token encoder and RGN start as the teacher's (same architecture, §3.1), so Algorithm 1
        begins from the teacher's relation classifier instead of re-learning it from its pseudo-labels."""
        teacher = RivaModel.load(self.out / "teacher", map_location=self.device)
        for part in ("token_encoder", "rgn"):
            getattr(student, part).load_state_dict(getattr(teacher, part).state_dict())
        if self.ctx.is_main:
            log.info("student: token encoder and RGN initialised from the teacher (--student-init teacher)")

    def _checkpoints(self) -> list[tuple[tuple, Path, dict[str, Any]]]:
        found = []
        candidates = [self.out / MID_EPOCH_DIR] + [p for p in self.out.glob("epoch-*") if p.is_dir()]
        for path in candidates:
            if not (path / STATE_FILE).is_file():
                continue
            try:
                state = load_state(path / STATE_FILE)
            except Exception as err:  # a damaged file must not stop the resume from an older one
                log.warning("ignoring checkpoint %s: %s", path, err)
                continue
            pos = state["position"]
            found.append(((pos["epoch"], 0 if pos["phase"] == "pseudo" else 1, pos["step"]), path, state))
        return sorted(found, key=lambda item: item[0])

    def _save_checkpoint(self, name: str, model: RivaModel, optimizers: dict, schedulers: dict,
                         progress: dict[str, Any]) -> None:
        """Model dir + ``trainer_state.pt`` written as one atomic folder. Collective (gathers every rank's RNG)."""
        rng = self.ctx.all_gather_object(capture_rng())
        if not self.ctx.is_main:
            return
        state = {
            "format": STATE_FORMAT, "world_size": self.ctx.world_size, "rng": rng,
            "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            **progress,
        }
        with atomic_directory(self.out / name) as tmp:
            model.save(tmp)
            save_state(tmp / STATE_FILE, state)

    def _prune_checkpoints(self) -> None:
        if not self.ctx.is_main:
            return
        epochs = sorted((int(p.name.split("-", 1)[1]), p) for p in self.out.glob("epoch-*")
                        if p.is_dir() and p.name.split("-", 1)[1].isdigit())
        for _, path in epochs[:-self.args.keep_checkpoints]:
            shutil.rmtree(path, ignore_errors=True)

    def _evaluate(self, model: RivaModel, data: dict[str, Any], source: VisualSource,
                  perplexity: bool) -> dict[str, Any]:
        """Rank 0 evaluates; every rank gets the result (so LR schedules stay in step)."""
        result = None
        if self.ctx.is_main:
            result = {}
            if self.args.use_image:
                result["dev"] = evaluate_relation(model, data["dev"], source, self.eval_batch_size).to_dict()
                result["test"] = evaluate_relation(model, data["test"], source, self.eval_batch_size).to_dict()
            if perplexity:
                result["lm"] = evaluate_lm(model, data["heldout"], source, self.eval_batch_size)
        return self.ctx.broadcast_object(result)

    def algorithm_one(self, data: dict[str, Any]) -> tuple[RivaModel, list[dict[str, Any]], int | None]:
        """Stage 3 (all ranks): Algorithm 1 with per-epoch evaluation, checkpoints and best/final."""
        a = self.args
        ctx = self.ctx
        vocab, config = data["vocab"], data["config"]
        pseudo, train = data["pseudo"], data["train"]
        source = self.visual_source()
        student = self.fresh_model(vocab, config, a.seed + 21)
        if a.use_image and a.student_init == "teacher":
            self._init_from_teacher(student)

        resume_from = None
        if a.resume:
            found = self._checkpoints()
            if found:
                _, path, state = found[-1]
                resume_from = (path, state)
                loaded = RivaModel.load(path, map_location=self.device)
                if loaded.vocab.words != vocab.words or loaded.config.to_dict() != config.to_dict():
                    raise PretrainError(f"checkpoint {path} does not match this run's vocabulary or config")
                student.load_state_dict(loaded.state_dict())
                del loaded

        groups = student.parameter_groups()
        main_params = [p for name, ps in groups.items() if name != "backbone" for p in ps if p.requires_grad]
        backbone_params = [p for p in groups["backbone"] if p.requires_grad]
        optimizers = {"joint": make_optimizer(a.optimizer, [{"params": main_params, "lr": a.lr},
                                                            {"params": backbone_params, "lr": a.backbone_lr}])}
        if a.use_image:  # Algorithm 1 line 10: a separate optimizer over θ_RGN only
            # with a learning rate of its own (--rgn-lr-factor): at the joint pass's rate, the small labelled
            # set undoes what the pseudo-labelled pass learned (dev relation F1 fell over the epochs)
            optimizers["rgn"] = make_optimizer(a.optimizer, [{"params": student.rgn_parameters(),
                                                              "lr": a.lr * a.rgn_lr_factor}])
        schedulers: dict[str, Any] = {}
        if a.anneal_factor < 1.0:
            for key, opt in optimizers.items():
                schedulers[key] = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    opt, mode="max", factor=a.anneal_factor, patience=a.patience)
        runner = StepRunner(student, source, ctx, optimizers, a.clip)

        teacher = self.run_state.get("teacher") or {}
        progress: dict[str, Any] = {"position": {"epoch": 1, "phase": "pseudo", "step": 0, "global_step": 0},
                                    "running": {}, "history": [], "best_epoch": None}
        if resume_from is not None:
            path, state = resume_from
            progress = {k: state[k] for k in ("position", "running", "history", "best_epoch")}
            for key, opt in optimizers.items():
                opt.load_state_dict(state["optimizers"][key])
            for key, sched in schedulers.items():
                if key in state["schedulers"]:
                    sched.load_state_dict(state["schedulers"][key])
            rng = state["rng"]
            if len(rng) == ctx.world_size:
                restore_rng(rng[ctx.rank])
            else:
                log.warning("checkpoint was written by %d processes, this run has %d: RNG streams are reseeded, "
                            "so the run is not bit-identical to an uninterrupted one", len(rng), ctx.world_size)
                seed_everything(a.seed + 1000 * progress["position"]["epoch"] + ctx.rank)
            pos = progress["position"]
            if ctx.is_main:
                log.info("resuming from %s: epoch %d, %s pass, after batch %d", path, pos["epoch"], pos["phase"],
                         pos["step"])
        else:
            seed_everything(a.seed + 31 + 7919 * ctx.rank)

        pos, history = progress["position"], progress["history"]
        if ctx.is_main:
            self._log_line()
            log.info("stage 3: Algorithm 1 for %d epochs | %d pseudo-labelled pairs (+%d held out) | %d labelled "
                     "train pairs | global batch %d%s", a.epochs, len(pseudo), len(data["heldout"]), len(train),
                     a.batch_size, f" over {ctx.world_size} processes" if ctx.distributed else "")
            log.info("student parameters: %s", ", ".join(f"{k} {v:,}" for k, v in student.num_parameters().items()))
        kill_after = int(os.environ.get(KILL_ENV, "0") or 0)

        def run_pass(phase: str, pairs: list[Any], mode: str) -> None:
            epoch = pos["epoch"]
            batches = epoch_batches(len(pairs), a.batch_size, a.seed, epoch, phase)
            running = progress["running"]
            total = len(pairs)
            done = sum(len(b) for b in batches[:pos["step"]])
            bar = self._bar(total=total, initial=done, desc=f"epoch {epoch}/{a.epochs} {phase}")
            log_every = max(1, len(batches) // 5)
            student.train()
            todo = batches[pos["step"]:]
            shares = [rank_slice(b, ctx.rank, ctx.world_size) for b in todo]
            prepared = prefetched(shares, lambda idx: prepare_batch([pairs[i] for i in idx], vocab, source))
            for batch_idx, batch in zip(todo, prepared):
                start = time.perf_counter()
                rel, lm = runner.step(mode, batch)
                seconds = time.perf_counter() - start
                key = "pseudo" if phase == "pseudo" else "labelled"
                running[f"{key}_rel"] = running.get(f"{key}_rel", 0.0) + rel
                running[f"{key}_lm"] = running.get(f"{key}_lm", 0.0) + lm
                running[f"{key}_steps"] = running.get(f"{key}_steps", 0) + 1
                running["pairs"] = running.get("pairs", 0) + len(batch_idx)
                running["seconds"] = running.get("seconds", 0.0) + seconds
                pos["step"] += 1
                pos["global_step"] += 1
                bar.update(len(batch_idx))
                bar.set_postfix(loss=f"{rel + lm:.3f}", refresh=False)
                if ctx.is_main and (pos["step"] % log_every == 0 or pos["step"] == len(batches)):
                    parts = f"relation {rel:.4f}, LM {lm:.4f}" if mode == "joint" else "relation, θ_RGN only"
                    log.info("| epoch %3d | %-8s | %4d/%d batches | %6.0f ms/batch | loss %.4f (%s) | %.1f pairs/s",
                             epoch, phase, pos["step"], len(batches), 1000 * seconds, rel + lm, parts,
                             running["pairs"] / max(running["seconds"], 1e-9))
                last_of_epoch = pos["step"] == len(batches) and (phase == "labelled" or not a.use_image)
                if a.checkpoint_every and pos["global_step"] % a.checkpoint_every == 0 and not last_of_epoch:
                    self._save_checkpoint(MID_EPOCH_DIR, student, optimizers, schedulers, progress)
                if kill_after and pos["global_step"] == kill_after:
                    bar.close()
                    for handler in log.handlers:
                        handler.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
            bar.close()

        while pos["epoch"] <= a.epochs:
            epoch = pos["epoch"]
            if pos["phase"] == "pseudo":
                # Algorithm 1 lines 2-6: task 1 + task 2 on the pseudo-labelled pairs, all parameters
                run_pass("pseudo", pseudo, "joint")
                if a.use_image:
                    progress["running"]["after_pseudo"] = self._evaluate(student, data, source, perplexity=False)
                pos.update(phase="labelled", step=0)
            if a.use_image:
                # lines 7-11: task 1 on the labelled data, θ_RGN only
                run_pass("labelled", train, "rgn")
            scores = self._evaluate(student, data, source, perplexity=True)
            row = self._history_row(epoch, progress["running"], scores, teacher, optimizers)
            history.append(row)
            for sched in schedulers.values():
                metric = row["FINETUNED_DEV_F1"] if a.use_image else -row["HELDOUT_PPL"]
                sched.step(metric)
            best = select_best(history)
            is_best = best == len(history) - 1
            if is_best:
                progress["best_epoch"] = epoch
            self._log_epoch(row, is_best)
            pos.update(epoch=epoch + 1, phase="pseudo", step=0)
            progress["running"] = {}
            if is_best and ctx.is_main:
                with atomic_directory(self.out / "best") as tmp:
                    student.save(tmp)
                    atomic_write_text(tmp / "selection.json", json.dumps(
                        {"epoch": epoch, "rule": "highest FINETUNED_DEV_F1, ties -> lower HELDOUT_PPL (dev only)",
                         "metrics": row}, indent=2, sort_keys=True))
            self._save_checkpoint(f"epoch-{epoch}", student, optimizers, schedulers, progress)
            if ctx.is_main:
                write_metrics(self.out / METRICS_FILE, history)
                shutil.rmtree(self.out / MID_EPOCH_DIR, ignore_errors=True)
                self._prune_checkpoints()
            ctx.barrier()
        if ctx.is_main:
            write_metrics(self.out / METRICS_FILE, history)
            student.save(self.out / "final")
        ctx.barrier()
        return student, history, progress["best_epoch"]

    def _history_row(self, epoch: int, running: dict[str, Any], scores: dict[str, Any], teacher: dict[str, Any],
                     optimizers: dict) -> dict[str, Any]:
        def f1(block: dict | None, split: str, key: str = "f1") -> float | None:
            return None if not block or split not in block else float(block[split][key])

        after = running.get("after_pseudo")
        p_steps, l_steps = running.get("pseudo_steps", 0), running.get("labelled_steps", 0)
        return {
            "EPOCH": epoch,
            "TIMESTAMP": datetime.now().strftime("%H:%M:%S"),
            "LEARNING_RATE": float(optimizers["joint"].param_groups[0]["lr"]),
            "PSEUDO_LOSS": (running.get("pseudo_rel", 0.0) + running.get("pseudo_lm", 0.0)) / max(p_steps, 1),
            "PSEUDO_REL_LOSS": running.get("pseudo_rel", 0.0) / max(p_steps, 1) if self.args.use_image else None,
            "PSEUDO_LM_LOSS": running.get("pseudo_lm", 0.0) / max(p_steps, 1),
            "LABELLED_LOSS": running.get("labelled_rel", 0.0) / l_steps if l_steps else None,
            "TEACHER_DEV_F1": f1(teacher, "dev"),
            "TEACHER_TEST_F1": f1(teacher, "test"),
            "PSEUDO_DEV_F1": f1(after, "dev"),
            "PSEUDO_TEST_F1": f1(after, "test"),
            "FINETUNED_DEV_F1": f1(scores, "dev"),
            "FINETUNED_TEST_F1": f1(scores, "test"),
            "FINETUNED_TEST_MACRO_F1": f1(scores, "test", "macro_f1"),
            "FINETUNED_TEST_ACC": f1(scores, "test", "accuracy"),
            "HELDOUT_PPL": scores["lm"]["ppl"] if "lm" in scores else None,
            "IMAGE_GAIN": _number(scores.get("lm", {}).get("image_gain")),
            "GATE_SEPARATION": _number(scores.get("lm", {}).get("gate_separation")),
            "PAIRS_PER_SECOND": running.get("pairs", 0) / max(running.get("seconds", 0.0), 1e-9),
        }

    def _log_epoch(self, row: dict[str, Any], is_best: bool) -> None:
        if not self.ctx.is_main:
            return
        self._log_line()
        log.info("EPOCH %d done: pseudo loss %.4f | labelled loss %s | lr %.4g | %.1f pairs/s", row["EPOCH"],
                 row["PSEUDO_LOSS"], "-" if row["LABELLED_LOSS"] is None else f"{row['LABELLED_LOSS']:.4f}",
                 row["LEARNING_RATE"], row["PAIRS_PER_SECOND"])
        if self.args.use_image:
            log.info("relation F1 (image adds)  dev / test: teacher %s / %s | after pseudo pass %s / %s | "
                     "after fine-tuning %s / %s", _fmt(row["TEACHER_DEV_F1"]), _fmt(row["TEACHER_TEST_F1"]),
                     _fmt(row["PSEUDO_DEV_F1"]), _fmt(row["PSEUDO_TEST_F1"]), _fmt(row["FINETUNED_DEV_F1"]),
                     _fmt(row["FINETUNED_TEST_F1"]))
        log.info("held-out perplexity %.2f%s", row["HELDOUT_PPL"] if row["HELDOUT_PPL"] is not None else math.nan,
                 " | new best on dev -> best/" if is_best else "")
        if self.args.use_image:
            log.info("image gain %s nats/token (held-out LM loss, images shuffled among pairs minus own images; "
                     "> 0: the LM uses the image) | gate separation %s (mean s_G, pseudo 'adds' minus 'doesn't add')",
                     _fmt_plain(row["IMAGE_GAIN"], 4), _fmt_plain(row["GATE_SEPARATION"], 3))
        self._log_line()

    # -- the whole run ---------------------------------------------------------------------------------------
    def _log_header(self) -> None:
        a = self.args
        self._log_line()
        log.info("RIVA pretraining (Sun et al., COLING 2020) -> %s%s", self.out, " (resuming)" if self.resuming else "")
        if self.demo:
            log.info("no data options: running on the demo world in %s", self.demo_root)
            log.info("demo-world defaults: %s", "; ".join(self.demo_notes) or "none (all given explicitly)")
        else:
            log.info("relation data %s | unlabelled %s | images %s", self.relation_path, self.unlabelled_path,
                     self.image_dir or "(relative to the data files)")
        log.info("model: RGN %dx%d, VLCN %dx%d, %d heads, word %s + char %d/%d, dropout %g, image %s, gate %s",
                 a.rgn_layers, a.rgn_hidden_size, a.vlcn_layers, a.vlcn_hidden_size, a.num_heads,
                 a.word_dim or "(from vectors)", a.char_dim, a.char_hidden_size, a.dropout, a.use_image, a.gate)
        if a.use_image:
            log.info("backbone %s, weights %s, %s", a.backbone, a.backbone_weights,
                     "frozen (feature cache)" if self.frozen else f"fine-tuned at lr {a.backbone_lr:g}")
        log.info("optimizer %s lr %g, batch %d, clip %g | teacher %d epochs, %d epochs of Algorithm 1 | "
                 "threshold %g | seed %d | %s", a.optimizer, a.lr, a.batch_size, a.clip, a.teacher_epochs,
                 a.epochs, a.threshold, a.seed, self.ctx.describe())
        self._log_line()

    def _open_log(self) -> logging.Handler:
        path = self.out / LOG_FILE
        if self.resuming:
            # flair's add_file_handler opens with mode "w", which would erase the log of the interrupted run
            handler = logging.FileHandler(path, mode="a", encoding="utf-8")
            handler.setLevel(logging.INFO)
            handler.setFormatter(logging.Formatter("%(asctime)-15s %(message)s"))
            log.addHandler(handler)
            return handler
        from flair.training_utils import add_file_handler

        return add_file_handler(log, path)

    def run(self) -> PretrainResult:
        start = time.time()
        handler = None
        error: str | None = None
        ctx = self.ctx
        level = log.level
        if not ctx.is_main:
            log.setLevel(logging.WARNING)  # one copy of the INFO lines (rank 0's) is enough
        try:
            if ctx.is_main:
                try:
                    self.check_args()
                    self.locate_data()
                    self.check_inputs()
                    self.resuming = self.prepare_output()
                    self._clean_temp()
                    handler = self._open_log()
                    self._log_header()
                    self.prepare_stages()
                except PretrainError as err:
                    error = str(err)
                    log.error("error: %s", error)
                except BaseException as err:
                    ctx.broadcast_object(f"rank 0 failed: {type(err).__name__}: {err}")
                    raise
            error = ctx.broadcast_object(error)
            if error is not None:
                raise PretrainError(error)
            if not ctx.is_main:
                self.check_args()
                self.locate_data()
                self.resuming = self.args.resume
            data = self.load_prepared()
            _, history, best_epoch = self.algorithm_one(data)
            seconds = time.time() - start
            result = PretrainResult(
                output=self.out, final_dir=self.out / "final",
                best_dir=self.out / "best" if best_epoch is not None else None, best_epoch=best_epoch,
                teacher=self.run_state.get("teacher", {}), pseudo=self.run_state.get("pseudo", {}),
                history=history, seconds=seconds)
            if ctx.is_main:
                self._log_summary(result)
            return result
        finally:
            log.setLevel(level)
            if handler is not None:
                log.removeHandler(handler)
                handler.close()

    def _log_summary(self, result: PretrainResult) -> None:
        self._log_line()
        log.info("done in %.1f s: best/ = epoch %s (chosen on dev), final/ = epoch %d", result.seconds,
                 result.best_epoch, len(result.history))
        if result.teacher:
            log.info("teacher: test %s", RelationScores.from_dict(result.teacher["test"]))
        if result.history:
            last = result.history[-1]
            log.info("Table 3 columns (test F1, image adds): teacher %s | pseudo-labelled %s | + fine-tuning %s",
                     _fmt(last["TEACHER_TEST_F1"]), _fmt(last["PSEUDO_TEST_F1"]), _fmt(last["FINETUNED_TEST_F1"]))
        if self.args.use_image and result.history:
            gain = result.history[-1].get("IMAGE_GAIN")
            if gain is not None and gain <= 0:
                log.warning("the language model does not use the image: image gain %.4f nats/token on the held-out "
                            "pairs (LM loss with shuffled images minus own images) is not above 0; its token "
                            "vectors will not carry what the image shows (README: 'Is the image used?')", gain)
        log.info("run folder: %s", self.out)
        self._log_line()


def run_pretraining(args: PretrainArgs) -> PretrainResult:
    """Run (or resume) RIVA pretraining; see the module docstring. Raises :class:`PretrainError` for bad
    input before training starts. Under ``torchrun`` every rank calls this; only rank 0 writes files."""
    ctx = DistContext.from_env(args.device)
    try:
        return Pretrainer(args, ctx).run()
    finally:
        ctx.close()


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    d = PretrainArgs()

    def both(name: str) -> str:
        return f"paper {PAPER_DEFAULTS[name]}; demo world {DEMO_DEFAULTS[name]}"

    p = argparse.ArgumentParser(
        prog="python -m flair_riva.pretrain",
        description="Pretrain RIVA (Sun et al., COLING 2020): teacher on labelled text-image relation data, "
                    "pseudo-labels on unlabelled pairs, then Algorithm 1. With no data options it runs on the "
                    "built-in demo world (demo defaults, logged). Also runs under torchrun.")
    g = p.add_argument_group("data")
    g.add_argument("--relation-data", metavar="FILE", help="labelled relation pairs (CSV/TSV: text, image, image_adds)")
    g.add_argument("--unlabelled", metavar="FILE", help="unlabelled pairs (JSONL or TSV: text, image), streamed")
    g.add_argument("--image-dir", metavar="DIR",
                   help="where relative image paths resolve (default: the data file's folder)")
    g.add_argument("--word-vectors", metavar="FILE",
                   help="GloVe/word2vec text or binary, or flair-riva .safetensors vectors (sets --word-dim); "
                        "pickled gensim .kv/.model files are refused: convert them with "
                        "python -m flair_riva.convert_vectors")
    g.add_argument("--output", metavar="DIR", default=d.output, help="run folder (default: %(default)s)")
    g.add_argument("--demo-dir", metavar="DIR", help="demo world folder (default: FLAIR_CACHE_ROOT/riva/demo-world-v2)")
    g.add_argument("--demo-scale", default=d.demo_scale, help="demo world size: default, tiny or a factor")
    g = p.add_argument_group("model (Table 2)")
    g.add_argument("--word-dim", type=int, help=f"word vector size ({both('word_dim')})")
    g.add_argument("--char-dim", type=int, default=d.char_dim, help="character embedding dimension (%(default)s)")
    g.add_argument("--char-hidden-size", type=int, default=d.char_hidden_size,
                   help="character biLSTM hidden size (%(default)s)")
    g.add_argument("--rgn-hidden-size", type=int, help=f"biLSTM hidden size of the RGN ({both('rgn_hidden_size')})")
    g.add_argument("--rgn-layers", type=int, help=f"biLSTM layers of the RGN ({both('rgn_layers')})")
    g.add_argument("--vlcn-hidden-size", type=int, help=f"LSTM hidden size of the VLCN ({both('vlcn_hidden_size')})")
    g.add_argument("--vlcn-layers", type=int, help=f"LSTM layers of the VLCN ({both('vlcn_layers')})")
    g.add_argument("--num-heads", type=int, default=d.num_heads, help="attention heads h of the VCN (%(default)s)")
    g.add_argument("--backbone", default=d.backbone, choices=("resnet34", "resnet18"),
                   help="ResNet backbone (%(default)s)")
    g.add_argument("--backbone-weights", metavar="NAME|FILE|none",
                   help=f"torchvision weights name, a state-dict file, or none ({both('backbone_weights')})")
    g.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction, default=None,
                   help="freeze the ResNet and cache its features; otherwise it is fine-tuned at --backbone-lr "
                        "(paper: fine-tuned; demo world: frozen)")
    g.add_argument("--feature-cache", metavar="DIR",
                   help="feature cache of the frozen backbone (default: OUTPUT/feature-cache)")
    g.add_argument("--no-image", dest="use_image", action="store_false",
                   help="RIVA(text): no RGN/VCN, LM on the unlabelled texts only")
    g.add_argument("--no-gate", dest="gate", action="store_false", help="-RGN ablation: s_G = 1")
    g.add_argument("--vlcn-visual", choices=("paper", "start", "state", "step"), default=d.vlcn_visual,
                   help="how the gated visual vector enters the VLCN: 'paper' = FC+GELU(s_G v_c) replaces [BOS]/[EOS] "
                        "as in §3.3 (saturates); 'start' = [BOS] + s_G tanh(W v_c); 'state' = also the initial LSTM "
                        "states; 'step' = also appended to every token input (%(default)s; README design notes)")
    g.add_argument("--visual-norm", choices=("standardize", "layer"), default=d.visual_norm,
                   help="normalisation of ResNet features: per feature over images, or per vector (0.1.0) "
                        "(%(default)s)")
    g.add_argument("--gate-dropout", type=float, default=d.gate_dropout,
                   help="training only: probability that s_G is set to 0 on its way to the VLCN, so the "
                        "no-image input is trained every epoch (%(default)s)")
    g.add_argument("--max-vocab-size", type=int, default=d.max_vocab_size,
                   help="size cap of the LM's output vocabulary (%(default)s); the token encoder also reads every "
                        "word of --word-vectors")
    g.add_argument("--fine-tune-word-vectors", action="store_true",
                   help="train the --word-vectors with the model (default: frozen)")
    g.add_argument("--min-word-count", type=int, default=d.min_word_count,
                   help="minimum count of a vocabulary word (%(default)s)")
    g = p.add_argument_group("optimisation (Table 2)")
    g.add_argument("--epochs", type=int, help=f"epochs of Algorithm 1 ({both('epochs')})")
    g.add_argument("--teacher-epochs", type=int, help=f"teacher epochs ({both('teacher_epochs')})")
    g.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch size, split over torchrun ranks (%(default)s)")
    g.add_argument("--dropout", type=float, default=d.dropout, help="dropout rate (%(default)s)")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), help=f"optimizer ({both('optimizer')})")
    g.add_argument("--lr", type=float, help=f"learning rate ({both('lr')})")
    g.add_argument("--backbone-lr", type=float, default=d.backbone_lr,
                   help="learning rate of the fine-tuned ResNet (%(default)s)")
    g.add_argument("--teacher", metavar="DIR", default=None,
                   help="reuse a teacher another run trained on the same data and vocabulary (OTHER_RUN/teacher), "
                        "e.g. the image model's for the -RGN ablation")
    g.add_argument("--student-init", choices=("teacher", "fresh"), default=d.student_init,
                   help="the student's token encoder and RGN start from the teacher's weights, or random "
                        "(%(default)s)")
    g.add_argument("--rgn-lr-factor", type=float, default=d.rgn_lr_factor,
                   help="learning rate of the labelled RGN-only pass, as a factor of --lr (%(default)s)")
    g.add_argument("--clip", type=float, default=d.clip, help="gradient norm clipping, 0 = off (%(default)s)")
    g.add_argument("--anneal-factor", type=float, default=d.anneal_factor,
                   help="ReduceLROnPlateau factor on dev F1; 1 = constant learning rate, as in the paper (%(default)s)")
    g.add_argument("--patience", type=int, default=d.patience,
                   help="epochs without dev improvement before annealing (%(default)s)")
    g = p.add_argument_group("semi-supervision and splits")
    g.add_argument("--threshold", type=float, default=d.threshold,
                   help="keep pseudo labels whose top class score exceeds this (%(default)s)")
    g.add_argument("--heldout-fraction", type=float, default=d.heldout_fraction,
                   help="pseudo-labelled pairs held out for the LM perplexity (%(default)s)")
    g.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="labelled test part, 8:2 in the paper (%(default)s)")
    g.add_argument("--dev-fraction", type=float, default=d.dev_fraction,
                   help="dev part carved from the labelled train part (%(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="random seed (%(default)s)")
    g = p.add_argument_group("run control")
    g.add_argument("--resume", action="store_true", help="continue the run in --output (same arguments)")
    g.add_argument("--overwrite", action="store_true", help="delete a previous run in --output and start again")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="also checkpoint every N steps for mid-epoch resume; 0 = end of epoch only (%(default)s)")
    g.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help="epoch-N/ folders to keep (%(default)s)")
    g.add_argument("--device", help="torch device (default: flair.device; cuda:LOCAL_RANK under torchrun)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success, 2 for bad input (with a message on stderr)."""
    namespace = build_parser().parse_args(argv)
    known = {f.name for f in fields(PretrainArgs)}
    args = PretrainArgs(**{k: v for k, v in vars(namespace).items() if k in known})
    try:
        result = run_pretraining(args)
    except PretrainError as err:
        if int(os.environ.get("RANK", "0") or 0) == 0:
            print(f"error: {' '.join(str(err).split())}", file=sys.stderr)  # always one line
        return 2
    if int(os.environ.get("RANK", "0") or 0) == 0:
        print(f"RIVA pretraining finished in {result.seconds:.1f} s: final model {result.final_dir}, "
              f"best model {result.best_dir} (epoch {result.best_epoch})")
    return 0
