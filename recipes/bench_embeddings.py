"""Benchmark RivaEmbeddings on the Twitter-2015 test set: sentences/s and peak memory per image mode.

    python recipes/bench_embeddings.py                       # the defaults below
    python recipes/bench_embeddings.py --limit 500           # a quick run
    python recipes/bench_embeddings.py --all-images          # also: every tweet wired to one of the 30 images
    python recipes/bench_embeddings.py --all-images --threads 1   # on a machine shared with other torch jobs

What is measured
----------------
The Twitter-2015 test split (3257 tweets, ``--data``/test.txt) is embedded in mini-batches of 32
(``--batch-size``) by a default-size (Table 2) RIVA: a vocabulary built from the corpus text, random
weights, a randomly initialised ResNet-34 (speed does not depend on the weights). Images: the 30
sample images of ``--images`` (``mapping.tsv``) are linked as ``<IMGID>.jpg`` into a temporary image
folder, so the tweets they belong to have their real image and every other tweet has a missing image
(s_G = 0). Modes:

* (a) ``text``: ``use_image=False``, every tweet text-only;
* (b) ``cache``: images, region features from a warm :class:`~flair_riva.vision.FeatureCache` (filled by
  an untimed run first);
* (c) ``nocache``: images decoded and run through the ResNet every time (no cache, no in-process memo).

With ``--all-images``, rows (b*) and (c*) repeat (b) and (c) with *every* tweet wired to one of the 30
images (cycled), which shows the cost of the visual path itself.

Each timed mode runs in a fresh Python process; the throughput counts only the embedding loop (not
imports or model loading): the best of ``--repeat`` passes (3) in each of ``--rounds`` interleaved
rounds (2) over the modes, so background load on a shared machine hits every mode alike ((c*), which is
dominated by ResNet, runs once). The in-process feature memo is off in every timed mode. Memory is the process's peak
resident set size (``ru_maxrss``), the RSS after loading the model, and the peak RSS during the
embedding loop alone (Linux VmHWM, reset just before the loop). Token vectors
are dropped after each batch (Flair's ``embeddings_storage_mode="none"``), so the figures are the
embedding's own, not the corpus's storage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path("/work/shared/data/twitter2015")
DEFAULT_IMAGES = Path("/work/shared/data/tweet_images_sample")

MODES = {
    "text": "(a) text only (`use_image=False`)",
    "cache": "(b) images, warm feature cache",
    "nocache": "(c) images, decoded + ResNet-34 every time (no cache, no memo)",
    "cache-all": "(b*) every tweet has an image, warm feature cache",
    "nocache-all": "(c*) every tweet has an image, decoded + ResNet-34 every time",
}


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of the whole process (``ru_maxrss``, KB on Linux) in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_window_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so :func:`window_peak_mb` covers what follows (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def window_peak_mb() -> float | None:
    """VmHWM (peak RSS since :func:`reset_window_peak`) in MB, or None where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------------------
# preparation (parent process)
# --------------------------------------------------------------------------------------------------


def read_test_ids(test_file: Path) -> list[str]:
    ids = []
    with open(test_file, encoding="utf-8") as f:
        for line in f:
            if line.startswith("IMGID:"):
                ids.append(line[len("IMGID:"):].strip())
    return ids


