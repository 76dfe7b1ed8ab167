"""RivaModel: shapes, value ranges, padding invariance, loss reach, ablations, the image path, the vocabulary.

The model folder (save/load) is tested in test_checkpoint.py, the networks on their own in test_networks.py."""

from __future__ import annotations

import pytest
import torch

from flair_riva.model import RivaModel, reverse_padded
from flair_riva.text import UNK_ID
from tests.conftest import keyed_vectors, random_tokens, random_visual


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
    with_image = torch.tensor(flags)
    assert torch.allclose(out.attention[with_image].sum(dim=-1), torch.ones(sum(flags)), atol=1e-5)
    assert torch.all(out.attention[~with_image] == 0), "no attention without an image"
    # padding positions carry zeros
    for i, tokens in enumerate(tiny_token_lists):
        assert torch.all(out.token_states[i, len(tokens):] == 0)
        assert out.token_states[i, : len(tokens)].abs().sum(dim=-1).min() > 0


def test_rows_without_an_image_skip_the_rgn_and_vcn(model, tiny_token_lists):
    """s_G = 0 makes the RGN and VCN irrelevant for a row without an image: they run on the other rows only,
    and each row gets what a batch of its own kind gives (visual=None: no row has an image)."""
    flags = [True, False, True, False, False, True]
    visual = random_visual(len(flags), flags, seed=4)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
             for m in (model.rgn.fc, model.vcn.query)]
    try:
        with torch.no_grad():
            states, out = model.embed(tiny_token_lists, visual)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [sum(flags), sum(flags)], "the RGN and the VCN see the rows with an image only"
    rows = [i for i, f in enumerate(flags) if f]
    others = [i for i, f in enumerate(flags) if not f]
    sub = random_visual(len(rows), seed=4)
    sub.regions, sub.pooled = visual.regions[rows], visual.pooled[rows]
    with torch.no_grad():
        alone, alone_out = model.embed([tiny_token_lists[i] for i in rows], sub)
        text_only, text_out = model.embed([tiny_token_lists[i] for i in others], None)
    for k, i in enumerate(rows):
        torch.testing.assert_close(states[i], alone[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.s_g[i], alone_out.s_g[k], atol=1e-6, rtol=1e-5)
    for k, i in enumerate(others):
        torch.testing.assert_close(states[i], text_only[k], atol=1e-5, rtol=1e-4)
    assert torch.all(text_out.s_g == 0) and torch.all(out.relation_logits[others] == 0)


def test_trainable_parameters_name_what_each_mode_trains(model):
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    groups = model.parameter_groups()
    assert model.trainable_parameters("rgn") == {"rgn": groups["rgn"]}
    assert model.rgn_parameters() == groups["rgn"]
    teacher = model.trainable_parameters("teacher", backbone=False)
    assert set(teacher) == {"text", "rgn"}, "the teacher is the token encoder and the RGN"
    assert set(model.trainable_parameters("teacher")) == {"text", "rgn", "backbone"}
    assert set(model.trainable_parameters("joint", backbone=False)) == {"text", "rgn", "vcn", "vlcn"}
    fine = model.trainable_parameters("fine_tune")
    assert "backbone" not in fine and not ids(fine["vlcn"]) & ids(model.vlcn.output.parameters())
    frozen = RivaModel(model.config.replace(freeze_word_vectors=True), model.vocab)
    for mode in ("teacher", "joint", "fine_tune"):
        assert id(frozen.token_encoder.word_embedding.weight) not in ids(frozen.trainable_parameters(mode)["text"])
    with pytest.raises(ValueError, match="unknown training mode"):
        model.trainable_parameters("everything")


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


def test_gate_open_rate_lets_images_into_the_lm_in_training_only(tiny_config, tiny_vocab, tiny_token_lists):
    """The switchable deviation: in training, items with an image reach the VLCN with s_G = 1 at the given
    rate; the RGN's own s_G (the relation output) is unchanged, items without an image stay at 0, and in
    evaluation nothing is opened."""
    base = tiny_config.replace(dropout=0.0, gate_dropout=0.0)
    torch.manual_seed(0)
    plain = RivaModel(base, tiny_vocab)
    opened = RivaModel(base.replace(gate_open_rate=0.999999), tiny_vocab)
    opened.load_state_dict(plain.state_dict())
    flags = [True, False, True, True, True, False]
    text, visual = plain.encode(tiny_token_lists), random_visual(6, flags, seed=5)
    plain.train(), opened.train()
    with torch.no_grad():
        forced = plain(text, visual, s_g_override=torch.ones(6))
        free = plain(text, visual)
        got = opened(text, visual)
    torch.testing.assert_close(got.token_states, forced.token_states)
    torch.testing.assert_close(got.s_g, free.s_g)  # what the RGN says is not changed
    assert not torch.allclose(got.token_states, free.token_states)
    plain.eval(), opened.eval()
    with torch.no_grad():
        torch.testing.assert_close(opened(text, visual).token_states, plain(text, visual).token_states)
    with pytest.raises(ValueError, match="gate_open_rate"):
        base.replace(gate_open_rate=1.0)


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


# -- the image path (issue: the image never reached the token vectors) --------------------------------------

def _type_world(n: int, seed: int, num_types: int = 3):
    """A small world built so the image *can* matter: the word after an ambiguous name names what the
    image shows (one of ``num_types`` kinds), and nothing in the text tells which. Region features
    share a large component (as random-init ResNet features do) plus a small kind-specific direction."""
    gen = torch.Generator().manual_seed(seed)
    rng = __import__("random").Random(seed)
    shared = torch.rand(1, 49, 512, generator=torch.Generator().manual_seed(99)) * 4
    kinds = torch.rand(num_types, 1, 512, generator=torch.Generator().manual_seed(98))
    shown = [[f"shown{c}x", f"shown{c}y"] for c in "abcdefgh"[:num_types]]  # no digits: they normalise to 0
    texts, regions, types = [], [], []
    for _ in range(n):
        k = rng.randrange(num_types)
        texts.append([rng.choice(["look", "so", "pic"]), rng.choice(["at", "of"]), rng.choice(["jordan", "paris"]),
                      rng.choice(shown[k]), rng.choice(["today", "again", "!"])])
        regions.append(shared[0] + 0.5 * kinds[k, 0] + 0.3 * torch.rand(49, 512, generator=gen))
        types.append(k)
    return texts, torch.stack(regions), torch.tensor(types)


def _visual(regions: torch.Tensor):
    from flair_riva.vision import VisualFeatures

    b = regions.shape[0]
    return VisualFeatures(regions, regions.mean(dim=1), torch.ones(b, dtype=torch.bool), [None] * b)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_trained_tiny_model_uses_the_image_without_saturating(tiny_config, seed):
    """Trained on a world where the image predicts a word, the LM's loss with shuffled images is clearly
    above the loss with own images (image gain), the first LSTM step does not saturate, and a probe reads
    the kind off the state at the ambiguous name (forward LM: before the image-predicted word)."""
    from flair_riva.probe import fit_logistic_regression, predict
    from flair_riva.text import Vocabulary

    texts, regions, kinds = _type_world(384, seed)
    vocab = Vocabulary.build(texts, max_size=100, min_count=1)
    torch.manual_seed(seed)
    model = RivaModel(tiny_config.replace(dropout=0.1), vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    labels = torch.ones(len(texts), dtype=torch.long)
    for step in range(120):
        idx = torch.randint(0, 320, (32,), generator=torch.Generator().manual_seed(step))
        text = model.encode([texts[i] for i in idx])
        out = model.train()(text, _visual(regions[idx]))
        loss = model.relation_loss(out.relation_logits, labels[idx]) + model.lm_loss(out, text)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    held = list(range(320, 384))
    text = model.encode([texts[i] for i in held])
    with torch.no_grad():
        own = model(text, _visual(regions[held]))
        shuffled = model(text, _visual(regions[torch.tensor(held).roll(1)]))
        gain = float(model.lm_loss(shuffled, text) - model.lm_loss(own, text))
        # first step of the forward LM: gate pre-activations W_ih x_0 + b
        start, _, _, step_input = model.vlcn.visual_inputs(own.v_c, own.s_g, len(held), own.v_c)
        x0 = torch.cat([start, step_input], dim=-1) if step_input is not None else start
        pre = x0 @ model.vlcn.forward_lm.weight_ih_l0.T + model.vlcn.forward_lm.bias_ih_l0
    assert gain > 0.03, f"image gain {gain:.4f} nats/token: the LM does not use the image"
    assert float((pre.abs() > 6).float().mean()) < 0.05, "the first LSTM step saturates"
    # probe: kind from the forward state at the name (position 2), train on 48, test on 16 held-out tweets
    h = model.config.vlcn_hidden_size
    vectors = own.token_states[:, 2, :h]
    y = kinds[held]
    params = fit_logistic_regression(vectors[:48], y[:48], 3)
    accuracy = float((predict(params, vectors[48:]) == y[48:]).float().mean())
    assert accuracy >= 0.8, f"probe accuracy {accuracy:.2f}: the state at the name does not carry the image"


# -- vocabulary policy of issue 10: input = frequent words + every word the vectors know ------------------

def test_a_word_the_vectors_know_is_never_unk(tiny_config, tiny_token_lists):
    kv = keyed_vectors(["jordan", "paris", "cleveland", "Kardashian", "2015"])  # the last three are not in the texts
    model = RivaModel.from_texts(tiny_config.replace(min_word_count=2, use_image=False), tiny_token_lists,
                                 word_vectors=kv)
    vocab = model.vocab
    test_tweet = ["Kim", "Kardashian", "in", "Cleveland", "2016", "zzqx"]
    ids = model.encode([test_tweet]).word_ids[0].tolist()
    assert ids[1] != UNK_ID and ids[3] != UNK_ID and ids[4] != UNK_ID  # "kardashian", "cleveland", "0000"
    assert ids[5] == UNK_ID
    assert vocab.output_size < len(vocab), "the vector-only words are input words, not softmax classes"
    assert model.vlcn.output.n_classes == vocab.output_size
    # their vectors are the file's (looked up by normalised form: "Kardashian" -> "kardashian")
    row = model.token_encoder.word_embedding.weight[vocab.word_index["kardashian"]]
    assert torch.allclose(row, torch.tensor(kv["Kardashian"]))
    # the LM predicts them as <unk>
    targets = vocab.output_ids(torch.tensor(ids))
    assert targets[1] == UNK_ID and int(targets.max()) < vocab.output_size
    out = model(model.encode([test_tweet]), None)
    assert torch.isfinite(model.lm_loss(out, model.encode([test_tweet])))


def test_word_vectors_are_frozen_by_default(tiny_config, tiny_token_lists):
    kv = keyed_vectors(["jordan", "paris"])
    frozen = RivaModel.from_texts(tiny_config, tiny_token_lists, word_vectors=kv)
    assert frozen.config.freeze_word_vectors and not frozen.token_encoder.word_embedding.weight.requires_grad
    tuned = RivaModel.from_texts(tiny_config, tiny_token_lists, word_vectors=kv, fine_tune_word_vectors=True)
    assert tuned.token_encoder.word_embedding.weight.requires_grad
    assert RivaModel.from_texts(tiny_config, tiny_token_lists).token_encoder.word_embedding.weight.requires_grad


def test_the_networks_and_the_checkpoint_names_still_import_from_model():
    """Split out into flair_riva.networks and flair_riva.checkpoint; the old dotted names (and so objects
    pickled under them) still resolve to the same classes."""
    import flair_riva.checkpoint as checkpoint
    import flair_riva.model as model_module
    import flair_riva.networks as networks

    for name in ("RGN", "VCN", "VLCN", "FeatureStandardizer", "VectorNorm", "visual_normalizer"):
        assert getattr(model_module, name) is getattr(networks, name)
    for name in ("CheckpointError", "CONFIG_FILE", "VOCAB_FILE", "WEIGHTS_FILE", "VECTORS_FILE", "WORD_VECTORS_KEY",
                 "MAX_CONFIG_BYTES", "MAX_VOCAB_WORDS", "MAX_VOCAB_CHARS"):
        assert getattr(model_module, name) is getattr(checkpoint, name)
    assert all(hasattr(model_module, name) for name in model_module.__all__)
