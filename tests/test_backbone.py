"""Tests of flair_riva.backbone: the ResNet region extractor (paper §3.1-3.2), its weights and fingerprint."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from flair_riva.backbone import RegionExtractor, VisualFeatures
from flair_riva.images import load_pixels

DATA = Path(__file__).parent / "data" / "images"
SHIPPED = sorted(DATA.glob("*.jpg"))


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


def test_visual_features_to_and_empty():
    empty = VisualFeatures.empty(3)
    assert empty.regions.shape == (3, 49, 512) and not empty.has_image.any()
    assert empty.reasons == ["no path"] * 3
    moved = empty.to("cpu")
    assert moved.regions.device.type == "cpu" and moved.reasons == empty.reasons
