"""Tests of flair_riva.images: reading and decoding image files, never an exception for a bad one."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flair_riva import images
from flair_riva.images import (
    BAD_IMAGE_REASONS,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_image,
    load_pixels,
    to_rgb,
)

DATA = Path(__file__).parent / "data" / "images"
SHIPPED = sorted(DATA.glob("*.jpg"))


def rgb_of(pixels: torch.Tensor) -> torch.Tensor:
    """Undo the ImageNet normalisation: (3, H, W) in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return pixels * std + mean


def centre(pixels: torch.Tensor) -> list[float]:
    return rgb_of(pixels)[:, IMAGE_SIZE // 2, IMAGE_SIZE // 2].tolist()


def two_colour(width: int = 200, height: int = 100) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(arr)


def noise(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


def save(im: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    im.save(path, fmt, **kwargs)
    return path


# ---------------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------------


def test_shipped_images_decode():
    assert len(SHIPPED) >= 3
    for path in SHIPPED:
        loaded = load_image(path)
        assert loaded.ok, (path, loaded.reason, loaded.detail)
        assert loaded.reason is None
        assert loaded.pixels.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        assert loaded.pixels.dtype == torch.float32
        assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert loaded.path == str(path)
        assert torch.isfinite(loaded.pixels).all()
        # normalised: values span the ImageNet range, not [0, 1]
        assert loaded.pixels.min() < 0


def test_shipped_png_named_jpg_is_decoded_by_content():
    path = DATA / "113.jpg"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.mode == "RGBA"
    loaded = load_image(path)
    assert loaded.ok
    # the reference pipeline by hand: RGB (its alpha is fully opaque), squash to 224x224, ImageNet statistics
    with Image.open(path) as im:
        ref = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR), dtype=np.float32)
    ref = (torch.from_numpy(ref / 255.0).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(loaded.pixels, ref)


@pytest.mark.parametrize("fmt,name", [("JPEG", "a.jpg"), ("PNG", "a.png"), ("GIF", "a.gif"), ("WEBP", "a.webp"),
                                      ("PNG", "png_named.jpg"), ("JPEG", "jpeg_named.png"), ("BMP", "a.bmp"),
                                      ("TIFF", "no_extension")])
def test_formats_decode_by_content(tmp_path, fmt, name):
    path = save(two_colour(), tmp_path / name, fmt)
    loaded = load_image(path)
    assert loaded.ok, loaded.detail
    rgb = rgb_of(loaded.pixels)
    left, right = rgb[:, IMAGE_SIZE // 2, 40], rgb[:, IMAGE_SIZE // 2, IMAGE_SIZE - 40]
    assert left[0] > 0.8 and left[2] < 0.25, left  # red
    assert right[2] > 0.8 and right[0] < 0.25, right  # blue
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_gif_first_frame(tmp_path):
    red = Image.new("RGB", (40, 30), (255, 0, 0))
    blue = Image.new("RGB", (40, 30), (0, 0, 255))
    green = Image.new("RGB", (40, 30), (0, 255, 0))
    path = tmp_path / "anim.gif"
    red.save(path, "GIF", save_all=True, append_images=[blue, green], duration=100, loop=0)
    with Image.open(path) as im:
        assert im.n_frames == 3
    r, g, b = centre(load_image(path).pixels)
    assert r > 0.9 and b < 0.1


def test_animated_webp_first_frame(tmp_path):
    frames = [Image.new("RGB", (40, 30), c) for c in ((0, 255, 0), (255, 0, 0))]
    path = tmp_path / "anim.webp"
    frames[0].save(path, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    r, g, b = centre(load_image(path).pixels)
    assert g > 0.9 and r < 0.1


@pytest.mark.parametrize("orientation", [None, 1, 6, 8, 3])
def test_exif_orientation(tmp_path, orientation):
    """A 200x100 image, left half red, right half blue, shown as the EXIF orientation says."""
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    path = save(two_colour(200, 100), tmp_path / "rot.jpg", "JPEG", quality=95, **kwargs)
    rgb = rgb_of(load_image(path).pixels)
    q1, q3 = IMAGE_SIZE // 4, 3 * IMAGE_SIZE // 4
    mid = IMAGE_SIZE // 2

    def colour(y: int, x: int) -> str:
        r, _, b = rgb[:, y, x].tolist()
        return "red" if r > 0.7 and b < 0.3 else "blue" if b > 0.7 and r < 0.3 else "other"

    # orientation 6: rotate 90 degrees clockwise to display -> the left (red) half ends on top
    # orientation 8: rotate 90 degrees counter-clockwise -> red at the bottom; 3: 180 degrees -> red right
    expected = {None: ("red", "blue", "lr"), 1: ("red", "blue", "lr"), 6: ("red", "blue", "tb"),
                8: ("blue", "red", "tb"), 3: ("blue", "red", "lr")}[orientation]
    first, second, axis = expected
    if axis == "lr":
        assert (colour(mid, q1), colour(mid, q3)) == (first, second)
    else:
        assert (colour(q1, mid), colour(q3, mid)) == (first, second)


def _mode_image(mode: str) -> tuple[Image.Image, str, dict, tuple[float, float, float]]:
    """(image, format, save kwargs, expected RGB in [0, 1] at the centre)."""
    size = (32, 24)
    if mode == "1":
        return Image.new("1", size, 1), "PNG", {}, (1.0, 1.0, 1.0)
    if mode == "L":
        return Image.new("L", size, 100), "PNG", {}, (100 / 255,) * 3
    if mode == "LA":  # black at half alpha over white -> mid grey
        return Image.new("LA", size, (0, 128)), "PNG", {}, (127 / 255,) * 3
    if mode == "P":
        im = Image.new("P", size, 1)
        im.putpalette([255, 0, 0, 0, 0, 255])
        return im, "GIF", {}, (0.0, 0.0, 1.0)
    if mode == "P+transparency":  # the transparent palette entry is red: it must become white
        im = Image.new("P", size, 0)
        im.putpalette([255, 0, 0, 0, 0, 255])
        return im, "PNG", {"transparency": 0}, (1.0, 1.0, 1.0)
    if mode == "RGBA":
        return Image.new("RGBA", size, (255, 0, 0, 128)), "PNG", {}, (1.0, 127 / 255, 127 / 255)
    if mode == "RGBA-transparent":
        return Image.new("RGBA", size, (0, 0, 0, 0)), "PNG", {}, (1.0, 1.0, 1.0)
    if mode == "CMYK":
        return Image.new("CMYK", size, (0, 255, 255, 0)), "JPEG", {"quality": 95}, (1.0, 0.0, 0.0)
    if mode == "I;16":  # 16-bit grey: 25700 / 65535 = 100 / 255
        return Image.new("I;16", size, 25700), "PNG", {}, (100 / 255,) * 3
    if mode == "I":  # 32-bit integers in the 16-bit range
        return Image.new("I", size, 40000), "TIFF", {}, (40000 / 65535,) * 3
    if mode == "I-8bit":  # 32-bit integers holding 8-bit values
        return Image.new("I", size, 200), "TIFF", {}, (200 / 255,) * 3
    if mode == "F":  # float in [0, 1]
        return Image.new("F", size, 0.25), "TIFF", {}, (0.25,) * 3
    if mode == "RGB":
        return Image.new("RGB", size, (10, 200, 30)), "PNG", {}, (10 / 255, 200 / 255, 30 / 255)
    raise AssertionError(mode)


MODES = ["1", "L", "LA", "P", "P+transparency", "RGBA", "RGBA-transparent", "CMYK", "I;16", "I", "I-8bit", "F",
         "RGB"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_becomes_rgb(tmp_path, mode):
    im, fmt, kwargs, expected = _mode_image(mode)
    path = save(im, tmp_path / "img.bin", fmt, **kwargs)
    with Image.open(path) as reopened:  # the file really holds that mode
        assert reopened.mode == mode.split("-")[0].split("+")[0]
    loaded = load_image(path)
    assert loaded.ok, loaded.detail
    tol = 0.06 if fmt == "JPEG" else 0.01
    assert centre(loaded.pixels) == pytest.approx(list(expected), abs=tol)


@pytest.mark.parametrize("mode,value,expected", [
    ("YCbCr", (76, 85, 255), (1.0, 0.0, 0.0)),
    ("HSV", (0, 255, 255), (1.0, 0.0, 0.0)),
    ("PA", (1, 255), (0.0, 0.0, 1.0)),
    ("PA", (1, 0), (1.0, 1.0, 1.0)),
    ("RGBa", (0, 0, 0, 0), (1.0, 1.0, 1.0)),
    ("La", (0, 255), (0.0, 0.0, 0.0)),
])
def test_to_rgb_in_memory_modes(mode, value, expected):
    im = Image.new(mode, (4, 4), value)
    if mode.startswith("P"):
        im.putpalette([255, 0, 0, 0, 0, 255])
    out = to_rgb(im)
    assert out.mode == "RGB"
    assert [c / 255 for c in out.getpixel((1, 1))] == pytest.approx(list(expected), abs=0.02)


def test_lab_tiff(tmp_path):
    pytest.importorskip("PIL.ImageCms")
    path = save(Image.new("LAB", (8, 8), (255, 128, 128)), tmp_path / "lab.tif", "TIFF")  # L=100: white
    loaded = load_image(path)
    assert loaded.ok, loaded.detail
    assert centre(loaded.pixels) == pytest.approx([1.0, 1.0, 1.0], abs=0.03)


def test_output_is_224_and_normalised(tmp_path):
    path = save(Image.new("RGB", (640, 120), (124, 116, 104)), tmp_path / "wide.png", "PNG")
    pixels = load_image(path).pixels
    assert pixels.shape == (3, 224, 224)
    # the ImageNet mean colour normalises to ~0
    assert pixels.abs().max() < 0.02


# ---------------------------------------------------------------------------------------------------
# bad inputs: never an exception, always a reason
# ---------------------------------------------------------------------------------------------------


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    noise().save(buf, fmt)
    return buf.getvalue()


def test_no_path():
    for path in (None, ""):
        loaded = load_image(path)
        assert (loaded.ok, loaded.pixels, loaded.sha256, loaded.reason) == (False, None, None, "no path")


def test_missing_directory_empty(tmp_path):
    assert load_image(tmp_path / "nope.jpg").reason == "missing"
    assert load_image(str(tmp_path / "nope.jpg")).path == str(tmp_path / "nope.jpg")
    assert load_image(tmp_path).reason == "is a directory"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    loaded = load_image(empty)
    assert (loaded.reason, loaded.pixels) == ("empty file", None)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
@pytest.mark.parametrize("fraction", [0.3, 0.8])
def test_truncated(tmp_path, fmt, fraction):
    data = _encoded(fmt)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: int(len(data) * fraction)])
    loaded = load_image(path)
    assert loaded.pixels is None
    assert loaded.reason == "truncated", loaded.detail
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupt(tmp_path):
    cases = {
        "text.jpg": b"<html>404 not found</html>",
        "random.jpg": bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)),
        "header_only.jpg": _encoded("JPEG")[:20],
    }
    png = bytearray(_encoded("PNG"))
    mid = len(png) // 2
    png[mid: mid + 300] = b"\x00" * 300  # garbled compressed data
    cases["garbled.png"] = bytes(png)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        loaded = load_image(tmp_path / name)
        assert loaded.pixels is None, name
        assert loaded.reason == "corrupt", (name, loaded.reason, loaded.detail)
        assert loaded.detail


def test_decompression_bomb_own_limit(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (100, 100)), tmp_path / "big.png", "PNG")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 5000)
    loaded = load_image(path)
    assert (loaded.reason, loaded.pixels) == ("decompression bomb", None)
    assert "100x100" in loaded.detail


