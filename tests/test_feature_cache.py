"""Tests of flair_riva.feature_cache: the on-disk feature cache and the featurizer that reads through it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from flair_riva.backbone import RegionExtractor, VisualFeatures
from flair_riva.feature_cache import MAX_CACHE_ENTRY_BYTES, FeatureCache, ImageFeaturizer
from flair_riva.images import load_pixels
from tests.conftest import REPO
from tests.conftest import run_python as _python

DATA = Path(__file__).parent / "data" / "images"
SHIPPED = sorted(DATA.glob("*.jpg"))
FP = "ab" * 32



def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(value: float) -> tuple[torch.Tensor, torch.Tensor]:
    regions = torch.full((49, 512), float(value))
    return regions, regions.mean(dim=0)


@pytest.fixture(scope="module")
def extractor() -> RegionExtractor:
    torch.manual_seed(0)
    return RegionExtractor("resnet18", weights=None).eval()


# ---------------------------------------------------------------------------------------------------
# FeatureCache
# ---------------------------------------------------------------------------------------------------


def test_cache_put_get_exact(tmp_path):
    cache = FeatureCache(tmp_path, FP)
    regions, pooled = torch.randn(49, 512), torch.randn(512)
    key = sha("a")
    assert cache.get(key) is None
    cache.put(key, regions, pooled)
    got = cache.get(key)
    assert got is not None
    assert torch.equal(got[0], regions) and torch.equal(got[1], pooled)
    assert got[0].dtype == torch.float32
    assert (cache.hits, cache.misses, cache.writes) == (1, 1, 1)
    assert key in cache and len(cache) == 1
    # layout: root/<fingerprint[:16]>/<sha[:2]>/<sha>.safetensors
    assert cache.path_for(key) == tmp_path / FP[:16] / key[:2] / f"{key}.safetensors"
    assert cache.path_for(key).is_file()
    meta = json.loads((tmp_path / FP[:16] / "meta.json").read_text())
    assert meta["fingerprint"] == FP


def test_cache_float16_option(tmp_path):
    cache = FeatureCache(tmp_path, FP, dtype=torch.float16)
    regions, pooled = torch.randn(49, 512), torch.randn(512)
    cache.put(sha("a"), regions, pooled)
    got_r, got_p = cache.get(sha("a"))
    assert got_r.dtype == torch.float32
    assert torch.equal(got_r, regions.half().float())
    assert cache.path_for(sha("a")).stat().st_size < 49 * 512 * 3  # half the float32 size
    torch.testing.assert_close(got_p, pooled, atol=2e-3, rtol=1e-3)


def test_cache_rejects_bad_keys_and_shapes(tmp_path):
    cache = FeatureCache(tmp_path, FP)
    for bad in ("../../etc/passwd", "ABC", sha("a").upper(), "g" * 64):
        with pytest.raises(ValueError, match="sha256"):
            cache.get(bad)
    with pytest.raises(ValueError, match="49"):
        cache.put(sha("a"), torch.zeros(7, 7, 512), torch.zeros(512))
    with pytest.raises(ValueError, match="fingerprint"):
        FeatureCache(tmp_path, "not-hex")
    with pytest.raises(ValueError, match="dtype"):
        FeatureCache(tmp_path, FP, dtype=torch.int8)


def test_cache_reused_across_instances(tmp_path):
    FeatureCache(tmp_path, FP).put(sha("a"), *entry(3))
    again = FeatureCache(tmp_path, FP)
    assert torch.equal(again.get(sha("a"))[0], entry(3)[0])
    other = FeatureCache(tmp_path, "cd" * 32)  # another backbone: another directory, a miss
    assert other.get(sha("a")) is None
    assert other.directory != again.directory


def test_cache_prefix_collision_is_detected(tmp_path):
    FeatureCache(tmp_path, FP)
    with pytest.raises(ValueError, match="belongs to backbone fingerprint"):
        FeatureCache(tmp_path, FP[:16] + "0" * 48)


def test_cache_put_is_atomic(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path, FP)
    cache.put(sha("old"), *entry(1))
    cache.put(sha("same"), *entry(2))
    real_replace = os.replace

    def crash(src, dst):
        raise OSError("disk full (simulated crash before the rename)")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        cache.put(sha("new"), *entry(5))
    with pytest.raises(OSError, match="simulated"):
        cache.put(sha("same"), *entry(9))  # overwriting an existing entry
    monkeypatch.setattr(os, "replace", real_replace)

    assert cache.get(sha("new")) is None  # no visible half entry
    assert torch.equal(cache.get(sha("old"))[0], entry(1)[0])  # older entries intact
    assert torch.equal(cache.get(sha("same"))[0], entry(2)[0])  # the old version survives
    assert not list(cache.directory.glob("**/*.tmp"))  # the temp files were cleaned up
    cache.put(sha("new"), *entry(5))
    assert torch.equal(cache.get(sha("new"))[0], entry(5)[0])

# The cross-process tests run the cache in child processes (the same code, imported as usual).
CACHE_IN_CHILD = """
from flair_riva.feature_cache import FeatureCache
"""

@pytest.fixture
def flair_warnings():
    """Warnings logged on the "flair" logger (Flair turns its propagation off, so caplog misses them)."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("flair")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_cache_process_killed_mid_write(tmp_path):
    """A writer killed between the temp-file write and the rename leaves no visible entry."""
    cache = FeatureCache(tmp_path, FP)
    cache.put(sha("old"), *entry(1))
    script = """
        import os, sys, torch
        cache = FeatureCache(sys.argv[1], sys.argv[2])
        os.replace = lambda src, dst: os._exit(3)   # the process dies right before the rename
        cache.put(sys.argv[3], torch.ones(49, 512), torch.ones(512))
    """
    result = _python(CACHE_IN_CHILD + textwrap.dedent(script), str(tmp_path), FP, sha("new"))
    assert result.returncode == 3, result.stderr
    fresh = FeatureCache(tmp_path, FP)
    assert fresh.get(sha("new")) is None
    assert torch.equal(fresh.get(sha("old"))[0], entry(1)[0])
    leftovers = list(fresh.directory.glob("**/.*.tmp"))
    assert len(leftovers) == 1  # the dead writer's temp file, invisible to readers
    assert fresh.remove_stale_temp_files(max_age_s=3600) == 0  # too young to be stale
    assert fresh.remove_stale_temp_files(max_age_s=0) == 1
    assert not list(fresh.directory.glob("**/.*.tmp"))


