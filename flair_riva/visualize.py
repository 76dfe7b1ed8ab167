"""Table 7-style figures (paper §4.7): the tweet image, the visual attention of Eq. (8) as a heat map,
the relevance score s_G and the tagged text. Drawn with PIL only (no matplotlib).

Embed a sentence with :class:`~flair_riva.embeddings.RivaEmbeddings` (directly or through a tagger's
``predict``), then::

    from flair_riva.visualize import draw_table7
    draw_table7(sentence, "case.png")

The attention map is the head-averaged softmax of Eq. (8) over the 7 x 7 ResNet regions, upsampled
bilinearly to 224 x 224, coloured from blue (low) to yellow (high) like the paper's heat maps and
alpha-blended over the image. A sentence without an image (s_G = 0) gets a placeholder panel.

Command line (optional)::

    python -m flair_riva.visualize --tagger best-model.pt --corpus DIR [--image-dir DIR] --split test \\
        --output figures/ [--limit 8]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from flair.data import Sentence
from PIL import Image, ImageDraw, ImageFont

from flair_riva.io import atomic_write_bytes

log = logging.getLogger("flair")

PANEL = 224
"""Side of the image panels (the network input size)."""
ALPHA = 0.55
"""Weight of the heat map in the blend over the image."""

# A blue -> yellow ramp close to MATLAB's "parula" (the paper's heat-map colours: low blue, high yellow).
_RAMP = np.array([
    (53, 42, 135), (15, 92, 221), (18, 125, 216), (7, 156, 207), (21, 177, 180),
    (89, 189, 140), (165, 190, 107), (225, 185, 82), (252, 206, 46), (249, 251, 14),
], dtype=np.float32)

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
PLACEHOLDER = (236, 236, 236)
ENTITY_COLOURS = {"PER": (196, 48, 43), "LOC": (36, 120, 54), "ORG": (33, 86, 178), "OTHER": (140, 80, 160),
                  "MISC": (140, 80, 160)}


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] (any shape) to RGB uint8 on the blue -> yellow ramp (shape + (3,))."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int)
    hi = np.minimum(lo + 1, len(_RAMP) - 1)
    frac = (v - lo)[..., None]
    return np.rint(_RAMP[lo] * (1 - frac) + _RAMP[hi] * frac).astype(np.uint8)


def heatmap_image(attention: torch.Tensor | np.ndarray | Sequence, size: int = PANEL) -> Image.Image:
    """A (g, g) attention map -> an RGB heat map of ``size`` x ``size`` (bilinear upsampling of the raw
    weights, then min-max normalisation, so the colours span the map's own range)."""
    arr = np.asarray(attention.detach().cpu().numpy() if isinstance(attention, torch.Tensor) else attention,
                     dtype=np.float32)
    if arr.ndim == 1:
        side = math.isqrt(arr.size)
        if side * side != arr.size:
            raise ValueError(f"attention of {arr.size} values is not a square grid")
        arr = arr.reshape(side, side)
    if arr.ndim != 2:
        raise ValueError(f"attention must be a 2-D grid, got shape {arr.shape}")
    up = np.asarray(Image.fromarray(arr, mode="F").resize((size, size), Image.Resampling.BILINEAR))
    lo, hi = float(up.min()), float(up.max())
    norm = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    return Image.fromarray(colormap(norm), mode="RGB")


def overlay(image: Image.Image, attention, alpha: float = ALPHA) -> Image.Image:
    """Blend the attention heat map over ``image`` (resized to ``PANEL`` x ``PANEL``)."""
    base = image.convert("RGB").resize((PANEL, PANEL), Image.Resampling.BILINEAR)
    return Image.blend(base, heatmap_image(attention, PANEL), alpha)


def _label_type(sentence: Sentence, tag_type: str) -> tuple[str, str]:
    """("predicted", ...) when the sentence carries predicted labels, else the gold ``tag_type``."""
    if sentence.get_labels("predicted"):
        return "predicted", "prediction"
    return tag_type, "gold"


def tagged_text(sentence: Sentence, label_type: str = "ner") -> str:
    """The sentence with its spans of ``label_type`` bracketed: ``"[PER Kevin Love] and [PER Kyle Korver] ..."``."""
    return " ".join(text for text, _ in _tagged_pieces(sentence, label_type))


def _tagged_pieces(sentence: Sentence, label_type: str) -> list[tuple[str, str | None]]:
    spans = {}
    for span in sentence.get_spans(label_type):
        spans[span.tokens[0].idx] = span
    pieces: list[tuple[str, str | None]] = []
    i = 1
    n = len(sentence)
    while i <= n:
        span = spans.get(i)
        if span is not None:
            tag = span.get_label(label_type).value
            pieces.append((f"[{tag} {' '.join(t.text for t in span.tokens)}]", tag))
            i = span.tokens[-1].idx + 1
        else:
            pieces.append((sentence[i - 1].text, None))
            i += 1
    return pieces


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # PIL without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, pieces: list[tuple[str, str | None]], font, width: int
          ) -> list[list[tuple[str, str | None]]]:
    lines: list[list[tuple[str, str | None]]] = [[]]
    used = 0.0
    space = draw.textlength(" ", font=font)
    for text, tag in pieces:
        w = draw.textlength(text, font=font)
        if lines[-1] and used + space + w > width:
            lines.append([])
            used = 0.0
        used += (space if lines[-1] else 0.0) + w
        lines[-1].append((text, tag))
    return lines


