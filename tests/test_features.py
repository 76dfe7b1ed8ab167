"""Tests of the ``python -m flair_riva.features`` command (the cache it fills: test_feature_cache)."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from flair_riva import features as features_cli
from flair_riva.backbone import RegionExtractor
from flair_riva.feature_cache import FeatureCache, ImageFeaturizer
from tests.conftest import run_python as _python

DATA = Path(__file__).parent / "data" / "images"


# ---------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(DATA / "27.jpg", folder / "27.jpg")
    shutil.copy(DATA / "113.jpg", folder / "113.jpg")  # a PNG named .jpg
    (folder / "broken.jpg").write_bytes(b"<html>a login page saved as .jpg</html>")
    (folder / "README.txt").write_text("not an image, skipped by extension")
    shutil.copy(DATA / "130.jpg", folder / "sub" / "130.jpg")
    return folder


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = features_cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def cli_args(folder: Path, cache: Path, *extra: str) -> list[str]:
    return ["--images", str(folder), "--cache", str(cache), "--backbone", "resnet18", "--backbone-weights", "none",
            "--batch-size", "2", *extra]


def test_cli_fills_cache_then_hits(tmp_path, image_folder, capsys):
    cache = tmp_path / "cache"
    code, out, _ = run_cli(capsys, *cli_args(image_folder, cache))
    assert code == 0
    assert "features: 3 images" in out
    assert "images/s" in out
    assert "cache hits 0, new entries 2, duplicates 0, failures 1" in out
    assert "failures by reason: corrupt 1 (e.g. broken.jpg)" in out

    code, out, _ = run_cli(capsys, *cli_args(image_folder, cache, "--recursive"))
    assert code == 0
    assert "features: 4 images" in out
    assert "cache hits 2, new entries 1" in out

    code, out, _ = run_cli(capsys, *cli_args(image_folder, cache, "--recursive"))
    assert "cache hits 3, new entries 0" in out
    assert "(3 entries;" in out


def test_cli_entries_match_featurizer(tmp_path, image_folder, capsys):
    cache_root = tmp_path / "cache"
    assert run_cli(capsys, *cli_args(image_folder, cache_root, "--seed", "5"))[0] == 0
    torch.manual_seed(5)
    ext = RegionExtractor("resnet18", weights=None).eval()
    cache = FeatureCache(cache_root, ext.fingerprint())  # --seed 5 + none == this extractor
    assert len(cache) == 2
    fresh = ImageFeaturizer(ext)([image_folder / "27.jpg"])
    regions, pooled = cache.get(hashlib.sha256((image_folder / "27.jpg").read_bytes()).hexdigest())
    torch.testing.assert_close(regions, fresh.regions[0], atol=1e-4, rtol=1e-4)


def test_cli_torchrun_sharding(tmp_path, image_folder, capsys, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code, out, _ = run_cli(capsys, *cli_args(image_folder, cache, "--recursive"))
    assert code == 0 and out == ""  # only rank 0 prints
    monkeypatch.setenv("RANK", "0")
    code, out, _ = run_cli(capsys, *cli_args(image_folder, cache, "--recursive"))
    assert code == 0
    assert "rank 0 of 2: 2 of 4 files" in out
    # the two ranks together cover every good image
    assert "(3 entries;" in out
    monkeypatch.setenv("RANK", "5")
    assert run_cli(capsys, *cli_args(image_folder, cache))[0] == 2


def test_cli_errors(tmp_path, image_folder, capsys, monkeypatch):
    code, _, err = run_cli(capsys, *cli_args(tmp_path / "nowhere", tmp_path / "cache"))
    assert code == 2 and "not a directory" in err

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    args = cli_args(image_folder, tmp_path / "cache")
    args[args.index("none")] = "IMAGENET1K_V1"
    code, _, err = run_cli(capsys, *args)
    assert code == 1 and "--backbone-weights FILE" in err

    code, _, err = run_cli(capsys, *cli_args(image_folder, tmp_path / "cache", "--batch-size", "0"))
    assert code == 2 and "batch-size" in err
    with pytest.raises(SystemExit) as info:
        features_cli.main(["--help"])
    assert info.value.code == 0
    assert "--backbone-weights" in capsys.readouterr().out


def test_cli_local_weights_file(tmp_path, image_folder, capsys):
    torch.manual_seed(2)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    args = cli_args(image_folder, tmp_path / "cache")
    args[args.index("none")] = str(weights)
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and f"weights file:{weights}" in out and "new entries 2" in out


def test_find_images(image_folder):
    names = [p.relative_to(image_folder).as_posix() for p in features_cli.find_images(image_folder)]
    assert names == ["113.jpg", "27.jpg", "broken.jpg"]
    names = [p.relative_to(image_folder).as_posix()
             for p in features_cli.find_images(image_folder, recursive=True, all_files=True)]
    assert names == ["113.jpg", "27.jpg", "README.txt", "broken.jpg", "sub/130.jpg"]


def test_module_entry_point():
    result = _python("import runpy, sys; sys.argv = ['features', '--help']; "
                     "runpy.run_module('flair_riva.features', run_name='__main__')")
    assert result.returncode == 0, result.stderr
    assert "--recursive" in result.stdout
