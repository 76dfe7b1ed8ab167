"""Images for RIVA: decoding, ResNet region features (paper §3.1-3.2) and an on-disk feature cache.

The visual side of RIVA needs two views of a tweet image, both from the last convolutional layer of a
ResNet-34 (He et al., 2016), whose output is a ``7 x 7 x d_v`` map with ``d_v = 512``:

* the 49 region vectors ``V^r = {v^r_ij}`` used as keys and values of the VCN attention (§3.2, Eq. 3-5),
  flattened row-major (region ``i * 7 + j``);
* the average pooling of those regions, the image vector ``f_v`` of the RGN (§3.1).

This module is the I/O edge of the visual side:

* :func:`load_image` decodes a file by content (JPEG, PNG, GIF, WebP, ...; the extension is ignored,
  several Twitter ``.jpg`` files are PNG), applies the EXIF orientation, converts every mode to RGB,
  resizes to 224 x 224 and normalises with the ImageNet statistics. It never raises for a bad file:
  the result carries ``pixels=None`` and a short ``reason`` (see :data:`BAD_IMAGE_REASONS`).
* :class:`RegionExtractor` is the torchvision ResNet trunk without ``avgpool``/``fc``.
* :class:`FeatureCache` stores ``(regions, pooled)`` per (backbone fingerprint, image content hash),
  with atomic writes, so that a frozen backbone sees each image once (DESIGN §3).
* :class:`ImageFeaturizer` maps image paths to :class:`VisualFeatures` through the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import stat
import threading
import time
import warnings
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import nn

from flair_riva.io import atomic_write_bytes

log = logging.getLogger("flair")

IMAGE_SIZE = 224
"""Side of the square network input (ResNet at 224 x 224 gives a 7 x 7 map)."""
GRID_SIZE = 7
NUM_REGIONS = GRID_SIZE * GRID_SIZE
VISUAL_DIM = 512
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


# --------------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------------


@dataclass
class VisualFeatures:
    """What the model consumes for a batch of images (paper §3.1-3.2)."""

    regions: torch.Tensor
    """(B, 49, 512) float32: the last conv map of ResNet, 7 x 7 regions flattened row-major (i*7+j)."""
    pooled: torch.Tensor
    """(B, 512): average pooling over the 49 regions, the image vector f_v of §3.1."""
    has_image: torch.Tensor
    """(B,) bool; rows without an image are zeros."""
    reasons: list[str | None] = field(default_factory=list)
    """Per item, ``None`` when ok, else one of :data:`BAD_IMAGE_REASONS`."""

    def __len__(self) -> int:
        return self.regions.shape[0]

    def to(self, device: str | torch.device) -> VisualFeatures:
        return VisualFeatures(self.regions.to(device), self.pooled.to(device), self.has_image.to(device),
                              list(self.reasons))

    @classmethod
    def empty(cls, batch_size: int, reasons: Sequence[str | None] | None = None) -> VisualFeatures:
        """All-zero features, ``has_image`` False (e.g. the text-only path); ``reasons`` default "no path"."""
        return cls(torch.zeros(batch_size, NUM_REGIONS, VISUAL_DIM), torch.zeros(batch_size, VISUAL_DIM),
                   torch.zeros(batch_size, dtype=torch.bool),
                   list(reasons) if reasons is not None else ["no path"] * batch_size)


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the package needs to know about a backbone: the size of its region vectors and
    the number of regions of its last convolutional map at :data:`IMAGE_SIZE`."""

    visual_dim: int
    num_regions: int


#: The backbones flair-riva knows, and their visual sizes (the one place that lists them).
BACKBONES: dict[str, BackboneSpec] = {
    "resnet34": BackboneSpec(visual_dim=VISUAL_DIM, num_regions=NUM_REGIONS),  # the paper's
    "resnet18": BackboneSpec(visual_dim=VISUAL_DIM, num_regions=NUM_REGIONS),
}
SUPPORTED_ARCHS = tuple(BACKBONES)


