"""Datasets of flair-riva: the multimodal NER corpora (Twitter-2015/2017, ``IMGID`` format) as Flair
corpora, the labelled text-image relation data of task 1 (§3.1, Vempala & Preoţiuc-Pietro 2019),
the unlabelled text-image pairs of task 2 (§3.3) and the pseudo-labelled pairs the teacher writes.

Formats (DESIGN §2)
-------------------
**IMGID corpora.** UTF-8 text. For each tweet a line ``IMGID:<id>``, then one ``token<TAB>tag`` line
per token with BIO tags, and a blank line between tweets. The tweet's image is
``<image_dir>/<id>.jpg`` (an id that already ends in ``.jpg``/``.jpeg``/``.png``/``.gif`` is used as
the file name as it is). Images are decoded by content later (:mod:`flair_riva.vision`), so a PNG
file with a ``.jpg`` name is fine.

**Relation pairs** (:func:`read_relation_pairs`). CSV or TSV with a header: ``text``, ``image``,
``image_adds`` (0/1), optional ``text_is_represented`` (0/1). The original Bloomberg release
(``tweet_id``, ``tweet``, ``text_is_represented``, ``image_adds``, ...) is read as it is; its image
is ``T<tweet_id>.jpg``.

**Unlabelled pairs** (:func:`iter_unlabelled_pairs`). JSON lines ``{"text": ..., "image": ...}`` or a
TSV with the header ``text<TAB>image``; streamed.

**Pseudo-labelled pairs** (:func:`write_pseudo_labelled`, :func:`read_pseudo_labelled`). TSV with the
header ``text<TAB>image<TAB>label<TAB>score``.

Conventions
-----------
* *TSV* here means one record per line, fields separated by TAB, **no quoting**. Inside a field the
  escapes ``\\t``, ``\\n``, ``\\r`` and ``\\\\`` stand for TAB, newline, carriage return and backslash
  (the convention of PostgreSQL's text format); every TSV reader of this module decodes them and
  :func:`write_pseudo_labelled` writes them, so any text round-trips exactly. A field that starts
  with a quote is kept as it is (tweets often do).
* *CSV* is read with Python's :mod:`csv` module (``""`` and ``\\"`` both escape a quote inside a
  quoted field, as in the Bloomberg file), so quoted fields may span lines.
* The format of a relation/unlabelled file is taken from its extension (``.csv``, ``.tsv``,
  ``.jsonl``/``.ndjson``/``.json``); any other name is sniffed from its first line.
* Relative image paths resolve against ``image_dir`` when it is given, else against the folder of
  the data file. Absolute paths are kept.
* Raw text is tokenised with :func:`flair_riva.text.tokenize_tweet` (the corpus convention).

Error behaviour
---------------
Malformed input raises :class:`CorpusFormatError` (a ``ValueError``) whose message starts with
``<file>:<line>:`` (1-based line numbers). A missing file raises ``FileNotFoundError`` naming the
path. A missing *image file* is never an error: it is counted, logged once per file or split through
``logging.getLogger("flair")`` and left to the embedding, which treats the tweet as having no image
(s_G = 0). Orphan ``I-`` tags (``I-X`` after ``O`` or after another type, which Twitter-2015 has) are
kept as they are: Flair's BIO decoding starts a new entity at them, which is the lenient
conlleval/seqeval-default convention; :attr:`TwitterMNERCorpus.split_stats` counts them.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flair.data import Corpus, Sentence
from flair.datasets import ColumnDataset

from flair_riva.io import atomic_open
from flair_riva.text import tokenize_tweet

log = logging.getLogger("flair")

__all__ = [
    "DEFAULT_ENTITY_TYPES",
    "CorpusFormatError",
    "SplitStats",
    "TwitterMNERCorpus",
    "TWITTER2015",
    "TWITTER2017",
    "RelationPair",
    "read_relation_pairs",
    "iter_unlabelled_pairs",
    "write_pseudo_labelled",
    "read_pseudo_labelled",
    "scan_imgid_file",
    "ImgidTweet",
    "iter_imgid_tweets",
    "UnlabelledRecord",
    "iter_unlabelled_records",
    "image_path_for",
]

DEFAULT_ENTITY_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG", "OTHER", "MISC")
"""Entity types accepted in ``B-X``/``I-X`` tags by default (Twitter-2015 uses OTHER, Twitter-2017 MISC)."""

IMGID_PREFIX = "IMGID:"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif")
_DEV_CANDIDATES = ("valid.txt", "dev.txt")


class CorpusFormatError(ValueError):
    """Malformed data file. ``str(err)`` is ``"<path>:<line>: <what is wrong>"`` (line is 1-based;
    it is omitted for problems of the whole file). The parts are ``err.path``, ``err.line``, ``err.reason``."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keep the structured fields when pickled (e.g. across DataLoader workers)
        return (type(self), (self.path, self.line, self.reason))


# --------------------------------------------------------------------------------------------------
# reading text files line by line with line numbers and UTF-8 errors located
# --------------------------------------------------------------------------------------------------


