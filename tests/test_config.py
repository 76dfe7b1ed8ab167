"""RivaConfig: Table 2's defaults, visual sizes that follow the backbone, and unknown fields.

Loading configs written by 0.1.0 (retired fields, pickled configs) is tested in test_checkpoint.py."""

from __future__ import annotations

import pytest

from flair_riva.config import RivaConfig


def test_unknown_config_field_is_reported():
    with pytest.raises(ValueError, match="newer flair-riva"):
        RivaConfig.from_dict({"word_dim": 10, "quantum_layers": 3})


def test_table2_defaults():
    c = RivaConfig()
    assert (c.rgn_hidden_size, c.rgn_layers, c.vlcn_hidden_size, c.vlcn_layers, c.num_heads) == (256, 2, 256, 2, 8)
    from flair_riva.pretrain.options import PAPER_DEFAULTS, PretrainConfig

    p = PretrainConfig()  # the training settings of Table 2 are the pretrainer's
    assert (p.batch_size, c.dropout, PAPER_DEFAULTS["lr"], p.backbone_lr, p.clip) == (16, 0.5, 2e-2, 1e-4, 5.0)
    assert c.char_dim == 25 and c.text_dim == 512 == c.visual_dim and c.embedding_length == 512
    assert (RivaConfig(backbone="resnet18").visual_dim, c.num_regions) == (512, 49)  # from the backbone
