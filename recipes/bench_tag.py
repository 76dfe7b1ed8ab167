"""Benchmark ``python -m flair_riva.tag``: tweets/s against ``SequenceTagger.predict`` and peak RSS vs input size.

    python recipes/bench_tag.py                          # Table 2 sizes; throughput on 2000 tweets; RSS at 10k, 100k
    python recipes/bench_tag.py --size tiny --sizes 10000 100000 --throughput-tweets 2000
    OMP_NUM_THREADS=1 python recipes/bench_tag.py --threads 1   # on a machine shared with other torch jobs

What is measured
----------------
A tagger is built and saved the way the recipes build one: Flair's biLSTM-CRF (hidden 512 with RIVA, Table 2)
over ``[word vectors (100d), RivaEmbeddings]``, with a RIVA of Table 2 sizes (``--size table2``; ``tiny``
uses the test suite's tiny sizes) whose vocabulary comes from the demo world's unlabelled tweets. Weights
are random (speed does not depend on them) and the ResNet-34 is randomly initialised. Tweets are the demo
world's unlabelled pairs (text + image) cycled to the wanted count, written as JSONL
``{"id", "text", "image"}``. The feature cache is warmed by an untimed pass first.

* **Throughput** (one process, ``--throughput-tweets`` tweets, best of ``--repeat`` interleaved passes):
  (a) ``SequenceTagger.predict(sentences, mini_batch_size=32)`` on pre-built ``Sentence`` objects that already
  carry their ``image_path`` (tokenised beforehand, not timed), in one call and (a') in calls of 1024 sentences
  as the CLI makes them (Flair's ``predict`` clears the embeddings of *every* sentence it was given after each
  mini-batch, so one call on a long list costs more); (b) :func:`flair_riva.tag.tag_file` on the JSONL file:
  read, tokenise, build sentences, predict, write JSONL. The ratios (b)/(a) and (b)/(a') are what the CLI adds.
* **Memory**: ``python -m flair_riva.tag`` (through :func:`flair_riva.tag.main`) in a fresh process per input
  size (``--sizes``), peak resident set size (``ru_maxrss``) at the end, and tweets/s of the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RSS_CHILD = """
import resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
from flair_riva.tag import main
start = time.perf_counter()
rc = main(sys.argv[2:])
print("RESULT", rc, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def build(workdir: Path, size: str) -> tuple[Path, Path, list[dict]]:
    """Write the demo world, a saved tagger and the tweet pool; returns (tagger file, feature cache, tweets)."""
    import flair
    import torch
    from flair.data import Dictionary
    from flair.embeddings import StackedEmbeddings, WordEmbeddings
    from flair.models import SequenceTagger

    from flair_riva.config import RivaConfig
    from flair_riva.datasets import iter_unlabelled_records
    from flair_riva.demo import generate_demo_world
    from flair_riva.embeddings import RivaEmbeddings
    from flair_riva.model import RivaModel

    world = generate_demo_world(workdir / "world")
    records = list(iter_unlabelled_records(world.unlabelled_file))
    tweets = [{"text": r.text, "image": str(r.image) if r.image else None} for r in records if r.tokens]
    token_lists = [r.tokens for r in records]
    torch.manual_seed(0)
    if size == "tiny":
        config = RivaConfig(word_dim=16, char_dim=8, char_hidden_size=8, rgn_hidden_size=32, vlcn_hidden_size=32,
                            num_heads=8, backbone="resnet18", min_word_count=1)
        hidden = 16
    else:
        config = RivaConfig(min_word_count=1)
        hidden = 512
    riva = RivaModel.from_texts(config, token_lists).eval()
    words = sorted({w for tokens in token_lists for w in tokens})
    glove = WordEmbeddings(None, vocab={w: i for i, w in enumerate(words)}, embedding_length=100, name="glove")
    with torch.no_grad():
        glove.embedding.weight.copy_(torch.randn_like(glove.embedding.weight))
    cache = workdir / "features"
    stack = StackedEmbeddings([glove, RivaEmbeddings(riva, feature_cache=cache)])
    tags = Dictionary(add_unk=False)
    for t in ("PER", "LOC", "ORG", "OTHER"):
        tags.add_item(t)
    flair.set_seed(1)
    tagger = SequenceTagger(hidden_size=hidden, embeddings=stack, tag_dictionary=tags, tag_type="ner", use_crf=True)
    path = workdir / "tagger.pt"
    tagger.save(path)
    return path, cache, tweets


def write_tweets(path: Path, pool: list[dict], n: int) -> Path:
    with open(path, "w", encoding="utf-8") as out:
        for i in range(n):
            out.write(json.dumps({"id": i, **pool[i % len(pool)]}, ensure_ascii=False) + "\n")
    return path


def throughput(tagger_file: Path, cache: Path, source: Path, workdir: Path, repeat: int) -> dict:
    from flair.data import Sentence
    from flair.models import SequenceTagger

    from flair_riva.tag import read_records, tag_file

    tagger = SequenceTagger.load(str(tagger_file))
    tagger.eval()
    records = list(read_records(source))

    def prebuilt() -> list[Sentence]:
        sentences = []
        for r in records:
            s = Sentence(r.tokens)
            if r.image is not None:
                s.add_metadata("image_path", str(r.image))
            sentences.append(s)
        return sentences

    tag_file(tagger, source, workdir / "warm.jsonl", feature_cache=cache, progress=False)  # warm the cache, untimed
    best_predict = best_chunked = best_cli = float("inf")
    for _ in range(repeat):
        sentences = prebuilt()
        start = time.perf_counter()
        tagger.predict(sentences, mini_batch_size=32)
        best_predict = min(best_predict, time.perf_counter() - start)
        sentences = prebuilt()
        start = time.perf_counter()
        for i in range(0, len(sentences), 1024):  # as the CLI calls it (Flair's predict clears the embeddings of
            tagger.predict(sentences[i:i + 1024], mini_batch_size=32)  # every sentence it was given after each batch)
        best_chunked = min(best_chunked, time.perf_counter() - start)
        del sentences
        start = time.perf_counter()
        tag_file(tagger, source, workdir / "out.jsonl", feature_cache=cache, batch_size=32, progress=False)
        best_cli = min(best_cli, time.perf_counter() - start)
    n = len(records)
    return {"tweets": n, "predict_s": best_predict, "cli_s": best_cli, "predict_tps": n / best_predict,
            "cli_tps": n / best_cli, "ratio": best_cli / best_predict, "chunked_tps": n / best_chunked,
            "chunked_ratio": best_cli / best_chunked}


def peak_rss(tagger_file: Path, cache: Path, source: Path, workdir: Path, threads: int) -> dict:
    out = workdir / f"{source.stem}.out.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    args = [sys.executable, "-c", RSS_CHILD, str(threads), "--tagger", str(tagger_file), "--input", str(source),
            "--output", str(out), "--feature-cache", str(cache), "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(done.stderr[-3000:])
    _, rc, seconds, rss = line.split()
    with open(out, encoding="utf-8") as f:
        written = sum(1 for _ in f)
    return {"rc": int(rc), "seconds": float(seconds), "peak_rss_mb": float(rss), "written": written}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=["table2", "tiny"], default="table2")
    parser.add_argument("--throughput-tweets", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="keep the files here (default: a temporary folder)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tagger_file, cache, pool = build(workdir, args.size)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{args.threads} thread(s); RIVA size: {args.size}", flush=True)
        if args.throughput_tweets:
            source = write_tweets(workdir / "throughput.jsonl", pool, args.throughput_tweets)
            t = throughput(tagger_file, cache, source, workdir, args.repeat)
            print(f"throughput on {t['tweets']} tweets (best of {args.repeat}): SequenceTagger.predict on pre-built "
                  f"Sentences {t['predict_tps']:.1f} tweets/s ({t['predict_s']:.2f} s); python -m flair_riva.tag "
                  f"(tag_file) {t['cli_tps']:.1f} tweets/s ({t['cli_s']:.2f} s); CLI / predict time "
                  f"{t['ratio']:.2f}x; predict in chunks of 1024 {t['chunked_tps']:.1f} tweets/s, CLI / chunked "
                  f"{t['chunked_ratio']:.2f}x", flush=True)
        for n in args.sizes:
            source = write_tweets(workdir / f"tweets-{n}.jsonl", pool, n)
            r = peak_rss(tagger_file, cache, source, workdir, args.threads)
            assert r["written"] == n, r
            print(f"{n} tweets: {r['seconds']:.1f} s, {n / r['seconds']:.1f} tweets/s, peak RSS "
                  f"{r['peak_rss_mb']:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
