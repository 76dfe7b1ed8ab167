"""The character biLSTM of Lample et al. (2016) as a Flair token embedding: the character half of the
biLSTM-CRF's word + character input in the experiments of Tables 4-6 (paper §4.5).

:class:`CharLSTMEmbeddings` takes the place of Flair's ``CharacterEmbeddings(char_dict, 25, 25)``, with
the same sizes, the same character :class:`~flair.data.Dictionary` and the same ``name`` ("Char"). It
encodes a token as the forward LSTM's last state and the backward LSTM's last state over its characters,
with RIVA's own character encoder (:class:`flair_riva.text.CharEncoder`, §3.1): one unpacked LSTM call
per direction over each distinct spelling of the mini-batch.

Why not Flair's class: measured with flair 0.15.1 (``tests/test_char_embeddings.py`` checks the reference
this module matches, not Flair's defects):

* its backward half is the backward LSTM's state after the token's *last character only* (it reads the
  padded output at position ``len - 1``), so "xyzs" and "abs" get the same backward half;
* when a spelling occurs twice in a sentence, the first occurrence receives another token's vector (its
  sort-order bookkeeping keeps only the last occurrence);
* it runs one packed LSTM per sentence, which on a CPU unrolls every character into small autograd
  operations: a text tagger's step on a batch of 16 demo tweets (2-core machine, 1 thread, mean of 20
  steps) takes 357 ms with it, 75 ms with this class and 46-53 ms with no character input at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flair
import torch
from flair.data import Dictionary, Sentence
from flair.embeddings import TokenEmbeddings
from flair.embeddings.base import register_embeddings

from flair_riva.text import PAD_ID, CharEncoder


@dataclass(frozen=True)
class CharLSTMSettings:
    """Sizes of a :class:`CharLSTMEmbeddings` (Lample et al. 2016: 25-dim characters, 25 units per
    direction). Kept as an object in the saved tagger, so that unpickling it imports flair-riva, which
    registers the class with Flair: a plain ``SequenceTagger.load(path)`` works in a fresh process."""

    char_embedding_dim: int = 25
    hidden_size_char: int = 25


@register_embeddings
class CharLSTMEmbeddings(TokenEmbeddings):
    """Lample et al.'s character biLSTM over each token, trained with the tagger.

    Args:
        char_dictionary: Flair :class:`~flair.data.Dictionary` of characters, or the path of one saved with
            ``Dictionary.save``. A character it does not hold gets its ``<unk>`` id, or, for a dictionary
            without ``<unk>``, an unknown-character id of its own.
        settings: the sizes (default 25 / 25, as Flair's ``CharacterEmbeddings(..., 25, 25)``).
        name: the embedding's name in the token (keep it stable: a stack orders its parts by name).
    """

    def __init__(self, char_dictionary: Dictionary | str, settings: CharLSTMSettings | None = None,
                 name: str = "Char") -> None:
        super().__init__()
        self.name = name
        self.static_embeddings = False
        self.char_dictionary = (char_dictionary if isinstance(char_dictionary, Dictionary)
                                else Dictionary.load_from_file(str(char_dictionary)))
        self.settings = settings or CharLSTMSettings()
        # ids: 0 = padding, 1 + the dictionary's index, and one more for characters it lacks
        self._unknown_id = len(self.char_dictionary) + 1
        self._ids: dict[str, int] = {}
        self.encoder = CharEncoder(self._unknown_id + 1, self.settings.char_embedding_dim,
                                   self.settings.hidden_size_char)
        self.to(flair.device)
        self.eval()

    @property
    def embedding_length(self) -> int:
        return self.encoder.output_dim

    def _char_id(self, char: str) -> int:
        cid = self._ids.get(char)
        if cid is None:
            if char.encode("utf-8") in self.char_dictionary.item2idx or self.char_dictionary.add_unk:
                cid = 1 + self.char_dictionary.get_idx_for_item(char)
            else:
                cid = self._unknown_id
            self._ids[char] = cid
        return cid

    def _add_embeddings_internal(self, sentences: list[Sentence]) -> list[Sentence]:
        tokens = [token for sentence in sentences for token in sentence.tokens]
        if not tokens:
            return sentences
        rows: dict[str, int] = {}
        index = [rows.setdefault(token.text, len(rows)) for token in tokens]
        ids = [[self._char_id(c) for c in text] for text in rows]
        width = max(1, max(map(len, ids)))
        # padded lists, then one tensor (as text.encode_batch: per-row tensor writes are slow)
        chars = torch.tensor([[row + [PAD_ID] * (width - len(row)) for row in ids]], dtype=torch.long)
        encoded = self.encoder(chars.to(flair.device))[0]  # (distinct spellings, 2 x hidden)
        vectors = encoded[torch.tensor(index, device=encoded.device)]
        for token, vector in zip(tokens, vectors):
            token.set_embedding(self.name, vector)
        return sentences

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CharLSTMEmbeddings:
        return cls(params["char_dictionary"], params["settings"], params["name"])

    def to_params(self) -> dict[str, Any]:
        return {"char_dictionary": self.char_dictionary, "settings": self.settings, "name": self.name}
