"""Image files for RIVA: reading, decoding and normalising one tweet image (paper §3.1).

:func:`load_image` decodes a file by content (JPEG, PNG, GIF, WebP, ...; the extension is ignored,
several Twitter ``.jpg`` files are PNG), applies the EXIF orientation, converts every mode to RGB,
resizes to 224 x 224 and normalises with the ImageNet statistics. It never raises for a bad file:
the result carries ``pixels=None`` and a short ``reason`` (see :data:`BAD_IMAGE_REASONS`).
:func:`load_picture`, :func:`probe_image`, :func:`file_sha256` and :func:`load_pixels` share its reader
and its limits (:data:`MAX_IMAGE_PIXELS`, :data:`MAX_FILE_BYTES`).

This is the bottom of the visual side: it imports nothing from the package.
The backbone (:mod:`flair_riva.backbone`) and the feature cache (:mod:`flair_riva.feature_cache`)
build on it; :mod:`flair_riva.vision` gathers all three.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

log = logging.getLogger("flair")

IMAGE_SIZE = 224
"""Side of the square network input (ResNet at 224 x 224 gives a 7 x 7 map)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MAX_IMAGE_PIXELS = 4096 * 4096
"""Images with more pixels than this (width x height, read from the header before decoding) are
rejected as ``"decompression bomb"``. Twitter serves images of at most 4096 x 4096 (~17 M pixels); an
RGBA image of that size takes ~270 MB to decode. Independent of PIL's global ``Image.MAX_IMAGE_PIXELS``, whose
warning/error is also caught. Tests and users may change this module attribute."""
MAX_FILE_BYTES = 100 * 1024 * 1024
"""Files larger than this are rejected as ``"file too large"`` without being read."""

PREPROCESS_VERSION = "riva-vision-1:224:squash-bilinear:imagenet-mean-std"
"""Part of :meth:`RegionExtractor.fingerprint`: cached features are only valid for one preprocessing."""

BAD_IMAGE_REASONS = {
    "no path": "no image path was given (a tweet without an image)",
    "missing": "the file does not exist",
    "is a directory": "the path is a directory",
    "unreadable": "the file exists but cannot be read (permissions, I/O error)",
    "empty file": "the file has 0 bytes",
    "file too large": "the file is larger than MAX_FILE_BYTES",
    "corrupt": "the content is not a decodable image",
    "truncated": "the image data ends early (e.g. a partial download)",
    "decompression bomb": "the image has more pixels than MAX_IMAGE_PIXELS",
    "unsupported mode": "the pixel mode cannot be converted to RGB",
}
"""The values of :attr:`LoadedImage.reason` and :attr:`VisualFeatures.reasons` for unusable images."""


# --------------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedImage:
    """The result of decoding one image file. Never raised for a bad file: see ``reason``."""

    path: str | None
    pixels: torch.Tensor | None
    """(3, 224, 224) float32, ImageNet-normalised; ``None`` when there is no usable image."""
    sha256: str | None
    """Hex sha256 of the file bytes (``None`` if the file could not be read)."""
    reason: str | None
    """``None`` when ok, else one of :data:`BAD_IMAGE_REASONS`."""
    detail: str | None = None
    """Free-text detail for a failure (the decoder's message), for logs."""

    @property
    def ok(self) -> bool:
        return self.pixels is not None and self.reason is None