def _iter_decoded_lines(path: Path, lenient: bool = False) -> Iterator[tuple[int, str | CorpusFormatError]]:
    """Yield ``(line_number, line)`` with the line ending kept; bytes that are not UTF-8 raise
    :class:`CorpusFormatError` at their line (with ``lenient=True`` the error is yielded in place of the
    line, so a caller that skips bad records can go on). A UTF-8 byte-order mark at the start is dropped."""
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                error = CorpusFormatError(
                    path, lineno,
                    f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                    "the file must be UTF-8 encoded",
                )
                if not lenient:
                    raise error from None
                yield lineno, error
                continue
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            yield lineno, line


def _strip_newline(line: str) -> str:
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def _require_file(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is not a file")
    return path


# --------------------------------------------------------------------------------------------------
# IMGID corpora
# --------------------------------------------------------------------------------------------------


def image_path_for(image_dir: str | Path, image_id: str) -> Path:
    """The image file of a tweet: ``<image_dir>/<id>.jpg`` (or ``<image_dir>/<id>`` when the id already
    names an image file, as some releases write ``IMGID:123.jpg``)."""
    name = image_id if image_id.lower().endswith(_IMAGE_SUFFIXES) else f"{image_id}.jpg"
    return Path(image_dir) / name


@dataclass
class SplitStats:
    """What the validating pre-pass and the image check found in one split file."""

    file: Path
    tweets: int = 0
    tokens: int = 0
    image_ids: list[str] = field(default_factory=list, repr=False)
    begin_tags: Counter = field(default_factory=Counter)
    """``B-X`` tags per type X (the entity count of the published tables)."""
    orphan_inside: Counter = field(default_factory=Counter)
    """``I-X`` tags that start an entity (after ``O``, another type, or at the tweet start), per type."""
    image_dir: Path | None = None
    with_image: int = 0
    missing: int = 0

    @property
    def entities_b(self) -> int:
        return sum(self.begin_tags.values())

    @property
    def entities_lenient(self) -> int:
        """Entities as conlleval / seqeval (default) / Flair's BIO decoding count them: B- plus orphan I- runs."""
        return self.entities_b + sum(self.orphan_inside.values())


@dataclass
class ImgidTweet:
    """One tweet of an IMGID file, as :func:`iter_imgid_tweets` reads it."""

    line: int
    """1-based line of its ``IMGID:`` line."""
    image_id: str
    tokens: list[str]
    tags: list[str] | None
    """The BIO tags, or ``None`` for a tweet without a tag column (allowed with ``require_tags=False``)."""


_ANY_BIO_TAG = re.compile(r"^(?:O|[BI]-\S+)$")


def iter_imgid_tweets(
    path: str | Path,
    entity_types: Iterable[str] | None = DEFAULT_ENTITY_TYPES,
    *,
    require_tags: bool = True,
    on_error: Callable[[CorpusFormatError], None] | None = None,
) -> Iterator[ImgidTweet]:
    """Stream the tweets of an IMGID file one at a time, validating as it reads.

    Malformed input (see :func:`scan_imgid_file` for the list) raises :class:`CorpusFormatError` with the
    1-based line, or, when ``on_error`` is given, is passed to it and the tweet it occurs in is skipped
    (up to the next blank line), so a stream over a large file can go on. ``entity_types=None`` accepts any
    ``O``/``B-X``/``I-X`` tag; ``require_tags=False`` accepts tweets whose token lines have no tag column
    (pre-tokenised text to be tagged): their ``tags`` are ``None``. An empty file yields nothing.
    """
    path = _require_file(path, "IMGID corpus file")
    if entity_types is None:
        def tag_ok(tag: str) -> bool:
            return bool(_ANY_BIO_TAG.match(tag))
        allowed_text = "O, B-X and I-X"
    else:
        types = tuple(entity_types)
        allowed = {"O"} | {f"{p}-{t}" for p in ("B", "I") for t in types}
        tag_ok = allowed.__contains__
        allowed_text = f"O, B-X and I-X with X in {', '.join(types)}; pass entity_types=... to allow other types"
    tweet: ImgidTweet | None = None
    skipping = False  # inside a tweet that had an error: drop its lines up to the next blank line
    seen_imgid = False

    def fail(error: CorpusFormatError) -> None:
        nonlocal tweet, skipping
        if on_error is None:
            raise error
        on_error(error)
        tweet, skipping = None, True

    for lineno, raw in _iter_decoded_lines(path, lenient=on_error is not None):
        if isinstance(raw, CorpusFormatError):
            fail(raw)
            continue
        line = _strip_newline(raw)
        if "\r" in line and not skipping:
            fail(CorpusFormatError(path, lineno, "carriage return inside the line (a token must not contain \\r)"))
            continue
        if not line.strip():
            if tweet is not None:
                if tweet.tokens:
                    yield tweet
                else:
                    fail(CorpusFormatError(path, tweet.line,
                                           "tweet without tokens (IMGID line followed by a blank line)"))
            tweet, skipping = None, False
            continue
        if skipping:
            continue
        if line.startswith(IMGID_PREFIX):
            if tweet is not None:
                if not tweet.tokens:
                    fail(CorpusFormatError(path, tweet.line,
                                           "tweet without tokens (IMGID line followed by a blank line)"))
                else:
                    fail(CorpusFormatError(path, lineno, f"IMGID line inside the tweet that starts at line "
                                                         f"{tweet.line} (tweets must be separated by a blank line)"))
                continue
            seen_imgid = True
            image_id = line[len(IMGID_PREFIX):].strip()
            if not image_id:
                fail(CorpusFormatError(path, lineno, "IMGID line with an empty id"))
            elif any(ch.isspace() for ch in image_id) or "/" in image_id or "\\" in image_id or image_id in (".", ".."):
                fail(CorpusFormatError(path, lineno,
                                       f"malformed image id {image_id!r} (whitespace or path separator)"))
            else:
                tweet = ImgidTweet(lineno, image_id, [], [])
            continue
        # a token line
        if tweet is None:
            fail(CorpusFormatError(path, lineno, "tweet without an IMGID line (a blank line must be followed by "
                                                 "IMGID:<id>)" if seen_imgid else
                                   "token line before any IMGID line (each tweet starts with IMGID:<id>)"))
            continue
        fields = line.rstrip().split("\t")  # the same split Flair's ColumnDataset makes with column_delimiter="\t"
        if len(fields) > 2:
            fail(CorpusFormatError(path, lineno,
                                   f"{len(fields)} TAB-separated columns, expected 2 (token<TAB>tag)"))
            continue
        token, tag = (fields[0], fields[1]) if len(fields) == 2 else (fields[0], None)
        has_tags = tweet.tags is not None
        if tag is None and (require_tags or (has_tags and tweet.tokens)):
            fail(CorpusFormatError(path, lineno, f"token line without a tag: {line!r} (expected token<TAB>tag)"))
            continue
        if tag is not None and not has_tags:
            fail(CorpusFormatError(path, lineno, f"token line with a tag in a tweet whose tokens have none: {line!r}"))
            continue
        if not token:
            fail(CorpusFormatError(path, lineno, "empty token"))
            continue
        if tag is not None and not tag:
            fail(CorpusFormatError(path, lineno, f"empty tag for token {token!r}"))
            continue
        if tag is not None and not tag_ok(tag):
            fail(CorpusFormatError(path, lineno, f"unknown tag {tag!r} (allowed: {allowed_text})"))
            continue
        if not tweet.tokens and tag is None:
            tweet.tags = None
        tweet.tokens.append(token)
        if tweet.tags is not None:
            tweet.tags.append(tag)
    if tweet is not None:
        if tweet.tokens:
            yield tweet
        else:
            fail(CorpusFormatError(path, tweet.line, "tweet without tokens (IMGID line followed by a blank line)"))


def scan_imgid_file(path: str | Path, entity_types: Iterable[str] = DEFAULT_ENTITY_TYPES) -> SplitStats:
    """Validate one IMGID file in a fast pre-pass and count what it holds.

    Raises :class:`CorpusFormatError` (with the 1-based line) for: bytes that are not UTF-8, a token line
    without a TAB or with an empty token/tag, more than 2 TAB-separated columns, a tag that is not
    ``O``/``B-X``/``I-X`` with X in ``entity_types``, token lines before an ``IMGID:`` line (or a tweet
    block without one), an empty or malformed id (whitespace or a path separator in it), an ``IMGID:``
    line inside a tweet (no blank line before it), a tweet without tokens, a carriage return inside a
    line, and a file without tweets. Orphan ``I-`` tags are allowed and counted.
    """
    path = _require_file(path, "IMGID corpus file")
    stats = SplitStats(file=path)
    for tweet in iter_imgid_tweets(path, entity_types):
        stats.image_ids.append(tweet.image_id)
        stats.tweets += 1
        stats.tokens += len(tweet.tokens)
        prev_tag = "O"
        for tag in tweet.tags or ():
            if tag.startswith("B-"):
                stats.begin_tags[tag[2:]] += 1
            elif tag.startswith("I-") and prev_tag[2:] != tag[2:]:
                stats.orphan_inside[tag[2:]] += 1
            prev_tag = tag
    if stats.tweets == 0:
        raise CorpusFormatError(path, None, "no tweets in the file (is it empty?)")
    return stats


GOLD_TAGS_KEY = "gold_tags"
"""Sentence metadata: the BIO tags of the tweet exactly as written in the IMGID file."""


class _ImgidColumnDataset(ColumnDataset):
    """Flair's ``ColumnDataset`` that takes the ``IMGID:`` line of each tweet out of the tokens and
    stores it as the metadata ``image_id`` and ``image_path`` (in-memory and lazy mode alike)."""

    def __init__(self, path: Path, image_dir: Path, in_memory: bool = True) -> None:
        # set before super().__init__(): the constructor already parses the file
        self.image_dir = image_dir
        super().__init__(
            path, {0: "text", 1: "ner"}, column_delimiter="\t", comment_symbol=None, in_memory=in_memory,
        )

    def _convert_lines_to_sentence(self, lines, word_level_tag_columns, span_level_tag_columns=None):
        image_id = None
        if lines:
            first = lines[0].lstrip("\ufeff")
            if first.startswith(IMGID_PREFIX):
                image_id = first[len(IMGID_PREFIX):].strip()
                lines = lines[1:]
        sentence = super()._convert_lines_to_sentence(lines, word_level_tag_columns, span_level_tag_columns)
        if sentence is not None:
            # the tags as written (orphan I- included) for strict scoring, so no one reads the file again
            tags = [line.rstrip("\r\n").split("\t")[-1].strip() for line in lines if line.strip()]
            if len(tags) == len(sentence):
                sentence.add_metadata(GOLD_TAGS_KEY, tags)
        if sentence is not None and image_id is not None:
            sentence.add_metadata("image_id", image_id)
            sentence.add_metadata("image_path", str(image_path_for(self.image_dir, image_id)))
        return sentence


def _resolve_split(folder: Path, value, split: str) -> Path | None:
    """``value`` False/None -> no split; relative names resolve in ``folder``."""
    if value is None or value is False:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = folder / path
    if not path.is_file():
        raise FileNotFoundError(f"{split} file {path} of the corpus does not exist")
    return path


class TwitterMNERCorpus(Corpus):
    """A multimodal NER corpus in the ``IMGID`` format (Twitter-2015 / Twitter-2017) as a Flair ``Corpus``.

    Every ``Sentence`` carries the metadata ``image_id`` (the IMGID) and ``image_path`` (the absolute
    path ``<image_dir>/<id>.jpg``, which may not exist), and the gold entities as spans of label type
    ``"ner"`` (``sentence.get_spans("ner")``).

    Args:
        folder: the folder with the split files.
        image_dir: the folder with the images; defaults to ``<folder>/images``.
        train_file, test_file: file names (relative to ``folder``) or paths; ``None``/``False`` leaves
            the split out.
        dev_file: ``None`` finds ``valid.txt`` or ``dev.txt`` in ``folder`` (a ``FileNotFoundError``
            lists both if neither exists; Flair never samples dev from train here); ``False`` means no
            dev split.
        name: corpus name (default: the folder's name).
        in_memory: keep parsed sentences in memory (Flair's ``in_memory``).
        entity_types: the types X allowed in ``B-X``/``I-X`` tags (default PER, LOC, ORG, OTHER, MISC).

    Attributes:
        image_stats: per split ``{"tweets", "with_image", "missing", "image_dir"}``; tweets whose image
            file is absent are not an error (logged once per split).
        split_stats: per split :class:`SplitStats` (tokens, ``B-`` counts, orphan ``I-`` counts).

    Raises:
        CorpusFormatError: malformed file (see :func:`scan_imgid_file`), with file and line.
        FileNotFoundError: a split file does not exist.
    """

    def __init__(
        self,
        folder: str | Path,
        image_dir: str | Path | None = None,
        train_file: str | Path | None = "train.txt",
        dev_file: str | Path | None = None,
        test_file: str | Path | None = "test.txt",
        name: str | None = None,
        in_memory: bool = True,
        entity_types: Iterable[str] = DEFAULT_ENTITY_TYPES,
    ) -> None:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"corpus folder {folder} does not exist")
        folder = folder.resolve()
        self.image_dir = (Path(image_dir).expanduser() if image_dir is not None else folder / "images").resolve()
        if dev_file is None:
            found = [folder / c for c in _DEV_CANDIDATES if (folder / c).is_file()]
            if not found:
                raise FileNotFoundError(
                    f"no dev split in {folder}: looked for {' and '.join(_DEV_CANDIDATES)}; "
                    "pass dev_file=NAME, or dev_file=False for a corpus without dev split"
                )
            if len(found) > 1:
                log.warning("both %s exist in %s: using %s as the dev split", " and ".join(_DEV_CANDIDATES),
                            folder, found[0].name)
            dev_file = found[0]
        files = {
            "train": _resolve_split(folder, train_file, "train"),
            "dev": _resolve_split(folder, dev_file, "dev"),
            "test": _resolve_split(folder, test_file, "test"),
        }
        if all(f is None for f in files.values()):
            raise ValueError("TwitterMNERCorpus needs at least one split file")
        types = tuple(entity_types)
        self.files: dict[str, Path] = {k: v for k, v in files.items() if v is not None}
        self.split_stats: dict[str, SplitStats] = {}
        self.image_stats: dict[str, dict] = {}
        datasets: dict[str, _ImgidColumnDataset | None] = {"train": None, "dev": None, "test": None}
        for split, path in self.files.items():
            stats = scan_imgid_file(path, types)
            self._check_images(split, stats)
            dataset = _ImgidColumnDataset(path, self.image_dir, in_memory=in_memory)
            if len(dataset) != stats.tweets:  # cannot happen after the pre-pass; never lose tweets silently
                raise CorpusFormatError(path, None, f"Flair parsed {len(dataset)} tweets, the file has {stats.tweets}")
            datasets[split] = dataset
            self.split_stats[split] = stats
        super().__init__(
            datasets["train"], datasets["dev"], datasets["test"], name=name or folder.name,
            sample_missing_splits=False,
        )

    def _check_images(self, split: str, stats: SplitStats) -> None:
        stats.image_dir = self.image_dir
        if self.image_dir.is_dir():
            present = {i for i in set(stats.image_ids) if image_path_for(self.image_dir, i).is_file()}
            stats.with_image = sum(1 for i in stats.image_ids if i in present)
        stats.missing = stats.tweets - stats.with_image
        self.image_stats[split] = {
            "tweets": stats.tweets, "with_image": stats.with_image, "missing": stats.missing,
            "image_dir": str(self.image_dir),
        }
        if not self.image_dir.is_dir():
            log.warning("image directory %s does not exist: all %d tweets of the %s split (%s) have no image "
                        "(they are embedded without image, s_G = 0)", self.image_dir, stats.tweets, split,
                        stats.file.name)
        elif stats.missing:
            log.warning("%d of %d tweets have no image file in %s (%s split, %s)", stats.missing, stats.tweets,
                        self.image_dir, split, stats.file.name)