def test_pixel_limit_is_what_tweets_need(tmp_path):
    assert images.MAX_IMAGE_PIXELS == 4096 * 4096  # the largest size Twitter serves
    path = save(Image.new("1", (5000, 5000)), tmp_path / "big.png", "PNG")  # 25 M pixels (64 M were allowed)
    loaded = load_image(path)
    assert loaded.reason == "decompression bomb" and "5000x5000" in loaded.detail


def test_small_file_reads_reserve_no_large_buffer(tmp_path, monkeypatch):
    """read(MAX_FILE_BYTES + 1) reserves 100 MiB per image: under a memory limit that is a MemoryError."""
    import builtins

    path = save(noise(), tmp_path / "a.png", "PNG")
    size = path.stat().st_size
    requested = []

    class Recording:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def read(self, n=-1):
            requested.append(n)
            return self.handle.read(n)

    monkeypatch.setattr(images, "open", lambda *a, **k: Recording(builtins.open(*a, **k)), raising=False)  # noqa: SIM115
    assert load_image(path).ok
    assert requested and max(requested) <= size + 1


@pytest.mark.parametrize("side", [40, 100])  # PIL warns above its limit, raises above twice the limit
def test_decompression_bomb_pil_limit(tmp_path, monkeypatch, recwarn, side):
    path = save(Image.new("RGB", (side, side)), tmp_path / "big.png", "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    loaded = load_image(path)
    assert loaded.reason == "decompression bomb"
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_unreadable(tmp_path, monkeypatch):
    path = save(noise(), tmp_path / "locked.png", "PNG")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images, "open", denied, raising=False)
    loaded = load_image(path)
    assert (loaded.reason, loaded.sha256) == ("unreadable", None)
    assert "Permission denied" in loaded.detail


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs os.mkfifo")
def test_fifo_is_not_read(tmp_path):
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    loaded = load_image(fifo)  # must not block waiting for a writer
    assert (loaded.reason, loaded.detail) == ("unreadable", "not a regular file")


