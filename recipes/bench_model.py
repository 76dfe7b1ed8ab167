"""Benchmark the RIVA model itself (issue: parameters per part, forward+backward time, peak memory).

Builds a Table-2-size RivaModel (ResNet-34, random init: speed does not depend on the weights) with
the vocabulary of the demo world's pretraining text, then times forward + backward (task 1 + task 2)
of batches of 16 demo tweets in two modes, each in a fresh subprocess so that peak RSS is its own:

* ``frozen``: region features come from the feature cache (filled before timing), the backbone
  gets no gradient;
* ``finetuned``: pixels are decoded and go through ResNet-34 with gradients (the paper's setting).

Usage: ``python recipes/bench_model.py [--device cpu] [--steps 5] [--demo-dir DIR]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _load_world(demo_dir: str | None):
    from flair_riva.datasets import iter_unlabelled_pairs
    from flair_riva.demo import default_demo_root, generate_demo_world

    world = generate_demo_world(Path(demo_dir) if demo_dir else default_demo_root())
    pairs = list(iter_unlabelled_pairs(world.unlabelled_file))
    return world, pairs


def _measure(mode: str, device: str, steps: int, demo_dir: str | None, cache_dir: str) -> dict:
    from flair_riva.config import RivaConfig
    from flair_riva.model import RivaModel
    from flair_riva.vision import FeatureCache, ImageFeaturizer, load_pixels

    torch.manual_seed(0)
    world, pairs = _load_world(demo_dir)
    model = RivaModel.from_texts(RivaConfig(), [p.tokens for p in pairs]).to(device).train()
    params = model.num_parameters()
    batches = [pairs[i * 16 : (i + 1) * 16] for i in range(steps + 1)]
    featurizer = ImageFeaturizer(model.backbone, FeatureCache(cache_dir, model.backbone.fingerprint()))
    if mode == "frozen":
        model.backbone.requires_grad_(False)
        for batch in batches:  # fill the cache: the timed steps read it warm, as pretraining does
            featurizer([p.image for p in batch])
    times = []
    for step, batch in enumerate(batches):
        start = time.perf_counter()
        text = model.encode([p.tokens for p in batch])
        if mode == "frozen":
            visual = ImageFeaturizer(model.backbone, FeatureCache(cache_dir, model.backbone.fingerprint()))(
                [p.image for p in batch]).to(device)
        else:
            pixels, has_image, reasons = load_pixels([p.image for p in batch])
            visual = model.visual_from_pixels(pixels, has_image, reasons)
        out = model(text, visual)
        labels = torch.randint(0, 2, (len(batch),), device=device)
        loss = model.relation_loss(out.relation_logits, labels, visual.has_image) + model.lm_loss(out, text)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if step > 0:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    return {"mode": mode, "params": params, "seconds_per_batch": sum(times) / len(times),
            "peak_rss_mib": peak, "vocab": len(model.vocab),
            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--demo-dir", default=None)
    parser.add_argument("--child", choices=["frozen", "finetuned"], help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.child, args.device, args.steps, args.demo_dir, args.cache)))
        return 0
    _load_world(args.demo_dir)  # generate once, outside the timed children
    results = []
    with tempfile.TemporaryDirectory() as cache:
        for mode in ("frozen", "finetuned"):
            cmd = [sys.executable, __file__, "--child", mode, "--device", args.device, "--steps", str(args.steps),
                   "--cache", cache] + (["--demo-dir", args.demo_dir] if args.demo_dir else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    params = results[0]["params"]
    print(f"RivaModel, Table 2 sizes, vocabulary {results[0]['vocab']} words (demo world), torch {torch.__version__}")
    print("\n| part | parameters |\n|---|---:|")
    for part, n in params.items():
        print(f"| {part} | {n:,} |")
    print(f"| total | {sum(params.values()):,} |")
    print(f"\n| backbone | forward+backward, batch of 16 ({args.device}) | peak RSS |\n|---|---:|---:|")
    for r in results:
        print(f"| {r['mode']} | {r['seconds_per_batch'] * 1000:.0f} ms | {r['peak_rss_mib']:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
