"""The on-disk feature cache of RIVA's frozen backbone and the featurizer that reads through it (DESIGN §3).

* :class:`FeatureCache` stores ``(regions, pooled)`` per (backbone fingerprint, image content hash),
  with atomic writes, so that a frozen backbone sees each image once.
* :class:`ImageFeaturizer` maps image paths to :class:`~flair_riva.backbone.VisualFeatures` through
  the cache; :func:`open_featurizer` is the one way to open one over a cache root.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from flair_riva.backbone import NUM_REGIONS, VISUAL_DIM, RegionExtractor, VisualFeatures
from flair_riva.images import PREPROCESS_VERSION, file_sha256, load_image
from flair_riva.io import atomic_write_bytes

log = logging.getLogger("flair")

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