def test_cache_corrupt_entry_is_a_miss(tmp_path, flair_warnings):
    cache = FeatureCache(tmp_path, FP)
    cache.put(sha("a"), *entry(1))
    cache.put(sha("b"), *entry(2))
    cache.path_for(sha("a")).write_bytes(b"\x00garbage")
    from safetensors.torch import save_file

    save_file({"regions": torch.zeros(3, 3), "pooled": torch.zeros(512)}, str(cache.path_for(sha("b"))))
    assert cache.get(sha("a")) is None
    assert cache.get(sha("b")) is None
    assert sum("corrupt entry" in message for message in flair_warnings) == 2
    assert not cache.path_for(sha("a")).exists() and not cache.path_for(sha("b")).exists()
    assert cache.misses == 2 and cache.hits == 0
    cache.put(sha("a"), *entry(4))
    assert torch.equal(cache.get(sha("a"))[1], entry(4)[1])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")
def test_cache_fifo_entry_is_a_miss_not_a_hang(tmp_path, flair_warnings):
    cache = FeatureCache(tmp_path, FP)
    path = cache.path_for(sha("a"))
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    result = []
    reader = threading.Thread(target=lambda: result.append(cache.get(sha("a"))), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # release the blocked reader before failing
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("FeatureCache.get blocked on a FIFO")
    assert result == [None] and any("not a regular file" in m for m in flair_warnings)


def test_cache_symlink_to_a_device_is_a_miss(tmp_path, flair_warnings):
    if not os.path.exists("/dev/zero"):
        pytest.skip("needs /dev/zero")
    cache = FeatureCache(tmp_path, FP)
    path = cache.path_for(sha("a"))
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink("/dev/zero", path)
    assert cache.get(sha("a")) is None  # no endless read, no MemoryError


def test_cache_entry_content_is_checked(tmp_path, flair_warnings):
    cache = FeatureCache(tmp_path, FP)
    regions, pooled = entry(1)
    cache.put(sha("nan"), regions.clone().fill_(float("nan")), pooled)
    assert cache.get(sha("nan")) is None                                  # NaN is never returned
    cache.put(sha("a"), regions, pooled)
    cache.path_for(sha("b")).parent.mkdir(parents=True, exist_ok=True)
    os.replace(cache.path_for(sha("a")), cache.path_for(sha("b")))        # an entry under another key
    assert cache.get(sha("b")) is None
    other = FeatureCache(tmp_path / "other", "cd" * 32)
    other.put(sha("c"), regions, pooled)
    cache.path_for(sha("c")).parent.mkdir(parents=True, exist_ok=True)
    os.replace(other.path_for(sha("c")), cache.path_for(sha("c")))       # another backbone's entry
    assert cache.get(sha("c")) is None
    big = cache.path_for(sha("d"))
    big.parent.mkdir(parents=True, exist_ok=True)
    big.write_bytes(b"\0" * (MAX_CACHE_ENTRY_BYTES + 10))         # oversized
    assert cache.get(sha("d")) is None
    assert cache.hits == 0 and sum("corrupt entry" in m for m in flair_warnings) == 4


def test_cache_concurrent_threads(tmp_path):
    cache = FeatureCache(tmp_path, FP)
    keys = [sha(str(i)) for i in range(4)]
    errors: list[str] = []
    stop = threading.Event()

    def reader():
        reads = 0
        while not stop.is_set() or reads < 50:
            got = cache.get(keys[reads % len(keys)])
            reads += 1
            if got is not None and not (got[0] == got[0][0, 0]).all():
                errors.append("inconsistent entry")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for version in range(20):
        for key in keys:
            cache.put(key, *entry(version))
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert cache.hits > 0


def test_cache_concurrent_processes(tmp_path):
    """Two reader processes read while a writer process rewrites the same entries: every read is a
    whole entry (all values of one version) or a miss, never a corrupt file."""
    keys = [sha(str(i)) for i in range(4)]
    reader = """
        import json, logging, os, sys, time
        from pathlib import Path
        root, fp, me, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
        warnings = []
        class Catch(logging.Handler):
            def emit(self, record): warnings.append(record.getMessage())
        logging.getLogger("flair").addHandler(Catch())
        cache = FeatureCache(root, fp)
        Path(root, "ready-" + me).touch()
        reads = hits = bad = 0
        deadline = time.time() + 60
        while time.time() < deadline and (not Path(root, "done").exists() or reads < 100):
            got = cache.get(keys[reads % len(keys)])
            reads += 1
            if got is not None:
                hits += 1
                regions, pooled = got
                value = regions[0, 0].item()
                if not ((regions == value).all() and (pooled == value).all()):
                    bad += 1
            time.sleep(0.0005)  # leave the (shared) CPU to the writer
        print(json.dumps({"reads": reads, "hits": hits, "bad": bad, "warnings": warnings}))
    """
    writer = """
        import sys, time
        from pathlib import Path
        import torch
        root, fp, keys = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
        deadline = time.time() + 60
        while not all(Path(root, f"ready-{i}").exists() for i in range(2)) and time.time() < deadline:
            time.sleep(0.02)
        cache = FeatureCache(root, fp)
        for version in range(15):
            for key in keys:
                cache.put(key, torch.full((49, 512), float(version)), torch.full((512,), float(version)))
        Path(root, "done").touch()
        print(cache.writes)
    """
    FeatureCache(tmp_path, FP)  # create the directory and meta.json once
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    def spawn(script: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", CACHE_IN_CHILD + textwrap.dedent(script), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    procs = [spawn(reader, str(tmp_path), FP, str(i), ",".join(keys)) for i in range(2)]
    procs.append(spawn(writer, str(tmp_path), FP, ",".join(keys)))
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    assert outputs[2][0].strip() == str(15 * len(keys))
    for out, _ in outputs[:2]:
        stats = json.loads(out)
        assert stats["bad"] == 0 and stats["warnings"] == []
        assert stats["reads"] >= 100 and stats["hits"] > 0
    final = FeatureCache(tmp_path, FP)
    assert all(torch.equal(final.get(k)[0], torch.full((49, 512), 14.0)) for k in keys)
    assert not list(final.directory.glob("**/*.tmp"))


# ---------------------------------------------------------------------------------------------------
# ImageFeaturizer
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def mixed_paths(tmp_path) -> list:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"this is not an image")
    duplicate = tmp_path / "copy_of_27.jpeg"
    shutil.copy(DATA / "27.jpg", duplicate)
    return [DATA / "27.jpg", None, tmp_path / "missing.jpg", corrupt, DATA / "113.jpg", duplicate, tmp_path,
            DATA / "130.jpg"]


EXPECTED_HAS = [True, False, False, False, True, True, False, True]
EXPECTED_REASONS = [None, "no path", "missing", "corrupt", None, None, "is a directory", None]


def test_featurizer_mixed_batch(tmp_path, extractor, mixed_paths):
    featurizer = ImageFeaturizer(extractor, tmp_path / "cache", batch_size=2)
    out = featurizer(mixed_paths)
    assert isinstance(out, VisualFeatures) and len(out) == len(mixed_paths)
    assert out.regions.shape == (8, 49, 512) and out.pooled.shape == (8, 512)
    assert out.has_image.tolist() == EXPECTED_HAS
    assert out.reasons == EXPECTED_REASONS
    bad = ~out.has_image
    assert out.regions[bad].abs().sum() == 0 and out.pooled[bad].abs().sum() == 0
    assert torch.equal(out.regions[0], out.regions[5])  # same content, computed once
    assert featurizer.stats["computed"] == 3 and featurizer.stats["duplicates"] == 1
    assert featurizer.stats["failed"] == 4 and featurizer.stats["failed:corrupt"] == 1
    assert featurizer.cache.writes == 3

    # equal (up to batching round-off) to running the extractor directly
    good = [p for p, ok in zip(mixed_paths, EXPECTED_HAS) if ok]
    pixels, _, _ = load_pixels(good)
    with torch.no_grad():
        regions, pooled = extractor(pixels)
    torch.testing.assert_close(out.regions[out.has_image], regions, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.pooled[out.has_image], pooled, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.pooled, out.regions.mean(dim=1))


def test_featurizer_cached_equals_fresh(tmp_path, extractor, mixed_paths, monkeypatch):
    fresh = ImageFeaturizer(extractor, tmp_path / "cache", batch_size=3)(mixed_paths)

    cache = FeatureCache(tmp_path / "cache", extractor.fingerprint())
    warm = ImageFeaturizer(extractor, cache, batch_size=3)

    def no_forward(*args, **kwargs):
        raise AssertionError("the backbone ran although every image is cached")

    monkeypatch.setattr(extractor, "forward", no_forward)
    out = warm(mixed_paths)
    assert torch.equal(out.regions, fresh.regions) and torch.equal(out.pooled, fresh.pooled)
    assert out.has_image.tolist() == EXPECTED_HAS and out.reasons == EXPECTED_REASONS
    # the three good contents are hits; the corrupt file is looked up (a miss: bad images are not cached)
    assert cache.hits == 3 and cache.misses == 1
    assert warm.stats["cache_hits"] == 3 and warm.stats["memo_hits"] == 1 and warm.stats["computed"] == 0

    # a second call on the same featurizer is served by the in-process memo, including the known-bad file
    again = warm(mixed_paths)
    assert torch.equal(again.regions, fresh.regions) and again.reasons == EXPECTED_REASONS
    assert (cache.hits, cache.misses) == (3, 1) and warm.stats["memo_hits"] == 5


def test_featurizer_without_cache_and_float16_cache(tmp_path, extractor):
    plain = ImageFeaturizer(extractor, None, batch_size=4)(SHIPPED)
    assert plain.has_image.all()
    half_cache = FeatureCache(tmp_path, extractor.fingerprint(), dtype=torch.float16)
    first = ImageFeaturizer(extractor, half_cache)(SHIPPED)
    second = ImageFeaturizer(extractor, FeatureCache(tmp_path, extractor.fingerprint(), dtype=torch.float16))(SHIPPED)
    assert torch.equal(first.regions, second.regions)  # a fresh result equals what the cache gives back
    torch.testing.assert_close(first.regions, plain.regions, atol=0.05, rtol=2e-3)


def test_featurizer_survives_failing_cache_writes(tmp_path, extractor, monkeypatch, flair_warnings):
    cache = FeatureCache(tmp_path, extractor.fingerprint())

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache, "put", disk_full)
    featurizer = ImageFeaturizer(extractor, cache)
    out = featurizer(SHIPPED)
    assert out.has_image.all() and out.regions.abs().sum() > 0
    assert featurizer.stats["cache_write_errors"] == len(SHIPPED)
    assert sum("cannot write entries" in m for m in flair_warnings) == 1  # logged once, not per image


