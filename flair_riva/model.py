"""The RIVA model (Sun et al., COLING 2020, §3 and Figure 2).

Three networks share one token encoder (word vector + character biLSTM, §3.1); they live in
:mod:`flair_riva.networks`:

* :class:`~flair_riva.networks.RGN`, the text-image relation gating network (§3.1) -> relevance score s_G;
* :class:`~flair_riva.networks.VCN`, the visual context network (§3.2, Eq. 3-5) -> visual context v_c
  and the attention map of Eq. (8);
* :class:`~flair_riva.networks.VLCN`, the visual-linguistic contextual network (§3.3, Eq. 6-7): forward
  and backward LSTM language models that read the gated visual vector v_c^G = s_G * v_c.

:class:`RivaModel` puts them together with the ResNet backbone, the two pretraining losses
(task 1, Eq. 1-2; task 2, Eq. 7) and a safe on-disk format (JSON + safetensors, never pickle), which
lives in :mod:`flair_riva.checkpoint`. The networks, their normalisers and the checkpoint names are
importable from here as before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flair_riva.checkpoint import (
    CONFIG_FILE,
    MAX_CONFIG_BYTES,
    MAX_VOCAB_CHARS,
    MAX_VOCAB_WORDS,
    VECTORS_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    WORD_VECTORS_KEY,
    CheckpointError,
    load_model,
    save_model,
)
from flair_riva.config import RivaConfig
from flair_riva.networks import RGN, VCN, VLCN, FeatureStandardizer, VectorNorm, visual_normalizer
from flair_riva.rnn import reverse_padded
from flair_riva.text import TextBatch, TokenEncoder, Vocabulary, build_vocabulary, encode_batch, init_word_embedding
from flair_riva.vision import RegionExtractor, VisualFeatures

__all__ = [
    "RivaModel",
    "RivaOutput",
    "TRAINED_PARTS",
    # the networks (flair_riva.networks)
    "RGN",
    "VCN",
    "VLCN",
    "FeatureStandardizer",
    "VectorNorm",
    "visual_normalizer",
    # the model folder (flair_riva.checkpoint)
    "CheckpointError",
    "CONFIG_FILE",
    "VOCAB_FILE",
    "WEIGHTS_FILE",
    "VECTORS_FILE",
    "WORD_VECTORS_KEY",
    "MAX_CONFIG_BYTES",
    "MAX_VOCAB_WORDS",
    "MAX_VOCAB_CHARS",
    # used by the model, kept importable from here
    "reverse_padded",
]

log = logging.getLogger("flair")

@dataclass
class RivaOutput:
    """Everything one forward pass of RIVA computes for a batch."""

    s_g: torch.Tensor
    """(B,) relevance score s_G in [0, 1]: 0 for items without an image, 1 for every image when gate=False."""
    relation_logits: torch.Tensor | None
    """(B, 2) RGN logits (class 1 = "image adds"); None for RIVA(text)."""
    attention: torch.Tensor | None
    """(B, 49) attention over the regions, averaged over heads (Eq. 8); None for RIVA(text)."""
    v_c: torch.Tensor | None
    """(B, d_v) visual context of Eq. (5), before gating."""
    token_states: torch.Tensor
    """(B, T, 2H) per-token [h_fwd; h_bwd] of the VLCN's top layer (§4.2); zeros at padding."""
    fwd_pred: torch.Tensor
    bwd_pred: torch.Tensor


#: The parts of :class:`RivaModel` each kind of training updates: the teacher of §3.1 (task 1 through the
#: token encoder and the RGN), Algorithm 1's pseudo-labelled pass (lines 2-6, everything) and its labelled
#: pass (lines 7-11, θ_RGN only), and the tagger's fine-tuning of :class:`~flair_riva.embeddings.RivaEmbeddings`.
TRAINED_PARTS: dict[str, tuple[str, ...]] = {
    "teacher": ("text", "rgn", "backbone"),
    "joint": ("text", "rgn", "vcn", "vlcn", "backbone"),
    "rgn": ("rgn",),
    "fine_tune": ("text", "rgn", "vcn", "vlcn"),
}