def _read_file(path: str | Path | None) -> tuple[str | None, bytes | None, str | None, str | None]:
    """Read a whole file. Returns ``(path_str, data, reason, detail)``; never raises for I/O problems."""
    if path is None or (isinstance(path, str) and not path.strip()):
        return None, None, "no path", None
    path_str = os.fspath(path)
    try:
        st = os.stat(path_str)
    except FileNotFoundError:
        return path_str, None, "missing", None
    except (OSError, ValueError) as err:  # ValueError: embedded NUL byte in the path
        return path_str, None, "unreadable", str(err)
    if stat.S_ISDIR(st.st_mode):
        return path_str, None, "is a directory", None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        return path_str, None, "unreadable", "not a regular file"
    if st.st_size > MAX_FILE_BYTES:
        return path_str, None, "file too large", f"{st.st_size} bytes > MAX_FILE_BYTES={MAX_FILE_BYTES}"
    try:
        with open(path_str, "rb") as f:
            # never reserve more than the file can hold: read(n) allocates n bytes up front
            data = f.read(min(st.st_size, MAX_FILE_BYTES) + 1)
            while st.st_size < len(data) <= MAX_FILE_BYTES:  # the file grew after stat: read on in 1 MiB steps
                chunk = f.read(min(1 << 20, MAX_FILE_BYTES + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:  # deleted between stat and open
        return path_str, None, "missing", None
    except IsADirectoryError:
        return path_str, None, "is a directory", None
    except OSError as err:
        return path_str, None, "unreadable", str(err)
    if len(data) > MAX_FILE_BYTES:
        return path_str, None, "file too large", f"more than MAX_FILE_BYTES={MAX_FILE_BYTES} bytes"
    if not data:
        return path_str, None, "empty file", None
    return path_str, data, None, None


def _float_to_l(im: Image.Image) -> Image.Image:
    """Map a high-bit-depth grayscale image (I;16*, I, F) to 8-bit L.

    The nominal range is inferred from the data: ``I;16*`` is 16-bit; ``F`` within [0, 1] is
    [0, 1]; integer data with max <= 255 is 8-bit, within [0, 65535] 16-bit; anything else is
    stretched from its min to its max. NaN/inf become 0 / the range ends.
    """
    arr = np.asarray(im, dtype=np.float64)
    arr = np.nan_to_num(arr, nan=0.0, posinf=np.finfo(np.float64).max, neginf=np.finfo(np.float64).min)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if im.mode.startswith("I;16"):
        scaled = arr / 257.0
    elif im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = arr * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = arr
    elif lo >= 0.0 and hi <= 65535.0:
        scaled = arr / 257.0
    else:
        scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _composite_on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: transparency is composited on white, high-bit-depth grayscale is
    rescaled to 8 bits (see :func:`_float_to_l`), CMYK/YCbCr/LAB/HSV/1/L/P go through PIL's converters.
    Raises ``ValueError`` for a mode PIL cannot convert."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1", "I", "I;16") and "transparency" in im.info
    ):
        if mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply first
            im = im.convert("RGBA" if mode == "RGBa" else "LA")
        elif mode in ("I", "I;16"):  # 16-bit grayscale PNG with a transparent value
            im = _float_to_l(im)
            im.info.pop("transparency", None)
            return im.convert("RGB")
        return _composite_on_white(im)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _float_to_l(im).convert("RGB")
    if mode == "LAB":  # PIL's convert() would reinterpret the channels; use a real colour transform
        from PIL import ImageCms

        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                            "LAB", "RGB")
        return ImageCms.applyTransform(im, transform)
    return im.convert("RGB")


def _classify_decode_error(err: BaseException) -> tuple[str, str]:
    msg = str(err) or type(err).__name__
    if isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return "decompression bomb", msg
    if "truncated" in msg.lower() or isinstance(err, EOFError):
        return "truncated", msg
    return "corrupt", msg


def _riff_truncated(data: bytes) -> bool:
    """A RIFF container (WebP) whose declared size exceeds the bytes present."""
    return (len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"
            and int.from_bytes(data[4:8], "little") + 8 > len(data))


def _decode(data: bytes) -> tuple[torch.Tensor | None, str | None, str | None]:
    """Decode image bytes to normalised pixels. Returns ``(pixels, reason, detail)``."""
    rgb, reason, detail = _decode_rgb(data, resize=True)
    if rgb is None:
        return None, reason, detail
    arr = np.asarray(rgb, dtype=np.float32)
    pixels = torch.from_numpy(arr / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return ((pixels - mean) / std).contiguous(), None, None


def _decode_rgb(data: bytes, resize: bool) -> tuple[Image.Image | None, str | None, str | None]:
    """The one decoder of the package: image bytes -> an RGB PIL image (first frame, EXIF-rotated),
    224 x 224 when ``resize``, with every limit of :func:`load_image`. Returns ``(image, reason, detail)``."""
    with warnings.catch_warnings():
        # local to this call: PIL's bomb warning becomes an error, its other warnings (odd EXIF,
        # palette transparency) are noise for a batch job
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))  # identifies by content, never by file name
            width, height = im.size
            if width <= 0 or height <= 0:
                return None, "corrupt", f"image size {width}x{height}"
            if width * height > MAX_IMAGE_PIXELS:
                return None, "decompression bomb", f"{width}x{height} > MAX_IMAGE_PIXELS={MAX_IMAGE_PIXELS}"
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)  # GIF / APNG / animated WebP: the first frame
            if resize and im.format in ("JPEG", "MPO"):
                # decode at a reduced DCT scale when the image is >= 2x the target in both sides
                im.draft(None, (IMAGE_SIZE, IMAGE_SIZE))
            im.load()  # decodes now; a truncated file raises OSError (LOAD_TRUNCATED_IMAGES is left off)
        except UnidentifiedImageError:
            return None, "corrupt", "cannot identify the image format"
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            return None, "decompression bomb", str(err)
        except MemoryError as err:
            return None, "decompression bomb", f"out of memory while decoding: {err}"
        except Exception as err:  # OSError, SyntaxError, ValueError, struct.error, zlib.error, ...
            reason, detail = _classify_decode_error(err)
            if reason == "corrupt" and _riff_truncated(data):  # libwebp only says "could not create decoder"
                reason = "truncated"
            return None, reason, detail
        if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone enabled it globally: we cannot detect truncation
            log.debug("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; truncated images load partially")
        try:
            im = ImageOps.exif_transpose(im)
        except Exception as err:  # broken EXIF: keep the stored orientation
            log.debug("ignoring unreadable EXIF orientation (%s)", err)
        try:
            rgb = to_rgb(im)
        except Exception as err:
            return None, "unsupported mode", f"mode {im.mode}: {err}"
        try:
            if resize:
                rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            else:
                rgb.load()
                rgb = rgb.copy() if rgb is im else rgb
        except Exception as err:
            reason, detail = _classify_decode_error(err)
            return None, reason, detail
    return rgb, None, None


