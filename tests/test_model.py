"""RivaModel: shapes, value ranges, padding invariance, loss reach, ablations, save/load safety."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from flair_riva.config import FORMAT_VERSION, RivaConfig
from flair_riva.model import CheckpointError, RivaModel, reverse_padded
from tests.conftest import random_tokens, random_visual


@pytest.fixture
def model(tiny_config, tiny_vocab) -> RivaModel:
    torch.manual_seed(0)
    return RivaModel(tiny_config, tiny_vocab).eval()


def test_reverse_padded_keeps_padding_in_place():
    x = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    assert reverse_padded(x, torch.tensor([3, 2])).tolist() == [[3, 2, 1, 0], [5, 4, 0, 0]]


def test_output_shapes_and_ranges(model, tiny_token_lists):
    text = model.encode(tiny_token_lists)
    flags = [True, False, True, True, False, True]
    out = model(text, random_visual(len(flags), flags))
    b, t = len(flags), max(len(x) for x in tiny_token_lists)
    assert out.token_states.shape == (b, t, model.config.embedding_length)
    assert out.relation_logits.shape == (b, 2)
    assert out.attention.shape == (b, 49)
    assert out.v_c.shape == (b, 512)
    assert torch.all((out.s_g >= 0) & (out.s_g <= 1))
    assert torch.all(out.s_g[~torch.tensor(flags)] == 0), "an item without an image gets s_G = 0"
    assert torch.allclose(out.attention.sum(dim=-1), torch.ones(b), atol=1e-5)
    # padding positions carry zeros
    for i, tokens in enumerate(tiny_token_lists):
        assert torch.all(out.token_states[i, len(tokens):] == 0)
        assert out.token_states[i, : len(tokens)].abs().sum(dim=-1).min() > 0


def test_padding_invariance_lengths_1_to_100(model):
    lengths = [1, 2, 7, 33, 64, 100]
    token_lists = [random_tokens(n, model.vocab, seed=n) for n in lengths]
    visual = random_visual(len(lengths), [True, False, True, True, True, False], seed=3)
    batch_states, batch_out = model.embed(token_lists, visual)
    for i, tokens in enumerate(token_lists):
        one = random_visual(1)
        one.regions, one.pooled = visual.regions[i : i + 1], visual.pooled[i : i + 1]
        one.has_image = visual.has_image[i : i + 1]
        alone, out = model.embed([tokens], one)
        assert alone[0].shape == (len(tokens), model.config.embedding_length)
        torch.testing.assert_close(alone[0], batch_states[i], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.s_g[0], batch_out.s_g[i], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.attention[0], batch_out.attention[i], atol=1e-6, rtol=1e-5)


def test_forward_state_depends_only_on_the_past_and_backward_only_on_the_future(model, tiny_vocab):
    a = random_tokens(8, tiny_vocab, seed=1)
    b = a[:4] + random_tokens(4, tiny_vocab, seed=2)
    (ea, eb), _ = model.embed([a, b], random_visual(2, [False, False]))
    h = model.config.vlcn_hidden_size
    torch.testing.assert_close(ea[:4, :h], eb[:4, :h])          # same prefix -> same forward states
    assert not torch.allclose(ea[:4, h:], eb[:4, h:])            # backward states see the changed suffix


def test_empty_text_is_a_clear_error(model):
    with pytest.raises(ValueError, match="empty"):
        model.encode([["hello"], []])


def test_gate_ablation_gives_s_g_one_for_images(tiny_config, tiny_vocab, tiny_token_lists):
    model = RivaModel(tiny_config.replace(gate=False), tiny_vocab).eval()
    flags = [True, False, True, True, True, True]
    out = model(model.encode(tiny_token_lists), random_visual(6, flags))
    assert out.s_g.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_text_only_ablation_has_no_rgn_vcn_inputs(tiny_config, tiny_vocab, tiny_token_lists):
    model = RivaModel(tiny_config.replace(use_image=False), tiny_vocab).eval()
    assert model.backbone is None
    out = model(model.encode(tiny_token_lists), None)
    assert out.relation_logits is None and out.attention is None
    assert torch.all(out.s_g == 0)
    loss = model.lm_loss(out, model.encode(tiny_token_lists))
    loss.backward()
    assert model.vlcn.bos.grad is not None and model.vlcn.bos.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.rgn.parameters())


def _grad_norms(model: RivaModel) -> dict[str, float]:
    return {
        part: sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)
        for part, params in model.parameter_groups().items()
    }


def test_task1_does_not_reach_the_vlcn_and_task2_reaches_everything(model, tiny_token_lists):
    model.train()
    text = model.encode(tiny_token_lists)
    visual = random_visual(6)
    logits = model.relation_logits(text, visual)
    model.relation_loss(logits, torch.tensor([1, 0, 1, 0, 1, 0])).backward()
    g = _grad_norms(model)
    assert g["rgn"] > 0 and g["text"] > 0
    assert g["vlcn"] == 0 and g["vcn"] == 0

    model.zero_grad(set_to_none=True)
    out = model(text, visual)
    model.lm_loss(out, text).backward()
    g = _grad_norms(model)
    assert g["vlcn"] > 0 and g["vcn"] > 0 and g["text"] > 0
    assert g["rgn"] > 0, "task 2 reaches the RGN through the gate s_G"


def test_relation_loss_ignores_items_without_image(model, tiny_token_lists):
    text = model.encode(tiny_token_lists[:2])
    logits = model.relation_logits(text, random_visual(2, [True, False]))
    full = model.relation_loss(logits[:1], torch.tensor([1]))
    masked = model.relation_loss(logits, torch.tensor([1, 0]), torch.tensor([True, False]))
    torch.testing.assert_close(full, masked)
    none = model.relation_loss(logits, torch.tensor([1, 0]), torch.tensor([False, False]))
    assert float(none.detach()) == 0.0


def test_fine_tuned_backbone_receives_gradients(model, tiny_token_lists):
    model.train()
    pixels = torch.randn(2, 3, 224, 224)
    visual = model.visual_from_pixels(pixels, torch.tensor([True, True]))
    text = model.encode(tiny_token_lists[:2])
    out = model(text, visual)
    (model.lm_loss(out, text) + model.relation_loss(out.relation_logits, torch.tensor([1, 0]))).backward()
    assert _grad_norms(model)["backbone"] > 0
    assert not model.backbone.training, "BatchNorm of the backbone stays in eval mode while fine-tuning"


def test_save_load_bit_identical(model, tiny_token_lists, tmp_path):
    visual = random_visual(6, [True, False, True, True, True, True])
    before, out_before = model.embed(tiny_token_lists, visual)
    model.save(tmp_path / "riva")
    assert sorted(os.listdir(tmp_path / "riva")) == ["config.json", "model.safetensors", "vocab.json"]
    loaded = RivaModel.load(tmp_path / "riva")
    assert loaded.config == model.config and loaded.vocab.words == model.vocab.words
    after, out_after = loaded.embed(tiny_token_lists, visual)
    for x, y in zip(before, after):
        assert torch.equal(x, y)
    assert torch.equal(out_before.s_g, out_after.s_g)
    # saving again over the same directory replaces it atomically
    model.save(tmp_path / "riva")
    assert RivaModel.load(tmp_path / "riva").config == model.config


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_never_executed(model, tmp_path):
    directory = tmp_path / "riva"
    model.save(directory)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(str(marker)))
    # a pickle beside the real files is ignored ...
    for name in ("pytorch_model.bin", "model.pt", "checkpoint.pt"):
        (directory / name).write_bytes(payload)
    RivaModel.load(directory)
    # ... and a pickle in place of the weights is refused, not unpickled
    (directory / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError):
        RivaModel.load(directory)
    assert not marker.exists()


def test_incompatible_format_version_is_a_clear_error(model, tmp_path):
    directory = tmp_path / "riva"
    model.save(directory)
    meta = json.loads((directory / "config.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format version"):
        RivaModel.load(directory)
    with pytest.raises(CheckpointError, match="does not exist"):
        RivaModel.load(tmp_path / "nothing")


def _tamper(directory, config=None, meta=None, vocab=None):
    data = json.loads((directory / "config.json").read_text())
    data["config"].update(config or {})
    data.update(meta or {})
    (directory / "config.json").write_text(json.dumps(data))
    if vocab is not None:
        (directory / "vocab.json").write_text(json.dumps(vocab))


@pytest.mark.parametrize("changes, field", [
    ({"rgn_layers": 10**6}, "rgn_layers"),
    ({"vlcn_hidden_size": 4096}, "vlcn"),          # in range: the weights' shapes say otherwise
    ({"rgn_hidden_size": 10**9}, "rgn_hidden_size"),
    ({"num_heads": 0}, "num_heads"),
    ({"num_heads": 7}, "num_heads"),
    ({"backbone": "resnet50"}, "backbone"),
    ({"adaptive_softmax_cutoffs": [10, 5]}, "adaptive_softmax_cutoffs"),
    ({"word_dim": 16.0}, "word_dim"),
    ({"word_dim": True}, "word_dim"),
    ({"dropout": float("nan")}, "dropout"),
    ({"use_image": "yes"}, "use_image"),
])
def test_hostile_config_is_a_fast_checkpoint_error(model, tmp_path, changes, field):
    import time

    directory = tmp_path / "riva"
    model.save(directory)
    _tamper(directory, config=changes)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=field):
        RivaModel.load(directory)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("meta, words, expect", [
    ({"vocab_size": 10**7}, None, "weights do not fit"),     # checked against the header before vocab.json is read
    ({"vocab_size": 10**9}, None, "vocab_size"),
    ({"num_chars": "many"}, None, "num_chars"),
    (None, "non-string", "not a non-empty string"),
    (None, "empty", "not a non-empty string"),
    (None, "duplicate", "twice"),
])
def test_bad_vocabulary_is_a_checkpoint_error(model, tmp_path, meta, words, expect):
    directory = tmp_path / "riva"
    model.save(directory)
    vocab = None
    if words is not None:
        vocab = json.loads((directory / "vocab.json").read_text())
        vocab["words"][-1] = {"non-string": 7, "empty": "", "duplicate": vocab["words"][-2]}[words]
    _tamper(directory, meta=meta, vocab=vocab)
    with pytest.raises(CheckpointError, match=expect):
        RivaModel.load(directory)


def test_oversized_vocab_file_is_refused_before_parsing(model, tmp_path):
    directory = tmp_path / "riva"
    model.save(directory)
    with open(directory / "vocab.json", "w") as handle:  # 10**6 extra words, far beyond the recorded size
        json.dump({"words": [f"w{i}" for i in range(10**6)], "chars": ["<pad>", "<unk>"]}, handle)
    with pytest.raises(CheckpointError, match="more than"):
        RivaModel.load(directory)


def test_unknown_config_field_is_reported():
    with pytest.raises(ValueError, match="newer flair-riva"):
        RivaConfig.from_dict({"word_dim": 10, "quantum_layers": 3})


def test_table2_defaults():
    c = RivaConfig()
    assert (c.rgn_hidden_size, c.rgn_layers, c.vlcn_hidden_size, c.vlcn_layers, c.num_heads) == (256, 2, 256, 2, 8)
    assert (c.batch_size, c.dropout, c.learning_rate, c.backbone_learning_rate, c.clip_grad_norm) == (
        16, 0.5, 2e-2, 1e-4, 5.0)
    assert c.char_dim == 25 and c.text_dim == 512 == c.visual_dim and c.embedding_length == 512


def test_a_few_hundred_steps_on_the_demo_world_lower_both_losses(tiny_config, tmp_path):
    from flair_riva.datasets import iter_unlabelled_pairs, read_relation_pairs
    from flair_riva.demo import generate_demo_world
    from flair_riva.vision import ImageFeaturizer

    torch.manual_seed(0)
    world = generate_demo_world(tmp_path / "demo", scale=0.1)
    unlabelled = list(iter_unlabelled_pairs(world.unlabelled_file))
    labelled = read_relation_pairs(world.relation_file)
    model = RivaModel.from_texts(tiny_config.replace(dropout=0.1), [p.tokens for p in unlabelled + labelled])
    featurizer = ImageFeaturizer(model.backbone)
    model.backbone.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    task1, task2 = [], []
    model.train()
    for _ in range(240):
        idx = torch.randint(len(labelled), (8,), generator=gen).tolist()
        batch = [labelled[i] for i in idx]
        text = model.encode([p.tokens for p in batch])
        visual = featurizer([p.image for p in batch])
        out = model(text, visual)
        l1 = model.relation_loss(out.relation_logits, torch.tensor([p.label for p in batch]), visual.has_image)
        l2 = model.lm_loss(out, text)
        optimizer.zero_grad()
        (l1 + l2).backward()
        optimizer.step()
        task1.append(l1.item())
        task2.append(l2.item())
    first, last = slice(0, 30), slice(-30, None)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert mean(task1[last]) < 0.8 * mean(task1[first]), (mean(task1[first]), mean(task1[last]))
    assert mean(task2[last]) < 0.8 * mean(task2[first]), (mean(task2[first]), mean(task2[last]))
