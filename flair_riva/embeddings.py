"""RivaEmbeddings: RIVA's visual-linguistic context vectors as a Flair ``TokenEmbeddings`` (paper §4.2).

For the MNER task the paper feeds the biLSTM-CRF with ``[e_k; e_k^RIVA]``, where ``e_k^RIVA`` is the
concatenation of the forward and backward hidden states of the VLCN's top LSTM layer for token k
(§4.2). In Flair that is a stack::

    from flair.embeddings import StackedEmbeddings, WordEmbeddings
    from flair_riva import RivaEmbeddings

    stack = StackedEmbeddings([WordEmbeddings("glove.kv"), RivaEmbeddings("path/to/riva-model")])

How it works
------------
* **One pass per mini-batch.** The token texts of all sentences (``token.text``; Flair tokens map 1:1
  to RIVA tokens) go through :meth:`RivaModel.embed` together with the sentences' images, read from the
  metadata ``image_key`` (``"image_path"``, set by :class:`~flair_riva.datasets.TwitterMNERCorpus`).
  Every token gets ``[h_fwd; h_bwd]`` (``model.config.embedding_length`` dims, 512 with Table 2).
* **Images.** The ResNet backbone is frozen here (also with ``fine_tune=True``): region features come
  from :class:`~flair_riva.vision.ImageFeaturizer`, through an on-disk
  :class:`~flair_riva.vision.FeatureCache` when ``feature_cache`` is given, so each image passes
  through ResNet once per backbone.
* **Missing images.** A sentence without a usable image (no metadata, ``None``, a missing file, a
  directory, an unreadable or corrupt file) is embedded with s_G = 0 (§3.1: "the image does not
  add"); v_c^G = s_G * v_c is then zero whatever the VCN computes, so only the token encoder and the
  VLCN run for it. The count and the reasons are logged once per batch, never per token.
* **Inspection (§4.7, Table 7).** After embedding, each sentence carries the metadata
  ``riva_relevance`` (s_G as a float), ``riva_attention`` (the 7 x 7 head-averaged attention of
  Eq. 8 as nested lists, ``None`` without an image) and ``riva_image_reason`` (``None`` or why there
  was no image). :meth:`RivaEmbeddings.attention_map` returns the map as a tensor, and
  :func:`flair_riva.visualize.draw_table7` draws the Table 7 view.
* **Frozen by default** (``fine_tune=False``): computed under ``torch.no_grad``, parameters with
  ``requires_grad=False``, always in eval mode (no dropout) while the tagger trains, so Flair's
  embedding storage (``embeddings_storage_mode="cpu"``) keeps the vectors and no sentence is embedded
  twice across epochs. With storage mode ``"none"`` an in-process memo
  (:attr:`RivaEmbeddings.vector_memo_size` sentences, keyed by the token texts and the image file) does the
  same. ``fine_tune=True`` trains the token encoder, RGN, VCN and VLCN with the tagger (the ResNet backbone
  stays frozen; its features still come from the cache).

Saving and loading
------------------
A tagger saved with this embedding loads with a plain ``SequenceTagger.load(path)`` in a fresh
process that never imports ``flair_riva``: :meth:`to_params` holds the :class:`RivaConfig` *object*,
whose unpickling imports ``flair_riva`` and thereby registers this class with Flair (notes §1.3).
:meth:`from_params` rebuilds the same module tree with random weights and without any file I/O or
download; the weights arrive through the tagger's strict ``load_state_dict``. Every constructor
argument that changes the output (``fine_tune``, ``use_image``, ``image_key``, ``feature_cache``,
``name``) is saved; a saved feature-cache directory that does not exist on the loading machine is
not an error (features are computed, logged once).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flair
import torch
from flair.data import Sentence
from flair.embeddings import TokenEmbeddings
from flair.embeddings.base import register_embeddings

from flair_riva.config import RivaConfig
from flair_riva.datasets import sentence_image
from flair_riva.model import RivaModel
from flair_riva.text import Vocabulary
from flair_riva.vision import ImageFeaturizer, VisualFeatures, open_featurizer

log = logging.getLogger("flair")

#: Version of the ``to_params`` layout (stored in saved taggers).
PARAMS_VERSION = 1

RELEVANCE_KEY = "riva_relevance"
ATTENTION_KEY = "riva_attention"
REASON_KEY = "riva_image_reason"
RELEVANCES_KEY = "riva_relevances"
"""Metadata ``{embedding name: s_G}`` of every RIVA embedding that embedded the sentence (a stack may hold several)."""


@dataclass
class _Embedded:
    """One sentence's output: (T, 2H) token states, s_G, the 7 x 7 attention (lists) or None, and whether it
    had an image (else why not)."""

    states: torch.Tensor
    s_g: float
    attention: list | None
    has_image: bool
    reason: str | None


def _clear_vector_memo(module: RivaEmbeddings, incompatible_keys) -> None:
    """``load_state_dict`` post hook: new weights, so the memoised outputs are stale."""
    module.clear_vector_memo()


def model_fingerprint(config: RivaConfig, vocab: Vocabulary, length: int = 10) -> str:
    """Short stable hash of a model's architecture and vocabulary (used in the default name)."""
    h = hashlib.sha256()
    h.update(config.to_json().encode("utf-8"))
    h.update(b"\n")
    h.update(vocab.to_json().encode("utf-8"))
    return h.hexdigest()[:length]