def test_unreadable_path_value():
    assert load_image("bad\x00name.jpg").reason == "unreadable"


def test_file_too_large(tmp_path, monkeypatch):
    path = save(noise(), tmp_path / "a.png", "PNG")
    monkeypatch.setattr(images, "MAX_FILE_BYTES", 100)
    assert load_image(path).reason == "file too large"


def test_reasons_are_documented(tmp_path):
    for reason in ("no path", "missing", "is a directory", "empty file", "truncated", "corrupt",
                   "decompression bomb", "unreadable"):
        assert reason in BAD_IMAGE_REASONS


def test_load_pixels_mixed(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    pixels, has_image, reasons = load_pixels([SHIPPED[0], None, bad, tmp_path / "missing.png"])
    assert pixels.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert has_image.tolist() == [True, False, False, False]
    assert reasons == [None, "no path", "corrupt", "missing"]
    assert torch.equal(pixels[0], load_image(SHIPPED[0]).pixels)
    assert pixels[1:].abs().sum() == 0


def test_decoding_is_deterministic():
    a, b = load_image(SHIPPED[0]), load_image(SHIPPED[0])
    assert torch.equal(a.pixels, b.pixels)


def test_shipped_data_has_source_notice():
    text = (DATA / "SOURCE.md").read_text(encoding="utf-8")
    assert "MIT" in text and "RiTUAL-UH/multimodal_NER" in text
    for path in SHIPPED:
        assert path.name in text
        assert path.stat().st_size < 200_000


def test_load_image_accepts_copy_with_any_name(tmp_path):
    target = tmp_path / "image_without_suffix"
    shutil.copy(DATA / "27.jpg", target)
    assert torch.equal(load_image(target).pixels, load_image(DATA / "27.jpg").pixels)
