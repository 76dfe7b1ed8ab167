"""Tag new tweets and their images with a trained tagger: ``python -m flair_riva.tag``.

::

    python -m flair_riva.tag --tagger runs/ner/best-model.pt --input tweets.jsonl --image-dir images/ \\
        --output tagged.jsonl [--feature-cache features/] [--batch-size 32] [--figures figures/]

The command is a thin layer over :func:`tag_file`, which streams the input in chunks of ``chunk_size``
records: read (the package's readers, :mod:`flair_riva.datasets`), build Flair ``Sentence`` objects with
the image path as metadata, ``SequenceTagger.predict`` in mini-batches, write one output record per input
record in input order, flush, forget. Memory does not grow with the input (only ``--evaluate`` keeps the
gold and predicted tags of the scored tweets).

Inputs (``--input-format auto`` tells them apart by extension, else by the first line):

* JSONL ``{"text": ..., "image": ..., "id": ...}`` (``image`` and ``id`` optional) or a TSV with the header
  ``text<TAB>image`` (optional ``id`` column): raw text, tokenised with
  :func:`flair_riva.text.tokenize_tweet` (:func:`~flair_riva.datasets.iter_unlabelled_records`);
* an IMGID corpus file (pre-tokenised; :func:`~flair_riva.datasets.iter_imgid_tweets`): the image is
  ``<image_dir>/<id>.jpg``; its tags, if present, are ignored for prediction and scored with ``--evaluate``.

Relative image paths resolve against ``--image-dir`` (default: the input's folder; for an IMGID file
``<folder>/images``, as :class:`~flair_riva.datasets.TwitterMNERCorpus`).

Output (``--format jsonl``), one line per input record: ``id`` (when the input has one), ``text``,
``tokens``, ``entities`` (``{"text", "type", "start", "end", "score"}``, token offsets, ``end``
exclusive), ``relevance`` (``{embedding name: s_G}`` for every :class:`RivaEmbeddings` of the tagger's
stack; 0 without an image), ``image`` (the resolved path or ``null``) and ``image_status`` (``"ok"`` or
why the image was not used: a reason of :data:`flair_riva.vision.BAD_IMAGE_REASONS`, or ``"not used: ..."``).
``--format conll`` writes the IMGID/BIO format instead.

A tagger file is a Flair pickle (``torch.load(weights_only=False)``): loading it can run code, so only
load taggers you trust.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from flair.data import Sentence
from flair.embeddings import StackedEmbeddings
from flair.models import SequenceTagger
from tqdm import tqdm

from flair_riva.data_files import CorpusFormatError, _require_file
from flair_riva.embeddings import REASON_KEY, RivaEmbeddings
from flair_riva.imgid import image_path_for, iter_imgid_tweets
from flair_riva.pairs import _first_content_line, _unlabelled_kind, iter_unlabelled_records
from flair_riva.scoring import SpanF1, predicted_bio, strict_f1

log = logging.getLogger("flair")

INPUT_FORMATS = ("auto", "jsonl", "tsv", "imgid")
OUTPUT_FORMATS = ("jsonl", "conll")
LABEL = "predicted"
"""Label name of the predictions on the Sentences (what :func:`flair_riva.visualize.draw_table7` shows)."""

TRUST_WARNING = ("A tagger file is a Flair pickle (torch.load with weights_only=False): loading it can run "
                 "arbitrary code. Only load tagger files you trust.")


@dataclass
class TagRecord:
    """One input tweet to tag."""

    line: int
    """1-based line of the record in the input file."""
    text: str
    tokens: list[str]
    image: Path | None
    """The resolved image path, or ``None`` when the record names no image."""
    id: Any = None
    gold: list[str] | None = None
    """Gold BIO tags (IMGID input with tags), scored with ``evaluate=True``."""


@dataclass
class TagSummary:
    """What :func:`tag_file` did."""

    records: int = 0
    """Records tagged and written by this run."""
    resumed: int = 0
    """Records found complete in the output and skipped (``resume=True``)."""
    bad_lines: int = 0
    """Malformed input lines (or IMGID tweets) reported and skipped."""
    entities: int = 0
    figures: int = 0
    image_status: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    f1: float | None = None
    """Span micro F1 as Flair reports it (``evaluate=True`` on IMGID input with tags), in %."""
    f1_strict: float | None = None
    """Span micro F1 in seqeval's strict IOB2 mode, in %."""
    scored: int = 0

    @property
    def tweets_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")


