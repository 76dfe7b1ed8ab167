"""Text-image pairs: the labelled relation data of task 1 (§3.1, Vempala & Preoţiuc-Pietro 2019), the
unlabelled pairs of task 2 (§3.3) and the pseudo-labelled pairs the teacher writes.

Formats (DESIGN §2)
-------------------
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

Error behaviour: see :mod:`flair_riva.data_files`. A missing *image file* is never an error: it is
counted, logged once per file through ``logging.getLogger("flair")`` and left to the embedding.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flair_riva.data_files import CorpusFormatError, _iter_decoded_lines, _require_file, _strip_newline
from flair_riva.io import atomic_open
from flair_riva.text import tokenize_tweet

log = logging.getLogger("flair")



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


def read_relation_truth(path: str | Path) -> dict[str, int]:
    """A relation truth file (``image_id<TAB>image_adds[<TAB>...]`` with a header line, as the demo world's
    ``ner/relation_truth.tsv``) -> {image_id: 1 if the image adds, else 0}."""
    truth = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()[1:], start=2):
        if line.strip():
            fields = line.split("\t")
            if len(fields) < 2 or fields[1].strip() not in ("0", "1"):
                raise CorpusFormatError(path, number, f"expected image_id<TAB>image_adds (0 or 1), got {line!r}")
            truth[fields[0]] = int(fields[1])
    return truth
