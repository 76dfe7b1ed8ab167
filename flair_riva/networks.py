"""The three networks of RIVA (Sun et al., COLING 2020, §3 and Figure 2) and the normalisers of their visual inputs.

* :class:`RGN`, the text-image relation gating network (§3.1): a biLSTM text vector f_t, the pooled
  ResNet vector f_v, their element-wise product, FC + GELU, softmax -> relevance score s_G.
* :class:`VCN`, the visual context network (§3.2, Eq. 3-5): multi-head scaled dot-product attention
  of the query f_t over the 49 ResNet regions -> visual context v_c and the attention map of Eq. (8).
* :class:`VLCN`, the visual-linguistic contextual network (§3.3, Eq. 6-7): a forward and a backward
  LSTM language model whose first input is the gated visual vector v_c^G = s_G * v_c, in place of
  [BOS] (forward) and [EOS] (backward).

The ResNet features they read are normalised first: :class:`FeatureStandardizer` (per feature over images)
or, for 0.1.0 models, :class:`VectorNorm` (per vector); :func:`visual_normalizer` picks one by name.
:class:`~flair_riva.model.RivaModel` puts the networks together with the shared token encoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flair_riva.rnn import reverse_padded, run_lstm


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
    how the image enters (see :attr:`~flair_riva.config.RivaConfig.vlcn_visual`):

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
