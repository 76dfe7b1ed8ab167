"""pretrain.steps: Algorithm 1's two kinds of step, the teacher's, and what stops a diverging run."""

from __future__ import annotations

import pytest
import torch

from flair_riva.config import RivaConfig
from flair_riva.model import RivaModel
from flair_riva.pretrain import PretrainError
from flair_riva.pretrain.data import PreparedBatch, VisualSource
from flair_riva.pretrain.distributed import DistContext
from flair_riva.pretrain.steps import LossModule, StepRunner
from flair_riva.text import encode_batch
from tests.conftest import TINY, random_visual


def _batch(vocab, n=6, seed=0):
    tokens = [vocab.words[4:4 + 3 + i] for i in range(n)]
    has = [True] * (n - 1) + [False]
    return PreparedBatch(encode_batch(vocab, tokens), torch.tensor([i % 2 for i in range(n)]),
                         random_visual(n, has, seed=seed), torch.tensor(has), n)


def test_rgn_step_changes_theta_rgn_only(tiny_vocab):
    """Algorithm 1 line 10: the labelled pass updates θ_RGN and nothing else (dropout on)."""
    torch.manual_seed(0)
    model = RivaModel(RivaConfig(**TINY, dropout=0.5), tiny_vocab).train()
    groups = model.parameter_groups()
    optimizers = {
        "joint": torch.optim.SGD([p for ps in groups.values() for p in ps], lr=0.5),
        "rgn": torch.optim.SGD(model.rgn_parameters(), lr=0.5),
    }
    runner = StepRunner(model, VisualSource(None), DistContext(), optimizers, clip=5.0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for seed in range(3):
        runner.step("rgn", _batch(tiny_vocab, seed=seed))
    rgn_names = {n for n, _ in model.named_parameters() if n.startswith("rgn.")}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= rgn_names, f"non-RGN parameters changed: {sorted(changed - rgn_names)}"
    assert {n for n in rgn_names if "lstm" in n} & changed and {n for n in rgn_names if "classifier" in n} & changed
    # the joint step (lines 3-5) moves the token encoder, the VCN and the VLCN too
    runner.step("joint", _batch(tiny_vocab, seed=9))
    changed = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"token_encoder", "rgn", "vcn", "vlcn"} <= changed


def test_fine_tuned_backbone_moves_in_the_joint_step_only(tiny_vocab):
    torch.manual_seed(0)
    model = RivaModel(RivaConfig(**TINY), tiny_vocab).train()
    groups = model.parameter_groups()
    main_params = [p for k, ps in groups.items() if k != "backbone" for p in ps]
    optimizers = {"joint": torch.optim.SGD([{"params": main_params, "lr": 0.1},
                                            {"params": groups["backbone"], "lr": 0.1}]),
                  "rgn": torch.optim.SGD(model.rgn_parameters(), lr=0.1)}
    runner = StepRunner(model, VisualSource(None), DistContext(), optimizers, clip=5.0)
    vocab_tokens = [tiny_vocab.words[4:8], tiny_vocab.words[5:7]]
    pixels = torch.randn(2, 3, 224, 224)
    batch = PreparedBatch(encode_batch(tiny_vocab, vocab_tokens), torch.tensor([0, 1]),
                          (pixels, torch.tensor([True, True]), [None, None]), torch.tensor([True, True]), 2)
    conv = model.backbone.conv1.weight
    before = conv.detach().clone()
    runner.step("rgn", batch)
    assert torch.equal(conv, before), "the RGN-only step must not fine-tune the backbone"
    runner.step("joint", batch)
    assert not torch.equal(conv, before), "the joint step fine-tunes the backbone (Algorithm 1 line 5)"


def test_rgn_step_computes_the_models_relation_logits(tiny_vocab):
    torch.manual_seed(0)
    model = RivaModel(RivaConfig(**TINY), tiny_vocab).eval()
    batch = _batch(tiny_vocab)
    rel, lm = LossModule(model, VisualSource(None))("rgn", batch)
    logits = model.relation_logits(batch.text, batch.visual)
    assert float(lm) == 0.0
    keep = batch.has_image & (batch.labels >= 0)
    expected = torch.nn.functional.cross_entropy(logits[keep], batch.labels[keep], reduction="sum")
    torch.testing.assert_close(rel, expected)
    torch.testing.assert_close(rel, model.relation_loss_sum(logits, batch.labels, batch.has_image)[0])


@pytest.mark.parametrize("mode, stage", [("joint", "stage 3"), ("teacher", "stage 1")])
def test_nan_loss_stops_the_run_naming_stage_and_update(tiny_vocab, mode, stage):
    torch.manual_seed(0)
    model = RivaModel(RivaConfig(**TINY), tiny_vocab).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    runner = StepRunner(model, VisualSource(None), DistContext(), {mode: optimizer}, clip=5.0)
    runner.step(mode, _batch(tiny_vocab))
    with torch.no_grad():
        model.rgn.classifier.weight.fill_(float("nan"))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(PretrainError, match=f"non-finite loss .*in {stage}.*update 2"):
        runner.step(mode, _batch(tiny_vocab, seed=1))
    assert all(torch.equal(p, before[k]) or torch.isnan(before[k]).any() for k, p in model.named_parameters())


def test_update_that_makes_weights_non_finite_stops_the_run(tiny_vocab):
    torch.manual_seed(0)
    model = RivaModel(RivaConfig(**TINY), tiny_vocab).train()
    groups = model.parameter_groups()
    optimizer = torch.optim.SGD([{"params": groups["rgn"], "lr": float("inf")}], lr=0.1)  # as --backbone-lr -1 did
    runner = StepRunner(model, VisualSource(None), DistContext(), {"rgn": optimizer}, clip=0.0)
    with pytest.raises(PretrainError, match="non-finite weights after the update in stage 3"):
        runner.step("rgn", _batch(tiny_vocab))
