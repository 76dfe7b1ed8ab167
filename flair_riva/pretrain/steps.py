"""One batch loop and one optimisation step, shared by the teacher, both passes of Algorithm 1 and evaluation.

* :func:`prepared_batches` is the loop every stage runs: chunks of pairs -> :class:`PreparedBatch`
  (tokens, labels, visual input) prepared in a background thread.
* :class:`StepRunner` is one update (forward through :class:`LossModule`, the model's own losses,
  normalisation over the global batch, backward, clip, step), and :func:`training_steps` a pass of them.
* :func:`relation_probabilities` runs the teacher's or the student's RGN over pairs (relation scores on
  dev/test, pseudo-labels); :func:`evaluate_lm` measures the LM and whether it uses the image.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from flair_riva.model import RivaModel
from flair_riva.pretrain.data import PreparedBatch, VisualSource, chunked, prefetched, prepare_batch, rank_slice
from flair_riva.pretrain.distributed import DistContext
from flair_riva.pretrain.metrics import RelationScores, relation_scores
from flair_riva.pretrain.options import PretrainError
from flair_riva.text import Vocabulary
from flair_riva.vision import VisualFeatures

#: What each mode of a step trains (the model's names, :meth:`RivaModel.trainable_parameters`) and the
#: stage it belongs to (for error messages).
STAGES = {"teacher": "stage 1 (teacher)", "joint": "stage 3 (Algorithm 1, pseudo-labelled pass)",
          "rgn": "stage 3 (Algorithm 1, labelled θ_RGN pass)"}


def autocast(model: RivaModel):
    """bf16 autocast on CUDA only (the CPU path runs in float32)."""
    if model.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepared_batches(chunks: Iterable[Sequence[Any]], vocab: Vocabulary, source: VisualSource
                     ) -> Iterator[tuple[Sequence[Any], PreparedBatch]]:
    """``(pairs, prepared batch)`` per chunk of pairs, prepared one or two chunks ahead in a background thread."""
    return prefetched(chunks, lambda chunk: (chunk, prepare_batch(chunk, vocab, source)))


class LossModule(nn.Module):
    """The loss terms of one step, as a module so DistributedDataParallel can synchronise gradients.

    Modes: ``"teacher"`` (task 1 through :meth:`RivaModel.relation_logits`: the teacher of §3.1),
    ``"joint"`` (Algorithm 1 lines 3-4, task 1 + task 2 through the whole model) and ``"rgn"`` (lines
    8-9, task 1 with gradients for θ_RGN only: the token inputs and image features carry none).
    ``forward`` returns the *summed* relation cross-entropy and LM negative log-likelihood of this rank's
    share (:meth:`RivaModel.relation_loss_sum`, :meth:`RivaModel.lm_loss_sum`); :class:`StepRunner`
    divides by the global counts.
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
        if mode not in STAGES:
            raise ValueError(f"unknown step mode {mode!r}")
        text = batch.text.to(model.device)
        labels = batch.labels.to(model.device)
        visual = self.source.features(model, batch.visual, grad=mode != "rgn")
        if mode == "joint":
            out = model(text, visual)
            lm, _ = model.lm_loss_sum(out, text)
            if out.relation_logits is None:  # RIVA(text): task 2 only
                return lm.new_zeros(()), lm
            return model.relation_loss_sum(out.relation_logits, labels, visual.has_image)[0], lm
        logits = model.relation_logits(text, visual, rgn_only=mode == "rgn")
        return model.relation_loss_sum(logits, labels, visual.has_image)[0], logits.new_zeros(())


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

    def _diverged(self, mode: str, what: str) -> PretrainError:
        step = self.updates.get(mode, 0) + 1
        return PretrainError(
            f"non-finite {what} in {STAGES.get(mode, mode)}, update {step} of this run: training diverged "
            "(lower --lr / --backbone-lr, or set --clip); nothing from this update was saved")

    def step(self, mode: str, batch: PreparedBatch) -> tuple[float, float]:
        """One update; returns the global-batch means (relation CE, LM NLL per token).

        A non-finite loss, gradient norm or updated weight stops the run with a :class:`PretrainError`
        naming the stage and update (the same on every rank: the checks use all-reduced values)."""
        n_rel = int((batch.has_image & (batch.labels >= 0)).sum()) if batch.text is not None else 0
        n_tok = batch.num_lm_tokens if mode == "joint" else 0
        with autocast(self.model):
            rel_sum, lm_sum = self.wrapped(mode, batch)
        totals = self.ctx.all_reduce_sum([n_rel, n_tok, float(rel_sum.detach()), float(lm_sum.detach())])
        n_rel_g, n_tok_g, rel_g, lm_g = totals
        if not (math.isfinite(rel_g) and math.isfinite(lm_g)):
            raise self._diverged(mode, f"loss (relation {rel_g}, LM {lm_g})")
        loss = self.ctx.world_size * (rel_sum / max(n_rel_g, 1.0) + lm_sum / max(n_tok_g, 1.0))
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


