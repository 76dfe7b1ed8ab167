"""The networks of RIVA (flair_riva.networks): the factored VCN attention of Eq. (3)-(5), and the VLCN's ways
for the image to enter (s_G = 0 is exactly the no-image LM, continuity in s_G, the paper's FC+GELU start)."""

from __future__ import annotations

import math

import pytest
import torch

from flair_riva.config import RivaConfig
from flair_riva.model import RivaModel
from flair_riva.networks import VCN
from tests.conftest import random_visual


def test_vcn_equals_the_projected_regions_formula():
    """Eq. (3)-(5) with the keys V^r W^V formed explicitly give the same v_c and attention."""
    torch.manual_seed(0)
    vcn = VCN(12, 16, 4).double().eval()
    f_t = torch.randn(3, 12, dtype=torch.double)
    regions = torch.randn(3, 49, 16, dtype=torch.double).abs()
    has_image = torch.tensor([True, True, False])
    v_c, attention = vcn(f_t, regions, has_image)
    b, h, d = 3, 4, 4
    q = vcn.query(f_t).view(b, h, 1, d)
    kv = vcn.key_value(vcn.region_norm(regions, has_image)).view(b, 49, h, d).transpose(1, 2)
    weights = (q @ kv.transpose(-1, -2) / math.sqrt(d)).softmax(dim=-1)
    assert torch.allclose(v_c, (weights @ kv).reshape(b, h * d), atol=1e-12)
    assert torch.allclose(attention, weights.mean(dim=1).squeeze(1), atol=1e-12)


@pytest.mark.parametrize("mode", ["step", "state", "start"])
def test_token_states_change_with_s_g_continuously_and_equal_no_image_at_zero(mode, tiny_config, tiny_vocab,
                                                                             tiny_token_lists):
    torch.manual_seed(0)
    model = RivaModel(tiny_config.replace(vlcn_visual=mode), tiny_vocab).eval()
    text = model.encode(tiny_token_lists)
    visual = random_visual(len(tiny_token_lists))
    b = len(tiny_token_lists)
    with torch.no_grad():
        states = {g: model(text, visual, s_g_override=torch.full((b,), g)).token_states for g in (0.0, 0.5, 0.501, 1.0)}
        no_image, _, _ = model.vlcn(model.token_inputs(text), text.lengths)
    assert torch.allclose(states[0.0], no_image, atol=1e-6), "s_G = 0 must be exactly the no-image LM"
    far = (states[1.0] - states[0.0]).abs().max()
    near = (states[0.501] - states[0.5]).abs().max()
    assert far > 1e-3, "the image must reach the token states when the gate is open"
    assert near < far / 20, "the states must change continuously with s_G"


def test_paper_mode_is_kept_as_written(tiny_config, tiny_vocab, tiny_token_lists):
    """vlcn_visual="paper" (0.1.0): FC+GELU(s_G · v_c) replaces [BOS]/[EOS]; 0.1.0 configs load as it."""
    torch.manual_seed(0)
    model = RivaModel(tiny_config.replace(vlcn_visual="paper", visual_norm="layer"), tiny_vocab).eval()
    assert hasattr(model.vlcn, "visual_proj") and isinstance(model.rgn.visual_norm, torch.nn.LayerNorm)
    legacy = {k: v for k, v in tiny_config.to_dict().items() if k not in ("vlcn_visual", "visual_norm", "gate_dropout")}
    assert RivaConfig.from_dict(legacy).vlcn_visual == "paper"
    out = model(model.encode(tiny_token_lists), random_visual(len(tiny_token_lists)))
    assert out.token_states.shape[-1] == tiny_config.embedding_length