def test_featurizer_keeps_training_mode_and_no_grad(tmp_path, extractor):
    extractor.train()
    try:
        before = extractor.fingerprint()
        out = ImageFeaturizer(extractor)(SHIPPED[:1])
        assert extractor.training
        assert extractor.fingerprint() == before  # eval mode: BatchNorm statistics untouched
        assert not out.regions.requires_grad
    finally:
        extractor.eval()


def test_featurizer_follows_weight_changes(tmp_path):
    torch.manual_seed(1)
    ext = RegionExtractor("resnet18").eval()
    featurizer = ImageFeaturizer(ext, tmp_path)
    first = featurizer(SHIPPED[:1])
    old_dir = featurizer.cache.directory
    with torch.no_grad():
        ext.layer4[1].conv2.weight.mul_(2.0)
    second = featurizer(SHIPPED[:1])
    assert featurizer.cache.directory != old_dir
    assert featurizer.stats["computed"] == 2
    assert not torch.equal(first.regions, second.regions)


def test_featurizer_rejects_foreign_cache(tmp_path, extractor):
    with pytest.raises(ValueError, match="fingerprint"):
        ImageFeaturizer(extractor, FeatureCache(tmp_path, FP))
    with pytest.raises(ValueError, match="batch_size"):
        ImageFeaturizer(extractor, batch_size=0)
