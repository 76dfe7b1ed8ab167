"""Tests of flair_riva.vision: image decoding and the ResNet region extractor (paper §3.1-3.2)."""

from __future__ import annotations

import hashlib
import io
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from flair_riva import vision
from flair_riva.vision import (
    BAD_IMAGE_REASONS,
    IMAGE_SIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RegionExtractor,
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
    monkeypatch.setattr(vision, "MAX_IMAGE_PIXELS", 5000)
    loaded = load_image(path)
    assert (loaded.reason, loaded.pixels) == ("decompression bomb", None)
    assert "100x100" in loaded.detail


def test_pixel_limit_is_what_tweets_need(tmp_path):
    assert vision.MAX_IMAGE_PIXELS == 4096 * 4096  # the largest size Twitter serves
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

    monkeypatch.setattr(vision, "open", lambda *a, **k: Recording(builtins.open(*a, **k)), raising=False)  # noqa: SIM115
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

    monkeypatch.setattr(vision, "open", denied, raising=False)
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
    monkeypatch.setattr(vision, "MAX_FILE_BYTES", 100)
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


# ---------------------------------------------------------------------------------------------------
# RegionExtractor
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18() -> RegionExtractor:
    torch.manual_seed(0)
    return RegionExtractor("resnet18", weights=None).eval()


def test_extractor_shapes_and_average_pooling(resnet18):
    pixels, _, _ = load_pixels(SHIPPED[:2])
    with torch.no_grad():
        regions, pooled = resnet18(pixels)
    assert regions.shape == (2, 49, 512)
    assert pooled.shape == (2, 512)
    torch.testing.assert_close(pooled, regions.mean(dim=1))
    assert not torch.equal(regions[0], regions[1])


def test_extractor_matches_torchvision_resnet(resnet18):
    """Regions are the 7x7 map of the last conv layer flattened row-major (i*7+j); pooled = avgpool (§3.1)."""
    tv = torchvision.models.resnet18(weights=None)
    missing, unexpected = tv.load_state_dict(resnet18.state_dict(), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    tv.eval()
    pixels, _, _ = load_pixels(SHIPPED[:2])
    with torch.no_grad():
        regions, pooled = resnet18(pixels)
        fmap = torch.nn.Sequential(*list(tv.children())[:-2])(pixels)
        tv_pooled = tv.avgpool(fmap).flatten(1)
    assert fmap.shape == (2, 512, 7, 7)
    for i, j in [(0, 0), (0, 6), (3, 4), (6, 0), (6, 6)]:
        torch.testing.assert_close(regions[:, i * 7 + j], fmap[:, :, i, j])
    torch.testing.assert_close(pooled, tv_pooled)


def test_extractor_rejects_bad_input(resnet18):
    with pytest.raises(ValueError, match="224"):
        resnet18(torch.zeros(1, 3, 100, 100))
    with pytest.raises(ValueError, match=r"\(B, 3"):
        resnet18(torch.zeros(3, 224, 224))
    with pytest.raises(ValueError, match="resnet34"):
        RegionExtractor("resnet50")


def test_random_init_follows_torch_seed():
    torch.manual_seed(123)
    a = RegionExtractor("resnet18", weights="none")
    torch.manual_seed(123)
    b = RegionExtractor("resnet18", weights=None)
    c = RegionExtractor("resnet18", weights="None")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert len(a.fingerprint()) == 64


def _full_resnet18_state(seed: int) -> dict:
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None).state_dict()  # includes fc.*


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_state_dict_round_trip(tmp_path, suffix):
    state = _full_resnet18_state(7)
    path = tmp_path / f"r18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    a = RegionExtractor("resnet18", weights=path).eval()
    b = RegionExtractor("resnet18", weights=str(path)).eval()
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    pixels, _, _ = load_pixels(SHIPPED[:2])
    with torch.no_grad():
        ra, pa = a(pixels)
        rb, pb = b(pixels)
    assert torch.equal(ra, rb) and torch.equal(pa, pb)
    assert a.fingerprint() == b.fingerprint()
    assert "file:" in a.weights_source

    other = tmp_path / f"other{suffix}"
    state2 = _full_resnet18_state(8)
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state2.items()}, str(other))
    else:
        torch.save(state2, other)
    assert RegionExtractor("resnet18", weights=other).fingerprint() != a.fingerprint()