class RivaModel(nn.Module):
    """RIVA: token encoder, RGN, VCN, VLCN and the ResNet backbone (Figure 2)."""

    def __init__(self, config: RivaConfig, vocab: Vocabulary, backbone_weights: str | Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.vocab = vocab
        c = config
        self.token_encoder = TokenEncoder(len(vocab), vocab.num_chars, c.word_dim, c.char_dim,
                                          c.char_hidden_size, c.freeze_word_vectors)
        d_in = self.token_encoder.output_dim
        self.rgn = RGN(d_in, c.rgn_hidden_size, c.rgn_layers, c.visual_dim, c.dropout, c.visual_norm)
        self.vcn = VCN(c.text_dim, c.visual_dim, c.num_heads, c.visual_norm)
        self.vlcn = VLCN(d_in, c.visual_dim if c.use_image or c.vlcn_visual == "paper" else None,
                         c.vlcn_hidden_size, c.vlcn_layers, vocab.output_size, c.adaptive_softmax_cutoffs,
                         c.adaptive_softmax_div_value, c.dropout, c.vlcn_visual, c.visual_step_dim)
        self.backbone = RegionExtractor(c.backbone, weights=backbone_weights) if c.use_image else None
        self.input_dropout = nn.Dropout(c.dropout)

    # -- construction helpers ---------------------------------------------------------------------
    @classmethod
    def from_texts(cls, config: RivaConfig, token_lists: Sequence[Sequence[str]], word_vectors=None,
                   backbone_weights: str | Path | None = None, fine_tune_word_vectors: bool = False) -> RivaModel:
        """Build the vocabulary from tokenised pretraining texts (:func:`~flair_riva.text.build_vocabulary`:
        the frequent words, by the config's size cap and minimum count, plus every word the word vectors
        know) and a fresh model. With word vectors, they are frozen unless ``fine_tune_word_vectors``."""
        if word_vectors is not None:
            if word_vectors.vector_size != config.word_dim:
                log.info("word_dim set to %d to match the word vectors", word_vectors.vector_size)
                config = config.replace(word_dim=word_vectors.vector_size)
            config = config.replace(freeze_word_vectors=not fine_tune_word_vectors)
        vocab = build_vocabulary(token_lists, config.max_vocab_size, config.min_word_count, word_vectors)
        model = cls(config, vocab, backbone_weights=backbone_weights)
        if word_vectors is not None:
            model.init_word_vectors(word_vectors)
        return model

    def init_word_vectors(self, vectors) -> tuple[int, int]:
        """Initialise the word embeddings from gensim ``KeyedVectors`` (OOV words stay random)."""
        return init_word_embedding(self.token_encoder.word_embedding, self.vocab, vectors)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part: "text" (token encoder), "rgn" (θ_RGN), "vcn" (θ_VCN), "vlcn" (θ_VLCN), "backbone"."""
        return {
            "text": list(self.token_encoder.parameters()),
            "rgn": list(self.rgn.parameters()),
            "vcn": list(self.vcn.parameters()),
            "vlcn": list(self.vlcn.parameters()),
            "backbone": list(self.backbone.parameters()) if self.backbone is not None else [],
        }

    def trainable_parameters(self, mode: str, backbone: bool = True) -> dict[str, list[nn.Parameter]]:
        """The parameters that train in ``mode`` (see :data:`TRAINED_PARTS`), by part.

        Pretrained word vectors kept fixed (``config.freeze_word_vectors``) never train; the backbone only
        where ``mode`` fine-tunes it and ``backbone`` is true (a frozen backbone's features come from the
        cache); ``"fine_tune"`` leaves out the next-word softmax, which plays no part in e_k^RIVA."""
        if mode not in TRAINED_PARTS:
            raise ValueError(f"unknown training mode {mode!r}: choose one of {', '.join(TRAINED_PARTS)}")
        skip: set[int] = set()
        if self.config.freeze_word_vectors:
            skip.add(id(self.token_encoder.word_embedding.weight))
        if mode == "fine_tune":
            skip.update(id(p) for p in self.vlcn.output.parameters())
        parts = [part for part in TRAINED_PARTS[mode] if backbone or part != "backbone"]
        groups = self.parameter_groups()
        return {part: [p for p in groups[part] if id(p) not in skip] for part in parts}

    def rgn_parameters(self) -> list[nn.Parameter]:
        """θ_RGN of Algorithm 1, line 10: the RGN's biLSTM and FC layers (not the shared token encoder)."""
        return self.trainable_parameters("rgn")["rgn"]

    def train(self, mode: bool = True) -> RivaModel:
        super().train(mode)
        if self.backbone is not None:
            # Batch statistics of 16 tweets are too noisy: fine-tuning keeps BatchNorm in eval mode.
            self.backbone.eval()
        return self

    # -- inputs -------------------------------------------------------------------------------------
    def encode(self, token_lists: Sequence[Sequence[str]]) -> TextBatch:
        """Tokenised texts -> a padded :class:`TextBatch` on the model's device."""
        return encode_batch(self.vocab, token_lists).to(self.device)

    def visual_from_pixels(self, pixels: torch.Tensor, has_image: torch.Tensor,
                           reasons: list[str | None] | None = None) -> VisualFeatures:
        """Run the backbone (trainable when fine-tuned) on (B, 3, 224, 224) pixels."""
        if self.backbone is None:
            raise RuntimeError("this RIVA model was built with use_image=False and has no backbone")
        has_image = has_image.to(self.device)
        regions, pooled = self.backbone(pixels.to(self.device))
        keep = has_image[:, None].to(regions.dtype)
        return VisualFeatures(regions * keep[:, :, None], pooled * keep, has_image,
                              list(reasons) if reasons is not None else [None] * len(has_image))

    def _check_visual(self, text: TextBatch, visual: VisualFeatures) -> VisualFeatures:
        b = text.word_ids.shape[0]
        c = self.config
        if visual.regions.shape != (b, c.num_regions, c.visual_dim) or visual.pooled.shape != (b, c.visual_dim):
            raise ValueError(
                f"visual features have shapes {tuple(visual.regions.shape)} / {tuple(visual.pooled.shape)}, "
                f"expected ({b}, {c.num_regions}, {c.visual_dim}) / ({b}, {c.visual_dim})"
            )
        return visual.to(self.device)

    # -- forward --------------------------------------------------------------------------------------
    def token_inputs(self, text: TextBatch) -> torch.Tensor:
        """(B, T, D) token inputs [word vector; char biLSTM] shared by the RGN and the VLCN (with dropout)."""
        return self.input_dropout(self.token_encoder(text))

    def relation_logits(self, text: TextBatch, visual: VisualFeatures, rgn_only: bool = False) -> torch.Tensor:
        """Task 1 path only (token encoder + RGN): (B, 2) relation logits. Used by the teacher.

        ``rgn_only``: gradients reach θ_RGN only (the token inputs are computed without them), as in
        Algorithm 1's labelled pass (lines 8-9)."""
        if not self.config.use_image:
            raise RuntimeError("RIVA(text) (use_image=False) has no RGN")
        visual = self._check_visual(text, visual)
        with torch.no_grad() if rgn_only else contextlib.nullcontext():
            tokens = self.token_inputs(text)
        f_t = self.rgn.text_vector(tokens, text.lengths)
        return self.rgn.classify(f_t, visual.pooled, visual.has_image)

    def forward(self, text: TextBatch, visual: VisualFeatures | None = None,
                s_g_override: torch.Tensor | None = None) -> RivaOutput:
        """The full model of Figure 2 on a batch: RGN -> s_G, VCN -> v_c, VLCN on v_c^G = s_G · v_c.

        Rows without an image (``visual.has_image`` false, or ``visual=None``: no row has one) have
        s_G = 0 (§3.1: "the image does not add"), so v_c^G = 0 whatever the VCN computes: the RGN and the
        VCN run on the rows with an image only, and the other rows get zero logits, attention and v_c.
        ``s_g_override`` (B,) replaces the RGN's s_G (a control: s_G forced to 0 or 1); items without an
        image keep s_G = 0."""
        tokens = self.token_inputs(text)
        b = tokens.shape[0]
        if not self.config.use_image:
            token_states, fwd, bwd = self.vlcn(tokens, text.lengths)
            return RivaOutput(tokens.new_zeros(b), None, None, None, token_states, fwd, bwd)
        c = self.config
        logits = tokens.new_zeros(b, 2)
        s_g = tokens.new_zeros(b)
        v_c = tokens.new_zeros(b, c.visual_dim)
        attention = tokens.new_zeros(b, c.num_regions)
        if visual is not None:
            visual = self._check_visual(text, visual)
            rows = visual.has_image.to(tokens.device, torch.bool)
            if bool(rows.all()):
                logits, s_g, v_c, attention = self._image_rows(tokens, text.lengths, visual.pooled, visual.regions)
            elif bool(rows.any()):
                index = rows.nonzero().squeeze(1)
                parts = self._image_rows(tokens[index], text.lengths[index.to(text.lengths.device)],
                                         visual.pooled[index], visual.regions[index])
                logits, s_g, v_c, attention = (whole.index_put((index,), part.to(whole.dtype))
                                               for whole, part in zip((logits, s_g, v_c, attention), parts))
        if s_g_override is not None:
            has_image = visual.has_image.to(s_g) if visual is not None else torch.zeros_like(s_g)
            s_g = s_g_override.to(s_g) * has_image
        s_g_lm = s_g
        if self.training and c.gate_dropout > 0:
            # the no-image input (s_G = 0) is trained in every epoch (RivaConfig.gate_dropout)
            s_g_lm = s_g * (torch.rand_like(s_g) >= c.gate_dropout).to(s_g.dtype)
        if self.training and c.gate_open_rate > 0 and visual is not None:
            # a deviation, off by default: images the RGN keeps out reach the LM too (RivaConfig.gate_open_rate)
            opened = (torch.rand_like(s_g) < c.gate_open_rate) & visual.has_image.to(s_g.device, torch.bool)
            s_g_lm = torch.where(opened, torch.ones_like(s_g_lm), s_g_lm)
        token_states, fwd, bwd = self.vlcn(tokens, text.lengths, v_c, s_g_lm)
        return RivaOutput(s_g, logits, attention, v_c, token_states, fwd, bwd)

    def _image_rows(self, tokens: torch.Tensor, lengths: torch.Tensor, pooled: torch.Tensor, regions: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """RGN and VCN on rows that all have an image: logits, s_G, v_c and the Eq. (8) attention."""
        f_t = self.rgn.text_vector(tokens, lengths)
        logits = self.rgn.classify(f_t, pooled)
        p_adds = logits.softmax(dim=-1)[:, 1]
        s_g = p_adds if self.config.gate else torch.ones_like(p_adds)
        v_c, attention = self.vcn(f_t, regions)
        return logits, s_g, v_c, attention

    # -- losses --------------------------------------------------------------------------------------
    @staticmethod
    def relation_loss_sum(logits: torch.Tensor, labels: torch.Tensor, has_image: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, int]:
        """Task 1, Eq. (1)-(2): summed cross-entropy over the items with an image and a label (>= 0), and
        their count."""
        labels = labels.to(logits.device)
        keep = labels >= 0
        if has_image is not None:
            keep = keep & has_image.to(logits.device, torch.bool)
        n = int(keep.sum())
        if n == 0:
            return logits.sum() * 0.0, 0
        return F.cross_entropy(logits[keep].float(), labels[keep], reduction="sum"), n

    @classmethod
    def relation_loss(cls, logits: torch.Tensor, labels: torch.Tensor, has_image: torch.Tensor | None = None
                      ) -> torch.Tensor:
        """Task 1, Eq. (1)-(2): cross-entropy of the relation label, averaged over items with an image."""
        total, count = cls.relation_loss_sum(logits, labels, has_image)
        return total / max(count, 1)

    def lm_loss_sum(self, out: RivaOutput, text: TextBatch) -> tuple[torch.Tensor, int]:
        """Task 2, Eq. (7): summed NLL of next-word prediction in both directions, and the token count."""
        mask = text.mask
        targets = self.vocab.output_ids(text.word_ids)  # input-only words are <unk> for the softmax
        fwd = self.vlcn.nll(out.fwd_pred, targets, mask)
        bwd = self.vlcn.nll(out.bwd_pred, reverse_padded(targets, text.lengths), mask)
        return fwd + bwd, 2 * int(mask.sum())

    def lm_loss(self, out: RivaOutput, text: TextBatch) -> torch.Tensor:
        """Task 2, Eq. (7), averaged per predicted token (both directions)."""
        total, count = self.lm_loss_sum(out, text)
        return total / max(count, 1)

    # -- embedding -----------------------------------------------------------------------------------
    def embed(self, token_lists: Sequence[Sequence[str]], visual: VisualFeatures | None = None,
              s_g_override: torch.Tensor | None = None) -> tuple[list[torch.Tensor], RivaOutput]:
        """Per-token [h_fwd; h_bwd] (§4.2) for each text, each (T_i, 2H), plus the full output."""
        text = self.encode(token_lists)
        out = self(text, visual, s_g_override)
        return [out.token_states[i, : len(t)] for i, t in enumerate(token_lists)], out

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write this model as a RIVA model folder (config, vocabulary, safetensors weights), atomically:
        :func:`~flair_riva.checkpoint.save_model`."""
        save_model(self.state_dict(), self.config, self.vocab, directory)

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device | None = None) -> RivaModel:
        """Load a folder written by :meth:`save`, in eval mode: :func:`~flair_riva.checkpoint.load_model`.

        Reads JSON and safetensors only, never unpickles, and checks every field, size and tensor shape
        before it allocates the model; a :class:`~flair_riva.checkpoint.CheckpointError` says what is wrong."""
        return load_model(cls, directory, map_location)

    def num_parameters(self) -> dict[str, int]:
        """Parameter count per part (see :meth:`parameter_groups`)."""
        return {k: sum(p.numel() for p in ps) for k, ps in self.parameter_groups().items()}
