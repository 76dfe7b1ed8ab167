"""The RIVA model (Sun et al., COLING 2020, §3 and Figure 2).

Three networks share one token encoder (word vector + character biLSTM, §3.1):

* :class:`RGN`, the text-image relation gating network (§3.1): a biLSTM text vector f_t, the pooled
  ResNet vector f_v, their element-wise product, FC + GELU, softmax -> relevance score s_G.
* :class:`VCN`, the visual context network (§3.2, Eq. 3-5): multi-head scaled dot-product attention
  of the query f_t over the 49 ResNet regions -> visual context v_c and the attention map of Eq. (8).
* :class:`VLCN`, the visual-linguistic contextual network (§3.3, Eq. 6-7): a forward and a backward
  LSTM language model whose first input is the gated visual vector v_c^G = s_G * v_c, in place of
  [BOS] (forward) and [EOS] (backward).

:class:`RivaModel` puts them together with the ResNet backbone, the two pretraining losses
(task 1, Eq. 1-2; task 2, Eq. 7) and a safe on-disk format (JSON + safetensors, never pickle).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from flair_riva.config import FORMAT_VERSION, RivaConfig
from flair_riva.io import atomic_directory, atomic_write_text
from flair_riva.rnn import reverse_padded, run_lstm
from flair_riva.text import TextBatch, TokenEncoder, Vocabulary, build_vocabulary, encode_batch, init_word_embedding
from flair_riva.vision import RegionExtractor, VisualFeatures

log = logging.getLogger("flair")

CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "config.json", "vocab.json", "model.safetensors"
VECTORS_FILE = "word_vectors.safetensors"
"""Frozen word vectors (``config.freeze_word_vectors``) are kept out of ``model.safetensors``: this file holds
them, and a model folder saved beside another one with the same vectors (the checkpoints, ``best/`` and
``final/`` of a pretraining run) hard-links the same file instead of writing a copy."""
WORD_VECTORS_KEY = "token_encoder.word_embedding.weight"


class CheckpointError(ValueError):
    """A model directory that is missing, damaged, or written by an incompatible format version."""


class FeatureStandardizer(nn.Module):
    """Per-feature standardisation over images, with batch statistics in training (as BatchNorm does).

    Features of different images differ in a few directions on top of a large component that every image
    shares (random-init ResNet-18: mean pairwise cosine 0.97 after a per-vector LayerNorm). Subtracting
    each feature's mean over images and dividing by its standard deviation exposes the differences and
    leaves no constant part that a later layer could use as a bias (which drives it into saturation, the
    same for every image). In training mode the statistics come from the rows of the batch that have an
    image (gradients flow through them, as in BatchNorm) and update running statistics, which evaluation
    uses. Unlike ``nn.BatchNorm1d``, rows without an image take no part and come out as zeros.
    """

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor, has_image: torch.Tensor | None = None) -> torch.Tensor:
        """(B, d) or (B, R, d) features -> standardised features; ``has_image`` (B,) masks the rows."""
        keep = has_image.to(x.device, torch.bool) if has_image is not None else None
        mean, var = self.running_mean, self.running_var
        rows = (x if keep is None else x[keep]).reshape(-1, x.shape[-1])
        if self.training and rows.shape[0] > 1:
            mean = rows.mean(dim=0)
            centered = rows - mean
            var = (centered * centered).mean(dim=0)  # the biased variance; 4x faster than Tensor.var on CPU
            with torch.no_grad():
                m = 1.0 if int(self.num_batches_tracked) == 0 else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), m)
                self.num_batches_tracked += 1
        out = (x - mean) * torch.rsqrt(var + self.eps)
        if keep is not None:
            out = out * keep.view(-1, *([1] * (x.dim() - 1))).to(out.dtype)
        return out


class VectorNorm(nn.LayerNorm):
    """The per-vector LayerNorm of flair-riva 0.1.0 (``visual_norm="layer"``), called like
    :class:`FeatureStandardizer`; it needs no image mask (same parameter names as ``nn.LayerNorm``)."""

    def forward(self, x: torch.Tensor, has_image: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


def visual_normalizer(kind: str, dim: int) -> nn.Module:
    """``"standardize"`` (:class:`FeatureStandardizer`) or ``"layer"`` (:class:`VectorNorm`, 0.1.0)."""
    return FeatureStandardizer(dim) if kind == "standardize" else VectorNorm(dim)


class RGN(nn.Module):
    """Text-image relation gating network (§3.1).

    f_t = [forward last state; backward first state] of a 2-layer biLSTM (d_t = 2 x 256);
    f_v = average-pooled ResNet vector (d_v = 512); logits = FC(GELU(FC(f_t ⊙ f_v))); the softmax
    probability of "image adds" is the relevance score s_G.
    """

    def __init__(self, input_dim: int, hidden_size: int, num_layers: int, visual_dim: int, dropout: float,
                 visual_norm: str = "standardize") -> None:
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden_size, num_layers=num_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        text_dim = 2 * hidden_size
        # ResNet features are unbounded ReLU outputs whose scale depends on the backbone's weights (a
        # random-init ResNet gives values in the hundreds): normalised before f_t ⊙ f_v.
        self.visual_norm = visual_normalizer(visual_norm, visual_dim)
        # f_t ⊙ f_v needs d_t == d_v; with Table 2 (2 x 256 = 512 = d_v) this is the identity.
        self.visual_proj = nn.Identity() if text_dim == visual_dim else nn.Linear(visual_dim, text_dim)
        self.fc = nn.Linear(text_dim, text_dim)
        self.classifier = nn.Linear(text_dim, 2)
        self.dropout = nn.Dropout(dropout)

    def text_vector(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """f_t: (B, T, D) token inputs -> (B, 2H) = [h_fwd at the last token; h_bwd at the first token]."""
        _, h_n = run_lstm(self.lstm, tokens, lengths)
        return torch.cat([h_n[-2], h_n[-1]], dim=-1)

    def classify(self, f_t: torch.Tensor, f_v: torch.Tensor, has_image: torch.Tensor | None = None) -> torch.Tensor:
        """Relation logits (B, 2) from f_t ⊙ f_v through FC + GELU and the softmax layer's FC (Eq. 1-2)."""
        f_v = self.visual_norm(f_v, has_image)
        fused = self.dropout(f_t * self.visual_proj(f_v))
        return self.classifier(self.dropout(F.gelu(self.fc(fused))))