class TWITTER2015(TwitterMNERCorpus):
    """Twitter-2015 (Zhang et al., AAAI 2018; the UMT release: 4000 / 1000 / 3257 tweets, PER/LOC/ORG/OTHER).

    ``folder`` holds ``train.txt``, ``valid.txt`` (or ``dev.txt``) and ``test.txt``; ``image_dir`` the
    ``<IMGID>.jpg`` files (default ``<folder>/images``). Nothing is downloaded.
    """

    def __init__(self, folder: str | Path, image_dir: str | Path | None = None, **corpusargs) -> None:
        corpusargs.setdefault("name", "twitter2015")
        super().__init__(folder, image_dir, **corpusargs)


class TWITTER2017(TwitterMNERCorpus):
    """Twitter-2017 (Lu et al., ACL 2018; the UMT split: 3373 / 723 / 723 tweets, PER/LOC/ORG/MISC).

    Same layout as :class:`TWITTER2015`. Nothing is downloaded.
    """

    def __init__(self, folder: str | Path, image_dir: str | Path | None = None, **corpusargs) -> None:
        corpusargs.setdefault("name", "twitter2017")
        super().__init__(folder, image_dir, **corpusargs)


# --------------------------------------------------------------------------------------------------
# relation pairs, unlabelled pairs, pseudo-labelled pairs
# --------------------------------------------------------------------------------------------------