@dataclass
class Step:
    """One finished update of a pass."""

    pairs: int
    """Pairs in the global batch."""
    relation: float
    lm: float
    seconds: float


def training_steps(runner: StepRunner, mode: str, pairs: Sequence[Any], batches: Sequence[list[int]],
                   vocab: Vocabulary, source: VisualSource) -> Iterator[Step]:
    """A pass of updates over the global ``batches`` (indices into ``pairs``); each rank trains its share."""
    ctx = runner.ctx
    runner.model.train()
    shares = ([pairs[i] for i in rank_slice(b, ctx.rank, ctx.world_size)] for b in batches)
    for indices, (_, batch) in zip(batches, prepared_batches(shares, vocab, source)):
        start = time.perf_counter()
        relation, lm = runner.step(mode, batch)
        yield Step(len(indices), relation, lm, time.perf_counter() - start)


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


# -- evaluation -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def evaluating(model: RivaModel):
    """Eval mode for the block; the model's mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def relation_probabilities(model: RivaModel, pairs: Iterable[Any], source: VisualSource, batch_size: int = 64
                           ) -> Iterator[tuple[Sequence[Any], PreparedBatch, torch.Tensor | None]]:
    """``(pairs, batch, (B, 2) class probabilities or None when no pair of the batch has an image)`` of the
    RGN over a stream of pairs, in eval mode (pairs without an image get no probability)."""
    with evaluating(model):
        for chunk, batch in prepared_batches(chunked(pairs, batch_size), model.vocab, source):
            probs = None
            if bool(batch.has_image.any()):
                with torch.no_grad(), autocast(model):  # per batch: the caller runs between the batches
                    logits = model.relation_logits(batch.text.to(model.device),
                                                   source.features(model, batch.visual, grad=False))
                probs = logits.float().softmax(dim=-1).cpu()
            yield chunk, batch, probs


def evaluate_relation(model: RivaModel, pairs: Sequence[Any], source: VisualSource,
                      batch_size: int = 64) -> RelationScores:
    """Relation scores of ``model``'s RGN on labelled pairs (pairs without a readable image are counted
    and left out: the RGN needs an image)."""
    gold: list[int] = []
    pred: list[int] = []
    without = 0
    for _, batch, probs in relation_probabilities(model, pairs, source, batch_size):
        without += int((~batch.has_image).sum())
        keep = batch.has_image & (batch.labels >= 0)
        if probs is not None and bool(keep.any()):
            gold += batch.labels[keep].tolist()
            pred += probs.argmax(dim=-1)[keep].tolist()
    return relation_scores(gold, pred, without)


def _permuted(visual: VisualFeatures, perm: torch.Tensor) -> VisualFeatures:
    """The batch's images given to other items of the batch (item i gets the image of ``perm[i]``)."""
    return VisualFeatures(visual.regions[perm], visual.pooled[perm], visual.has_image[perm],
                          [visual.reasons[int(j)] for j in perm])


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
    total, shuffled, count = 0.0, 0.0, 0
    gates: dict[int, list[float]] = {0: [], 1: []}
    with evaluating(model), torch.no_grad():
        for _, batch in prepared_batches(chunked(pairs, batch_size), model.vocab, source):
            text = batch.text.to(model.device)
            visual = source.features(model, batch.visual, grad=False)
            with autocast(model):
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
