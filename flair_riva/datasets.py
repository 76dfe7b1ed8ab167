"""Datasets of flair-riva: the multimodal NER corpora (Twitter-2015/2017, ``IMGID`` format) as Flair
corpora, the labelled text-image relation data of task 1 (§3.1, Vempala & Preoţiuc-Pietro 2019),
the unlabelled text-image pairs of task 2 (§3.3) and the pseudo-labelled pairs the teacher writes.

Formats (DESIGN §2)
-------------------
**IMGID corpora** (:mod:`flair_riva.imgid`, which documents the format): a line ``IMGID:<id>`` per
tweet, its ``token<TAB>tag`` lines (BIO tags), a blank line; the image is ``<image_dir>/<id>.jpg``.
Images are decoded by content later (:mod:`flair_riva.vision`), so a PNG file with a ``.jpg`` name is fine.

**Relation, unlabelled and pseudo-labelled pairs** (:mod:`flair_riva.pairs`, which documents their
formats and the TSV/CSV conventions).

This module builds the Flair corpus (:class:`TwitterMNERCorpus`) and reads a sentence's image; the readers
live in :mod:`flair_riva.data_files` (errors, UTF-8 lines), :mod:`flair_riva.imgid` and
:mod:`flair_riva.pairs`, and everything is importable from here as before.

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

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from flair.data import Corpus, Sentence
from flair.datasets import ColumnDataset

from flair_riva.data_files import CorpusFormatError
from flair_riva.data_files import _require_file as _require_file  # re-exported: importable here before the split
from flair_riva.imgid import (
    DEFAULT_ENTITY_TYPES,
    IMGID_PREFIX,
    ImgidTweet,
    SplitStats,
    image_path_for,
    iter_imgid_tweets,
    scan_imgid_file,
)
from flair_riva.pairs import (
    PSEUDO_HEADER,
    RelationPair,
    UnlabelledRecord,
    iter_unlabelled_pairs,
    iter_unlabelled_records,
    read_pseudo_labelled,
    read_relation_pairs,
    read_relation_truth,
    write_pseudo_labelled,
)
from flair_riva.pairs import _first_content_line as _first_content_line  # re-exported, as _require_file
from flair_riva.pairs import _unlabelled_kind as _unlabelled_kind  # re-exported, as _require_file

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
    "read_relation_truth",
    "PSEUDO_HEADER",
]

_DEV_CANDIDATES = ("valid.txt", "dev.txt")


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