@dataclass
class RelationPair:
    """A tweet text with its image. ``label`` is the task-1 label "image adds" (1) vs not (0), R1∪R2 vs
    R3∪R4 of Vempala & Preoţiuc-Pietro (2019); ``score`` the teacher's score of that label (its top-class
    probability) for a pseudo label.
    ``image`` is None when the record names no image; it may name a file that does not exist."""

    text: str
    tokens: list[str]
    image: Path | None
    label: int | None = None
    score: float | None = None
    text_is_represented: int | None = None


_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_TSV_UNESCAPE_RE = re.compile(r"\\([\\tnr])")
_TSV_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _escape_tsv(value: str) -> str:
    return "".join(_TSV_ESCAPES.get(ch, ch) for ch in value)


def _unescape_tsv(value: str) -> str:
    return _TSV_UNESCAPE_RE.sub(lambda m: _TSV_UNESCAPES[m.group(1)], value) if "\\" in value else value


def _first_content_line(path: Path) -> str:
    for _, line in _iter_decoded_lines(path):
        if line.strip():
            return line
    return ""


def _table_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    first = _first_content_line(path)
    if "\t" in first:
        return "tsv"
    if "," in first:
        return "csv"
    raise CorpusFormatError(path, 1, "cannot tell whether this is CSV or TSV: the header has neither a TAB "
                                     "nor a comma (name the file .csv or .tsv)")


