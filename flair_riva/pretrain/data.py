"""Data plumbing of the pretrainer: seeded splits, deterministic batches, image features, prefetching.

* :func:`stratified_split` makes the paper's 8:2 train/test split of the labelled relation data (§4.1,
  "the same split of 8:2 ... as in Vempala and Preoţiuc-Pietro (2019)"), stratified by label and seeded,
  and carves a dev part out of train for model selection.
* :func:`epoch_batches` shuffles with a generator seeded by (seed, epoch, stream) alone, so the batch
  order of an epoch is known without replaying the run: a resumed run skips the finished batches. Its
  batches are length-bucketed by default (``--length-buckets``), so the right-padded LSTMs pad less.
* :func:`rank_slice` gives each torchrun rank a disjoint part of every global batch.
* :class:`VisualSource` turns image paths into what the model consumes: cached region features of a
  frozen backbone (:class:`~flair_riva.vision.ImageFeaturizer`) or pixels for a backbone being
  fine-tuned (:func:`~flair_riva.vision.load_pixels`).
* :func:`prefetched` prepares the next batches (tokenising, image decoding, cache reads) in a
  background thread while the current one trains.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from flair_riva.text import TextBatch, Vocabulary, encode_batch
from flair_riva.vision import ImageFeaturizer, VisualFeatures, load_pixels

T = TypeVar("T")
R = TypeVar("R")

#: Salts of the shuffling streams, so the teacher, the pseudo-labelled pass and the labelled pass of the
#: same epoch never share an order.
STREAMS = {"teacher": 1, "pseudo": 2, "labelled": 3}


def stratified_split(labels: Sequence[int], seed: int, test_fraction: float = 0.2,
                     dev_fraction: float = 0.1) -> tuple[list[int], list[int], list[int]]:
    """Indices of (train, dev, test): ``test_fraction`` of each class is test (8:2 in the paper), then
    ``dev_fraction`` of each class's remainder is dev. Every part gets at least one pair of each class
    (the caller checks that each class has at least 3 pairs). Deterministic in ``seed``."""
    rng = random.Random(seed)
    train: list[int] = []
    dev: list[int] = []
    test: list[int] = []
    for cls in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == cls]
        rng.shuffle(idx)
        n_test = min(max(1, round(test_fraction * len(idx))), len(idx) - 2)
        rest = idx[n_test:]
        n_dev = min(max(1, round(dev_fraction * len(rest))), len(rest) - 1)
        test += idx[:n_test]
        dev += rest[:n_dev]
        train += rest[n_dev:]
    return sorted(train), sorted(dev), sorted(test)


def heldout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of (train, held-out) for the LM perplexity: ``fraction`` of ``n`` (at least one pair when
    ``n`` >= 2 and ``fraction`` > 0), chosen with a generator seeded by ``seed``."""
    k = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    held = set(random.Random(seed).sample(range(n), k))
    return [i for i in range(n) if i not in held], sorted(held)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, stream: str,
                  lengths: Sequence[int] | None = None, pool: int = 0) -> list[list[int]]:
    """The global batches of one epoch: a permutation of ``range(n)`` drawn from a generator seeded by
    (seed, epoch, stream) only, cut into batches of ``batch_size`` (the last one may be smaller).

    With ``lengths`` (tokens per pair) and ``pool`` > 0 the batches are *length-bucketed*, as fairseq's and
    AllenNLP's samplers do: the permutation is cut into pools of ``pool`` batches, each pool is sorted by
    length (stable) and cut into batches, and the order of all batches is shuffled by the same generator.
    Every pair is still in exactly one batch per epoch; a batch's tweets have similar lengths, so the
    right-padded LSTMs (:mod:`flair_riva.rnn`) run fewer padding steps. ``pool`` = 0 gives the plain
    batches (the order of flair-riva 0.1.0)."""
    rng = np.random.default_rng([seed, epoch, STREAMS[stream]])
    perm = rng.permutation(n).tolist()
    if pool <= 0 or lengths is None:
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    if len(lengths) != n:
        raise ValueError(f"{len(lengths)} lengths for {n} pairs")
    size = pool * batch_size
    batches: list[list[int]] = []
    for start in range(0, n, size):
        part = sorted(perm[start:start + size], key=lengths.__getitem__)
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches)).tolist()]


