"""Where the time of a stage-3 pretraining step goes (Algorithm 1, lines 3-5), by part of RIVA.

Runs the joint step of the pretrainer (``StepRunner``: task 1 + task 2, every parameter) with the Table 2
configuration and the ResNet-34 backbone **frozen** (region features from a warm feature cache), on the
demo world's unlabelled pairs, under ``torch.profiler``. Each operation of the forward pass is labelled
with the part that ran it; the backward operations inherit the label of the forward operation they
differentiate (autograd's sequence numbers), so each part's figure is its forward **and** backward time:

* token encoder: character biLSTM, word embedding and input dropout (§3.1);
* RGN: biLSTM text vector f_t and the relation classifier (§3.1, Eq. 1-2);
* VCN: attention over the 49 regions (§3.2, Eq. 3-5);
* VLCN LSTMs: the visual inputs and both language models (§3.3, Eq. 6);
* softmax: the adaptive softmax over the vocabulary (Eq. 7);
* data preparation: ``prepare_batch`` (tokens to ids, cached features), timed on its own; the
  pretrainer runs it in a background thread, overlapped with the step;
* the rest: loss sums, gradient clipping, the SGD update, the finiteness checks and Python overhead
  (the unprofiled wall time minus the parts).

    python recipes/profile_pretrain.py                  # CPU, the threads torch uses by default
    python recipes/profile_pretrain.py --threads 1 --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from flair_riva.config import RivaConfig
from flair_riva.datasets import iter_unlabelled_pairs
from flair_riva.demo import generate_demo_world
from flair_riva.model import RivaModel
from flair_riva.pretrain.data import VisualSource, epoch_batches, prepare_batch
from flair_riva.pretrain.distributed import DistContext
from flair_riva.pretrain.options import PAPER_DEFAULTS, PretrainConfig
from flair_riva.pretrain.steps import StepRunner, make_optimizer
from flair_riva.text import Vocabulary
from flair_riva.vision import FeatureCache, ImageFeaturizer, RegionExtractor

PARTS = ["token encoder", "RGN", "VCN", "VLCN LSTMs", "softmax"]


def _label(obj, name: str, part: str) -> None:
    """Run ``obj.name`` (a bound method) inside ``record_function(part)``."""
    method = getattr(obj, name)

    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        with record_function(part):
            return method(*args, **kwargs)

    setattr(obj, name, wrapped)


def label_parts(model: RivaModel) -> None:
    """Label the forward computations of ``model`` by part (instance attributes shadow the methods)."""
    _label(model, "token_inputs", "token encoder")
    _label(model.rgn, "text_vector", "RGN")
    _label(model.rgn, "classify", "RGN")
    _label(model.vcn, "forward", "VCN")
    _label(model.vlcn, "forward", "VLCN LSTMs")
    _label(model.vlcn, "nll", "softmax")


def attribute(events) -> dict[str, float]:
    """Self-consistent CPU time per part (ms, forward + backward) from the profiler's events."""
    part_of_seq: dict[tuple[int, int], str] = {}
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.name in PARTS and event.cpu_parent is None:
            totals[event.name] += event.cpu_time_total / 1000
    for event in events:
        if event.sequence_nr < 0 or event.name.startswith("autograd::engine"):
            continue
        parent = event.cpu_parent
        while parent is not None and parent.name not in PARTS:
            parent = parent.cpu_parent
        if parent is not None:
            part_of_seq.setdefault((event.thread, event.sequence_nr), parent.name)
    for event in events:
        if event.name.startswith("autograd::engine::evaluate_function") and event.sequence_nr >= 0:
            part = part_of_seq.get((event.fwd_thread, event.sequence_nr))
            if part is not None:
                totals[part] += event.cpu_time_total / 1000
    return dict(totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 3 untimed)")
    parser.add_argument("--batch-size", type=int, default=16, help="Table 2: 16")
    parser.add_argument("--world", default=None, help="demo world folder (default: a temporary folder)")
    parser.add_argument("--quickstart-sizes", action="store_true",
                        help="the quickstart's RGN 1x64 and VLCN 1x128 instead of Table 2's 2x256 (same step)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tmp = tempfile.TemporaryDirectory(prefix="riva-profile-")
    world = generate_demo_world(Path(args.world) if args.world else Path(tmp.name) / "world")
    pairs = list(iter_unlabelled_pairs(world.unlabelled_file))
    rng = random.Random(0)
    for pair in pairs:
        pair.label = rng.randint(0, 1)
    vocab = Vocabulary.build([p.tokens for p in pairs], 50000, 2)
    sizes = dict(rgn_hidden_size=64, rgn_layers=1, vlcn_hidden_size=128, vlcn_layers=1) if args.quickstart_sizes else {}
    config = RivaConfig(backbone="resnet34", **sizes)   # Table 2 unless --quickstart-sizes
    torch.manual_seed(0)
    model = RivaModel(config, vocab).to(device)
    model.backbone.requires_grad_(False)
    extractor = RegionExtractor(config.backbone)
    extractor.load_state_dict(model.backbone.state_dict())
    extractor.to(device).eval()
    featurizer = ImageFeaturizer(extractor, FeatureCache(Path(tmp.name) / "cache", extractor.fingerprint()))
    featurizer([p.image for p in pairs])
    source = VisualSource(featurizer)
    params = [p for ps in model.trainable_parameters("joint", backbone=False).values() for p in ps]
    optimizer = make_optimizer("sgd", [{"params": params, "lr": PAPER_DEFAULTS["lr"]}])  # Table 2: SGD at 2e-2
    runner = StepRunner(model, source, DistContext(device=device), {"joint": optimizer}, PretrainConfig().clip)
    batches = epoch_batches(len(pairs), args.batch_size, seed=0, epoch=1, stream="pseudo")[: 2 * args.steps + 3]
    start = time.perf_counter()
    prepared = [prepare_batch([pairs[i] for i in b], vocab, source) for b in batches]
    prep_ms = (time.perf_counter() - start) / len(batches) * 1000
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model.train()
    for batch in prepared[:3]:
        runner.step("joint", batch)
    sync()
    start = time.perf_counter()
    for batch in prepared[3: 3 + args.steps]:
        runner.step("joint", batch)
    sync()
    wall_ms = (time.perf_counter() - start) / args.steps * 1000
    label_parts(model)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for batch in prepared[3 + args.steps: 3 + 2 * args.steps]:
            runner.step("joint", batch)
        sync()
        profiled_ms = (time.perf_counter() - start) / args.steps * 1000
    # the profiler slows every operation down: its per-part times are scaled to the unprofiled step
    scale = wall_ms / profiled_ms
    parts = {k: v / args.steps * scale for k, v in attribute(prof.events()).items()}
    threads = torch.get_num_threads()
    sizes_name = "quickstart" if args.quickstart_sizes else "Table 2"
    print(f"{sizes_name} sizes, ResNet-34 frozen (cached features), batch {args.batch_size}, {device}, "
          f"{threads} thread(s): {wall_ms:.1f} ms per joint step unprofiled "
          f"({args.batch_size * 1000 / wall_ms:.1f} pairs/s); vocabulary {len(vocab)}")
    print()
    print("| part | ms per step (forward + backward) | share |")
    print("|---|---:|---:|")
    for part in PARTS:
        ms = parts.get(part, 0.0)
        print(f"| {part} | {ms:.1f} | {100 * ms / wall_ms:.0f} % |")
    rest = max(wall_ms - sum(parts.get(p, 0.0) for p in PARTS), 0.0)
    print(f"| rest: losses, clipping, SGD, checks, Python | {rest:.1f} | {100 * rest / wall_ms:.0f} % |")
    print(f"| data preparation (background thread) | {prep_ms:.1f} | (overlapped) |")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
