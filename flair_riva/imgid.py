"""The ``IMGID`` format of the multimodal NER corpora (Twitter-2015/2017): streaming, validation, counts.

UTF-8 text. For each tweet a line ``IMGID:<id>``, then one ``token<TAB>tag`` line per token with BIO
tags, and a blank line between tweets. The tweet's image is ``<image_dir>/<id>.jpg`` (an id that already
ends in ``.jpg``/``.jpeg``/``.png``/``.gif`` is used as the file name as it is; see :func:`image_path_for`).
Orphan ``I-`` tags (``I-X`` after ``O`` or after another type, which Twitter-2015 has) are kept and
counted (:class:`SplitStats`). :mod:`flair_riva.datasets` builds the Flair corpus on these readers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flair_riva.data_files import CorpusFormatError, _iter_decoded_lines, _require_file, _strip_newline

DEFAULT_ENTITY_TYPES: tuple[str, ...] = ("PER", "LOC", "ORG", "OTHER", "MISC")
"""Entity types accepted in ``B-X``/``I-X`` tags by default (Twitter-2015 uses OTHER, Twitter-2017 MISC)."""

IMGID_PREFIX = "IMGID:"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif")
_DEV_CANDIDATES = ("valid.txt", "dev.txt")



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
