"""LSTMs over right-padded batches without packing.

Every LSTM in RIVA reads right-padded batches: the character biLSTM (§3.1), the RGN's biLSTM (§3.1)
and the VLCN's two language models (§3.3). Packing (``pack_padded_sequence``) keeps the padding out of
the results but sends the LSTM down PyTorch's generic path, which on a CPU unrolls every time step into
small autograd operations. :func:`run_lstm` gets the same numbers from unpacked calls, which use the
fused oneDNN kernels on a CPU (cuDNN on a GPU), forward and backward:

* a direction that reads a row left to right sees its real steps first, so its outputs at real
  positions never depend on the padding after them;
* the reverse direction reads each row reversed within its length (:func:`reverse_padded`), so its
  padding stays at the end too;
* a bidirectional LSTM runs layer by layer, each direction as one call with the layer's own weights,
  with the inter-layer dropout of ``nn.LSTM`` (on a GPU it is packed: cuDNN's packed kernels are fused).

Outputs at padded positions are zeros, and ``h_n`` holds each direction's state after the row's last
real step, as packing gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``lengths[i]`` steps of every row of a (B, T, ...) tensor; padding stays put."""
    b, t = x.shape[:2]
    steps = torch.arange(t, device=x.device)[None, :].expand(b, t)
    lens = lengths.to(x.device)[:, None]
    index = torch.where(steps < lens, lens - 1 - steps, steps)
    return x.gather(1, index.view(b, t, *([1] * (x.dim() - 2))).expand_as(x))


def _direction(lstm: nn.LSTM, x: torch.Tensor, layer: int, reverse: bool) -> torch.Tensor:
    """One layer and direction of ``lstm`` over (B, T, D) as a single unpacked call -> (B, T, H)."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if lstm.bias else [])
    weights = [getattr(lstm, name + suffix) for name in names]
    zeros = x.new_zeros(1, x.shape[0], lstm.hidden_size)
    out, _, _ = torch.lstm(x, (zeros, zeros), weights, lstm.bias, 1, 0.0, lstm.training, False, True)
    return out


def _last_step(out: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T, H) outputs -> (B, H) at each row's last real step."""
    rows = torch.arange(out.shape[0], device=out.device)
    return out[rows, lengths.to(out.device) - 1]


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor,
             states: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a batch-first ``nn.LSTM`` over a right-padded (B, T, D) batch with ``lengths`` (B,) >= 1.

    Returns ``(outputs, h_n)``: outputs (B, T, dirs x H) with zeros at padding, as packing gives, and
    the states after each row's last real step (the reverse direction's after the first token): for a
    bidirectional LSTM, h_n of every layer and direction (layers x 2, B, H), as packing gives; for a
    unidirectional one, the top layer's (1, B, H). ``states`` are optional initial (h_0, c_0) of a
    unidirectional LSTM, (layers, B, H) each.
    """
    if not lstm.batch_first or lstm.proj_size:
        raise ValueError("run_lstm expects a batch-first nn.LSTM without projections")
    lengths = lengths.to(x.device)
    mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).unsqueeze(-1).to(x.dtype)
    if not lstm.bidirectional:   # one fused call: real steps come first, so padding cannot reach them
        out, _ = lstm(x, states) if states is not None else lstm(x)
        return out * mask, _last_step(out, lengths)[None]
    if states is not None:
        raise ValueError("run_lstm takes initial states for unidirectional LSTMs only")
    if x.device.type != "cpu":   # cuDNN reads packed batches in fused kernels, with its flat weight buffer
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h_n, _) = lstm(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], h_n
    h_n = []
    for layer in range(lstm.num_layers):
        if layer > 0:
            x = F.dropout(x, lstm.dropout, lstm.training)
        fwd = _direction(lstm, x, layer, False)
        bwd = reverse_padded(_direction(lstm, reverse_padded(x, lengths), layer, True), lengths)
        h_n += [_last_step(fwd, lengths), bwd[:, 0]]
        x = torch.cat([fwd, bwd], dim=-1) * mask
    return x, torch.stack(h_n)
