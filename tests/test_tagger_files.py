"""The files the taggers' base embeddings read: made once, renamed into place whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from flair.data import Dictionary
from gensim.models import KeyedVectors

from flair_riva.tagger_files import char_dictionary_file, random_word_vectors_file, word_vectors_file


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_word_vectors_become_one_gensim_file_written_once(tmp_path):
    glove = tmp_path / "vectors.txt"
    glove.write_text("paris 0.1 0.2 0.3\njordan -0.1 0.0 0.5\n", encoding="utf-8")
    cache = tmp_path / "cache"
    target = word_vectors_file(glove, cache)
    assert target.parent == cache and target.suffix == ".kv"
    assert [p.name for p in cache.iterdir()] == [target.name]  # no separate .npy arrays, no temporary file
    kv = KeyedVectors.load(str(target))
    assert kv["paris"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    stamp = target.stat().st_mtime_ns
    assert word_vectors_file(glove, cache) == target and target.stat().st_mtime_ns == stamp  # not rewritten
    assert word_vectors_file(target, tmp_path / "elsewhere") == target  # gensim files are read as they are


def test_random_vectors_and_character_dictionary(corpus, tmp_path):
    vectors = random_word_vectors_file(corpus, tmp_path / "c" / "random.kv")
    kv = KeyedVectors.load(str(vectors))
    assert kv.vector_size == 50 and len(kv) == len({t.text for s in corpus.train for t in s})
    chars = Dictionary.load_from_file(str(char_dictionary_file(corpus, tmp_path / "c" / "chars.pkl")))
    assert chars.add_unk and "J" in chars.get_items()
    assert _leftovers(tmp_path / "c") == []


def test_a_failing_write_leaves_nothing(corpus, tmp_path, monkeypatch):
    def broken(self, name):
        Path(name).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Dictionary, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        char_dictionary_file(corpus, tmp_path / "chars.pkl")
    assert list(tmp_path.iterdir()) == []
