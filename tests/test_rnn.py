"""The unpacked LSTM runs and the deduplicated character encoder compute
exactly what the straightforward versions compute (outputs, final states and gradients)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from flair_riva.rnn import reverse_padded, run_lstm
from flair_riva.text import CharEncoder


def _packed(lstm, x, lengths, states=None):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, (h_n, _) = lstm(packed, states) if states is not None else lstm(packed)
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0], h_n


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("layers", [1, 2])
def test_run_lstm_equals_packing_with_gradients(bidirectional, layers):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(7, 5, num_layers=layers, batch_first=True, bidirectional=bidirectional).double()
    lengths = torch.tensor([6, 3, 1, 4])
    x = torch.randn(4, 6, 7, dtype=torch.double, requires_grad=True)
    states = None
    if not bidirectional:
        states = tuple(torch.randn(layers, 4, 5, dtype=torch.double) for _ in range(2))
    ref_out, ref_h = _packed(lstm, x, lengths, states)
    ref_grads = torch.autograd.grad(ref_out.sum() + ref_h[-1].sum(), [x, *lstm.parameters()])
    out, h_n = run_lstm(lstm, x, lengths, states)
    grads = torch.autograd.grad(out.sum() + h_n[-1].sum(), [x, *lstm.parameters()])
    assert torch.allclose(out, ref_out, atol=1e-12)
    assert torch.allclose(h_n, ref_h[-h_n.shape[0]:], atol=1e-12)
    assert h_n.shape[0] == (2 * layers if bidirectional else 1)
    assert (out[1, 3:] == 0).all() and (out[2, 1:] == 0).all(), "padding positions are zeros"
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-12)


def test_padding_values_never_reach_real_positions():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True)
    lengths = torch.tensor([5, 2])
    x = torch.randn(2, 5, 3)
    noisy = x.clone()
    noisy[1, 2:] = 1e3
    a, ha = run_lstm(lstm, x, lengths)
    b, hb = run_lstm(lstm, noisy, lengths)
    assert torch.equal(a, b) and torch.equal(ha, hb)


def test_reverse_padded_keeps_padding():
    x = torch.arange(8.0).view(2, 4, 1)
    out = reverse_padded(x, torch.tensor([4, 2]))
    assert out.squeeze(-1).tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]


def test_char_encoder_encodes_each_spelling_as_packing_does():
    torch.manual_seed(0)
    encoder = CharEncoder(30).double()
    ids = torch.randint(1, 30, (3, 5, 6))
    ids[:, :, 4:] = 0
    ids[1, 3:] = 0            # padding tokens
    ids[2, 1] = ids[0, 0]     # a repeated spelling
    out = encoder(ids)
    flat = ids.reshape(-1, 6)
    lengths = (flat != 0).sum(dim=1)
    real = lengths > 0
    packed = pack_padded_sequence(encoder.embedding(flat[real]), lengths[real], batch_first=True, enforce_sorted=False)
    _, (h_n, _) = encoder.lstm(packed)
    ref = torch.zeros(flat.shape[0], encoder.output_dim, dtype=torch.double)
    ref[real] = torch.cat([h_n[0], h_n[1]], dim=-1)
    assert torch.allclose(out.reshape(-1, encoder.output_dim), ref, atol=1e-12)
    assert (out[1, 3:] == 0).all()