def wire_images(images: Path, out_dir: Path, test_ids: list[str], every_tweet: bool) -> int:
    """Link the sample images into ``out_dir`` as ``<IMGID>.jpg``; returns how many test tweets got one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [line.split("\t") for line in (images / "mapping.tsv").read_text(encoding="utf-8").splitlines()[1:]
            if line.strip()]
    files = []
    for dataset, imgid, *_ in rows:
        src = images / dataset / f"{imgid}.jpg"
        if src.is_file():
            files.append((imgid, src.resolve()))
    if every_tweet:
        for i, imgid in enumerate(test_ids):
            os.symlink(files[i % len(files)][1], out_dir / f"{imgid}.jpg")
        return len(test_ids)
    for imgid, src in files:
        os.symlink(src, out_dir / f"{imgid}.jpg")
    wanted = set(test_ids)
    return sum(1 for imgid, _ in files if imgid in wanted)


def build_model(data: Path, out: Path) -> dict:
    import torch

    from flair_riva.config import RivaConfig
    from flair_riva.model import RivaModel

    token_lists, tokens = [], []
    with open(data / "test.txt", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("IMGID:"):
                tokens = []
                token_lists.append(tokens)
            elif line.strip():
                tokens.append(line.split("\t")[0])
    torch.manual_seed(0)
    model = RivaModel.from_texts(RivaConfig(), token_lists, backbone_weights=None)  # Table 2, ResNet-34 random
    model.save(out)
    return {"vocab": len(model.vocab), "params": sum(model.num_parameters().values()),
            "tweets": len(token_lists), "tokens": sum(len(t) for t in token_lists)}


def run_worker(args, mode: str, model_dir: Path, image_dir: Path, cache_dir: Path, timed: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--model-dir", str(model_dir), "--image-dir", str(image_dir),
           "--cache-dir", str(cache_dir), "--data", str(args.data), "--batch-size", str(args.batch_size),
           "--limit", str(args.limit or 0), "--repeat", str(args.repeat), "--threads", str(args.threads)]
    env = dict(os.environ, FLAIR_DEVICE="cpu")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"worker {mode} failed with exit code {done.returncode}")
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"worker {mode} printed no result:\n{done.stdout[-2000:]}")


# --------------------------------------------------------------------------------------------------
# worker (fresh process per mode)
# --------------------------------------------------------------------------------------------------


def worker(args) -> None:
    import logging

    import torch

    logging.getLogger("flair").setLevel(logging.WARNING)  # no per-batch "without image" lines
    if args.threads:
        torch.set_num_threads(args.threads)
    from flair_riva.datasets import TwitterMNERCorpus
    from flair_riva.embeddings import RivaEmbeddings

    mode = args.worker
    corpus = TwitterMNERCorpus(args.data, image_dir=args.image_dir, train_file=None, dev_file=False,
                               test_file="test.txt")
    sentences = list(corpus.test)
    if args.limit:
        sentences = sentences[: args.limit]
    use_image = mode != "text"
    timed = not mode.startswith("fill")
    if timed:
        RivaEmbeddings.memo_size = 0  # every pass reads the disk cache (b) or decodes + runs ResNet (c)
    cache = args.cache_dir if mode.startswith("cache") or mode.startswith("fill") else None
    emb = RivaEmbeddings(args.model_dir, use_image=use_image, feature_cache=cache)
    if use_image:
        emb.model.backbone.fingerprint()  # computed once per process; not part of the embedding loop
    rss_loaded = rss_mb()
    peak_loading = peak_rss_mb()
    window = reset_window_peak()  # note: on Linux this also resets ru_maxrss
    batches = [sentences[i:i + args.batch_size] for i in range(0, len(sentences), args.batch_size)]
    tokens = sum(len(s) for s in sentences)
    repeat = 1 if (not timed or mode == "nocache-all") else max(1, args.repeat)
    times = []
    with_image = 0
    for _ in range(repeat):
        with_image = 0
        start = time.perf_counter()
        for batch in batches:
            emb.embed(batch)
            with_image += sum(1 for s in batch if s.get_metadata("riva_image_reason") is None) if use_image else 0
            for s in batch:  # embeddings_storage_mode="none"
                s.clear_embeddings()
        times.append(time.perf_counter() - start)
    seconds = min(times)
    stats = dict(emb._featurizer.stats) if emb._featurizer is not None else {}
    result = {
        "mode": mode, "sentences": len(sentences), "tokens": tokens, "seconds": seconds, "passes": times,
        "sentences_per_s": len(sentences) / seconds, "tokens_per_s": tokens / seconds,
        "with_image": with_image, "rss_loaded_mb": rss_loaded,
        "embed_peak_mb": window_peak_mb() if window else None,
        "peak_rss_mb": max(peak_loading, peak_rss_mb(), (window_peak_mb() or 0.0) if window else 0.0),
        "featurizer": {k: v for k, v in stats.items() if not k.startswith("failed:")},
        "threads": torch.get_num_threads(),
    }
    print("RESULT " + json.dumps(result))


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the Twitter-2015 test.txt")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="folder with mapping.tsv and <dataset>/<IMGID>.jpg sample images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=0, help="embed only the first N tweets (0: all)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed passes per mode, the fastest is reported ((c*) runs once)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved rounds over the modes, the fastest per mode is reported ((c*) runs once)")
    parser.add_argument("--modes", default=None,
                        help="comma-separated subset of " + ",".join(MODES) + " (default: all that apply)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per worker (default: torch's default, one per core). On a machine "
                             "shared with other torch jobs, 1 avoids OpenMP oversubscription")
    parser.add_argument("--all-images", action="store_true", help="also run (b*)/(c*): every tweet has an image")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the model, images and cache here")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--image-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    test_file = args.data / "test.txt"
    if not test_file.is_file():
        parser.error(f"{test_file} not found (pass --data)")
    if not (args.images / "mapping.tsv").is_file():
        parser.error(f"{args.images / 'mapping.tsv'} not found (pass --images)")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="riva-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        test_ids = read_test_ids(test_file)
        if args.limit:
            test_ids = test_ids[: args.limit]
        sample_dir, all_dir = workdir / "images-sample", workdir / "images-all"
        for d in (sample_dir, all_dir, workdir / "cache"):
            shutil.rmtree(d, ignore_errors=True)
        wired = wire_images(args.images, sample_dir, test_ids, every_tweet=False)
        model_dir = workdir / "model"
        info = build_model(args.data, model_dir)
        print(f"model: Table 2 sizes, vocabulary {info['vocab']}, {info['params'] / 1e6:.1f} M parameters "
              f"(random weights, ResNet-34 random init); {len(test_ids)} tweets, {wired} with a sample image",
              flush=True)

        plan = [("text", sample_dir), ("cache", sample_dir), ("nocache", sample_dir)]
        if args.all_images:
            wire_images(args.images, all_dir, test_ids, every_tweet=True)
            plan += [("cache-all", all_dir), ("nocache-all", all_dir)]
        if args.modes:
            wanted = [m.strip() for m in args.modes.split(",") if m.strip()]
            unknown = sorted(set(wanted) - set(MODES))
            if unknown:
                parser.error(f"unknown modes {unknown}: choose from {', '.join(MODES)}")
            if any(m.endswith("-all") for m in wanted) and not args.all_images:
                wire_images(args.images, all_dir, test_ids, every_tweet=True)
            dirs = {m: all_dir if m.endswith("-all") else sample_dir for m in MODES}
            plan = [(m, dirs[m]) for m in wanted]
        cache_dirs = {mode: workdir / "cache" / ("all" if mode.endswith("-all") else "sample") for mode, _ in plan}
        for mode, image_dir in plan:
            if mode.startswith("cache"):
                fill = run_worker(args, "fill" + mode[len("cache"):], model_dir, image_dir, cache_dirs[mode])
                print(f"  filled the cache for {mode}: {fill['featurizer']}", flush=True)
        best: dict[str, dict] = {}
        for round_ in range(max(1, args.rounds)):  # interleaved rounds: background load hits every mode alike
            for mode, image_dir in plan:
                if mode == "nocache-all" and round_ > 0:
                    continue
                result = run_worker(args, mode, model_dir, image_dir, cache_dirs[mode])
                print(f"  round {round_ + 1} {mode}: {result['sentences_per_s']:.1f} sentences/s "
                      f"(passes {', '.join(f'{t:.1f}' for t in result['passes'])} s), "
                      f"peak RSS {result['peak_rss_mb']:.0f} MB, {result['with_image']} with image, "
                      f"{result['featurizer']}", flush=True)
                if mode not in best or result["sentences_per_s"] > best[mode]["sentences_per_s"]:
                    best[mode] = result
        results = [best[mode] for mode, _ in plan]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    base = results[0]["sentences_per_s"]  # the first mode of the plan ((a) unless --modes says otherwise)
    import torch

    print()
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch {torch.__version__} ({results[0]['threads']} threads), Python {platform.python_version()}; "
          f"batch size {args.batch_size}, {results[0]['sentences']} tweets ({results[0]['tokens']} tokens)")
    print()
    print(f"| mode | tweets with image | sentences/s | tokens/s | time (s) | cost vs {results[0]['mode']} "
          "| max RSS of the process (MB) | RSS after loading (MB) | peak RSS while embedding (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        window = f"{r['embed_peak_mb']:.0f}" if r.get("embed_peak_mb") else "n/a"
        print(f"| {MODES[r['mode']]} | {r['with_image']} | {r['sentences_per_s']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{r['seconds']:.1f} | {base / r['sentences_per_s']:.2f}x | {r['peak_rss_mb']:.0f} | "
              f"{r['rss_loaded_mb']:.0f} | {window} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