def _iter_table(path: Path, on_error: Callable[[CorpusFormatError], None] | None = None
                ) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Header (lower-cased, stripped names) and a stream of ``(line, {column: value})`` rows of a CSV/TSV
    file; blank lines are skipped, a row with the wrong number of fields is an error (raised, or passed to
    ``on_error`` and the row skipped; for a TSV, bytes that are not UTF-8 too)."""
    kind = _table_kind(path)
    lenient = on_error is not None and kind == "tsv"
    lines = _iter_decoded_lines(path, lenient=lenient)

    if kind == "tsv":
        def records() -> Iterator[tuple[int, list[str]]]:
            for lineno, raw in lines:
                if isinstance(raw, CorpusFormatError):
                    if lineno == 1:
                        raise raw  # the header
                    on_error(raw)
                    continue
                line = _strip_newline(raw)
                if line.strip():
                    yield lineno, [_unescape_tsv(v) for v in line.split("\t")]
    else:
        def records() -> Iterator[tuple[int, list[str]]]:
            reader = csv.reader((line for _, line in lines), doublequote=True, escapechar="\\", strict=True)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    raise CorpusFormatError(path, reader.line_num, f"malformed CSV: {err}") from None
                if row and any(v.strip() for v in row):
                    yield reader.line_num, row

    stream = records()
    try:
        header_line, header = next(stream)
    except StopIteration:
        raise CorpusFormatError(path, None, "empty file (a header line is required)") from None
    names = [h.strip().lower() for h in header]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CorpusFormatError(path, header_line, f"duplicate columns in the header: {', '.join(duplicates)}")

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        for lineno, values in stream:
            if len(values) != len(names):
                too_many = kind == "tsv" and len(values) > len(names)
                extra = " (a TAB inside a text must be written as \\t)" if too_many else ""
                error = CorpusFormatError(path, lineno, f"{len(values)} fields, the header has {len(names)}{extra}")
                if on_error is None:
                    raise error
                on_error(error)
                continue
            yield lineno, dict(zip(names, values))

    return names, rows()


def _parse_binary(value: str | None, column: str, path: Path, lineno: int, required: bool) -> int | None:
    value = (value or "").strip()
    if not value:
        if required:
            raise CorpusFormatError(path, lineno, f"missing {column} label (expected 0 or 1)")
        return None
    if value in ("0", "1", "0.0", "1.0"):
        return int(float(value))
    raise CorpusFormatError(path, lineno, f"{column} must be 0 or 1, got {value!r}")


def _resolve_image(value: str | None, base: Path) -> Path | None:
    """The image path of a data row. A relative path resolves inside ``base`` (the image folder) and may
    not leave it (``../../etc/passwd`` gives ``None``: no image); an absolute or ``~`` path is used as
    written (the data file names it). Either way the file must still decode as an image to be used."""
    value = (value or "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_absolute():
        return Path(os.path.abspath(path))
    root = os.path.abspath(base)
    resolved = os.path.abspath(os.path.join(root, path))
    if os.path.commonpath([root, resolved]) != root:
        log.debug("image path %r leaves the image folder %s: ignored", value, root)
        return None
    return Path(resolved)


def _text_and_tokens(text: str, path: Path, lineno: int) -> tuple[str, list[str]]:
    if not text.strip():
        raise CorpusFormatError(path, lineno, "empty text")
    tokens = tokenize_tweet(text)
    if not tokens:
        raise CorpusFormatError(path, lineno, f"text without tokens: {text!r}")
    return text, tokens


def _log_missing_images(pairs: list[RelationPair], path: Path, what: str) -> int:
    missing = [p.image for p in pairs if p.image is None or not p.image.is_file()]
    if missing:
        example = next((m for m in missing if m is not None), None)
        log.warning("%d of %d %s in %s have no image file%s (they count as pairs without image)",
                    len(missing), len(pairs), what, path, f" (e.g. {example})" if example else "")
    return len(missing)


def read_relation_pairs(path: str | Path, image_dir: str | Path | None = None) -> list[RelationPair]:
    """Read labelled text-image relation pairs (task 1, §3.1) from CSV or TSV.

    Columns (case-insensitive): ``text`` (or Bloomberg's ``tweet``), ``image`` (or Bloomberg's
    ``tweet_id``, giving ``T<tweet_id>.jpg``), ``image_adds`` (0/1, the label), optional
    ``text_is_represented`` (0/1). Other columns are ignored. A missing label, a label other than 0/1,
    an empty text or a row with the wrong number of fields raises :class:`CorpusFormatError` with the
    line; a missing image file is counted and logged, and the pair is kept.
    """
    path = _require_file(path, "relation data file")
    base = Path(image_dir).expanduser() if image_dir is not None else path.parent
    names, rows = _iter_table(path)
    text_col = "text" if "text" in names else "tweet" if "tweet" in names else None
    image_col = "image" if "image" in names else "tweet_id" if "tweet_id" in names else None
    problems = []
    if text_col is None:
        problems.append("a 'text' (or 'tweet') column")
    if image_col is None:
        problems.append("an 'image' (or 'tweet_id') column")
    if "image_adds" not in names:
        problems.append("an 'image_adds' column")
    if problems:
        raise CorpusFormatError(path, 1, f"header needs {', '.join(problems)}; found: {', '.join(names)}")
    pairs: list[RelationPair] = []
    for lineno, row in rows:
        text, tokens = _text_and_tokens(row[text_col], path, lineno)
        if image_col == "image":
            image = _resolve_image(row["image"], base)
        else:
            tweet_id = row["tweet_id"].strip()
            if not tweet_id:
                raise CorpusFormatError(path, lineno, "empty tweet_id (the image is T<tweet_id>.jpg)")
            image = _resolve_image(f"T{tweet_id}.jpg", base)
        pairs.append(RelationPair(
            text=text, tokens=tokens, image=image,
            label=_parse_binary(row["image_adds"], "image_adds", path, lineno, required=True),
            text_is_represented=_parse_binary(row.get("text_is_represented"), "text_is_represented", path,
                                              lineno, required=False),
        ))
    if not pairs:
        raise CorpusFormatError(path, None, "no data rows after the header")
    _log_missing_images(pairs, path, "relation pairs")
    positives = sum(p.label for p in pairs)
    log.info("read %d relation pairs from %s (%d image adds = %.1f%%)", len(pairs), path, positives,
             100.0 * positives / len(pairs))
    return pairs


def _unlabelled_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    first = _first_content_line(path).lstrip()
    if first.startswith("{"):
        return "jsonl"
    if "\t" in first:
        return "tsv"
    raise CorpusFormatError(path, 1, "unlabelled pairs must be JSON lines ({\"text\": ..., \"image\": ...}) "
                                     "or a TSV with the header text<TAB>image")


@dataclass
class UnlabelledRecord:
    """One record of an unlabelled-pairs file (JSONL or TSV), as :func:`iter_unlabelled_records` reads it."""

    line: int
    """1-based line in the file."""
    text: str
    tokens: list[str]
    """``tokenize_tweet(text)``; empty for an empty text."""
    image: Path | None
    """The resolved image path (absolute), or ``None`` when the record names no image."""
    id: object = None
    """The record's ``"id"`` (JSON value or TSV ``id`` column), ``None`` when absent."""