def backbone_spec(arch: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a backbone name (``ValueError`` naming the choices otherwise)."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone {arch!r}: choose one of {', '.join(SUPPORTED_ARCHS)}")
    return BACKBONES[arch]


def parse_weights(weights: str | Path | None) -> str | Path | None:
    """The spelling of "no pretrained weights" (``None``, ``""``, ``"none"`` in any case) -> ``None``;
    anything else (a torchvision weights name or a file) unchanged."""
    if isinstance(weights, str) and weights.strip().lower() in ("", "none"):
        return None
    return weights


def _resnet_builders() -> dict:
    from torchvision import models

    return {
        "resnet18": (models.resnet18, models.ResNet18_Weights),
        "resnet34": (models.resnet34, models.ResNet34_Weights),
    }

_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _download_hint(arch: str) -> str:
    return (f"pass a local state-dict file instead (--backbone-weights FILE, or "
            f"RegionExtractor({arch!r}, weights='path/to/{arch}.pth'), a .pth/.pt or .safetensors file), "
            f"or 'none' (--backbone-weights none, weights=None) for a randomly initialised backbone")


class RegionExtractor(nn.Module):
    """A torchvision ResNet trunk (``conv1`` ... ``layer4``, no ``avgpool``/``fc``), §3.1-3.2.

    ``forward(pixels)`` maps (B, 3, 224, 224) normalised pixels to the 49 region vectors (B, 49, 512)
    of the last convolutional layer, flattened row-major from the 7 x 7 map, and their average pooling
    (B, 512), which is ``f_v`` of §3.1 (identical to torchvision's ``avgpool``).

    The state-dict keys are torchvision's (``conv1.weight``, ``layer4.1.bn2.running_var``, ...), so a
    torchvision ResNet checkpoint loads directly (its ``fc.*`` is dropped).

    Args:
        arch: ``"resnet34"`` (the paper) or ``"resnet18"`` (small, for tests); both end in 512 channels.
        weights: ``None`` or ``"none"``: random init (torchvision's initialisation, drawn from torch's
            global RNG, so ``torch.manual_seed`` makes it reproducible); a torchvision weights name such
            as ``"IMAGENET1K_V1"`` or ``"DEFAULT"`` (downloaded once into the torch hub cache; with no
            network a ``RuntimeError`` says what to pass instead); or a local state-dict file
            (``.safetensors`` via safetensors, anything else via ``torch.load(weights_only=True)``, so
            a file never runs code).
    """

    def __init__(self, arch: str = "resnet34", weights: str | Path | None = None):
        super().__init__()
        builders = _resnet_builders()
        self.spec = backbone_spec(arch)
        self.arch = arch
        builder, weights_enum = builders[arch]
        resnet = builder(weights=None)
        for name in _TRUNK:
            setattr(self, name, getattr(resnet, name))
        self.weights_source = "none"
        state = self._resolve_weights(weights, weights_enum)
        if state is not None:
            self._load_trunk_state(state[0], state[1])
        self._fp_key: tuple | None = None
        self._fp_value: str | None = None

    # ---- weights ---------------------------------------------------------------------------------

    def _resolve_weights(self, weights: str | Path | None, weights_enum) -> tuple[dict, str] | None:
        if weights is None:
            return None
        if isinstance(weights, Path):
            return self._read_state_file(weights), str(weights)
        if not isinstance(weights, str):
            raise TypeError(f"weights must be None, a name or a path, not {type(weights).__name__}")
        if parse_weights(weights) is None:
            return None
        text = weights.strip()
        if os.path.exists(text):
            return self._read_state_file(Path(text)), text
        name = text.replace(weights_enum.__name__ + ".", "")
        if name in weights_enum.__members__:
            member = weights_enum[name]
            try:
                state = member.get_state_dict(progress=False, check_hash=True)
            except Exception as err:
                raise RuntimeError(
                    f"could not load torchvision weights {weights_enum.__name__}.{member.name} for "
                    f"{self.arch} ({type(err).__name__}: {err}); the machine may be offline: "
                    f"{_download_hint(self.arch)}"
                ) from err
            self.weights_source = f"torchvision:{weights_enum.__name__}.{member.name}"
            return state, self.weights_source
        looks_like_path = any(sep in text for sep in ("/", os.sep)) or Path(text).suffix.lower() in (
            ".pth", ".pt", ".bin", ".safetensors", ".ckpt")
        if looks_like_path:
            raise FileNotFoundError(f"backbone weights file not found: {text}")
        raise ValueError(
            f"unknown backbone weights {text!r} for {self.arch}: not an existing file and not a torchvision "
            f"name ({', '.join(weights_enum.__members__)}); use a file path or 'none'")

    def _read_state_file(self, path: Path) -> dict:
        if not path.is_file():
            what = "is not a file" if path.exists() else "not found"
            raise FileNotFoundError(f"backbone weights file {what}: {path}")
        try:
            if path.suffix.lower() == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path), device="cpu")
            else:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            # torch's unpickling message spans several lines: keep its first line (errors are one line)
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
            hint = (" (only tensors are loaded, weights_only=True: save a plain state dict, or .safetensors)"
                    if "weights_only" in str(err) or "Unsupported global" in str(err) else "")
            raise ValueError(f"cannot read backbone weights file {path}: {type(err).__name__}: {first}{hint}"
                             ) from err
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"backbone weights file {path} does not hold a state dict of tensors")
        self.weights_source = f"file:{path}"
        return state

    def _load_trunk_state(self, state: dict, source: str) -> None:
        cleaned = {}
        for key, value in state.items():
            for prefix in ("module.", "backbone."):
                if key.startswith(prefix):
                    key = key[len(prefix):]
            if key.startswith("fc."):
                continue
            cleaned[key] = value
        own = self.state_dict()
        missing = sorted(set(own) - set(cleaned))
        unexpected = sorted(set(cleaned) - set(own))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
            raise ValueError(f"backbone weights {source} do not fit a torchvision {self.arch}: "
                             + "; ".join(parts))
        bad = [f"{k} {tuple(cleaned[k].shape)} != {tuple(own[k].shape)}"
               for k in own if tuple(cleaned[k].shape) != tuple(own[k].shape)]
        if bad:
            raise ValueError(f"backbone weights {source} do not fit a torchvision {self.arch}: shape "
                             f"mismatch for {len(bad)} tensors (e.g. {'; '.join(bad[:3])})")
        self.load_state_dict(cleaned, strict=True)

    # ---- forward ---------------------------------------------------------------------------------

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 224, 224) -> regions (B, 49, 512) and pooled (B, 512) (§3.1: average pooling)."""
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"RegionExtractor expects pixels of shape (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                             f"got {tuple(pixels.shape)}")
        x = pixels
        for name in _TRUNK:
            x = getattr(self, name)(x)
        regions = x.flatten(2).transpose(1, 2)  # (B, C, 7, 7) -> (B, 49, C), region i*7+j
        return regions, regions.mean(dim=1)

    # ---- fingerprint -----------------------------------------------------------------------------

    def _version_key(self) -> tuple:
        return tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape))
                     for name, t in self.state_dict(keep_vars=True).items())

    def fingerprint(self) -> str:
        """sha256 (hex) of :data:`PREPROCESS_VERSION`, the architecture and every parameter and buffer
        (sorted names, dtypes, shapes and bytes). The cache key of :class:`FeatureCache`.

        Cached on the instance and recomputed automatically when any tensor changed in place (its
        version counter moved) or was replaced; :meth:`refresh_fingerprint` forces a recomputation."""
        key = self._version_key()
        if self._fp_value is None or key != self._fp_key:
            self._fp_value = self._compute_fingerprint()
            self._fp_key = key
        return self._fp_value

    def refresh_fingerprint(self) -> str:
        self._fp_value = None
        return self.fingerprint()

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"{PREPROCESS_VERSION}\n{self.arch}\n".encode())
        with torch.no_grad():
            for name, t in sorted(self.state_dict().items()):
                t = t.detach().to("cpu").contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
        return h.hexdigest()

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def extra_repr(self) -> str:
        return f"arch={self.arch}, weights={self.weights_source}"


# --------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
CACHE_FORMAT = 1
MAX_CACHE_ENTRY_BYTES = (NUM_REGIONS + 1) * VISUAL_DIM * 4 + 64 * 1024
"""Largest cache entry read: the float32 tensors plus a generous header."""


def _safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of safetensors bytes (header length checked against the data)."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length beyond the data")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


class FeatureCache:
    """On-disk region features keyed by (backbone fingerprint, image content sha256).

    Layout: ``root/<fingerprint[:16]>/<sha[:2]>/<sha>.safetensors`` with tensors ``"regions"`` (49, 512)
    and ``"pooled"`` (512,), plus ``root/<fingerprint[:16]>/meta.json`` naming the full fingerprint.

    * Writes are atomic: a unique temp file in the entry's directory, ``fsync``, ``os.replace``, then an
      ``fsync`` of the directory. A reader sees either no entry or a whole one; a crash mid-write
      leaves at most a ``.*.tmp`` file (ignored, see :meth:`remove_stale_temp_files`) and never touches
      other entries. Several processes may read and write the same cache at once; two writers of the
      same entry write identical content, and the last rename wins.
    * An unreadable or malformed entry is a miss: it is logged and removed (only if it is still the
      same file, so a concurrent fresh write is not deleted).
    * ``dtype``: storage precision, float32 by default (``get`` returns exactly what ``put`` stored);
      ``torch.float16`` halves the size. ``get`` always returns float32.
    """

    def __init__(self, root: str | Path, fingerprint: str, dtype: torch.dtype = torch.float32):
        if not re.fullmatch(r"[0-9a-f]{16,}", fingerprint or ""):
            raise ValueError(f"fingerprint must be a hex string of >= 16 characters, got {fingerprint!r}")
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"FeatureCache dtype must be torch.float32 or torch.float16, not {dtype}")
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.dtype = dtype
        self.directory = self.root / fingerprint[:16]
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self._lock = threading.Lock()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._check_meta()

    def _check_meta(self) -> None:
        meta_path = self.directory / "meta.json"
        meta = {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "preprocess": PREPROCESS_VERSION}
        try:
            existing = json.loads(meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            atomic_write_bytes(meta_path, (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
            return
        except (OSError, ValueError) as err:
            log.warning("feature cache %s: rewriting unreadable meta.json (%s)", self.directory, err)
            atomic_write_bytes(meta_path, (json.dumps(meta, indent=1) + "\n").encode("utf-8"))
            return
        if existing.get("fingerprint") != self.fingerprint:
            raise ValueError(f"feature cache directory {self.directory} belongs to backbone fingerprint "
                             f"{existing.get('fingerprint')!r}, not {self.fingerprint!r}")

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.directory)!r}, hits={self.hits}, misses={self.misses})"

    def path_for(self, sha256: str) -> Path:
        if not isinstance(sha256, str) or not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.directory / sha256[:2] / f"{sha256}.safetensors"

    def __contains__(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("??/*.safetensors"))

    def _count(self, hit: bool) -> None:
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1

    def get(self, sha256: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(regions (49, 512), pooled (512,))`` float32, or ``None`` on a miss.

        Reads are guarded like image reads: only a regular file is read (a FIFO, device or symlink to one
        is never opened for blocking reads), at most :data:`MAX_CACHE_ENTRY_BYTES`, and the content is
        checked (tensor names, shapes, finite values, and the sha256 and fingerprint stored in the entry
        must be this key's). Anything else is a logged miss."""
        path = self.path_for(sha256)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            self._count(False)
            return None
        except OSError as err:
            log.warning("feature cache: cannot read %s (%s); treating as a miss", path, err)
            self._count(False)
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    log.warning("feature cache: %s is not a regular file; treating as a miss", path)
                    self._count(False)
                    return None
                data = f.read(min(st.st_size, MAX_CACHE_ENTRY_BYTES) + 1)
        except OSError as err:
            log.warning("feature cache: cannot read %s (%s); treating as a miss", path, err)
            self._count(False)
            return None
        try:
            from safetensors.torch import load as st_load

            if len(data) > MAX_CACHE_ENTRY_BYTES:
                raise ValueError(f"more than MAX_CACHE_ENTRY_BYTES={MAX_CACHE_ENTRY_BYTES} bytes")
            meta = _safetensors_metadata(data)
            if meta.get("sha256") != sha256 or meta.get("fingerprint") != self.fingerprint:
                raise ValueError("the entry's stored sha256/fingerprint is not this key's")
            tensors = st_load(data)
            regions, pooled = tensors["regions"], tensors["pooled"]
            if tuple(regions.shape) != (NUM_REGIONS, VISUAL_DIM) or tuple(pooled.shape) != (VISUAL_DIM,):
                raise ValueError(f"shapes {tuple(regions.shape)}, {tuple(pooled.shape)}")
            if not regions.dtype.is_floating_point or not pooled.dtype.is_floating_point:
                raise ValueError(f"dtypes {regions.dtype}, {pooled.dtype}")
            if not bool(torch.isfinite(regions).all()) or not bool(torch.isfinite(pooled).all()):
                raise ValueError("non-finite values")
        except Exception as err:
            log.warning("feature cache: removing corrupt entry %s (%s: %s); treating as a miss",
                        path, type(err).__name__, err)
            self._remove_if_same(path, st)
            self._count(False)
            return None
        self._count(True)
        return regions.float(), pooled.float()

    @staticmethod
    def _remove_if_same(path: Path, st: os.stat_result) -> None:
        try:
            now = os.stat(path)
            if (now.st_ino, now.st_size, now.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns):
                os.unlink(path)
        except OSError:
            pass

    def put(self, sha256: str, regions: torch.Tensor, pooled: torch.Tensor) -> None:
        """Store one entry atomically (see the class docstring)."""
        path = self.path_for(sha256)
        if tuple(regions.shape) != (NUM_REGIONS, VISUAL_DIM) or tuple(pooled.shape) != (VISUAL_DIM,):
            raise ValueError(f"FeatureCache.put expects regions ({NUM_REGIONS}, {VISUAL_DIM}) and pooled "
                             f"({VISUAL_DIM},), got {tuple(regions.shape)} and {tuple(pooled.shape)}")
        from safetensors.torch import save as st_save

        data = st_save(
            {"regions": regions.detach().to("cpu", self.dtype).contiguous(),
             "pooled": pooled.detach().to("cpu", self.dtype).contiguous()},
            metadata={"fingerprint": self.fingerprint, "sha256": sha256, "format": str(CACHE_FORMAT)},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        with self._lock:
            self.writes += 1

    def remove_stale_temp_files(self, max_age_s: float = 3600.0) -> int:
        """Delete ``.*.tmp`` files older than ``max_age_s`` left by crashed writers; returns the count."""
        removed = 0
        cutoff = time.time() - max_age_s
        for tmp in self.directory.glob("**/.*.tmp"):
            try:
                if tmp.stat().st_mtime <= cutoff:
                    tmp.unlink()
                    removed += 1
            except OSError:
                pass
        return removed


# --------------------------------------------------------------------------------------------------
# featurizer
# --------------------------------------------------------------------------------------------------


class ImageFeaturizer:
    """Image paths -> :class:`VisualFeatures` for a frozen backbone, through the cache.

    Each file is read and hashed (sha256 of its bytes); a hit in the in-process memo or in the
    :class:`FeatureCache` is used as is; the misses are decoded and run through the extractor in
    batches of ``batch_size`` (eval mode, ``torch.no_grad``), then written to the cache. Unusable
    images give ``has_image=False``, zero features and a reason. Identical files are computed once.

    If the extractor's weights change (its fingerprint moves), the featurizer switches to a cache
    directory for the new fingerprint under the same root and drops its memo.

    Args:
        extractor: the backbone.
        cache: a :class:`FeatureCache` (its fingerprint must be the extractor's), a cache root
            directory, or ``None`` (memo only).
        batch_size: images per extractor forward pass.
        memo_size: how many entries the in-process LRU memo keeps (0 disables it; ~100 KB each).
    """

    def __init__(self, extractor: RegionExtractor, cache: FeatureCache | str | Path | None = None,
                 batch_size: int = 32, memo_size: int = 4096):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.extractor = extractor
        self.batch_size = batch_size
        self.memo_size = memo_size
        self._memo: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._bad: OrderedDict[str, str] = OrderedDict()  # sha -> reason, for content that does not decode
        self._fingerprint = extractor.fingerprint()
        if isinstance(cache, (str, Path)):
            cache = FeatureCache(cache, self._fingerprint)
        elif cache is not None and cache.fingerprint != self._fingerprint:
            raise ValueError(f"FeatureCache fingerprint {cache.fingerprint[:16]} does not match the "
                             f"extractor's {self._fingerprint[:16]}: open it with extractor.fingerprint()")
        self.cache: FeatureCache | None = cache
        self.stats: Counter[str] = Counter()
        """Counts: ``images``, ``memo_hits``, ``cache_hits``, ``computed`` (extractor outputs),
        ``duplicates`` (same content twice in one call), ``failed``, and ``failed:<reason>``."""

    def _sync_fingerprint(self) -> None:
        fp = self.extractor.fingerprint()
        if fp != self._fingerprint:
            log.info("backbone weights changed (fingerprint %s -> %s): features are recomputed",
                     self._fingerprint[:16], fp[:16])
            self._fingerprint = fp
            self._memo.clear()
            self._bad.clear()
            if self.cache is not None:
                self.cache = FeatureCache(self.cache.root, fp, dtype=self.cache.dtype)

    def _put(self, sha: str, regions: torch.Tensor, pooled: torch.Tensor) -> None:
        """Write to the cache; a failing write (disk full, read-only) is logged once, not raised: the
        features are still returned, only the next run recomputes them."""
        try:
            self.cache.put(sha, regions, pooled)
        except OSError as err:
            if not self.stats["cache_write_errors"]:
                log.warning("feature cache %s: cannot write entries (%s); continuing without caching",
                            self.cache.directory, err)
            self.stats["cache_write_errors"] += 1

    def _remember(self, sha: str, regions: torch.Tensor, pooled: torch.Tensor) -> None:
        if self.memo_size <= 0:
            return
        self._memo[sha] = (regions, pooled)
        self._memo.move_to_end(sha)
        while len(self._memo) > self.memo_size:
            self._memo.popitem(last=False)

    def __call__(self, paths: Sequence[str | Path | None]) -> VisualFeatures:
        self._sync_fingerprint()
        n = len(paths)
        out = VisualFeatures.empty(n, [None] * n)
        pending: dict[str, list[int]] = {}  # sha -> indices still to compute (content deduplicated)

        def fail(i: int, reason: str) -> None:
            out.reasons[i] = reason
            self.stats["failed"] += 1
            self.stats[f"failed:{reason}"] += 1

        for i, path in enumerate(paths):
            self.stats["images"] += 1
            sha, reason = file_sha256(path)
            if sha is None:
                fail(i, reason or "unreadable")
                continue
            if sha in self._bad:  # decoded before and unusable: not worth another attempt
                fail(i, self._bad[sha])
                continue
            if sha in self._memo:
                regions, pooled = self._memo[sha]
                self._memo.move_to_end(sha)
                self.stats["memo_hits"] += 1
            elif sha in pending:
                pending[sha].append(i)
                self.stats["duplicates"] += 1
                continue
            else:
                entry = self.cache.get(sha) if self.cache is not None else None
                if entry is None:
                    pending[sha] = [i]
                    continue
                regions, pooled = entry
                self._remember(sha, regions, pooled)
                self.stats["cache_hits"] += 1
            out.regions[i], out.pooled[i], out.has_image[i] = regions, pooled, True

        items = list(pending.items())
        for start in range(0, len(items), self.batch_size):
            self._compute([(sha, idx, paths[idx[0]]) for sha, idx in items[start:start + self.batch_size]],
                          out, fail)
        return out

    def _compute(self, batch: list[tuple[str, list[int], str | Path | None]], out: VisualFeatures,
                 fail) -> None:
        good: list[tuple[str, list[int]]] = []
        tensors: list[torch.Tensor] = []
        for sha, indices, path in batch:
            loaded = load_image(path)
            if not loaded.ok:
                log.debug("image %s: %s (%s)", path, loaded.reason, loaded.detail)
                for i in indices:
                    fail(i, loaded.reason or "corrupt")
                if loaded.sha256 is not None and self.memo_size > 0:
                    self._bad[loaded.sha256] = loaded.reason or "corrupt"
                    while len(self._bad) > self.memo_size:
                        self._bad.popitem(last=False)
                continue
            # the file may have changed since it was hashed: key the result by what was decoded
            good.append((loaded.sha256 or sha, indices))
            tensors.append(loaded.pixels)
        if not tensors:
            return
        ext = self.extractor
        param = next(ext.parameters())
        was_training = ext.training
        ext.eval()
        try:
            with torch.no_grad():
                regions, pooled = ext(torch.stack(tensors).to(param.device, param.dtype))
        finally:
            ext.train(was_training)
        regions, pooled = regions.float().cpu(), pooled.float().cpu()
        for k, (sha, indices) in enumerate(good):
            r, p = regions[k].clone(), pooled[k].clone()
            if self.cache is not None:
                self._put(sha, r, p)
                if self.cache.dtype != torch.float32:  # what a later cache hit returns
                    r, p = r.to(self.cache.dtype).float(), p.to(self.cache.dtype).float()
            self._remember(sha, r, p)
            self.stats["computed"] += 1
            for i in indices:
                out.regions[i], out.pooled[i], out.has_image[i] = r, p, True


def open_featurizer(extractor: RegionExtractor, cache: str | Path | None, *, owner: str = "", create: bool = True,
                    batch_size: int = 32, memo_size: int = 4096) -> ImageFeaturizer:
    """The one way to build an :class:`ImageFeaturizer` over a cache root, with the one policy for a cache
    that cannot be used here (it cannot be created, is not a folder, holds another format, or does not exist
    and ``create`` is false, e.g. a folder saved with a tagger on another machine): a warning, once, and the
    features are computed without a cache. ``owner`` prefixes the warning."""
    store = None
    if cache is not None:
        root = Path(cache).expanduser()
        why = None
        if not create and not root.is_dir():
            why = "it does not exist on this machine"
        else:
            try:
                store = FeatureCache(root, extractor.fingerprint())
            except (OSError, ValueError) as err:
                why = str(err)
        if why is not None:
            log.warning("%scannot use the feature cache %s (%s): computing image features without a cache",
                        f"{owner}: " if owner else "", root, why)
    return ImageFeaturizer(extractor, store, batch_size=batch_size, memo_size=memo_size)
