"""Throughput of RIVA pretraining (stage 3, Algorithm 1) with the Table 2 configuration.

Measures the training steps the pretrainer runs (``flair_riva.pretrain.steps.StepRunner``, with the
same batch preparation and prefetching), on the pairs of the demo world at a larger scale:

* ``joint``: Algorithm 1 lines 3-5 (task 1 + task 2, every parameter), on unlabelled pairs with random
  pseudo labels;
* ``rgn``: lines 8-10 (task 1, θ_RGN only), on the labelled relation pairs;

each with the ResNet-34 backbone **frozen** (region features from the feature cache, warmed before
timing) and **fine-tuned** (pixels decoded per batch, backbone trained at its own learning rate).
On a GPU it runs in bf16 autocast, as the pretrainer does. Without a GPU it runs a short CPU version
and says so. Backbone weights are random (no download); they do not change the speed.

    python recipes/bench_pretrain_gpu.py                    # GPU if available, else the short CPU run
    python recipes/bench_pretrain_gpu.py --steps 50 --scale 4 --batch-size 16
    python recipes/bench_pretrain_gpu.py --device cpu --modes frozen --steps 0 --warmup 3   # whole epochs

The batches are the pretrainer's (length-bucketed by default, ``--length-buckets 0`` for plain ones); a
short prefix of a bucketed epoch draws a few length buckets at random, so time whole epochs (``--steps 0``)
when comparing versions.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

from flair_riva.config import RivaConfig
from flair_riva.datasets import iter_unlabelled_pairs, read_relation_pairs
from flair_riva.demo import generate_demo_world
from flair_riva.model import RivaModel
from flair_riva.pretrain.data import VisualSource, epoch_batches, prefetched, prepare_batch
from flair_riva.pretrain.distributed import DistContext
from flair_riva.pretrain.options import PAPER_DEFAULTS, PretrainConfig
from flair_riva.pretrain.steps import StepRunner, make_optimizer
from flair_riva.text import Vocabulary
from flair_riva.vision import FeatureCache, ImageFeaturizer, RegionExtractor


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model: RivaModel, runner: StepRunner, source: VisualSource, pairs: list, mode: str, batch_size: int,
            steps: int, warmup: int, pool: int = 0) -> float:
    """pairs/s of ``steps`` optimisation steps after ``warmup`` untimed ones (prefetching included), on the
    batches the pretrainer would draw (length-bucketed in pools of ``pool`` batches; 0 = plain)."""
    batches = epoch_batches(len(pairs), batch_size, seed=0, epoch=1, stream="pseudo",
                            lengths=[len(p.tokens) for p in pairs], pool=pool)
    steps = steps if steps > 0 else len(batches)   # 0: one whole epoch, every batch timed once
    batches = list(itertools.islice(itertools.cycle(batches), warmup + steps))
    model.train()
    prepared = prefetched(batches, lambda idx: prepare_batch([pairs[i] for i in idx], model.vocab, source))
    count, start = 0, None
    for i, (idx, batch) in enumerate(zip(batches, prepared)):
        if i == warmup:
            _sync(model.device)
            start = time.perf_counter()
        runner.step(mode, batch)
        if i >= warmup:
            count += len(idx)
    _sync(model.device)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--scale", type=float, default=None, help="demo world scale (GPU 4, CPU 1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per measurement (GPU 50, CPU 5); 0 = one whole epoch of each pass")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (GPU 5, CPU 1)")
    parser.add_argument("--batch-size", type=int, default=16, help="Table 2: 16")
    parser.add_argument("--backbone", default="resnet34")
    parser.add_argument("--modes", default="frozen,finetune", help="frozen, finetune or both")
    parser.add_argument("--length-buckets", type=int, default=None, metavar="POOL",
                        help="batches per length-bucketing pool, 0 = plain batches (default: the pretrainer's)")
    parser.add_argument("--world", default=None, help="demo world folder (default: a temporary folder)")
    args = parser.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    pool = args.length_buckets if args.length_buckets is not None else PretrainConfig().length_buckets
    scale = args.scale if args.scale is not None else (4.0 if gpu else 1.0)
    steps = args.steps if args.steps is not None else (50 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    if gpu:
        print(f"GPU: {torch.cuda.get_device_name(device)}, bf16 autocast")
    else:
        print(f"no GPU: running the short CPU version ({torch.get_num_threads()} threads, {steps} timed steps "
              f"after {warmup} warm-up step(s) per figure, float32)")

    tmp = tempfile.TemporaryDirectory(prefix="riva-bench-")
    root = Path(args.world) if args.world else Path(tmp.name) / "world"
    world = generate_demo_world(root, scale=scale)
    unlabelled = list(iter_unlabelled_pairs(world.unlabelled_file))
    labelled = read_relation_pairs(world.relation_file)
    rng = random.Random(0)
    for pair in unlabelled:
        pair.label = rng.randint(0, 1)   # stand-in pseudo labels: the cost does not depend on them
    vocab = Vocabulary.build([p.tokens for p in unlabelled + labelled], 50000, 2)
    config = RivaConfig(backbone=args.backbone)  # Table 2
    print(f"demo world scale {scale:g}: {len(unlabelled)} unlabelled, {len(labelled)} labelled pairs; "
          f"vocabulary {len(vocab)}; RivaConfig Table 2 (RGN {config.rgn_layers}x{config.rgn_hidden_size}, "
          f"VLCN {config.vlcn_layers}x{config.vlcn_hidden_size}, {config.backbone}); batch {args.batch_size}")

    results = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        torch.manual_seed(0)
        model = RivaModel(config, vocab).to(device)
        if mode == "frozen":
            model.backbone.requires_grad_(False)
            extractor = RegionExtractor(args.backbone)
            extractor.load_state_dict(model.backbone.state_dict())
            extractor.to(device).eval()
            cache = FeatureCache(Path(tmp.name) / "cache", extractor.fingerprint())
            featurizer = ImageFeaturizer(extractor, cache, batch_size=64)
            start = time.perf_counter()
            featurizer([p.image for p in unlabelled + labelled])     # warm the cache (each image once)
            print(f"frozen: feature cache warmed in {time.perf_counter() - start:.1f} s "
                  f"({featurizer.stats['computed']} images through ResNet)")
            source = VisualSource(featurizer)
        else:
            source = VisualSource(None)
        groups = model.trainable_parameters("joint", backbone=mode != "frozen")
        main_params = [p for k, ps in groups.items() if k != "backbone" for p in ps]
        paper = PretrainConfig()  # Table 2: SGD at 2e-2, the backbone at 1e-4, clipping at 5
        optimizers = {
            "joint": make_optimizer("sgd", [{"params": main_params, "lr": PAPER_DEFAULTS["lr"]},
                                            {"params": groups.get("backbone", []), "lr": paper.backbone_lr}]),
            "rgn": make_optimizer("sgd", [{"params": model.rgn_parameters(), "lr": PAPER_DEFAULTS["lr"]}]),
        }
        runner = StepRunner(model, source, DistContext(device=device), optimizers, paper.clip)
        joint = measure(model, runner, source, unlabelled, "joint", args.batch_size, steps, warmup, pool)
        rgn = measure(model, runner, source, labelled, "rgn", args.batch_size, steps, warmup, pool)
        # one epoch of Algorithm 1 over this world: every unlabelled pair (as if pseudo-labelled), then the
        # labelled pairs; pairs/s over both passes, as PAIRS_PER_SECOND in metrics.tsv
        n, m = len(unlabelled), len(labelled)
        epoch = (n + m) / (n / joint + m / rgn)
        results.append((mode, joint, rgn, epoch))
        print(f"{mode:9s} joint {joint:8.1f} pairs/s | rgn-only {rgn:8.1f} pairs/s | epoch mix {epoch:8.1f} pairs/s")
        del model, runner, optimizers
        if gpu:
            torch.cuda.empty_cache()

    print()
    print(f"| backbone ({'GPU ' + torch.cuda.get_device_name(device) if gpu else 'CPU, short run'}) "
          "| lines 3-5 (joint) pairs/s | lines 8-10 (RGN) pairs/s | epoch pairs/s |")
    print("|---|---|---|---|")
    for mode, joint, rgn, epoch in results:
        label = "frozen (cached features)" if mode == "frozen" else "fine-tuned"
        print(f"| {args.backbone} {label} | {joint:.1f} | {rgn:.1f} | {epoch:.1f} |")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