def decode_image_bytes(data: bytes, path: str | None = None) -> LoadedImage:
    """Decode image bytes (any format PIL identifies) into a :class:`LoadedImage`."""
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return LoadedImage(path, None, sha, "empty file")
    pixels, reason, detail = _decode(data)
    return LoadedImage(path, pixels, sha, reason, detail)


def load_image(path: str | Path | None) -> LoadedImage:
    """Read and decode one image file; see the module docstring. Never raises for a bad file.

    Decoding turns PIL's ``DecompressionBombWarning`` into an error inside ``warnings.catch_warnings``;
    before Python 3.14 that context manager swaps the process-wide warning filters, so concurrent
    decoding in threads may briefly see them (it never changes a result). Process-based data loading
    is unaffected."""
    path_str, data, reason, detail = _read_file(path)
    if data is None:
        return LoadedImage(path_str, None, None, reason, detail)
    loaded = decode_image_bytes(data, path_str)
    if not loaded.ok:
        log.debug("image %s: %s (%s)", path_str, loaded.reason, loaded.detail)
    return loaded


def load_picture(path: str | Path | None) -> tuple[Image.Image | None, str | None]:
    """An image file as an RGB PIL image for display (EXIF-rotated, first frame, full size), read and
    decoded by :func:`load_image`'s code with the same limits. Returns
    ``(image, None)`` or ``(None, reason)``; never raises for a bad file."""
    path_str, data, reason, detail = _read_file(path)
    if data is None:
        return None, reason
    rgb, reason, detail = _decode_rgb(data, resize=False)
    if rgb is None:
        log.debug("image %s: %s (%s)", path_str, reason, detail)
    return rgb, reason


def probe_image(path: str | Path | None) -> str | None:
    """Cheap usability check of an image file without decoding its pixels: ``None`` when the file is a
    regular file within :data:`MAX_FILE_BYTES` whose content PIL identifies as an image of at most
    :data:`MAX_IMAGE_PIXELS`, else the reason (as in :func:`load_image`). Never raises for a bad file.
    Truncated pixel data is only found by decoding (:func:`load_image`)."""
    _, data, reason, _ = _read_file(path)
    if data is None:
        return reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            return "decompression bomb"
        except Exception:  # UnidentifiedImageError and every parser error
            return "corrupt"
    if width <= 0 or height <= 0:
        return "corrupt"
    if width * height > MAX_IMAGE_PIXELS:
        return "decompression bomb"
    return None


def file_sha256(path: str | Path | None) -> tuple[str | None, str | None]:
    """``(sha256, reason)`` of a file's bytes without decoding it; ``reason`` as in :func:`load_image`."""
    _, data, reason, _ = _read_file(path)
    if data is None:
        return None, reason
    return hashlib.sha256(data).hexdigest(), None


def load_pixels(paths: Sequence[str | Path | None]) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
    """Decode a batch for a backbone that is being fine-tuned (no cache).

    Returns ``pixels`` (B, 3, 224, 224) float32 (zeros for unusable images), ``has_image`` (B,) bool and
    the per-item ``reasons`` (``None`` when ok)."""
    pixels = torch.zeros(len(paths), 3, IMAGE_SIZE, IMAGE_SIZE)
    has_image = torch.zeros(len(paths), dtype=torch.bool)
    reasons: list[str | None] = []
    for i, path in enumerate(paths):
        loaded = load_image(path)
        if loaded.ok:
            pixels[i] = loaded.pixels
            has_image[i] = True
        reasons.append(loaded.reason)
    return pixels, has_image, reasons

