"""Files the taggers' base embeddings read (Tables 4-6 protocol, :mod:`flair_riva.experiments`), made once
in a run's cache folder: word vectors as a gensim file for Flair's ``WordEmbeddings``, random word vectors
when no pretrained ones are given, and the character dictionary of the corpus.

Each is written under a temporary name and renamed into place, so that taggers starting at the same
time (``--workers``) never read a half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from flair.data import Corpus, Dictionary


def word_vectors_file(path: Path, cache_dir: Path) -> Path:
    """Flair's WordEmbeddings reads gensim .kv/.bin/.txt: convert anything else (e.g. GloVe .txt.gz) once."""
    if path.suffix in (".kv", ".bin"):
        return path
    from flair_riva.text import load_word_vectors

    target = cache_dir / (path.name.replace(".", "_") + ".kv")
    # one file (no separate .npy arrays), so that it can be renamed into place whole
    return _write_once(target, lambda name: load_word_vectors(path).save(name, separately=[]))


def _write_once(path: Path, save: Callable[[str], object]) -> Path:
    """``path``, first created by ``save(temporary name)`` and renamed into place if it does not exist:
    taggers that start at the same time (``--workers``) never read a half-written file. Each of them may
    write it; every write has the same content, and the last rename wins."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            save(str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def random_word_vectors_file(corpus: Corpus, path: Path, dim: int = 50) -> Path:
    """N(0, 0.1^2) vectors for the training words, as a gensim file that Flair's WordEmbeddings reads."""
    def save(name: str) -> None:
        from gensim.models import KeyedVectors

        words = sorted({t.text for s in corpus.train for t in s.tokens})
        kv = KeyedVectors(dim)
        kv.add_vectors(words, torch.randn(len(words), dim, generator=torch.Generator().manual_seed(0)).numpy() * 0.1)
        kv.save(name, separately=[])

    return _write_once(path, save)


def char_dictionary_file(corpus: Corpus, path: Path) -> Path:
    """A character dictionary from the corpus (Flair's default one is a download)."""
    def save(name: str) -> None:
        d = Dictionary(add_unk=True)
        for sentence in corpus.get_all_sentences():
            for token in sentence.tokens:
                for ch in token.text:
                    d.add_item(ch)
        d.save(name)

    return _write_once(path, save)