def test_local_state_dict_with_prefix_and_wrapper(tmp_path):
    state = _full_resnet18_state(3)
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    ext = RegionExtractor("resnet18", weights=path)
    assert torch.equal(ext.conv1.weight, state["conv1.weight"])


def test_local_state_dict_errors(tmp_path):
    state = _full_resnet18_state(3)
    missing = dict(state)
    del missing["layer4.1.bn2.running_var"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing keys .*layer4\.1\.bn2\.running_var"):
        RegionExtractor("resnet18", weights=tmp_path / "missing.pth")

    extra = dict(state, **{"head.weight": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected keys .*head\.weight"):
        RegionExtractor("resnet18", weights=tmp_path / "extra.pth")

    # a resnet18 file for a resnet34 trunk: clear key errors, not a crash in torch
    torch.save(state, tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="resnet34"):
        RegionExtractor("resnet34", weights=tmp_path / "r18.pth")

    shape = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    torch.save(shape, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"shape mismatch.*conv1\.weight"):
        RegionExtractor("resnet18", weights=tmp_path / "shape.pth")

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        RegionExtractor("resnet18", weights=tmp_path / "junk.pth")

    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        RegionExtractor("resnet18", weights=tmp_path / "list.pth")

    with pytest.raises(FileNotFoundError, match="is not a file"):
        RegionExtractor("resnet18", weights=tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        RegionExtractor("resnet18", weights=str(tmp_path / "nowhere.pth"))
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        RegionExtractor("resnet18", weights="IMAGENET_V9")


class _Evil:
    def __reduce__(self):
        return (print, ("PWNED by a pickle",))


def test_weights_file_never_runs_code(tmp_path, capsys):
    torch.save({"conv1.weight": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth"):
        RegionExtractor("resnet18", weights=tmp_path / "evil.pth")
    assert "PWNED" not in capsys.readouterr().out


def test_named_weights_offline_error(monkeypatch):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    for name in ("IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        with pytest.raises(RuntimeError) as info:
            RegionExtractor("resnet18", weights=name)
        message = str(info.value)
        assert "--backbone-weights FILE" in message and "none" in message and "local state-dict file" in message
    assert calls and all(url.startswith("https://download.pytorch.org/") for url in calls)


def test_named_weights_loaded_from_torchvision(monkeypatch):
    state = _full_resnet18_state(5)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda url, *a, **k: dict(state))
    ext = RegionExtractor("resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(ext.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert ext.weights_source == "torchvision:ResNet18_Weights.IMAGENET1K_V1"


def test_fingerprint_tracks_weight_changes():
    torch.manual_seed(0)
    ext = RegionExtractor("resnet18")
    first = ext.fingerprint()
    assert ext.fingerprint() == first  # cached
    with torch.no_grad():
        ext.layer3[0].conv1.weight[0, 0, 0, 0] += 1.0  # in place: version counter moves
    second = ext.fingerprint()
    assert second != first
    # a train-mode forward updates BatchNorm running statistics: also a different backbone
    ext.train()
    ext(torch.randn(2, 3, 224, 224))
    third = ext.fingerprint()
    assert third != second
    assert ext.refresh_fingerprint() == third


def test_fingerprint_is_fast_for_resnet34():
    import time

    ext = RegionExtractor("resnet34")
    start = time.perf_counter()
    ext.fingerprint()
    assert time.perf_counter() - start < 5.0  # ~0.1 s on 2 cores; generous for slow CI


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
