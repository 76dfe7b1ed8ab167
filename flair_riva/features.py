"""``python -m flair_riva.features``: precompute and cache ResNet region features for a folder of images.

The ResNet forward pass is the expensive part of RIVA's visual side (paper §3.1-3.2); with a frozen
backbone each image needs it once. This command fills a :class:`~flair_riva.vision.FeatureCache` that
the pretrainer (``--feature-cache DIR``) and :class:`~flair_riva.embeddings.RivaEmbeddings`
(``feature_cache=DIR``) then read::

    python -m flair_riva.features --images twitter2015_images --cache ~/.cache/riva-features \\
        --backbone resnet34 --backbone-weights IMAGENET1K_V1

It prints the throughput, the cache hits, the new entries and the failures by reason (see
:data:`~flair_riva.vision.BAD_IMAGE_REASONS`). A second run over the same images is all cache hits.

Under ``torchrun --nproc-per-node N -m flair_riva.features ...`` each rank takes every N-th file of
the sorted list (``RANK`` / ``WORLD_SIZE``) and writes its own entries; no process group is needed
because cache writes are atomic and entries are disjoint. Only rank 0 prints (its shard's summary).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("flair")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
"""File name endings picked up by default (case-insensitive). Files are still decoded by content, so a
PNG named ``.jpg`` works; ``--all-files`` takes every file regardless of its name."""


def find_images(folder: str | Path, recursive: bool = False, all_files: bool = False) -> list[Path]:
    """The image files of ``folder`` (sorted, hidden files skipped), optionally recursively."""
    folder = Path(folder)
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found = []
    for path in candidates:
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if not path.is_file():
            continue
        if all_files or path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(path)
    return sorted(found)


def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment variables (0, 1, 0 without)."""

    def env_int(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value.strip() else default
        except ValueError as err:
            raise ValueError(f"environment variable {name}={value!r} is not an integer") from err

    rank, world, local = env_int("RANK", 0), env_int("WORLD_SIZE", 1), env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid RANK={rank} / WORLD_SIZE={world}")
    return rank, world, local


def build_parser() -> argparse.ArgumentParser:
    from flair_riva.vision import SUPPORTED_ARCHS

    parser = argparse.ArgumentParser(
        prog="python -m flair_riva.features",
        description="Precompute ResNet region features (49 x 512 per image, and their average) for a folder "
                    "of images into an on-disk cache keyed by backbone fingerprint and image content hash.",
    )
    parser.add_argument("--images", required=True, type=Path, help="folder of images (decoded by content)")
    parser.add_argument("--cache", required=True, type=Path, help="feature cache root directory")
    parser.add_argument("--backbone", default="resnet34", choices=SUPPORTED_ARCHS,
                        help="ResNet trunk (default: resnet34, as in the paper)")
    parser.add_argument("--backbone-weights", default="IMAGENET1K_V1", metavar="NAME|FILE|none",
                        help="torchvision weights name (IMAGENET1K_V1, DEFAULT; needs the network or the torch "
                             "hub cache), a local state-dict file (.pth/.pt/.safetensors), or 'none' for a "
                             "random init seeded by --seed (default: IMAGENET1K_V1)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed for --backbone-weights none (default 0)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--recursive", action="store_true", help="also take images in subfolders")
    parser.add_argument("--all-files", action="store_true",
                        help=f"take every file, not only names ending in {', '.join(IMAGE_EXTENSIONS)}")
    parser.add_argument("--cache-dtype", default="float32", choices=("float32", "float16"),
                        help="storage precision of the cache entries (default float32: exact)")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda:LOCAL_RANK when available, else cpu)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 error, 2 bad arguments)."""
    args = build_parser().parse_args(argv)
    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if not args.images.is_dir():
        print(f"error: --images {args.images} is not a directory", file=sys.stderr)
        return 2
    try:
        rank, world, local_rank = dist_env()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    import torch
    from tqdm import tqdm

    from flair_riva.vision import FeatureCache, ImageFeaturizer, RegionExtractor

    if args.device is None:
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)

    all_files = find_images(args.images, recursive=args.recursive, all_files=args.all_files)
    files = all_files[rank::world]
    is_main = rank == 0

    torch.manual_seed(args.seed)
    try:
        extractor = RegionExtractor(args.backbone, weights=args.backbone_weights).to(device).eval()
        dtype = torch.float16 if args.cache_dtype == "float16" else torch.float32
        cache = FeatureCache(args.cache, extractor.fingerprint(), dtype=dtype)
    except (RuntimeError, ValueError, FileNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    cache.remove_stale_temp_files()
    featurizer = ImageFeaturizer(extractor, cache, batch_size=args.batch_size)

    failures: dict[str, list[Path]] = defaultdict(list)
    chunk = args.batch_size * 4
    start = time.perf_counter()
    with tqdm(total=len(files), unit="img", desc="features", disable=not is_main or not files) as bar:
        for offset in range(0, len(files), chunk):
            part = files[offset:offset + chunk]
            features = featurizer(part)
            for path, reason in zip(part, features.reasons):
                if reason is not None:
                    failures[reason].append(path)
            bar.update(len(part))
    elapsed = time.perf_counter() - start

    if not is_main:
        return 0
    stats = featurizer.stats
    n = len(files)
    rate = n / elapsed if elapsed > 0 else float("inf")
    scope = f" (rank 0 of {world}: {n} of {len(all_files)} files)" if world > 1 else ""
    print(f"features: {n} images from {args.images}{scope}; backbone {args.backbone}, "
          f"weights {extractor.weights_source}")
    print(f"time {elapsed:.2f} s, {rate:.2f} images/s")
    print(f"cache hits {stats['cache_hits'] + stats['memo_hits']}, new entries {cache.writes}, "
          f"duplicates {stats['duplicates']}, failures {sum(len(v) for v in failures.values())}")
    if failures:
        parts = []
        for reason in sorted(failures, key=lambda r: (-len(failures[r]), r)):
            paths = failures[reason]
            example = paths[0].relative_to(args.images) if paths[0].is_relative_to(args.images) else paths[0]
            parts.append(f"{reason} {len(paths)} (e.g. {example})")
        print("failures by reason: " + ", ".join(parts))
    print(f"cache: {cache.directory} ({len(cache)} entries; fingerprint {cache.fingerprint[:16]})")
    if n == 0:
        print(f"note: no image files found in {args.images}"
              + ("" if args.recursive else " (use --recursive for subfolders)"))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(main())
