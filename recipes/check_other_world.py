"""Does the image path work on a world other than the demo world? (the mechanism, not a fit to one generator)

Writes a second synthetic world with its own generator -- flat geometric images (a red disc, a green
triangle on blue, a yellow square on black; unrelated kinds: noise and stripes), other ambiguous names,
other words -- in the package's public formats (relation TSV, unlabelled JSONL, an IMGID corpus), then

1. pretrains RIVA through the CLI (``python -m flair_riva.pretrain --relation-data ... --unlabelled ...``)
   with the quickstart's small-data settings, a frozen random-init ResNet-18 and 8 epochs;
2. runs the entity-type probe (``python -m flair_riva.probe``) on the world's NER corpus.

It passes when the probe reads the type of text-ambiguous entities in tweets whose image adds with
>= 80 % accuracy from the RIVA vectors while shuffled images stay near chance (< chance + 15 points).

Usage: ``python recipes/check_other_world.py [--output runs/other-world] [--epochs 8]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

TYPES = ("PER", "LOC", "ORG")
KIND = {"PER": "disc", "LOC": "triangle", "ORG": "square"}
UNRELATED = ("noise", "stripes")
NAMES = ("Morgan", "Rio", "Skye", "Kai", "Reese", "Logan", "Quinn", "Sierra", "Dakota", "Avery")
PLAIN = {"PER": ("Ana Ruiz", "Ben Okafor"), "LOC": ("Hollow Bay", "Stonebridge"), "ORG": ("Quark Inc", "Lumen Co")}
NEUTRAL = ("who else loves {E} here", "big news about {E} honestly", "{E} all day", "waiting for {E} now",
           "can we talk about {E} please")
REVEAL = {"PER": ("{E} sang at the gala", "{E} broke the record", "{E} gave a speech tonight"),
          "LOC": ("sunny weekend in {E}", "we drove to {E} yesterday", "the mayor of {E} resigned"),
          "ORG": ("{E} cut prices again", "{E} released earnings", "{E} opened an office")}
DESCRIBED = {"PER": ("grinning widely", "in uniform", "mid jump"), "LOC": ("by the lake", "coastline view", "at dawn"),
             "ORG": ("mascot", "product launch", "trademark")}


def draw(kind: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size, 3))
    cy, cx, r = rng.uniform(20, 44), rng.uniform(20, 44), rng.uniform(10, 18)
    if kind == "disc":
        img[:] = (250, 250, 250)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (220, 30, 30)
    elif kind == "triangle":
        img[:] = (40, 80, 200)
        img[(yy > cy - r) & (np.abs(xx - cx) < (yy - cy + r) * 0.6) & (yy < cy + r)] = (30, 190, 60)
    elif kind == "square":
        img[:] = (10, 10, 10)
        img[(np.abs(yy - cy) < r) & (np.abs(xx - cx) < r)] = (240, 220, 20)
    elif kind == "noise":
        img[:] = rng.uniform(0, 255, (size, size, 3))
    else:
        img[:] = np.where(((xx + yy) // rng.integers(3, 8)) % 2 == 0, 200, 60)[..., None]
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def tweet(rng: random.Random, related: bool, for_ner: bool) -> tuple[list[str], list[str], str, int]:
    """Tokens, BIO tags, image kind, and whether the image adds."""
    etype = rng.choice(TYPES)
    name = rng.choice(NAMES) if rng.random() < 0.85 else rng.choice(PLAIN[etype])
    if related:
        template, kind = rng.choice(NEUTRAL), KIND[etype]
        if not for_ner and rng.random() < 0.6:  # the image predicts the words after the entity
            template = template.replace("{E}", "{E} " + rng.choice(DESCRIBED[etype]))
    else:
        template = rng.choice(REVEAL[etype])
        kind = rng.choice(UNRELATED) if rng.random() < 0.6 else KIND[rng.choice([t for t in TYPES if t != etype])]
    tokens, tags = [], []
    for word in template.split():
        if word == "{E}":
            parts = name.split()
            tokens += parts
            tags += [f"B-{etype}"] + [f"I-{etype}"] * (len(parts) - 1)
        else:
            tokens.append(word)
            tags.append("O")
    return tokens, tags, kind, int(related)


def write_world(root: Path, seed: int = 7) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    (root / "ner").mkdir(exist_ok=True)
    nrng = np.random.default_rng(seed)
    pool = {}
    for kind in list(KIND.values()) + list(UNRELATED):
        pool[kind] = []
        for i in range(20):
            rel = f"images/{kind}_{i:02d}.png"
            Image.fromarray(draw(kind, nrng)).save(root / rel)
            pool[kind].append(rel)
    rng = random.Random(seed)
    rows = ["text\timage\timage_adds"]
    for _ in range(1200):
        tokens, _, kind, adds = tweet(rng, rng.random() < 0.45, for_ner=False)
        rows.append(f"{' '.join(tokens)}\t{rng.choice(pool[kind])}\t{adds}")
    (root / "relation.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    lines = []
    for _ in range(3000):
        tokens, _, kind, _ = tweet(rng, rng.random() < 0.5, for_ner=False)
        lines.append(json.dumps({"text": " ".join(tokens), "image": rng.choice(pool[kind])}))
    (root / "unlabelled.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    truth = ["image_id\timage_adds"]
    for split, n in (("train", 600), ("dev", 200), ("test", 200)):
        blocks = []
        for i in range(n):
            tokens, tags, kind, adds = tweet(rng, rng.random() < 0.5, for_ner=True)
            image_id = f"{split}{i:04d}"
            buf = io.BytesIO()
            Image.open(root / rng.choice(pool[kind])).convert("RGB").save(buf, format="JPEG", quality=92)
            (root / "ner" / "images").mkdir(exist_ok=True)
            (root / "ner" / "images" / f"{image_id}.jpg").write_bytes(buf.getvalue())
            blocks.append(f"IMGID:{image_id}\n" + "\n".join(f"{t}\t{g}" for t, g in zip(tokens, tags)) + "\n")
            truth.append(f"{image_id}\t{adds}")
        (root / "ner" / f"{split}.txt").write_text("\n".join(blocks), encoding="utf-8")
    (root / "ner" / "relation_truth.tsv").write_text("\n".join(truth) + "\n", encoding="utf-8")
    return {"relation": root / "relation.tsv", "unlabelled": root / "unlabelled.jsonl", "ner": root / "ner"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("runs/other-world"))
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = args.output.resolve()
    files = write_world(out / "world")
    run = out / "riva"
    if not (run / "final" / "config.json").exists():
        subprocess.run([sys.executable, "-m", "flair_riva.pretrain", "--relation-data", str(files["relation"]),
                        "--unlabelled", str(files["unlabelled"]), "--output", str(run), "--overwrite",
                        "--backbone", "resnet18", "--backbone-weights", "none", "--freeze-backbone",
                        "--feature-cache", str(out / "feature-cache"), "--optimizer", "adam", "--lr", "1e-3",
                        "--word-dim", "100", "--rgn-hidden-size", "64", "--rgn-layers", "1",
                        "--vlcn-hidden-size", "128", "--vlcn-layers", "1", "--teacher-epochs", "15",
                        "--epochs", str(args.epochs), "--no-progress"], check=True)
    subprocess.run([sys.executable, "-m", "flair_riva.probe", "--model", str(run / "final"), "--corpus",
                    str(files["ner"]), "--feature-cache", str(out / "feature-cache"), "--relation-truth",
                    str(files["ner"] / "relation_truth.tsv"), "--output", str(out / "probe.json")], check=True)
    report = json.loads((out / "probe.json").read_text(encoding="utf-8"))
    key = "image adds, text-ambiguous"
    own, shuffled, chance = report["accuracy"]["own"][key], report["accuracy"]["shuffled"][key], report["chance"][key]
    ok = own >= 0.8 and shuffled < chance + 0.15
    print(f"other world: probe on {key} entities: own images {100 * own:.1f} %, shuffled {100 * shuffled:.1f} %, "
          f"chance {100 * chance:.1f} % -> {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