def _draw_pieces(draw: ImageDraw.ImageDraw, xy: tuple[int, int], pieces, font, width: int,
                 line_height: int) -> int:
    """Draw wrapped, entity-coloured text; returns the y below the last line."""
    x0, y = xy
    space = draw.textlength(" ", font=font)
    for line in _wrap(draw, pieces, font, width):
        x = float(x0)
        for text, tag in line:
            colour = ENTITY_COLOURS.get(tag or "", (120, 60, 20)) if tag else INK
            draw.text((x, y), text, fill=colour, font=font)
            x += draw.textlength(text, font=font) + space
        y += line_height
    return y


def _placeholder(text: str, font) -> Image.Image:
    """A grey, crossed-out panel with a centred message (wrapped to the panel width)."""
    panel = Image.new("RGB", (PANEL, PANEL), PLACEHOLDER)
    d = ImageDraw.Draw(panel)
    d.rectangle([0, 0, PANEL - 1, PANEL - 1], outline=(180, 180, 180))
    d.line([0, 0, PANEL - 1, PANEL - 1], fill=(210, 210, 210))
    d.line([0, PANEL - 1, PANEL - 1, 0], fill=(210, 210, 210))
    lines = [[text for text, _ in line] for line in _wrap(d, [(w, None) for w in text.split()], font, PANEL - 24)]
    height = 16 * len(lines)
    y = (PANEL - height) / 2
    d.rectangle([8, y - 4, PANEL - 8, y + height + 4], fill=PLACEHOLDER)
    for words in lines:
        line = " ".join(words)
        d.text(((PANEL - d.textlength(line, font=font)) / 2, y), line, fill=MUTED, font=font)
        y += 16
    return panel


def _colour_bar(width: int, height: int = 10) -> Image.Image:
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    return Image.fromarray(colormap(ramp), mode="RGB")


def _format_score(value: float | None) -> str:
    if value is None:
        return "s_G = n/a (not embedded with RIVA)"
    if value == 0.0 or 1e-2 <= abs(value) < 1e3:
        return f"s_G = {value:.3f}"
    return f"s_G = {value:.1e}"


