"""Tests of flair_riva.vision, the facade of the visual side: what was importable from it still is, and its
decoding limits are the ones :mod:`flair_riva.images` applies (decoding: test_images; the ResNet:
test_backbone; the cache and featurizer: test_feature_cache)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from flair_riva import backbone, feature_cache, images, vision


def test_every_name_is_the_defining_modules_object():
    for name in vision.__all__:
        value = getattr(vision, name)
        owners = [m for m in (images, backbone, feature_cache) if name in vars(m)]
        assert owners, name
        assert all(value is getattr(m, name) for m in owners), name
    for name in ("load_image", "load_picture", "probe_image", "RegionExtractor", "VisualFeatures", "FeatureCache",
                 "ImageFeaturizer", "open_featurizer", "BACKBONES", "parse_weights", "BAD_IMAGE_REASONS"):
        assert name in vision.__all__


def test_classes_keep_one_home():
    assert vision.RegionExtractor.__module__ == "flair_riva.backbone"
    assert vision.FeatureCache.__module__ == "flair_riva.feature_cache"
    assert vision.LoadedImage.__module__ == "flair_riva.images"


def test_limits_set_here_are_the_decoders(tmp_path: Path, monkeypatch):
    """``vision.MAX_IMAGE_PIXELS = n`` (documented as settable) still limits decoding after the split."""
    from flair_riva.vision import MAX_FILE_BYTES, MAX_IMAGE_PIXELS

    assert (MAX_IMAGE_PIXELS, MAX_FILE_BYTES) == (images.MAX_IMAGE_PIXELS, images.MAX_FILE_BYTES)
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path, "PNG")
    monkeypatch.setattr(vision, "MAX_IMAGE_PIXELS", 5000)
    assert images.MAX_IMAGE_PIXELS == vision.MAX_IMAGE_PIXELS == 5000
    assert vision.load_image(path).reason == "decompression bomb"
    monkeypatch.setattr(vision, "MAX_FILE_BYTES", 100)
    assert images.MAX_FILE_BYTES == 100
    assert vision.load_image(path).reason == "file too large"
    monkeypatch.undo()
    assert images.MAX_IMAGE_PIXELS == 4096 * 4096 and images.MAX_FILE_BYTES == 100 * 1024 * 1024
    assert vision.load_image(path).ok
