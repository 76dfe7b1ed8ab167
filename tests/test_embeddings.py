"""RivaEmbeddings: Flair protocol, images and their fallbacks, batch invariance, save/load, training.

The style follows Flair's ``tests/embedding_test_utils.py::BaseEmbeddingsTest`` (eval mode after
construction, identical vectors after a save/load round trip, batch-order invariance, odd unicode),
plus the RIVA specifics: s_G and Eq. (8) metadata, missing/corrupt images in a mixed batch, the
feature cache, frozen vs fine-tuned, Flair's embedding storage, and a tagger trained with a stack of
offline Word/Transformer/Flair/RIVA embeddings that reloads in a fresh process without importing
flair_riva.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flair
import pytest
import torch
from flair.data import Sentence
from flair.embeddings import StackedEmbeddings
from flair.embeddings.base import load_embeddings
from flair.training_utils import store_embeddings

from flair_riva.config import RivaConfig
from flair_riva.embeddings import RivaEmbeddings
from flair_riva.model import CheckpointError, RivaModel
from flair_riva.vision import ImageFeaturizer
from tests.conftest import IMAGES, TINY

# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def riva(corpus) -> RivaModel:
    torch.manual_seed(0)
    token_lists = [[t.text for t in s] for s in corpus.get_all_sentences()]
    return RivaModel.from_texts(RivaConfig(**TINY), token_lists).eval()


@pytest.fixture(scope="module")
def text_riva(corpus) -> RivaModel:
    torch.manual_seed(1)
    token_lists = [[t.text for t in s] for s in corpus.get_all_sentences()]
    return RivaModel.from_texts(RivaConfig(**TINY, use_image=False), token_lists).eval()


@pytest.fixture
def emb(riva) -> RivaEmbeddings:
    return RivaEmbeddings(riva)


def make(tokens, image=None, key="image_path") -> Sentence:
    """A fresh Sentence (token list or text) with an optional image path in its metadata."""
    sentence = Sentence(tokens if isinstance(tokens, list) else tokens.split())
    if image is not None:
        sentence.add_metadata(key, str(image))
    return sentence


def vectors(sentence: Sentence, name: str) -> torch.Tensor:
    return torch.stack([t.get_embedding([name]) for t in sentence])


GOOD = [
    ("Look at Jordan in this photo #NBA", 0),
    ("Can't stop thinking about Paris today", 1),
    ("Jordan scored 30 points last night", 2),
    ("flying to Washington tomorrow with @mike", None),
]


def good_sentences() -> list[Sentence]:
    return [make(text, IMAGES[i] if i is not None else None) for text, i in GOOD]


# --------------------------------------------------------------------------------------------------
# Flair protocol (BaseEmbeddingsTest style)
# --------------------------------------------------------------------------------------------------


def test_embeddings_load_in_eval_mode_and_stay_frozen(riva):
    emb = RivaEmbeddings(riva)
    assert not emb.training
    assert emb.static_embeddings
    assert all(not p.requires_grad for p in emb.parameters())
    parent = torch.nn.Sequential(emb)
    parent.train()  # what the tagger does every epoch
    assert not emb.training and not emb.model.training and not emb.model.backbone.training
    assert emb.embedding_length == riva.config.embedding_length == 2 * TINY["vlcn_hidden_size"]


def test_every_token_gets_h_fwd_h_bwd_and_the_metadata(emb):
    sentences = good_sentences()
    emb.embed(sentences)
    for sentence, (_, image) in zip(sentences, GOOD):
        vec = vectors(sentence, emb.name)
        assert vec.shape == (len(sentence), emb.embedding_length)
        assert not vec.requires_grad
        assert torch.isfinite(vec).all() and vec.abs().sum(dim=-1).min() > 0
        s_g = sentence.get_metadata("riva_relevance")
        assert isinstance(s_g, float) and 0.0 <= s_g <= 1.0
        att = RivaEmbeddings.attention_map(sentence)
        if image is None:
            assert s_g == 0.0 and att is None and sentence.get_metadata("riva_attention") is None
            assert sentence.get_metadata("riva_image_reason") == "no 'image_path' metadata"
        else:
            assert s_g > 0.0
            assert att.shape == (7, 7) and torch.all(att >= 0)
            assert abs(float(att.sum()) - 1.0) < 1e-4  # Eq. (8): a softmax over the 49 regions
            raw = sentence.get_metadata("riva_attention")
            assert len(raw) == 7 and all(len(row) == 7 and isinstance(row[0], float) for row in raw)
            assert sentence.get_metadata("riva_image_reason") is None


def test_vectors_are_the_models_vlcn_states_section_4_2(emb, riva):
    """Same numbers as RivaModel.embed with the same features; also for sentences without an image
    (which skip the RGN and VCN: s_G = 0 makes them irrelevant)."""
    sentences = good_sentences() + [make("no image here", IMAGES[0].parent / "nope.jpg")]
    emb.embed(sentences)
    paths = [s.get_metadata("image_path") if s.has_metadata("image_path") else None for s in sentences]
    visual = ImageFeaturizer(riva.backbone)(paths)
    assert visual.has_image.tolist() == [True, True, True, False, False]
    with torch.no_grad():
        expected, out = riva.embed([[t.text for t in s] for s in sentences], visual)
    for i, sentence in enumerate(sentences):
        torch.testing.assert_close(vectors(sentence, emb.name), expected[i], atol=1e-6, rtol=1e-5)
        assert sentence.get_metadata("riva_relevance") == pytest.approx(float(out.s_g[i]), abs=1e-6)
    torch.testing.assert_close(RivaEmbeddings.attention_map(sentences[0]).flatten(), out.attention[0],
                               atol=1e-6, rtol=1e-5)


def test_embeddings_stay_the_same_after_saving_and_loading(emb):
    sentences = good_sentences()
    emb.embed(sentences)
    params = emb.save_embeddings(use_state_dict=True)
    loaded = load_embeddings(params)
    assert type(loaded) is RivaEmbeddings and not loaded.training
    assert loaded.name == emb.name and loaded.to_params()["vocab"] == emb.to_params()["vocab"]
    again = good_sentences()
    loaded.embed(again)
    for a, b in zip(sentences, again):
        assert torch.equal(vectors(a, emb.name), vectors(b, loaded.name))
        assert a.get_metadata("riva_relevance") == b.get_metadata("riva_relevance")
        assert a.get_metadata("riva_attention") == b.get_metadata("riva_attention")


def test_to_params_holds_the_config_object_the_vocab_and_every_argument(riva, tmp_path, monkeypatch):
    emb = RivaEmbeddings(riva, fine_tune=False, use_image=True, image_key="img",
                         feature_cache=tmp_path / "cache", name="my-riva")
    params = emb.to_params()
    assert isinstance(params["config"], RivaConfig)  # pickled object -> auto-import on load (notes §1.3)
    assert isinstance(params["vocab"], str) and json.loads(params["vocab"])["words"] == riva.vocab.words
    assert {k: params[k] for k in ("fine_tune", "use_image", "image_key", "feature_cache", "name")} == {
        "fine_tune": False, "use_image": True, "image_key": "img", "feature_cache": str(tmp_path / "cache"),
        "name": "my-riva"}
    # from_params: no model directory, no download, random weights of the same module tree
    monkeypatch.setattr(RivaModel, "load", classmethod(lambda *a, **k: pytest.fail("from_params read a file")))
    rebuilt = RivaEmbeddings.from_params(copy.deepcopy(params))
    assert rebuilt.to_params().keys() == params.keys()
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in emb.state_dict().items()}
    rebuilt.load_state_dict(emb.state_dict())  # strict, as the tagger does


def test_force_relevance_is_the_models_s_g_override(riva, tmp_path):
    """The forced-gate control: s_G forced to 1 (every image let in) / 0 (= no image) for sentences with an
    image; those without keep s_G = 0. It survives to_params/from_params."""
    sentences = good_sentences()
    paths = [s.get_metadata("image_path") if s.has_metadata("image_path") else None for s in sentences]
    visual = ImageFeaturizer(riva.backbone)(paths)
    token_lists = [[t.text for t in s] for s in sentences]
    for value in (1.0, 0.0):
        emb = RivaEmbeddings(riva, force_relevance=value, name=f"forced-{value}")
        emb.embed(sentences)
        with torch.no_grad():
            expected, out = riva.embed(token_lists, visual, torch.full((len(sentences),), value))
        for i, sentence in enumerate(sentences):
            torch.testing.assert_close(vectors(sentence, emb.name), expected[i], atol=1e-6, rtol=1e-5)
            assert sentence.get_metadata("riva_relevance") == (value if paths[i] is not None else 0.0)
        assert emb.to_params()["force_relevance"] == value
        assert RivaEmbeddings.from_params(copy.deepcopy(emb.to_params())).force_relevance == value
    with torch.no_grad():  # the RGN's own s_G is not 1 here, so forcing it open changes the vectors
        plain, free = riva.embed(token_lists, visual)
        opened, _ = riva.embed(token_lists, visual, torch.ones(len(sentences)))
    assert float(free.s_g[0]) < 0.99
    assert not torch.allclose(plain[0], opened[0], atol=1e-4)
    with pytest.raises(ValueError, match="force_relevance"):
        RivaEmbeddings(riva, force_relevance=1.5)
    assert RivaEmbeddings(riva).to_params()["force_relevance"] is None


def test_batch_order_invariance(emb):
    forward, backward = good_sentences(), good_sentences()[::-1]
    emb.embed(forward)
    emb.embed(backward)
    for a, b in zip(forward, backward[::-1]):
        torch.testing.assert_close(vectors(a, emb.name), vectors(b, emb.name), atol=1e-5, rtol=1e-4)
        assert a.get_metadata("riva_relevance") == pytest.approx(b.get_metadata("riva_relevance"), abs=1e-6)


def test_constructor_errors_are_clear(tmp_path, riva):
    with pytest.raises(CheckpointError, match="does not exist"):
        RivaEmbeddings(tmp_path / "no-such-model")
    with pytest.raises(TypeError, match="RivaModel or a model directory"):
        RivaEmbeddings(42)
    with pytest.raises(ValueError, match="image_key"):
        RivaEmbeddings(riva, image_key="")


def test_model_directory_is_loaded(riva, tmp_path):
    riva.save(tmp_path / "model")
    from_dir = RivaEmbeddings(str(tmp_path / "model"))
    from_obj = RivaEmbeddings(riva)
    a, b = good_sentences(), good_sentences()
    from_dir.embed(a)
    from_obj.embed(b)
    assert from_dir.name == from_obj.name
    for x, y in zip(a, b):
        assert torch.equal(vectors(x, from_dir.name), vectors(y, from_obj.name))


# --------------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------------


def test_bad_inputs_never_break_a_batch_of_good_sentences(emb, tmp_path, flair_log):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a JPEG at all" * 20)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(IMAGES[1].read_bytes()[:2000])
    empty_file = tmp_path / "empty.jpg"
    empty_file.write_bytes(b"")
    unreadable = tmp_path / "unreadable.jpg"
    unreadable.write_bytes(IMAGES[2].read_bytes())
    unreadable.chmod(0)  # no effect as root: then it is a good image, which is fine too
    weird = ["👨\u200d👩\u200d👧", "\u200f", "مرحبا", "\u200b", "e\u0301", "𝕁𝕠𝕣𝕕𝕒𝕟", "\u202e", "#NBA", "🏀"]
    long_tokens = [f"w{i % 17}" for i in range(300)]
    bad = [
        make("", None),                                    # empty sentence: skipped
        make("a picture that is a directory", tmp_path),   # a directory
        make("corrupt image file", corrupt),
        make("truncated image file", truncated),
        make("an empty image file", empty_file),
        make("missing image file", tmp_path / "nope.jpg"),
        make(weird, IMAGES[3]),                            # emoji, ZWJ, RTL marks, combining chars
        make(long_tokens, IMAGES[0]),                      # 300 tokens
        make("unreadable image file", unreadable),
        make("image metadata is None"),
        make("image metadata is an int"),
    ]
    bad[-2].add_metadata("image_path", None)
    bad[-1].add_metadata("image_path", 12345)
    good = good_sentences()
    batch = [x for pair in zip(bad, good + [None] * len(bad)) for x in pair if x is not None]
    flair_log.records.clear()
    emb.embed(batch)

    # one log line for the whole batch, with the reasons
    lines = flair_log.messages("embedded without image")
    assert len(lines) == 1, lines
    for reason in ("is a directory", "corrupt", "truncated", "empty file", "missing", "no path", "is a int"):
        assert reason in lines[0], (reason, lines[0])

    assert len(bad[0]) == 0 and bad[0].get_metadata("riva_relevance") == 0.0  # README: every sentence has it
    assert bad[0].get_metadata("riva_image_reason") == "empty sentence"
    assert bad[0].get_metadata("riva_attention") is None
    expected_reasons = ["is a directory", "corrupt", "truncated", "empty file", "missing"]
    for sentence, reason in zip(bad[1:6], expected_reasons):
        assert sentence.get_metadata("riva_image_reason") == reason
        assert sentence.get_metadata("riva_relevance") == 0.0 and RivaEmbeddings.attention_map(sentence) is None
    assert bad[-2].get_metadata("riva_image_reason") == "no path"
    assert "int, not a path" in bad[-1].get_metadata("riva_image_reason")
    assert vectors(bad[6], emb.name).shape == (len(weird), emb.embedding_length)
    assert vectors(bad[7], emb.name).shape == (300, emb.embedding_length)
    assert bad[7].get_metadata("riva_relevance") > 0
    for sentence in bad[1:]:
        assert torch.isfinite(vectors(sentence, emb.name)).all()

    # every sentence has the vectors it gets alone
    single = RivaEmbeddings(emb.model, name="alone")
    for sentence in good + bad[1:]:
        alone = Sentence([t.text for t in sentence])
        alone._metadata = {k: v for k, v in sentence._metadata.items() if not k.startswith("riva_")}
        single.embed([alone])
        torch.testing.assert_close(vectors(alone, "alone"), vectors(sentence, emb.name), atol=1e-5, rtol=1e-4)
        assert alone.get_metadata("riva_relevance") == pytest.approx(sentence.get_metadata("riva_relevance"),
                                                                      abs=1e-5)


def test_only_empty_sentences(emb):
    sentences = [Sentence(""), Sentence([])]
    assert emb.embed(sentences) == sentences
    for sentence in sentences:
        assert sentence.get_metadata("riva_relevance") == 0.0 and RivaEmbeddings.attention_map(sentence) is None
        assert RivaEmbeddings.relevance(sentence) == 0.0


def test_missing_images_are_logged_once_per_batch_not_per_token(emb, flair_log):
    sentences = [make("one two three four five six"), make("seven eight nine", "/nonexistent/x.jpg"),
                 make("ten eleven", IMAGES[0])]
    flair_log.records.clear()
    emb.embed(sentences)
    emb.embed([make("twelve thirteen")])
    lines = flair_log.messages("embedded without image")
    assert len(lines) == 2
    assert "2 of 3 sentences" in lines[0] and "missing: 1" in lines[0] and "no 'image_path' metadata: 1" in lines[0]
    assert emb.image_stats["with_image"] >= 1 and emb.image_stats["no image: missing"] >= 1


# --------------------------------------------------------------------------------------------------
# text only, names
# --------------------------------------------------------------------------------------------------


def test_use_image_false_embeds_text_only(riva, flair_log):
    image_emb, text_emb = RivaEmbeddings(riva), RivaEmbeddings(riva, use_image=False)
    assert text_emb.name != image_emb.name and text_emb.name.endswith("-text") and image_emb.name.endswith("-image")
    a = [make("Look at Jordan in this photo", IMAGES[0])]
    b = [make("Look at Jordan in this photo", IMAGES[0])]
    c = [make("Look at Jordan in this photo")]
    text_emb.embed(a)
    image_emb.embed(b)
    image_emb.embed(c)
    assert a[0].get_metadata("riva_relevance") == 0.0 and RivaEmbeddings.attention_map(a[0]) is None
    assert b[0].get_metadata("riva_relevance") > 0.0
    assert not torch.equal(vectors(a[0], text_emb.name), vectors(b[0], image_emb.name))
    # text only == an image model's vectors for a sentence without an image
    torch.testing.assert_close(vectors(a[0], text_emb.name), vectors(c[0], image_emb.name), atol=1e-6, rtol=1e-5)
    assert text_emb._featurizer is None  # never touched the images
    assert not flair_log.messages(text_emb.name)


def test_text_model_implies_use_image_false(text_riva):
    emb = RivaEmbeddings(text_riva)  # use_image=True asked, but the model is RIVA(text)
    assert not emb.use_image and emb.name.endswith("-text") and not emb.to_params()["use_image"]
    sentences = [make("Paris today", IMAGES[0]), make("no image")]
    emb.embed(sentences)
    with torch.no_grad():
        expected, _ = text_riva.embed([["Paris", "today"], ["no", "image"]], None)
    for sentence, exp in zip(sentences, expected):
        torch.testing.assert_close(vectors(sentence, emb.name), exp)
        assert sentence.get_metadata("riva_relevance") == 0.0
    loaded = load_embeddings(emb.save_embeddings(use_state_dict=True))
    again = [make("Paris today", IMAGES[0]), make("no image")]
    loaded.embed(again)
    for x, y in zip(again, sentences):
        assert torch.equal(vectors(x, loaded.name), vectors(y, emb.name))


def test_two_instances_in_one_stack_keep_distinct_names_and_order(riva, tmp_path):
    stack = StackedEmbeddings([RivaEmbeddings(riva), RivaEmbeddings(riva, use_image=False)])
    names = stack.get_names()
    assert len(set(names)) == 2
    a = good_sentences()
    stack.embed(a)
    reloaded = load_embeddings(stack.save_embeddings(use_state_dict=True))
    assert reloaded.get_names() == names
    b = good_sentences()
    reloaded.embed(b)
    for x, y in zip(a, b):
        for token_x, token_y in zip(x, y):
            assert torch.equal(token_x.get_embedding(names), token_y.get_embedding(names))
    # the image instance's metadata is not overwritten by the text-only one
    assert a[0].get_metadata("riva_relevance") > 0


# --------------------------------------------------------------------------------------------------
# speed: feature cache, embedding storage
# --------------------------------------------------------------------------------------------------


def test_feature_cache_is_filled_then_used(riva, tmp_path):
    cache = tmp_path / "features"
    first = RivaEmbeddings(riva, feature_cache=cache)
    a = good_sentences()
    first.embed(a)
    assert first._featurizer.stats["computed"] == 3 and len(list(cache.glob("*/??/*.safetensors"))) == 3
    second = RivaEmbeddings(riva, feature_cache=cache)  # a new process would see the same
    b = good_sentences()
    second.embed(b)
    assert second._featurizer.stats["computed"] == 0 and second._featurizer.stats["cache_hits"] == 3
    for x, y in zip(a, b):
        assert torch.equal(vectors(x, first.name), vectors(y, second.name))


def test_saved_feature_cache_missing_on_the_loading_machine(riva, tmp_path, flair_log):
    gone = tmp_path / "was-on-another-machine"
    params = RivaEmbeddings(riva, feature_cache=gone).save_embeddings(use_state_dict=True)
    assert not gone.exists()
    loaded = load_embeddings(params)
    flair_log.records.clear()
    loaded.embed(good_sentences())
    loaded.embed(good_sentences())
    assert len(flair_log.messages("does not exist on this machine")) == 1
    assert not gone.exists()
    assert loaded._featurizer.cache is None and loaded._featurizer.stats["computed"] >= 3


def test_storage_mode_cpu_never_embeds_twice(emb):
    calls = []
    hook = emb.model.vlcn.register_forward_hook(lambda *args: calls.append(1))
    try:
        sentences = good_sentences()
        emb.embed(sentences)
        assert len(calls) >= 1
        store_embeddings(sentences, "cpu")
        n = len(calls)
        emb.embed(sentences)  # second epoch
        assert len(calls) == n, "static RIVA vectors kept by Flair's storage must not be recomputed"
        store_embeddings(sentences, "none")
        emb.embed(sentences)  # Flair forgot them: the in-process memo still has them
        assert len(calls) == n, "a frozen RIVA runs once per sentence (vector memo)"
        store_embeddings(sentences, "none")
        emb.vector_memo_size = 0
        emb.embed(sentences)
        assert len(calls) > n
    finally:
        hook.remove()


def test_the_vector_memo_returns_what_a_fresh_pass_computes(riva, tmp_path):
    """The memo (storage mode "none": Flair embeds every epoch) changes speed, never the output, metadata
    included; a changed image file, new weights (load_state_dict) or fine-tuning bypass it."""
    import shutil

    memo, plain = RivaEmbeddings(riva), RivaEmbeddings(riva)
    plain.vector_memo_size = 0
    first, again, fresh = good_sentences(), good_sentences(), good_sentences()
    memo.embed(first)
    calls = []
    hook = riva.vlcn.register_forward_hook(lambda *args: calls.append(1))
    try:
        memo.embed(again)
        assert not calls, "every sentence was memoised"
        plain.embed(fresh)
        assert calls
    finally:
        hook.remove()
    for a, b in zip(again, fresh):
        assert torch.allclose(vectors(a, memo.name), vectors(b, plain.name), atol=1e-6)
    for a, b in zip(again, fresh):
        assert a.get_metadata("riva_relevance") == pytest.approx(b.get_metadata("riva_relevance"), abs=1e-6)
        assert a.get_metadata("riva_image_reason") == b.get_metadata("riva_image_reason")
        assert (a.get_metadata("riva_attention") is None) == (b.get_metadata("riva_attention") is None)

    image = tmp_path / "img.png"
    shutil.copy(IMAGES[0], image)
    memo.embed([make("look at this", image)])
    size = len(memo._vector_memo)
    shutil.copy(IMAGES[1], image)  # same path, other picture
    os.utime(image, ns=(1, 1))
    memo.embed([make("look at this", image)])
    assert len(memo._vector_memo) == size + 1, "a changed image file is a new key"

    memo.load_state_dict(memo.state_dict())
    assert not memo._vector_memo, "new weights empty the memo"
    tuned = RivaEmbeddings(copy.deepcopy(riva), fine_tune=True)
    tuned.embed(good_sentences())
    assert not tuned._vector_memo


def test_fine_tune_trains_the_text_and_lstm_parts_not_the_backbone(riva):
    model = copy.deepcopy(riva)
    emb = RivaEmbeddings(model, fine_tune=True)
    assert not emb.training and not emb.static_embeddings
    groups = model.parameter_groups()
    softmax = {id(p) for p in model.vlcn.output.parameters()}
    trained = [p for p in groups["vlcn"] + groups["rgn"] + groups["vcn"] + groups["text"] if id(p) not in softmax]
    assert all(p.requires_grad for p in trained)
    assert not any(p.requires_grad for p in groups["backbone"] + list(model.vlcn.output.parameters()))
    emb.train()
    assert emb.training and emb.model.vlcn.training and not emb.model.backbone.training
    sentences = good_sentences()
    emb.embed(sentences)
    vec = vectors(sentences[0], emb.name)
    assert vec.requires_grad
    vec.sum().backward()
    assert model.vlcn.forward_lm.weight_ih_l0.grad is not None
    assert model.rgn.lstm.weight_ih_l0.grad is not None  # s_G gates v_c: the RGN learns too
    assert all(p.grad is None for p in groups["backbone"])
    # Flair's storage drops vectors that require grad: they are recomputed every batch
    store_embeddings(sentences, "cpu")
    assert not any(emb.name in t._embeddings for s in sentences for t in s)
    emb.eval()
    frozen_view = good_sentences()
    emb.embed(frozen_view)
    assert not vectors(frozen_view[0], emb.name).requires_grad
    params = emb.to_params()
    assert params["fine_tune"] is True and load_embeddings(emb.save_embeddings()).fine_tune


# --------------------------------------------------------------------------------------------------
# a tagger with a full offline stack, trained, saved and reloaded in a fresh process
# --------------------------------------------------------------------------------------------------


def _word_vectors(path: Path, words: list[str], dim: int = 8) -> Path:
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=dim)
    gen = torch.Generator().manual_seed(0)
    kv.add_vectors(words, torch.randn(len(words), dim, generator=gen).numpy())
    kv.save(str(path))
    return path


def _tiny_bert(directory: Path, words: list[str]) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w.lower() for w in words})[:400]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(directory / "vocab.txt"), do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37, max_position_embeddings=512)
    BertModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def _char_lm(sentences):
    from flair.data import Dictionary
    from flair.models import LanguageModel

    chars = Dictionary(add_unk=True)
    for ch in sorted({c for s in sentences for t in s for c in t.text} | {" ", "\n"}):
        chars.add_item(ch)
    torch.manual_seed(0)
    return LanguageModel(chars, is_forward_lm=True, hidden_size=16, nlayers=1, embedding_size=8)


OUTPUTS_SRC = textwrap.dedent("""
    import torch
    from flair.data import Sentence

    def tagger_outputs(tagger, items):
        '''What must be identical after a reload: names, tag distributions, labels, RIVA vectors, s_G.'''
        def build():
            out = []
            for item in items:
                s = Sentence(item["tokens"])
                if item["image"] is not None:
                    s.add_metadata("image_path", item["image"])
                out.append(s)
            return out

        sentences = build()
        tagger.predict(sentences, return_probabilities_for_all_classes=True, label_name="predicted")
        probs = torch.tensor([[lab.score for lab in t.get_tags_proba_dist("predicted")]
                              for s in sentences for t in s])
        labels = [[(sp.text, sp.get_label("predicted").value) for sp in s.get_spans("predicted")]
                  for s in sentences]
        embedded = build()
        tagger.embeddings.embed(embedded)
        riva_names = [e.name for e in tagger.embeddings.embeddings if type(e).__name__ == "RivaEmbeddings"]
        riva = {name: torch.cat([torch.stack([t.get_embedding([name]) for t in s]) for s in embedded]).cpu()
                for name in riva_names}
        return {"names": tagger.embeddings.get_names(), "probs": probs, "labels": labels, "riva": riva,
                "relevance": [s.get_metadata("riva_relevance") for s in embedded],
                "all": torch.cat([torch.stack([t.get_embedding() for t in s]) for s in embedded]).cpu()}