@register_embeddings("RivaEmbeddings")
class RivaEmbeddings(TokenEmbeddings):
    """RIVA token embeddings ``[h_fwd; h_bwd]`` of the VLCN's top layer (paper §4.2) for Flair.

    Args:
        model: a RIVA model directory (written by :meth:`RivaModel.save`, read with
            :meth:`RivaModel.load`) or a :class:`RivaModel`.
        fine_tune: train the RIVA text encoder, RGN, VCN and VLCN together with the tagger. The ResNet
            backbone is never trained here (its features come through the feature cache). Default
            ``False``: frozen, static vectors, eval mode.
        use_image: ``False`` embeds every sentence text-only (s_G = 0). Implied for a RIVA(text)
            model (``config.use_image=False``).
        image_key: the sentence metadata key that holds the image path.
        feature_cache: a directory for the on-disk region-feature cache (keyed by the backbone's
            fingerprint and the image's content hash), or ``None`` (features are computed, and
            memoised in memory for this process).
        name: the embedding's name (Flair keys token vectors by it). Default
            ``riva-<fingerprint of config and vocabulary>-image`` (or ``-text``).
        force_relevance: a control, not for tagging: s_G forced to this value in [0, 1] for every sentence
            with an image (1 lets every image through the gate, as ``-RGN`` does; 0 none) instead of the
            RGN's score (§3.1). Sentences without an image keep s_G = 0. Default ``None``: the RGN decides.

    A :class:`RivaModel` passed in is used as is (not copied): the constructor sets its
    ``requires_grad`` flags (all off when frozen; on for everything but the backbone and the
    next-word softmax when fine-tuned) and its train/eval mode follows this embedding.
    """

    memo_size: int = 1024
    """In-process LRU memo of image features (entries of ~100 KB; 0 disables it). Not saved: it
    changes speed, never the output."""
    vector_memo_size: int = 8192
    """In-process LRU memo of a frozen embedding's output per sentence (its token texts and image file: device,
    inode, size and modification time), so that a trainer which does not store embeddings (Flair's
    ``embeddings_storage_mode="none"``) runs RIVA once per sentence, not once per epoch. 0 disables it;
    ``fine_tune=True`` never uses it. Not saved; emptied when weights are loaded (``load_state_dict``). Weights
    changed in place otherwise need :meth:`clear_vector_memo`."""

    force_relevance: float | None = None
    """The constructor's ``force_relevance`` (a class default as well, for embeddings pickled before it existed)."""

    def __init__(
        self,
        model: str | Path | RivaModel,
        *,
        fine_tune: bool = False,
        use_image: bool = True,
        image_key: str = "image_path",
        feature_cache: str | Path | None = None,
        name: str | None = None,
        force_relevance: float | None = None,
    ) -> None:
        if isinstance(model, RivaModel):
            riva = model
        elif isinstance(model, (str, Path)):
            riva = RivaModel.load(model)
        else:
            raise TypeError(f"RivaEmbeddings needs a RivaModel or a model directory, not {type(model).__name__}")
        if not isinstance(image_key, str) or not image_key:
            raise ValueError(f"image_key must be a non-empty string, got {image_key!r}")
        if force_relevance is not None and not 0.0 <= float(force_relevance) <= 1.0:
            raise ValueError(f"force_relevance (a forced s_G) must be in [0, 1] or None, got {force_relevance!r}")
        effective_use_image = bool(use_image) and bool(riva.config.use_image)
        default_name = f"riva-{model_fingerprint(riva.config, riva.vocab)}-{'image' if effective_use_image else 'text'}"
        self.name = name if name is not None else default_name
        self.static_embeddings = not fine_tune
        super().__init__()

        self.model = riva
        self.fine_tune = bool(fine_tune)
        self.use_image = effective_use_image
        self.image_key = image_key
        self.feature_cache = str(feature_cache) if feature_cache is not None else None
        self.force_relevance = float(force_relevance) if force_relevance is not None else None
        self._from_params = False
        self._featurizer: ImageFeaturizer | None = None
        self.image_stats: Counter[str] = Counter()
        """Cumulative counts: ``sentences``, ``with_image``, and ``no image: <reason>`` per reason."""
        self._vector_memo: OrderedDict[tuple, _Embedded] = OrderedDict()
        self.register_load_state_dict_post_hook(_clear_vector_memo)

        self.model.requires_grad_(False)
        if self.fine_tune:
            for params in self.model.trainable_parameters("fine_tune").values():
                for p in params:
                    p.requires_grad_(True)
        if use_image and not riva.config.use_image:
            log.info("RivaEmbeddings %s: the model is RIVA(text) (use_image=False): embedding text only", self.name)

        self.to(flair.device)
        self.eval()

    # -- Flair protocol ---------------------------------------------------------------------------
    @property
    def embedding_length(self) -> int:
        return self.model.config.embedding_length

    def train(self, mode: bool = True) -> RivaEmbeddings:
        """A frozen RIVA stays in eval mode (no dropout) while the tagger trains (FlairEmbeddings idiom)."""
        return super().train(self.fine_tune and mode)

    def _everything_embedded(self, data_points) -> bool:
        # Flair calls an all-empty list "embedded" (no token lacks a vector); the metadata is still due
        return super()._everything_embedded(data_points) and all(
            len(s) > 0 or s.has_metadata(RELEVANCE_KEY) for s in data_points)

    def _add_embeddings_internal(self, sentences: list[Sentence]) -> list[Sentence]:
        batch = [s for s in sentences if len(s) > 0]  # an empty Sentence has no token to embed
        for sentence in sentences:
            # ... but it carries the riva_* metadata like every other sentence (an image-less item)
            if len(sentence) == 0 and (self.use_image or not sentence.has_metadata(RELEVANCE_KEY)):
                sentence.add_metadata(RELEVANCE_KEY, 0.0)
                sentence.add_metadata(ATTENTION_KEY, None)
                sentence.add_metadata(REASON_KEY, "empty sentence")
        if not batch:
            return sentences
        grad = self.fine_tune and self.training and torch.is_grad_enabled()
        token_lists = [[token.text for token in s] for s in batch]
        memo = self.vector_memo_size > 0 and not self.fine_tune
        keys = [self._memo_key(s, tokens) if memo else None for s, tokens in zip(batch, token_lists)]
        results: list[_Embedded | None] = []
        for key in keys:
            results.append(self._vector_memo.get(key) if key is not None else None)
            if results[-1] is not None:
                self._vector_memo.move_to_end(key)  # least recently used first
        todo = [i for i, r in enumerate(results) if r is None]
        if todo:
            with torch.enable_grad() if grad else torch.no_grad():
                part = [batch[i] for i in todo]
                visual = self._visual_features(part) if self.use_image else None
                states, s_g, attention = self._run([token_lists[i] for i in todo], visual)
            side = math.isqrt(self.model.config.num_regions)
            for j, i in enumerate(todo):
                has_image = bool(visual.has_image[j]) if visual is not None else False
                att = attention[j] if (has_image and attention is not None) else None
                results[i] = _Embedded(
                    states[j] if grad else states[j].detach().clone(), float(s_g[j]),
                    att.detach().float().cpu().view(side, side).tolist() if att is not None else None,
                    has_image, visual.reasons[j] if visual is not None else None)
                if keys[i] is not None:
                    self._vector_memo[keys[i]] = results[i]
            while len(self._vector_memo) > self.vector_memo_size:
                self._vector_memo.popitem(last=False)
        done: list[_Embedded] = [r for r in results if r is not None]  # every one, now
        for sentence, result in zip(batch, done):
            for token, vector in zip(sentence, result.states):
                token.set_embedding(self.name, vector)
            by_name = sentence.get_metadata(RELEVANCES_KEY) if sentence.has_metadata(RELEVANCES_KEY) else {}
            by_name[self.name] = result.s_g if self.use_image else 0.0
            sentence.add_metadata(RELEVANCES_KEY, by_name)
            if self.use_image:
                sentence.add_metadata(RELEVANCE_KEY, result.s_g)
                sentence.add_metadata(ATTENTION_KEY, result.attention)
                sentence.add_metadata(REASON_KEY, None if result.has_image else (result.reason or "no image"))
            elif not sentence.has_metadata(RELEVANCE_KEY):
                # a text-only instance never overwrites what an image instance in the same stack wrote
                sentence.add_metadata(RELEVANCE_KEY, 0.0)
                sentence.add_metadata(ATTENTION_KEY, None)
                sentence.add_metadata(REASON_KEY, "text only")
        if self.use_image:
            self._log_missing(len(batch), [r.has_image for r in done], [r.reason for r in done])
        return sentences

    def _memo_key(self, sentence: Sentence, tokens: list[str]) -> tuple | None:
        """The memo key of a sentence: its token texts and its image file (device, inode, size, mtime), or
        None when the image path cannot be checked (not memoised: the featurizer says why)."""
        if not self.use_image:
            return (tuple(tokens),)
        path, reason = sentence_image(sentence, self.image_key)
        if path is None:
            return (tuple(tokens), None, reason)
        try:
            stat = os.stat(path)
        except (OSError, ValueError):
            return None
        return (tuple(tokens), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def clear_vector_memo(self) -> None:
        """Forget the memoised outputs (:attr:`vector_memo_size`); needed only after changing weights in place."""
        self._vector_memo.clear()

    # -- images -------------------------------------------------------------------------------------
    def _get_featurizer(self) -> ImageFeaturizer:
        if self._featurizer is None:
            assert self.model.backbone is not None  # use_image implies config.use_image
            # a cache folder saved with a tagger is not created on the loading machine
            self._featurizer = open_featurizer(self.model.backbone, self.feature_cache,
                                               owner=f"RivaEmbeddings {self.name}", create=not self._from_params,
                                               memo_size=self.memo_size)
        return self._featurizer

    def _visual_features(self, batch: Sequence[Sentence]) -> VisualFeatures:
        found = [sentence_image(sentence, self.image_key) for sentence in batch]
        visual = self._get_featurizer()([path for path, _ in found])
        for i, (_, reason) in enumerate(found):
            if reason is not None:
                visual.reasons[i] = reason
        return visual

    def _log_missing(self, n: int, has_image: list[bool], reasons: list[str | None]) -> None:
        missing = Counter(reasons[i] or "no image" for i in range(n) if not has_image[i])
        self.image_stats["sentences"] += n
        self.image_stats["with_image"] += n - sum(missing.values())
        for reason, count in missing.items():
            self.image_stats[f"no image: {reason}"] += count
        if missing:
            detail = ", ".join(f"{reason}: {count}" for reason, count in missing.most_common())
            log.info("RivaEmbeddings %s: %d of %d sentences embedded without image (s_G = 0) - %s",
                     self.name, sum(missing.values()), n, detail)

    # -- the model ----------------------------------------------------------------------------------
    def _run(self, token_lists: list[list[str]], visual: VisualFeatures | None
             ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Per-sentence token states (T_i, 2H), s_G (B,) and the Eq. (8) attention (B, R) or None.

        The model handles sentences without an image (s_G = 0; :meth:`RivaModel.forward`)."""
        value = self.force_relevance
        forced = None if value is None else torch.full((len(token_lists),), value)
        states, out = self.model.embed(token_lists, visual, forced)
        attention = out.attention.detach().float().cpu() if out.attention is not None else None
        return states, out.s_g.detach().float().cpu(), attention

    # -- inspection ---------------------------------------------------------------------------------
    @staticmethod
    def attention_map(sentence: Sentence) -> torch.Tensor | None:
        """The 7 x 7 head-averaged attention of Eq. (8) of the last RIVA embedding of ``sentence``
        (row-major regions, as in the ResNet map), or ``None`` if it had no image or was not embedded."""
        if not sentence.has_metadata(ATTENTION_KEY):
            return None
        value = sentence.get_metadata(ATTENTION_KEY)
        if value is None:
            return None
        return torch.tensor(value, dtype=torch.float32)

    @staticmethod
    def relevance(sentence: Sentence) -> float | None:
        """The relevance score s_G of the last RIVA embedding of ``sentence`` (None if not embedded)."""
        return float(sentence.get_metadata(RELEVANCE_KEY)) if sentence.has_metadata(RELEVANCE_KEY) else None

    @staticmethod
    def relevances(sentence: Sentence) -> dict[str, float]:
        """s_G of every RIVA embedding that embedded ``sentence``, by embedding name (0 for text-only ones)."""
        return dict(sentence.get_metadata(RELEVANCES_KEY)) if sentence.has_metadata(RELEVANCES_KEY) else {}

    def use_feature_cache(self, feature_cache: str | Path | None) -> None:
        """Read and write image features through ``feature_cache`` from now on (``None``: compute them).

        Changes speed only, never the output; a loaded tagger can so use a cache of this machine."""
        self.feature_cache = str(feature_cache) if feature_cache is not None else None
        self._from_params = False
        self._featurizer = None

    # -- persistence --------------------------------------------------------------------------------
    def to_params(self) -> dict[str, Any]:
        """Everything :meth:`from_params` needs to rebuild the module tree, without the weights.

        ``config`` is the :class:`RivaConfig` object on purpose: unpickling a saved tagger imports
        ``flair_riva`` and so registers this class (notes §1.3)."""
        return {
            "params_version": PARAMS_VERSION,
            "config": self.model.config,
            "vocab": self.model.vocab.to_json(),
            "fine_tune": self.fine_tune,
            "use_image": self.use_image,
            "image_key": self.image_key,
            "feature_cache": self.feature_cache,
            "name": self.name,
            "force_relevance": self.force_relevance,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> RivaEmbeddings:
        """Rebuild from :meth:`to_params` with random weights (no file I/O, no download)."""
        params = dict(params)
        version = params.pop("params_version", PARAMS_VERSION)
        if version > PARAMS_VERSION:
            raise ValueError(f"these RivaEmbeddings were saved by a newer flair-riva (params version {version}, "
                             f"this one reads {PARAMS_VERSION})")
        config = params.pop("config")
        if isinstance(config, dict):
            config = RivaConfig.from_dict(config)
        vocab = params.pop("vocab")
        vocab = Vocabulary.from_json(vocab) if isinstance(vocab, str) else vocab
        model = RivaModel(config, vocab, backbone_weights=None)
        embedding = cls(model, **params)
        embedding._from_params = True
        return embedding

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_featurizer"] = None  # file handles / locks; rebuilt lazily
        state["_vector_memo"] = OrderedDict()
        return state

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, embedding_length={self.embedding_length}, fine_tune={self.fine_tune}, "
                f"use_image={self.use_image}, image_key={self.image_key!r}, feature_cache={self.feature_cache!r}"
                + (f", force_relevance={self.force_relevance}" if self.force_relevance is not None else ""))

    def __str__(self) -> str:
        return self.name