# --------------------------------------------------------------------------------------------------
# input
# --------------------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """``"jsonl"``, ``"tsv"`` or ``"imgid"`` from the extension, else from the first non-blank line."""
    path = _require_file(path, "input file")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if _first_content_line(path).lstrip("\ufeff").startswith("IMGID:"):
        return "imgid"
    return _unlabelled_kind(path)


def read_records(path: str | Path, input_format: str = "auto", image_dir: str | Path | None = None,
                 on_error: Callable[[CorpusFormatError], None] | None = None) -> Iterator[TagRecord]:
    """Stream the records of an input file (any format of the module docstring), one at a time.

    A malformed line raises :class:`~flair_riva.datasets.CorpusFormatError` (``file:line: reason``), or,
    with ``on_error``, is passed to it and skipped. Problems of the whole file always raise, before the first
    record is read.
    """
    path = _require_file(path, "input file")
    kind = detect_format(path) if input_format == "auto" else input_format
    if kind not in INPUT_FORMATS[1:]:
        raise ValueError(f"unknown input format {input_format!r} (one of {', '.join(INPUT_FORMATS)})")
    if kind == "imgid":
        base = Path(image_dir).expanduser() if image_dir is not None else path.parent / "images"
        base = base.absolute()
        tweets = iter_imgid_tweets(path, entity_types=None, require_tags=False, on_error=on_error)
        return (TagRecord(t.line, " ".join(t.tokens), t.tokens, image_path_for(base, t.image_id), t.image_id, t.tags)
                for t in tweets)
    records = iter_unlabelled_records(path, image_dir, on_error=on_error)
    return (TagRecord(r.line, r.text, r.tokens, r.image, r.id) for r in records)


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------


def count_complete_records(path: str | Path, output_format: str = "jsonl", truncate: bool = True) -> int:
    """The number of complete records at the start of an output file (what ``--resume`` skips).

    JSONL: lines that end with a newline and parse as JSON; CoNLL: ``IMGID`` blocks closed by a blank line.
    With ``truncate``, a partial record at the end (an interrupted write) is cut off, so appending goes on
    cleanly. Reads the file line by line (constant memory).
    """
    path = Path(path)
    if not path.exists():
        return 0
    count = good_end = offset = 0
    in_block = False
    with open(path, "rb") as handle:
        for raw in handle:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                break
            if output_format == "jsonl":
                try:
                    json.loads(raw)
                except ValueError:
                    break
                count, good_end = count + 1, offset
            elif raw.strip():
                in_block = True
            elif in_block:
                in_block = False
                count, good_end = count + 1, offset
    if truncate and good_end < path.stat().st_size:
        log.warning("%s: cutting off an incomplete record at byte %d (an interrupted run)", path, good_end)
        with open(path, "r+b") as handle:
            handle.truncate(good_end)
    return count


def riva_embeddings(tagger: SequenceTagger) -> list[RivaEmbeddings]:
    """The :class:`RivaEmbeddings` of a tagger's embeddings (a stack or a single embedding), in stack order."""
    embeddings = tagger.embeddings
    items = embeddings.embeddings if isinstance(embeddings, StackedEmbeddings) else [embeddings]
    return [e for e in items if isinstance(e, RivaEmbeddings)]


def _image_status(record: TagRecord, sentence: Sentence | None, uses_image: bool) -> str:
    if not uses_image:
        return "not used: the tagger has no image embedding"
    if record.image is None:
        return "no path"
    if sentence is None:
        return "not used: empty text"
    reason = sentence.get_metadata(REASON_KEY) if sentence.has_metadata(REASON_KEY) else "not embedded"
    return "ok" if reason is None else reason