def iter_unlabelled_records(path: str | Path, image_dir: str | Path | None = None, *,
                            on_error: Callable[[CorpusFormatError], None] | None = None
                            ) -> Iterator[UnlabelledRecord]:
    """Stream every record of a JSONL or TSV pairs file, one at a time, **including** empty texts.

    JSONL records are objects with ``"text"``, optional ``"image"`` (null/absent/empty = no image) and
    optional ``"id"``; a TSV needs a ``text`` column and may have ``image`` and ``id``. Relative images
    resolve against ``image_dir`` (default: the file's folder). A malformed line (bad JSON, not an object,
    no ``"text"``, a wrong type, bytes that are not UTF-8, a TSV row with the wrong number of fields) raises
    :class:`CorpusFormatError`, or is passed to ``on_error`` and skipped. Problems of the whole file (an
    unknown format, a TSV header without ``text``) always raise, before the first record is read.
    """
    path = _require_file(path, "unlabelled pairs file")
    base = Path(image_dir).expanduser() if image_dir is not None else path.parent
    kind = _unlabelled_kind(path)  # raises now, before the first record is requested
    if kind == "jsonl":
        return _jsonl_records(path, base, on_error)
    names, rows = _iter_table(path, on_error)
    if "text" not in names:
        raise CorpusFormatError(path, 1, f"header needs a 'text' column (and 'image'); found: {', '.join(names)}")
    return (UnlabelledRecord(lineno, row["text"], tokenize_tweet(row["text"]), _resolve_image(row.get("image"), base),
                             row.get("id") or None)
            for lineno, row in rows)