def rank_slice(batch: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s contiguous share of a global batch (sizes differ by at most one; may be empty)."""
    n = len(batch)
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return list(batch[start:start + base + (1 if rank < extra else 0)])


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items from a stream (the last may be shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def prefetched(items: Iterable[T], fn: Callable[[T], R], depth: int = 2) -> Iterator[R]:
    """``fn(item)`` for each item, in order, computed up to ``depth`` items ahead in one background thread
    (image decoding and feature-cache reads overlap with the training step)."""
    if depth <= 0:
        for item in items:
            yield fn(item)
        return
    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="riva-prefetch") as pool:
        pending: deque = deque()
        for item in iterator:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                break
        while pending:
            future = pending.popleft()
            nxt = next(iterator, _END)
            if nxt is not _END:
                pending.append(pool.submit(fn, nxt))
            yield future.result()


_END = object()


@dataclass
class PreparedBatch:
    """One rank's share of a batch, ready for the model (CPU tensors until :meth:`VisualSource.features`)."""

    text: TextBatch | None
    """Encoded tokens; None for an empty share (more ranks than pairs in a final batch)."""
    labels: torch.Tensor
    """(B,) long relation labels (-1 where there is none)."""
    visual: Any
    """What :meth:`VisualSource.prepare` returned (None for the text-only model)."""
    has_image: torch.Tensor
    """(B,) bool."""
    size: int

    @property
    def num_images(self) -> int:
        return int(self.has_image.sum())

    @property
    def num_lm_tokens(self) -> int:
        """Words predicted by the bidirectional LM of Eq. (7): every token, once per direction."""
        return 0 if self.text is None else 2 * int(self.text.lengths.sum())


class VisualSource:
    """Image paths -> model input, for a frozen backbone (cached features) or a fine-tuned one (pixels).

    Args:
        featurizer: used when the backbone is frozen: region features come from the feature cache and
            each image passes through ResNet once (DESIGN §3). ``None`` with ``use_image`` means the
            backbone is fine-tuned: pixels are decoded per batch and the model's own backbone runs.
        use_image: False for the text-only ablation (no visual input at all).
    """

    def __init__(self, featurizer: ImageFeaturizer | None, use_image: bool = True) -> None:
        self.featurizer = featurizer
        self.use_image = use_image

    @property
    def frozen(self) -> bool:
        return self.featurizer is not None

    def prepare(self, paths: Sequence[str | Path | None]) -> tuple[Any, torch.Tensor]:
        """CPU side (safe to run in the prefetch thread): ``(visual input, has_image)``."""
        if not self.use_image:
            return None, torch.zeros(len(paths), dtype=torch.bool)
        if self.featurizer is not None:
            features = self.featurizer(paths)
            return features, features.has_image.clone()
        pixels, has_image, reasons = load_pixels(paths)
        return (pixels, has_image, reasons), has_image.clone()

    def features(self, model, prepared: Any, grad: bool) -> VisualFeatures | None:
        """Device side: the :class:`VisualFeatures` the model consumes. With a fine-tuned backbone the
        model's ResNet runs here, with gradients when ``grad`` (Algorithm 1 line 5 updates it too)."""
        if not self.use_image:
            return None
        if isinstance(prepared, VisualFeatures):  # cached features of the frozen backbone
            return prepared.to(model.device)
        pixels, has_image, reasons = prepared
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return model.visual_from_pixels(pixels, has_image, reasons)


def prepare_batch(pairs: Sequence[Any], vocab: Vocabulary, source: VisualSource) -> PreparedBatch:
    """Tokens, labels and visual input of a list of :class:`~flair_riva.datasets.RelationPair`."""
    labels = torch.tensor([-1 if p.label is None else int(p.label) for p in pairs], dtype=torch.long)
    if not pairs:
        return PreparedBatch(None, labels, None, torch.zeros(0, dtype=torch.bool), 0)
    text = encode_batch(vocab, [p.tokens for p in pairs])
    visual, has_image = source.prepare([p.image for p in pairs])
    return PreparedBatch(text, labels, visual, has_image, len(pairs))
