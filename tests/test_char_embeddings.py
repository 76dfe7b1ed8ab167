"""CharLSTMEmbeddings: Lample et al.'s character biLSTM as a Flair token embedding."""

from __future__ import annotations

import pytest
import torch
from flair.data import Dictionary, Sentence
from flair.embeddings.base import load_embeddings

from flair_riva.char_embeddings import CharLSTMEmbeddings, CharLSTMSettings


def _dictionary(chars: str = "abcdefghijklmnopqrstuvwxyz", add_unk: bool = True) -> Dictionary:
    d = Dictionary(add_unk=add_unk)
    for ch in chars:
        d.add_item(ch)
    return d


def _reference(emb: CharLSTMEmbeddings, text: str) -> torch.Tensor:
    """The straightforward computation: a packed-free nn.LSTM over this one token's characters, both
    directions' final states (the backward one after reading the whole word, right to left)."""
    ids = torch.tensor([[emb._char_id(c) for c in text]])
    _, (h_n, _) = emb.encoder.lstm(emb.encoder.embedding(ids))
    return torch.cat([h_n[0, 0], h_n[1, 0]])


def test_vectors_match_a_per_token_bilstm_whatever_the_batch():
    torch.manual_seed(0)
    emb = CharLSTMEmbeddings(_dictionary(), CharLSTMSettings(8, 6))
    sentences = [Sentence("go paris go now"), Sentence("xyzs abs a"), Sentence("paris")]
    emb.embed(sentences)
    assert emb.embedding_length == 12
    for sentence in sentences:
        for token in sentence:
            got = token.get_embedding(["Char"])
            assert got.shape == (12,)
            assert torch.allclose(got, _reference(emb, token.text), atol=1e-6), token.text
    # the two halves read the whole word: words sharing their last letter differ in both halves
    xyzs, abs_ = (t.get_embedding(["Char"]) for t in sentences[1].tokens[:2])
    assert not torch.allclose(xyzs[6:], abs_[6:])
    # a repeated spelling gets one vector, in the sentence and across the batch
    go1, go2 = sentences[0].tokens[0].get_embedding(["Char"]), sentences[0].tokens[2].get_embedding(["Char"])
    assert torch.equal(go1, go2)
    alone = Sentence("go")
    emb.embed(alone)
    assert torch.allclose(alone.tokens[0].get_embedding(["Char"]), go1, atol=1e-6)


def test_unknown_characters_with_and_without_an_unk_entry():
    torch.manual_seed(1)
    with_unk = CharLSTMEmbeddings(_dictionary("ab"))
    without = CharLSTMEmbeddings(_dictionary("ab", add_unk=False))
    assert with_unk._char_id("z") == 1 + with_unk.char_dictionary.get_idx_for_item("<unk>")
    assert without._char_id("z") == without._unknown_id
    assert without._char_id("a") != without._unknown_id
    for emb in (with_unk, without):
        sentence = Sentence("zz ab é")
        emb.embed(sentence)
        assert all(torch.isfinite(t.get_embedding(["Char"])).all() for t in sentence)


def test_trains_with_the_tagger():
    torch.manual_seed(2)
    emb = CharLSTMEmbeddings(_dictionary())
    emb.train()
    sentence = Sentence("paris is nice")
    emb.embed(sentence)
    loss = torch.stack([t.get_embedding(["Char"]) for t in sentence]).pow(2).sum()
    loss.backward()
    grads = [p.grad for p in emb.parameters()]
    assert all(g is not None for g in grads)
    assert emb.encoder.lstm.weight_hh_l0_reverse.grad.abs().sum() > 0


def test_round_trip_through_flairs_save_format():
    torch.manual_seed(3)
    emb = CharLSTMEmbeddings(_dictionary(), CharLSTMSettings(10, 7), name="chars")
    saved = emb.save_embeddings(use_state_dict=True)
    assert saved["__cls__"] == "CharLSTMEmbeddings"
    assert isinstance(saved["settings"], CharLSTMSettings)  # unpickling it imports (and registers) flair-riva
    loaded = load_embeddings(saved)
    assert isinstance(loaded, CharLSTMEmbeddings) and loaded.name == "chars" and not loaded.training
    a, b = Sentence("Jordan wins"), Sentence("Jordan wins")
    emb.embed(a)
    loaded.embed(b)
    for x, y in zip(a, b):
        assert torch.equal(x.get_embedding(["chars"]), y.get_embedding(["chars"]))


@pytest.mark.parametrize("texts", [[], [""]])
def test_nothing_to_embed(texts):
    emb = CharLSTMEmbeddings(_dictionary())
    sentences = [Sentence(t) for t in texts]
    emb.embed(sentences)  # no token: nothing happens, nothing raises
    assert all(len(s) == 0 for s in sentences)
