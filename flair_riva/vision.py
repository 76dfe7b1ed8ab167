"""Images for RIVA: decoding, ResNet region features (paper §3.1-3.2) and an on-disk feature cache.

The visual side of RIVA needs two views of a tweet image, both from the last convolutional layer of a
ResNet-34 (He et al., 2016), whose output is a ``7 x 7 x d_v`` map with ``d_v = 512``:

* the 49 region vectors ``V^r = {v^r_ij}`` used as keys and values of the VCN attention (§3.2, Eq. 3-5),
  flattened row-major (region ``i * 7 + j``);
* the average pooling of those regions, the image vector ``f_v`` of the RGN (§3.1).

This module gathers the visual side, which lives in three modules (each importing only the ones before it):
:mod:`flair_riva.images` (reading and decoding files), :mod:`flair_riva.backbone` (the ResNet trunk,
:class:`VisualFeatures`) and :mod:`flair_riva.feature_cache` (the cache and the featurizer). Everything is
importable from here as before:

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

import sys
import types
from typing import Any

import flair_riva.images as _images
from flair_riva.backbone import (
    BACKBONES,
    GRID_SIZE,
    NUM_REGIONS,
    SUPPORTED_ARCHS,
    VISUAL_DIM,
    BackboneSpec,
    RegionExtractor,
    VisualFeatures,
    backbone_spec,
    parse_weights,
)
from flair_riva.feature_cache import (
    CACHE_FORMAT,
    MAX_CACHE_ENTRY_BYTES,
    FeatureCache,
    ImageFeaturizer,
    open_featurizer,
)
from flair_riva.images import (
    BAD_IMAGE_REASONS,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESS_VERSION,
    LoadedImage,
    decode_image_bytes,
    file_sha256,
    load_image,
    load_picture,
    load_pixels,
    probe_image,
    to_rgb,
)

__all__ = [
    "BACKBONES", "BAD_IMAGE_REASONS", "CACHE_FORMAT", "GRID_SIZE", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SIZE",
    "MAX_FILE_BYTES", "MAX_IMAGE_PIXELS",  # noqa: F822 (served by the module __getattr__ below)
    "MAX_CACHE_ENTRY_BYTES", "NUM_REGIONS", "PREPROCESS_VERSION",
    "SUPPORTED_ARCHS", "VISUAL_DIM", "BackboneSpec", "FeatureCache", "ImageFeaturizer", "LoadedImage",
    "RegionExtractor", "VisualFeatures", "backbone_spec", "decode_image_bytes", "file_sha256", "load_image",
    "load_picture", "load_pixels", "open_featurizer", "parse_weights", "probe_image", "to_rgb",
]

_LIMITS = ("MAX_IMAGE_PIXELS", "MAX_FILE_BYTES")
"""The decoding limits stay settable here (``vision.MAX_IMAGE_PIXELS = ...``, as before the split): reading
and writing them on this module reads and writes :mod:`flair_riva.images`, the one place that uses them."""


def __getattr__(name: str) -> Any:
    if name in _LIMITS:
        return getattr(_images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _VisionModule(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LIMITS:
            setattr(_images, name, value)
        else:
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _VisionModule