def draw_table7(sentence: Sentence, out_png: str | Path, image_path: str | Path | None = None,
                tag_type: str = "ner", image_key: str = "image_path", text_width: int = 460) -> Path:
    """Draw one row of the paper's Table 7 for an embedded sentence and write it as a PNG.

    Panels, left to right: the image (224 x 224), the Eq. (8) attention heat map over the image (blue
    low, yellow high), and a text column with s_G and the tagged text (predicted labels if the sentence
    has labels of type ``"predicted"``, else the gold labels of ``tag_type``; both rows when both
    exist). A sentence without an image gets placeholder panels.

    Args:
        sentence: a sentence embedded by :class:`~flair_riva.embeddings.RivaEmbeddings`.
        out_png: output file (written atomically; parent folders are created).
        image_path: the image to show; default the sentence's ``image_key`` metadata.

    Returns:
        the path written.
    """
    from flair_riva.embeddings import REASON_KEY, RivaEmbeddings

    font = _font(15)
    small = _font(12)
    if image_path is None and sentence.has_metadata(image_key):
        image_path = sentence.get_metadata(image_key)
    attention = RivaEmbeddings.attention_map(sentence)
    s_g = RivaEmbeddings.relevance(sentence)
    reason = sentence.get_metadata(REASON_KEY) if sentence.has_metadata(REASON_KEY) else None

    picture = _open_picture(image_path)
    if picture is None:
        why = reason or ("no image" if image_path is None else "image cannot be read")
        left = _placeholder(f"no image ({why})", small)
    else:
        left = picture.resize((PANEL, PANEL), Image.Resampling.BILINEAR)
    if attention is not None and picture is not None:
        middle = overlay(picture, attention)
    elif attention is not None:
        middle = heatmap_image(attention)
    else:
        middle = _placeholder("text only: s_G = 0" if s_g in (None, 0.0) else "no attention", small)

    pad = 12
    width = pad + PANEL + pad + PANEL + pad + text_width + pad
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = 20
    rows = []
    gold_type = tag_type
    label_type, kind = _label_type(sentence, tag_type)
    if kind == "prediction" and sentence.get_labels(gold_type):
        rows.append(("Text (gold)", _tagged_pieces(sentence, gold_type)))
        rows.append(("biLSTM-CRF + RIVA (predicted)", _tagged_pieces(sentence, label_type)))
    else:
        rows.append(("Text (predicted)" if kind == "prediction" else "Text (gold)",
                     _tagged_pieces(sentence, label_type)))
    text_lines = sum(len(_wrap(scratch, pieces, font, text_width)) + 1 for _, pieces in rows) + 3
    height = max(pad + 18 + PANEL + 40, pad + text_lines * line_height + pad + 20)

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x_img, x_att, x_text = pad, pad + PANEL + pad, pad + 2 * (PANEL + pad)
    draw.text((x_img, pad), "Image", fill=MUTED, font=small)
    draw.text((x_att, pad), "Visual attention weights (Eq. 8)", fill=MUTED, font=small)
    canvas.paste(left, (x_img, pad + 18))
    canvas.paste(middle, (x_att, pad + 18))
    bar_y = pad + 18 + PANEL + 8
    canvas.paste(_colour_bar(PANEL - 70), (x_att + 35, bar_y))
    draw.text((x_att, bar_y - 3), "Low", fill=MUTED, font=small)
    draw.text((x_att + PANEL - 30, bar_y - 3), "High", fill=MUTED, font=small)

    y = pad
    draw.text((x_text, y), _format_score(s_g), fill=INK, font=font)
    y += line_height
    if reason and attention is None:
        draw.text((x_text, y), f"image: {reason}", fill=MUTED, font=small)
    y += line_height
    for title, pieces in rows:
        draw.text((x_text, y), title, fill=MUTED, font=small)
        y += line_height
        y = _draw_pieces(draw, (x_text, y), pieces, font, text_width, line_height) + 4

    out_png = Path(out_png)
    import io

    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    atomic_write_bytes(out_png, buffer.getvalue())
    return out_png


def _open_picture(path: str | Path | None) -> Image.Image | None:
    """The image as RGB for display (EXIF-rotated), or None when it cannot be read. Decoded by
    :func:`flair_riva.vision.load_picture`, the package's one decoder, with :func:`load_image`'s limits."""
    if path is None:
        return None
    from flair_riva.vision import load_picture

    picture, reason = load_picture(path)
    if picture is None:
        log.debug("cannot display image %s: %s", path, reason)
    return picture


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flair_riva.visualize",
        description="Draw Table 7-style figures (image, Eq. 8 attention, s_G, tagged text) for tweets of an "
                    "MNER corpus, with a tagger that uses RivaEmbeddings.")
    parser.add_argument("--tagger", required=True, help="a saved SequenceTagger (.pt) with RivaEmbeddings")
    parser.add_argument("--corpus", required=True, help="folder of an IMGID-format corpus")
    parser.add_argument("--image-dir", default=None, help="image folder (default: <corpus>/images)")
    parser.add_argument("--split", default="test", choices=["train", "dev", "test"])
    parser.add_argument("--output", required=True, help="folder for the PNG files")
    parser.add_argument("--limit", type=int, default=8, help="number of tweets (default 8)")
    args = parser.parse_args(argv)

    from flair.models import SequenceTagger

    from flair_riva.datasets import TwitterMNERCorpus

    tagger_path = Path(args.tagger)
    if not tagger_path.is_file():
        parser.error(f"tagger file {tagger_path} does not exist")
    tagger = SequenceTagger.load(str(tagger_path))
    split_file = {"train": "train.txt", "test": "test.txt"}.get(args.split)
    corpus = TwitterMNERCorpus(args.corpus, image_dir=args.image_dir,
                               train_file=split_file if args.split == "train" else None,
                               dev_file=None if args.split == "dev" else False,
                               test_file=split_file if args.split == "test" else None)
    dataset = {"train": corpus.train, "dev": corpus.dev, "test": corpus.test}[args.split]
    sentences = [dataset[i] for i in range(min(args.limit, len(dataset)))]
    tagger.predict(sentences, label_name="predicted")
    out = Path(args.output)
    for i, sentence in enumerate(sentences):
        name = sentence.get_metadata("image_id") if sentence.has_metadata("image_id") else str(i)
        path = draw_table7(sentence, out / f"{i:03d}_{name}.png", tag_type=tagger.tag_type)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