def _conll_id(record: TagRecord, index: int) -> str:
    for candidate in (record.id, record.image.stem if record.image is not None else None):
        if candidate is not None and str(candidate) and not re.search(r"[\s/\\]", str(candidate)):
            return str(candidate)
    return str(index)


def _safe_name(value: Any) -> str:
    return re.sub(r"[^\w.-]", "_", str(value))[:60]


# --------------------------------------------------------------------------------------------------
# tagging
# --------------------------------------------------------------------------------------------------


def tag_file(
    tagger: SequenceTagger,
    input_path: str | Path,
    output_path: str | Path,
    *,
    image_dir: str | Path | None = None,
    input_format: str = "auto",
    output_format: str = "jsonl",
    batch_size: int = 32,
    chunk_size: int = 1024,
    feature_cache: str | Path | None = None,
    figures: str | Path | None = None,
    figures_limit: int | None = None,
    evaluate: bool = False,
    strict: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> TagSummary:
    """Tag every record of ``input_path`` with ``tagger`` and write ``output_path`` incrementally.

    Args:
        tagger: a :class:`~flair.models.SequenceTagger` (any embeddings; :class:`RivaEmbeddings` in its
            stack get the image path as the sentence metadata of their ``image_key``).
        input_path: JSONL, TSV or IMGID file (see the module docstring); ``input_format`` forces one.
        output_path: the output file, ``output_format`` ``"jsonl"`` or ``"conll"``. Each chunk of records is
            written and flushed when it is tagged, so an interrupted run keeps what it finished.
        image_dir: where relative image paths resolve (default: the input's folder; IMGID:
            ``<folder>/images``).
        batch_size: ``SequenceTagger.predict`` mini-batch size.
        chunk_size: records read, tagged and written together (memory is bounded by it, not by the input).
        feature_cache: use this region-feature cache in every :class:`RivaEmbeddings` of the tagger.
        figures: write a Table 7 figure (:func:`flair_riva.visualize.draw_table7`) for each tweet with a
            usable image, at most ``figures_limit``.
        evaluate: score the predictions against the tags of an IMGID input (Flair's and seqeval-strict F1).
        strict: a malformed input line fails the run (:class:`~flair_riva.datasets.CorpusFormatError`)
            instead of being reported and skipped.
        resume: keep the complete records of an existing output and skip as many input records.
        progress: show a tqdm progress bar (tweets/s) on stderr.

    Returns:
        a :class:`TagSummary`.
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r} (one of {', '.join(OUTPUT_FORMATS)})")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError("batch_size and chunk_size must be >= 1")
    summary = TagSummary()
    rivas = riva_embeddings(tagger)
    if feature_cache is not None:
        for emb in rivas:
            emb.use_feature_cache(feature_cache)
    image_keys = sorted({e.image_key for e in rivas if e.use_image})
    names = [e.name for e in rivas]

    def report(error: CorpusFormatError) -> None:
        summary.bad_lines += 1
        log.warning("%s (line skipped)", error)

    records = read_records(input_path, input_format, image_dir, on_error=None if strict else report)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if resume:
        summary.resumed = count_complete_records(output_path, output_format)
        if summary.resumed:
            log.info("resuming: %d records of %s are complete, skipping them in %s", summary.resumed, output_path,
                     input_path)
    figure_dir = Path(figures) if figures is not None else None
    span_f1 = SpanF1()
    gold_tags: list[list[str]] = []
    pred_tags: list[list[str]] = []

    def chunks() -> Iterator[list[TagRecord]]:
        chunk: list[TagRecord] = []
        skipped = 0
        for record in records:
            if skipped < summary.resumed:
                skipped += 1
                continue
            chunk.append(record)
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
        if skipped < summary.resumed:
            log.warning("--resume: the output has %d records but the input only %d", summary.resumed, skipped)
        if chunk:
            yield chunk

    start = time.perf_counter()
    bar = tqdm(unit=" tweets", desc="tagging", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    mode = "a" if resume else "w"
    index = summary.resumed
    with open(output_path, mode, encoding="utf-8", newline="\n") as out, bar:
        for chunk in chunks():
            sentences = [_sentence(record, image_keys) for record in chunk]
            tagger.predict([s for s in sentences if s is not None], mini_batch_size=batch_size, label_name=LABEL,
                           embedding_storage_mode="none")
            lines = []
            for record, sentence in zip(chunk, sentences):
                status = _image_status(record, sentence, bool(image_keys))
                summary.image_status[status] += 1
                spans = sentence.get_spans(LABEL) if sentence is not None else []
                summary.entities += len(spans)
                if output_format == "jsonl":
                    lines.append(_json_line(record, sentence, spans, names, status))
                else:
                    lines.append(_conll_block(record, sentence, index))
                if evaluate and record.gold is not None and sentence is not None:
                    predicted = predicted_bio(sentence, LABEL)
                    span_f1.add(record.gold, predicted)
                    gold_tags.append(record.gold)
                    pred_tags.append(predicted)
                if (figure_dir is not None and status == "ok"
                        and (figures_limit is None or summary.figures < figures_limit)):
                    _draw(sentence, figure_dir / f"{index:07d}_{_safe_name(record.id or record.line)}.png", tagger)
                    summary.figures += 1
                index += 1
            _write(out, lines)
            summary.records += len(chunk)
            bar.update(len(chunk))
    summary.seconds = time.perf_counter() - start
    if evaluate:
        summary.scored = len(gold_tags)
        if gold_tags:
            summary.f1 = span_f1.f1
            try:
                summary.f1_strict = strict_f1(gold_tags, pred_tags)
            except ImportError:
                log.warning("--evaluate: seqeval is not installed (pip install seqeval): no strict F1")
        else:
            log.warning("--evaluate: no record of %s has gold tags (only an IMGID file with tags can be scored)",
                        input_path)
    return summary


def _sentence(record: TagRecord, image_keys: list[str]) -> Sentence | None:
    """The Flair Sentence of a record (``None`` for an empty text), its image path under every image key of
    the tagger's RIVA embeddings."""
    if not record.tokens:
        return None
    sentence = Sentence(record.tokens)
    if record.image is not None:
        for key in image_keys:
            sentence.add_metadata(key, str(record.image))
    return sentence


def _json_line(record: TagRecord, sentence: Sentence | None, spans: list, names: list[str], status: str) -> str:
    entities = []
    for span in spans:
        label = span.get_label(LABEL)
        start, end = span.tokens[0].idx - 1, span.tokens[-1].idx
        entities.append({"text": " ".join(record.tokens[start:end]), "type": label.value, "start": start,
                         "end": end, "score": round(float(label.score), 6)})
    relevance = RivaEmbeddings.relevances(sentence) if sentence is not None else {}
    item: dict[str, Any] = {} if record.id is None else {"id": record.id}
    item.update(text=record.text, tokens=record.tokens, entities=entities,
                relevance={name: relevance.get(name, 0.0) for name in names},
                image=str(record.image) if record.image is not None else None, image_status=status)
    return json.dumps(item, ensure_ascii=False) + "\n"


def _conll_block(record: TagRecord, sentence: Sentence | None, index: int) -> str:
    tags = predicted_bio(sentence, LABEL) if sentence is not None else []
    body = "".join(f"{token}\t{tag}\n" for token, tag in zip(record.tokens, tags))
    return f"IMGID:{_conll_id(record, index)}\n{body}\n"


def _write(out: IO[str], lines: list[str]) -> None:
    out.write("".join(lines))
    out.flush()


def _draw(sentence: Sentence, path: Path, tagger: SequenceTagger) -> None:
    from flair_riva.visualize import draw_table7

    try:
        draw_table7(sentence, path, tag_type=tagger.tag_type)
    except Exception as err:  # a figure must never stop the tagging of a stream
        log.warning("could not draw %s: %s", path, err)


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m flair_riva.tag`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m flair_riva.tag",
        description="Tag new tweets and their images with a trained Flair SequenceTagger (e.g. one with "
                    "RivaEmbeddings). Streams the input, writes one output record per input record, in input "
                    "order, as it goes. " + TRUST_WARNING,
        epilog="Input: JSONL {\"text\", \"image\", \"id\"}, TSV text<TAB>image[<TAB>id] (both raw text, tokenised "
               "with the package's tweet tokeniser) or an IMGID corpus file (pre-tokenised). Output JSONL fields: "
               "id, text, tokens, entities [{text, type, start, end, score}] (token offsets, end exclusive), "
               "relevance {RIVA embedding: s_G}, image, image_status.")
    parser.add_argument("--tagger", required=True,
                        help="a saved SequenceTagger (.pt). It is a pickle: only load files you trust")
    parser.add_argument("--input", required=True, help="JSONL, TSV or IMGID file of tweets")
    parser.add_argument("--output", required=True, help="output file (written incrementally)")
    parser.add_argument("--image-dir", default=None,
                        help="where relative image paths resolve (default: the input's folder; IMGID: <folder>/images)")
    parser.add_argument("--input-format", choices=INPUT_FORMATS, default="auto")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="jsonl", dest="output_format",
                        help="output format: jsonl (default) or conll (IMGID/BIO)")
    parser.add_argument("--feature-cache", default=None, help="region-feature cache folder for RivaEmbeddings")
    parser.add_argument("--batch-size", type=int, default=32, help="prediction mini-batch size (default 32)")
    parser.add_argument("--chunk-size", type=int, default=1024,
                        help="records read, tagged and written together; bounds memory (default 1024)")
    parser.add_argument("--figures", default=None, help="folder for Table 7 figures of tweets with an image")
    parser.add_argument("--figures-limit", type=int, default=None, help="draw only the first N figures")
    parser.add_argument("--evaluate", action="store_true",
                        help="score against the tags of an IMGID input (Flair's and seqeval-strict F1)")
    parser.add_argument("--strict", action="store_true", help="fail on a malformed input line instead of skipping it")
    parser.add_argument("--resume", action="store_true", help="skip the records already complete in --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    tagger_path = Path(args.tagger)
    if not tagger_path.is_file():  # else Flair would try the Hugging Face hub and fail confusingly
        parser.error(f"tagger file {tagger_path} does not exist")
    if args.batch_size < 1 or args.chunk_size < 1:
        parser.error("--batch-size and --chunk-size must be >= 1")
    tagger = SequenceTagger.load(str(tagger_path))
    tagger.eval()
    flair_log_level = log.level
    if not args.no_progress:
        log.setLevel(logging.WARNING)  # no per-batch info lines through the progress bar; counts come at the end
    try:
        summary = tag_file(
            tagger, args.input, args.output, image_dir=args.image_dir, input_format=args.input_format,
            output_format=args.output_format, batch_size=args.batch_size, chunk_size=args.chunk_size,
            feature_cache=args.feature_cache, figures=args.figures, figures_limit=args.figures_limit,
            evaluate=args.evaluate, strict=args.strict, resume=args.resume, progress=not args.no_progress,
        )
    except (CorpusFormatError, FileNotFoundError) as err:
        log.error("%s", err)
        return 1
    finally:
        log.setLevel(flair_log_level)
    log.info("tagged %d tweets in %.1f s (%.1f tweets/s) -> %s%s", summary.records, summary.seconds,
             summary.tweets_per_second, args.output,
             f" (resumed after {summary.resumed})" if summary.resumed else "")
    log.info("entities: %d; images: %s", summary.entities,
             ", ".join(f"{k}: {v}" for k, v in summary.image_status.most_common()) or "none")
    if summary.bad_lines:
        log.warning("skipped %d malformed input lines (see the warnings above)", summary.bad_lines)
    if summary.figures:
        log.info("wrote %d figures to %s", summary.figures, args.figures)
    if summary.f1 is not None:
        strict_text = f"{summary.f1_strict:.2f}" if summary.f1_strict is not None else "n/a"
        log.info("F1 on %d tweets: %.2f (Flair, conlleval convention), %s (seqeval strict IOB2)", summary.scored,
                 summary.f1, strict_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