class VCN(nn.Module):
    """Visual context network (§3.2): multi-head scaled dot-product attention, Eq. (3)-(5).

    head_i = Att(Q^s W_i^Q, V^r W_i^V, V^r W_i^V) with the text vector as query Q^s = f_t and the
    region features V^r as keys and values (the paper uses one projection W^V for both);
    v_c = head_1 ⊕ ... ⊕ head_h, d_h = d_v / h.
    """

    def __init__(self, text_dim: int, visual_dim: int, num_heads: int, visual_norm: str = "standardize") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = visual_dim // num_heads
        self.region_norm = visual_normalizer(visual_norm, visual_dim)  # same reason as RGN.visual_norm
        self.query = nn.Linear(text_dim, visual_dim, bias=False)        # W^Q_1..h stacked
        self.key_value = nn.Linear(visual_dim, visual_dim, bias=False)  # W^V_1..h stacked

    def forward(self, f_t: torch.Tensor, regions: torch.Tensor, has_image: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d_t), (B, R, d_v) -> v_c (B, d_v) and the head-averaged attention of Eq. (8), (B, R)."""
        b = regions.shape[0]
        regions = self.region_norm(regions, has_image)                     # (B, R, d_v)
        q = self.query(f_t).view(b, self.num_heads, self.head_dim)         # Q^s W_i^Q
        w_v = self.key_value.weight.view(self.num_heads, self.head_dim, -1)  # W_i^V, (h, d_h, d_v)
        # The keys V^r W_i^V are never formed: q_i . (W_i^V r) = (W_i^V^T q_i) . r, and the attention-weighted
        # sum of the projected regions is the projection of the attention-weighted sum of the regions. The
        # same numbers with about 1/20 of the multiplications (Table 2: R = 49 regions, d_v = 512, h = 8).
        q_regions = torch.einsum("bhd,hdk->bhk", q, w_v)                    # W_i^V^T q_i, (B, h, d_v)
        scores = q_regions @ regions.transpose(1, 2) / math.sqrt(self.head_dim)  # Eq. (3), (B, h, R)
        weights = scores.softmax(dim=-1)                                   # (B, h, R)
        attended = weights @ regions                                       # Σ_r a_ir · r, (B, h, d_v)
        v_c = torch.einsum("bhk,hdk->bhd", attended, w_v).reshape(b, -1)   # Eq. (4)-(5)
        return v_c, weights.mean(dim=1)                                    # Eq. (8)


class VLCN(nn.Module):
    """Visual-linguistic contextual network (§3.3): forward and backward LSTM language models, Eq. (6)-(7).

    The forward LM reads ([BOS], w_1..w_T) and the backward LM reads ([EOS], w_T..w_1). In the paper the
    first input is the gated visual vector v_c^G = s_G · v_c in place of [BOS]/[EOS]; ``visual`` chooses
    how the image enters (see :attr:`RivaConfig.vlcn_visual`):

    * ``"paper"``: first input FC+GELU(s_G · v_c), as written (unbounded);
    * ``"start"``: first input [BOS] + s_G · tanh(W_s v_c) ([EOS] likewise), bounded;
    * ``"state"``: ``"start"``, and initial hidden and cell states s_G · tanh(W_h v_c), s_G · tanh(W_c v_c);
    * ``"step"``: ``"start"``, and g = s_G · tanh(W_g v_c) appended to every token input.

    Outside ``"paper"``, v_c is first standardised per feature over images (:class:`FeatureStandardizer`).

    Apart from ``"paper"``, s_G = 0 gives exactly the no-image LM (learned [BOS]/[EOS], zero states,
    zero step input), and the states change continuously with s_G. ``visual_dim=None`` is RIVA(text).
    The state after reading w_k is token k's embedding in each direction (§4.2), and the state before
    w_k predicts it (next word prediction).
    """

    def __init__(self, input_dim: int, visual_dim: int | None, hidden_size: int, num_layers: int,
                 vocab_size: int, cutoffs: Sequence[int], div_value: float, dropout: float,
                 visual: str = "step", step_dim: int = 32) -> None:
        super().__init__()
        self.visual = visual if visual_dim is not None else None
        self.num_layers, self.hidden_size = num_layers, hidden_size
        self.bos = nn.Parameter(torch.randn(input_dim) * 0.1)
        self.eos = nn.Parameter(torch.randn(input_dim) * 0.1)
        self.step_dim = step_dim if self.visual == "step" else 0
        if self.visual == "paper":
            self.visual_proj = nn.Sequential(nn.Linear(visual_dim, input_dim), nn.GELU())
        elif self.visual is not None:
            # v_c standardised per feature over images: its projections have no constant part that the LM
            # could use as a bias (which drives tanh into saturation, the same for every image)
            self.visual_norm = FeatureStandardizer(visual_dim)
            self.visual_start = nn.Linear(visual_dim, input_dim)
            if self.visual == "state":
                self.visual_state = nn.Linear(visual_dim, 2 * num_layers * hidden_size)
            if self.visual == "step":
                self.visual_step = nn.Linear(visual_dim, step_dim)
        lstm_dropout = dropout if num_layers > 1 else 0.0
        lm_input = input_dim + self.step_dim
        self.forward_lm = nn.LSTM(lm_input, hidden_size, num_layers=num_layers, batch_first=True, dropout=lstm_dropout)
        self.backward_lm = nn.LSTM(lm_input, hidden_size, num_layers=num_layers, batch_first=True,
                                   dropout=lstm_dropout)
        self.dropout = nn.Dropout(dropout)
        usable = [c for c in cutoffs if 0 < c < vocab_size - 1] or [max(1, (vocab_size - 1) // 2)]
        # One adaptive softmax (Grave et al. 2017) serves both directions, as in ELMo: the output layer
        # over a large vocabulary is the pretraining hot spot.
        self.output = nn.AdaptiveLogSoftmaxWithLoss(hidden_size, vocab_size, cutoffs=usable, div_value=div_value)

    def visual_inputs(self, v_c: torch.Tensor | None, s_g: torch.Tensor | None, batch_size: int,
                      like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple | None, torch.Tensor | None]:
        """``(start_fwd, start_bwd, initial_states or None, step_input or None)`` for a batch.

        ``v_c`` (B, d_v) and ``s_g`` (B,) are None for a batch without images (the same as s_G = 0)."""
        bos, eos = self.bos.expand(batch_size, -1), self.eos.expand(batch_size, -1)
        if self.visual is None or (v_c is None and self.visual == "paper"):
            return bos, eos, None, None
        if v_c is None:
            v_c = like.new_zeros(batch_size, self.visual_start.in_features)
            s_g = like.new_zeros(batch_size)
        gate = s_g.to(v_c.dtype)[:, None]
        if self.visual == "paper":
            start = self.visual_proj(gate * v_c)  # §3.3 as written: FC+GELU(s_G · v_c) replaces [BOS]/[EOS]
            return start, start, None, None
        v_c = self.visual_norm(v_c, v_c.detach().abs().sum(dim=-1) > 0)  # rows without an image are zeros
        visual_start = gate * torch.tanh(self.visual_start(v_c))
        states = step = None
        if self.visual == "state":
            h_c = (gate * torch.tanh(self.visual_state(v_c))).view(batch_size, 2, self.num_layers, self.hidden_size)
            states = (h_c[:, 0].transpose(0, 1).contiguous(), h_c[:, 1].transpose(0, 1).contiguous())
        elif self.visual == "step":
            step = gate * torch.tanh(self.visual_step(v_c))
        return bos + visual_start, eos + visual_start, states, step

    def _run(self, lstm: nn.LSTM, first: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor,
             states: tuple | None, step: torch.Tensor | None) -> torch.Tensor:
        x = torch.cat([first[:, None], tokens], dim=1)
        if step is not None:
            x = torch.cat([x, step[:, None].expand(-1, x.shape[1], -1)], dim=-1)
        out, _ = run_lstm(lstm, x, lengths + 1, states)
        return out

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, v_c: torch.Tensor | None = None,
                s_g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run both LMs over (B, T, D) token inputs with the visual context v_c (B, d_v) gated by s_G (B,).

        Returns ``(token_states, fwd_pred, bwd_pred)``: the (B, T, 2H) per-token [h_fwd; h_bwd] in
        input order, and the (B, T, H) states that predict w_1..w_T (forward) and w_T..w_1 (backward).
        """
        b = tokens.shape[0]
        start_f, start_b, states, step = self.visual_inputs(v_c, s_g, b, tokens)
        fwd = self._run(self.forward_lm, start_f, tokens, lengths, states, step)
        bwd = self._run(self.backward_lm, start_b, reverse_padded(tokens, lengths), lengths, states, step)
        # fwd[:, k] read w_k (k >= 1); bwd[:, j] read w_{T+1-j}: un-reverse to align with the tokens.
        token_states = torch.cat([fwd[:, 1:], reverse_padded(bwd[:, 1:], lengths)], dim=-1)
        return token_states, fwd[:, :-1], bwd[:, :-1]

    def nll(self, states: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Summed negative log-likelihood of ``targets`` under the output layer at masked positions."""
        flat = self.dropout(states[mask])
        if flat.shape[0] == 0:
            return states.sum() * 0.0
        return -self.output(flat, targets[mask]).output.sum()


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
        """Write ``config.json``, ``vocab.json`` and ``model.safetensors`` atomically into ``directory``;
        frozen word vectors go to ``word_vectors.safetensors``, hard-linked from a sibling model folder
        that holds the same vectors (see :data:`VECTORS_FILE`)."""
        from safetensors.torch import save_file

        from flair_riva import __version__

        meta = {
            "format_version": FORMAT_VERSION,
            "flair_riva_version": __version__,
            "config": self.config.to_dict(),
            "vocab_size": len(self.vocab),
            "output_vocab_size": self.vocab.output_size,
            "num_chars": self.vocab.num_chars,
        }
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        vectors = state.pop(WORD_VECTORS_KEY) if self.config.freeze_word_vectors else None
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
            if vectors is not None:
                _save_shared_vectors(vectors, tmp / VECTORS_FILE, directory.parent)
            atomic_write_text(tmp / VOCAB_FILE, self.vocab.to_json())
            atomic_write_text(tmp / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path, map_location: str | torch.device | None = None) -> RivaModel:
        """Load a directory written by :meth:`save`. Reads JSON and safetensors only: never unpickles.

        Nothing in the directory is trusted before it is checked: every config field (type and range,
        :func:`~flair_riva.config.validate_config_dict`), the recorded vocabulary sizes, the file sizes,
        and the weights file's tensor names and shapes (read from its header and compared with a model
        built on the meta device) are checked before the model is allocated. Every failure is a
        :class:`CheckpointError` naming the file and field."""
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        from flair_riva.config import validate_config_dict

        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory} is not a RIVA model directory (it does not exist)")
        for name in (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise CheckpointError(f"{directory} is not a RIVA model directory: {name} is missing")
        meta = _read_bounded_json(directory / CONFIG_FILE, MAX_CONFIG_BYTES)
        if not isinstance(meta, dict) or "format_version" not in meta:
            raise CheckpointError(f"{directory / CONFIG_FILE} is not a valid RIVA config: no format_version")
        version = meta["format_version"]
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{directory} was written in RIVA format version {version!r} (flair-riva "
                f"{meta.get('flair_riva_version', '?')}); this flair-riva reads version {FORMAT_VERSION}"
            )
        try:
            config = validate_config_dict(meta.get("config"))
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{directory / CONFIG_FILE}: bad config: {exc}") from exc
        sizes = {}
        meta.setdefault("output_vocab_size", meta.get("vocab_size"))  # 0.1.0: one vocabulary
        for key, limit in (("vocab_size", MAX_VOCAB_WORDS), ("output_vocab_size", MAX_VOCAB_WORDS),
                           ("num_chars", MAX_VOCAB_CHARS)):
            value = meta.get(key)
            if type(value) is not int or not 2 <= value <= limit:
                raise CheckpointError(f"{directory / CONFIG_FILE}: field {key}: {value!r} is not an integer in "
                                      f"[2, {limit}]")
            sizes[key] = value
        # the shapes this config and these sizes give, on the meta device (no memory, no time)
        try:
            with torch.device("meta"):
                skeleton = cls(config, _SizedVocabulary(sizes["vocab_size"], sizes["num_chars"],
                                                        sizes["output_vocab_size"]))
            expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
            raise CheckpointError(f"{directory / CONFIG_FILE}: the config does not give a valid model: "
                                  f"{type(exc).__name__}: {exc}") from exc
        del skeleton
        weights_path = directory / WEIGHTS_FILE
        files = [weights_path] + ([directory / VECTORS_FILE] if (directory / VECTORS_FILE).is_file() else [])
        found: dict[str, tuple] = {}
        for path in files:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    found.update({k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()})  # noqa: SIM118
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"{path} cannot be read: {exc}") from exc
        if found != expected:
            missing = sorted(set(expected) - set(found))
            extra = sorted(set(found) - set(expected))
            wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
            parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else "",
                     ", ".join(f"{k} is {found[k]} not {expected[k]}" for k in wrong[:3])]
            raise CheckpointError(f"{directory}: weights do not fit the recorded config: "
                                  f"{'; '.join(p for p in parts if p)}")
        # vocab.json: a word costs at most a tweet's length in JSON escapes; bounded by the recorded sizes
        vocab_limit = 4096 + 2048 * sizes["vocab_size"] + 64 * sizes["num_chars"]
        vocab_data = _read_bounded_json(directory / VOCAB_FILE, vocab_limit)
        try:
            vocab = Vocabulary.from_data(vocab_data)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{directory / VOCAB_FILE}: bad vocabulary: {exc}") from exc
        if len(vocab) != sizes["vocab_size"] or vocab.num_chars != sizes["num_chars"] or \
                vocab.output_size != sizes["output_vocab_size"]:
            raise CheckpointError(f"{directory}: vocab.json does not match the sizes recorded in config.json")
        device = torch.device(map_location) if map_location is not None else torch.device("cpu")
        state = {}
        for path in files:
            try:
                state.update(load_file(str(path), device=str(device)))
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"{path} cannot be read: {exc}") from exc
        model = cls(config, vocab, backbone_weights=None)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{directory}: weights do not fit the recorded config: {exc}") from exc
        return model.to(device).eval()

    def num_parameters(self) -> dict[str, int]:
        """Parameter count per part (see :meth:`parameter_groups`)."""
        return {k: sum(p.numel() for p in ps) for k, ps in self.parameter_groups().items()}


#: Bounds on what :meth:`RivaModel.load` reads before checking it.
MAX_CONFIG_BYTES = 1 << 20
MAX_VOCAB_WORDS = 10_000_000
MAX_VOCAB_CHARS = 1_000_000


class _SizedVocabulary:
    """Stands in for a :class:`Vocabulary` of known sizes when building a model on the meta device."""

    def __init__(self, words: int, chars: int, output_size: int | None = None) -> None:
        self.words_count, self.num_chars = words, chars
        self.output_size = words if output_size is None else output_size

    def __len__(self) -> int:
        return self.words_count


def _save_shared_vectors(vectors: torch.Tensor, path: Path, siblings_root: Path) -> None:
    """Write the frozen word vectors to ``path``, or hard-link an identical file of a sibling model folder
    (same SHA-256 of the tensor, recorded in the file's metadata) so that checkpoints share one copy."""
    import hashlib
    import os

    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    digest = hashlib.sha256(vectors.numpy().tobytes()).hexdigest()
    for candidate in sorted(siblings_root.glob(f"*/{VECTORS_FILE}")):
        try:
            with safe_open(str(candidate), framework="pt") as handle:
                same = (handle.metadata() or {}).get("sha256") == digest
            if same:
                os.link(candidate, path)
                return
        except (SafetensorError, OSError, ValueError):
            continue  # a folder being replaced, or a file system without hard links: write a copy
    save_file({WORD_VECTORS_KEY: vectors}, str(path),
              metadata={"format_version": str(FORMAT_VERSION), "sha256": digest})


def _read_bounded_json(path: Path, limit: int):
    """Parse a JSON file of at most ``limit`` bytes (regular files only); a :class:`CheckpointError` otherwise."""
    import os
    import stat

    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{path} is not a regular file")
            if st.st_size > limit:
                raise CheckpointError(f"{path} is {st.st_size} bytes, more than the {limit} this model can need")
            data = handle.read(limit + 1)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from exc
    if len(data) > limit:
        raise CheckpointError(f"{path} holds more than the {limit} bytes this model can need")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