""")

# the fresh process never imports flair_riva itself: SequenceTagger.load must do it (notes §1.3)
FRESH_PROCESS = OUTPUTS_SRC + textwrap.dedent("""
    import json, sys
    assert "flair_riva" not in sys.modules
    from flair.models import SequenceTagger
    tagger = SequenceTagger.load(sys.argv[1])
    assert "flair_riva" in sys.modules, "unpickling the RivaConfig should have imported flair_riva"
    items = json.loads(open(sys.argv[2], encoding="utf-8").read())
    torch.save(tagger_outputs(tagger, items), sys.argv[3])
""")


def tagger_outputs(tagger, items: list[dict]) -> dict:
    namespace: dict = {}
    exec(OUTPUTS_SRC, namespace)
    return namespace["tagger_outputs"](tagger, items)


@pytest.mark.slow
def test_tagger_with_offline_stack_trains_saves_and_reloads_in_a_fresh_process(
        corpus, riva, tmp_path, monkeypatch):
    from flair.embeddings import FlairEmbeddings, TransformerWordEmbeddings, WordEmbeddings
    from flair.models import SequenceTagger
    from flair.trainers import ModelTrainer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    sentences = list(corpus.get_all_sentences())
    words = sorted({t.text for s in sentences for t in s})
    stack = StackedEmbeddings([
        WordEmbeddings(str(_word_vectors(tmp_path / "vectors.kv", words))),
        TransformerWordEmbeddings(str(_tiny_bert(tmp_path / "bert", words)), layers="-1", fine_tune=False),
        FlairEmbeddings(_char_lm(sentences)),
        RivaEmbeddings(riva, feature_cache=tmp_path / "features"),
        RivaEmbeddings(riva, use_image=False),
    ])
    names = stack.get_names()
    assert len(set(names)) == len(names) == 5
    flair.set_seed(1)
    tag_dictionary = corpus.make_label_dictionary("ner", add_unk=False)
    tagger = SequenceTagger(hidden_size=16, embeddings=stack, tag_dictionary=tag_dictionary, tag_type="ner",
                            use_crf=True)
    trainer = ModelTrainer(tagger, corpus)
    result = trainer.train(tmp_path / "run", max_epochs=1, mini_batch_size=16, learning_rate=0.1,
                           embeddings_storage_mode="cpu", create_file_logs=False, create_loss_file=False)
    assert "test_score" in result  # the trainer reloaded best-model.pt through to_params/from_params
    tagger.save(tmp_path / "tagger.pt")

    test_items = [{"tokens": [t.text for t in s],
                   "image": s.get_metadata("image_path") if s.has_metadata("image_path") else None}
                  for s in list(corpus.test)[:12]]
    test_items[0]["image"] = str(tmp_path / "missing.jpg")
    test_items[1]["image"] = None
    (tmp_path / "items.json").write_text(json.dumps(test_items), encoding="utf-8")
    tagger.eval()
    before = tagger_outputs(tagger, test_items)
    assert before["relevance"][0] == 0.0 and before["relevance"][2] > 0.0

    # the same intra-op thread count as this process (conftest: 1), so reductions run in the same order and
    # "bit-identical" is a fair demand
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", FLAIR_DEVICE="cpu", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "tagger.pt"), str(tmp_path / "items.json"),
         str(tmp_path / "after.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    after = torch.load(tmp_path / "after.pt", weights_only=True)
    assert after["names"] == before["names"] == names
    assert after["labels"] == before["labels"]
    assert torch.equal(after["probs"], before["probs"])
    assert after["riva"].keys() == before["riva"].keys() and len(after["riva"]) == 2
    for name in before["riva"]:
        assert torch.equal(after["riva"][name], before["riva"][name]), name
    assert after["relevance"] == before["relevance"]
    assert torch.equal(after["all"], before["all"])