def _jsonl_record(path: Path, lineno: int, line: str, base: Path) -> UnlabelledRecord:
    """One JSON line as a record; raises :class:`CorpusFormatError` for a malformed one."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise CorpusFormatError(path, lineno, f"malformed JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(obj, dict):
        raise CorpusFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    if "text" not in obj:
        raise CorpusFormatError(path, lineno, "JSON object without a \"text\" field")
    text, image = obj["text"], obj.get("image")
    if not isinstance(text, str):
        raise CorpusFormatError(path, lineno, f"\"text\" must be a string, got {type(text).__name__}")
    if image is not None and not isinstance(image, str):
        raise CorpusFormatError(path, lineno, f"\"image\" must be a string or null, got {type(image).__name__}")
    return UnlabelledRecord(lineno, text, tokenize_tweet(text), _resolve_image(image, base), obj.get("id"))


def _jsonl_records(path: Path, base: Path, on_error: Callable[[CorpusFormatError], None] | None
                   ) -> Iterator[UnlabelledRecord]:
    for lineno, raw in _iter_decoded_lines(path, lenient=on_error is not None):
        try:
            if isinstance(raw, CorpusFormatError):
                raise raw
            line = raw.strip()
            if not line:
                continue
            yield _jsonl_record(path, lineno, line, base)
        except CorpusFormatError as err:
            if on_error is None:
                raise
            on_error(err)


def iter_unlabelled_pairs(path: str | Path, image_dir: str | Path | None = None) -> Iterator[RelationPair]:
    """Stream unlabelled text-image pairs (task 2, §3.3) from JSON lines or TSV, one record at a time.

    JSONL records are objects with ``"text"`` and optional ``"image"`` (null/absent/empty = no image);
    a TSV needs a ``text`` column and may have ``image``. The file is never loaded whole: the returned
    generator reads a line when asked for the next pair. A malformed JSON line, a record that is not an
    object or lacks ``"text"``, and a TSV row with the wrong number of fields raise
    :class:`CorpusFormatError` when the stream reaches them. Records whose text is empty (or has no
    token) are **skipped** and counted; one warning with the count is logged when the stream ends.
    Image files are not checked here (that would cost a stat per pair); the embedding/featurizer
    reports images it cannot read. (:func:`iter_unlabelled_records` is the same stream with every
    record, its line and id.)
    """
    records = iter_unlabelled_records(path, image_dir)  # raises now for a missing or unknown file
    return _unlabelled_stream(Path(path).expanduser(), records)


def _unlabelled_stream(path: Path, records: Iterator[UnlabelledRecord]) -> Iterator[RelationPair]:
    seen = skipped = 0
    for record in records:
        seen += 1
        if not record.tokens:
            skipped += 1
            continue
        yield RelationPair(text=record.text, tokens=record.tokens, image=record.image)
    if skipped:
        log.warning("skipped %d of %d unlabelled pairs in %s: empty text", skipped, seen, path)


PSEUDO_HEADER = ("text", "image", "label", "score")


def write_pseudo_labelled(path: str | Path, pairs: Iterable[RelationPair]) -> int:
    """Write pseudo-labelled pairs as TSV (``text, image, label, score``) atomically: a temporary file in
    the same folder is renamed over ``path`` only when every pair was written, so readers never see a
    half-written file. Text and image are TSV-escaped (``\\t``, ``\\n``, ``\\r``, ``\\\\``), so any text
    round-trips. Returns the number of pairs written.

    Raises:
        ValueError: a pair without a 0/1 label or with an empty text (``path`` is left untouched).
    """
    path = Path(path).expanduser()
    count = 0
    with atomic_open(path, "w") as handle:
        handle.write("\t".join(PSEUDO_HEADER) + "\n")
        for i, pair in enumerate(pairs):
            if pair.label not in (0, 1):
                raise ValueError(f"pair {i} has label {pair.label!r}; a pseudo label must be 0 or 1")
            if not pair.text.strip():
                raise ValueError(f"pair {i} has an empty text")
            score = "" if pair.score is None else repr(float(pair.score))
            image = "" if pair.image is None else _escape_tsv(str(pair.image))
            handle.write(f"{_escape_tsv(pair.text)}\t{image}\t{int(pair.label)}\t{score}\n")
            count += 1
    return count


def read_pseudo_labelled(path: str | Path, image_dir: str | Path | None = None) -> list[RelationPair]:
    """Read a file written by :func:`write_pseudo_labelled` (or any TSV with ``text``, ``image``,
    ``label`` and optional ``score`` columns). Bad labels/scores/empty texts raise :class:`CorpusFormatError`."""
    path = _require_file(path, "pseudo-labelled pairs file")
    base = Path(image_dir).expanduser() if image_dir is not None else path.parent
    names, rows = _iter_table(path)
    missing_cols = [c for c in ("text", "image", "label") if c not in names]
    if missing_cols:
        raise CorpusFormatError(path, 1, f"header needs {', '.join(missing_cols)}; found: {', '.join(names)}")
    pairs: list[RelationPair] = []
    for lineno, row in rows:
        text, tokens = _text_and_tokens(row["text"], path, lineno)
        score_text = (row.get("score") or "").strip()
        score = None
        if score_text:
            try:
                score = float(score_text)
            except ValueError:
                raise CorpusFormatError(path, lineno, f"score must be a number, got {score_text!r}") from None
        pairs.append(RelationPair(
            text=text, tokens=tokens, image=_resolve_image(row["image"], base),
            label=_parse_binary(row["label"], "label", path, lineno, required=True), score=score,
        ))
    if pairs:
        _log_missing_images(pairs, path, "pseudo-labelled pairs")
    return pairs


def sentence_image(sentence: Sentence, key: str = "image_path") -> tuple[str | None, str | None]:
    """The image path stored on a sentence under the metadata ``key`` (as :class:`TwitterMNERCorpus` stores
    it), or ``(None, why not)``: no such metadata, ``None`` or a blank path, or a value that is not a path."""
    if not sentence.has_metadata(key):
        return None, f"no '{key}' metadata"
    value = sentence.get_metadata(key)
    if value is None:
        return None, "no path"
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        path = path.strip("\r\n")
        return (path, None) if path.strip() else (None, "no path")
    return None, f"'{key}' metadata is a {type(value).__name__}, not a path"


def sentence_image_path(sentence: Sentence, key: str = "image_path") -> str | None:
    """The image path stored on a sentence, or None (see :func:`sentence_image`)."""
    return sentence_image(sentence, key)[0]


def read_relation_truth(path: str | Path) -> dict[str, int]:
    """A relation truth file (``image_id<TAB>image_adds[<TAB>...]`` with a header line, as the demo world's
    ``ner/relation_truth.tsv``) -> {image_id: 1 if the image adds, else 0}."""
    truth = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()[1:], start=2):
        if line.strip():
            fields = line.split("\t")
            if len(fields) < 2 or fields[1].strip() not in ("0", "1"):
                raise CorpusFormatError(f"{path}:{number}: expected image_id<TAB>image_adds (0 or 1), got {line!r}")
            truth[fields[0]] = int(fields[1])
    return truth
