"""Benchmark: ResNet region features cold (computed) vs warm (read back from the feature cache).

    python recipes/bench_feature_cache.py [--images ../shared/data/tweet_images_sample] \\
        [--backbone resnet34] [--backbone-weights none]

In one process: build a :class:`~flair_riva.vision.RegionExtractor` (not timed; random init is fine,
the weights do not change the speed), featurize every image under ``--images`` (recursively) into a
fresh temporary cache ("cold": read, hash, decode, ResNet, write), then again with a new
:class:`~flair_riva.vision.ImageFeaturizer` on the same cache directory ("warm": read, hash, load the
entry from disk; no decoding, no ResNet). Prints both times, images/s and the ratio, checks that the
warm features equal the cold ones exactly, and asserts warm is at least ``--min-ratio`` (20) x faster.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from flair_riva.features import find_images
from flair_riva.vision import FeatureCache, ImageFeaturizer, RegionExtractor

DEFAULT_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tweet_images_sample"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="image folder (searched recursively)")
    parser.add_argument("--backbone", default="resnet34", choices=("resnet34", "resnet18"))
    parser.add_argument("--backbone-weights", default="none", help="NAME|FILE|none (default none)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--min-ratio", type=float, default=20.0)
    args = parser.parse_args(argv)

    paths = find_images(args.images, recursive=True)
    if not paths:
        print(f"no images under {args.images}", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    extractor = RegionExtractor(args.backbone, weights=args.backbone_weights).eval()
    print(f"{len(paths)} images under {args.images}; backbone {args.backbone} ({extractor.weights_source}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    with tempfile.TemporaryDirectory(prefix="riva-bench-cache-") as root:
        cold_featurizer = ImageFeaturizer(extractor, FeatureCache(root, extractor.fingerprint()),
                                          batch_size=args.batch_size)
        t0 = time.perf_counter()
        cold = cold_featurizer(paths)
        cold_s = time.perf_counter() - t0

        warm_cache = FeatureCache(root, extractor.fingerprint())  # a new instance: reads from disk
        warm_featurizer = ImageFeaturizer(extractor, warm_cache, batch_size=args.batch_size)
        t0 = time.perf_counter()
        warm = warm_featurizer(paths)
        warm_s = time.perf_counter() - t0

    n = len(paths)
    ok = int(cold.has_image.sum())
    ratio = cold_s / warm_s
    print("| run | time (s) | images/s | cache hits | computed |")
    print("|---|---:|---:|---:|---:|")
    print(f"| cold | {cold_s:.3f} | {n / cold_s:.1f} | {cold_featurizer.stats['cache_hits']} | "
          f"{cold_featurizer.stats['computed']} |")
    print(f"| warm | {warm_s:.4f} | {n / warm_s:.1f} | {warm_cache.hits} | {warm_featurizer.stats['computed']} |")
    print(f"warm is {ratio:.1f}x faster than cold ({ok}/{n} images decoded ok)")

    assert torch.equal(cold.regions, warm.regions) and torch.equal(cold.pooled, warm.pooled), \
        "cached features differ from the fresh ones"
    assert torch.equal(cold.has_image, warm.has_image) and cold.reasons == warm.reasons
    assert warm_featurizer.stats["computed"] == 0, "warm run ran the backbone"
    assert ratio >= args.min_ratio, f"warm run only {ratio:.1f}x faster than cold (< {args.min_ratio}x)"
    return 0


if __name__ == "__main__":
    sys.exit(main())
