"""The built-in demo world (DESIGN §4): a small, deterministic, synthetic multimodal tweet world in the
formats of :mod:`flair_riva.datasets`, on which RIVA's point shows in minutes on a CPU, even with a
randomly initialised ResNet.

What it contains (sizes at ``scale=1``; ``scale="tiny"`` = 0.1 for tests)::

    relation.tsv            ~1200 labelled text-image relation pairs (text, image, image_adds, text_is_represented)
    unlabelled.jsonl        ~3000 unlabelled pairs {"text", "image"}
    images/<kind>_<n>.png   25 images per kind, shared by the pairs (paths in the data files are relative to root)
    ner/train.txt dev.txt test.txt   ~600/200/200 tweets in the IMGID format, tags PER/LOC/ORG/OTHER
    ner/images/<id>.jpg     one JPEG per NER tweet (a JPEG encoding of a pool image; byte-identical copies
                            of the same pool image, so a content-hash feature cache computes each once)
    ner/relation_truth.tsv  per NER tweet: image_id, image_adds (ground truth), split, image_kind, entity_type
    README.txt, manifest.json (written last; a complete world with the same seed and scale is reused)

The world's logic (why the image matters):

* Image kinds differ in colour and layout statistics that survive random conv features and average
  pooling: ``person`` (skin-tone face on a plain mid-colour background), ``location`` (sky-blue top,
  green/brown ground, a sun), ``organisation`` (white background, saturated logo, dark text bars),
  and the unrelated kinds ``food`` (white plate on a red checkered cloth) and ``meme`` (white text bars
  on black). Every image has its own colour, position and noise jitter.
* Entity names are ambiguous (Jordan, Paris, Washington, ... can be a person, a place or an
  organisation). A tweet whose image *adds* (label 1) shows an image of its entity's kind
  (person photo for PER, landscape for LOC, logo for ORG); an unrelated tweet (label 0) shows food, a
  meme, or an image of another kind.
* Relation data: related tweets use photo phrasing ("look at", "pic of", ...) 75% of the time,
  unrelated tweets opinion/news phrasing 75% of the time; the entity context is type-neutral or
  type-revealing in both classes, so text alone is imperfect, and the label is a function of text and
  image together (image kind vs the type the context reveals).
* NER: in related tweets the context is type-neutral ("can't stop thinking about Jordan today"), so
  only the image tells PER/LOC/ORG; in unrelated tweets the context reveals the type ("Jordan scored
  30 points", "flying to Jordan", "Jordan announced record profits") and the image is unrelated and
  may mislead.
* Unlabelled pairs follow the relation-data mixture, so the teacher can pseudo-label them.
* World v2 (the image predicts words, so RIVA's language model has a reason to read it): in relation
  and unlabelled pairs whose image adds and whose context is neutral, half name what the image shows
  right after the entity (:data:`SHOWN`: "look at Jordan on stage", "Paris skyline", "Chelsea logo"),
  and 30% open with a word for the picture (:data:`OPENER`: "portrait :", "view :", "branding :").
  For an ambiguous name nothing but the image tells which words come. Pairs whose image doesn't add
  never carry them (their image predicts nothing), and the NER tweets never do (there only the image
  tells the type). The manifest records ``image_information_nats_per_token``: the nats per predicted
  word an ideal LM saves through those SHOWN and OPENER words (:func:`image_information`). It is not a
  ceiling for a model's image gain: the image also tells the phrasing (photo cues are three times as
  frequent in related pairs) and rules out a type in unrelated pairs, and trained models exceed it.
  Only half of the related neutral pairs carry SHOWN words, so their absence is no text cue for
  "doesn't add" (with all of them carrying the words, the gate learnt that shortcut and stayed half
  closed on the related NER tweets).
* Variant ``unseen_ner_contexts`` (:func:`generate_demo_world`): NER train's unrelated tweets reveal their
  type through the first :data:`SEEN_REVEAL` revealing contexts of each type only, dev and test through the
  others only; what pretraining reads is unchanged. There a tagger must take the type of those tweets from
  RIVA's vectors, so Table 6's claim for images that don't add can show (the default world puts every RIVA
  tagger near 99 F1 on them).

This module defines the world (:class:`DemoWorld`) and writes it (:func:`generate_demo_world`, the
command); the pictures are drawn by :mod:`flair_riva.demo_images` and the tweets made by
:mod:`flair_riva.demo_tweets`.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flair_riva.demo_images import IMAGE_KINDS, IMAGE_SIZE, _encode, draw_image
from flair_riva.demo_tweets import (
    AMBIGUOUS_NAMES,
    EMOJI,
    FILLERS,
    HASHTAGS,
    MAX_TOKENS,
    MENTIONS,
    MIN_TOKENS,
    NEUTRAL,
    NEUTRAL_TAILS,
    OPENER,
    OPINION_CUES,
    P_OPENER,
    P_SHOWN,
    PHOTO_CUES,
    PHOTO_INLINE,
    REVEAL,
    SECONDARY,
    SEEN_REVEAL,
    SHOWN,
    TYPE_KIND,
    UNAMBIGUOUS,
    UNRELATED_KINDS,
    _ner_tweet,
    _pair_tweet,
    _Tweet,
    _TweetMaker,
    image_information,
)
from flair_riva.io import atomic_write_bytes

log = logging.getLogger("flair")

__all__ = ["DemoWorld", "generate_demo_world", "default_demo_root", "main", "WORLD_VERSION", "IMAGE_KINDS"]
# the images (flair_riva.demo_images) and the tweet templates (flair_riva.demo_tweets), importable here as before
__all__ += ["IMAGE_SIZE", "draw_image", "AMBIGUOUS_NAMES", "EMOJI", "FILLERS", "HASHTAGS", "MAX_TOKENS", "MENTIONS",
            "MIN_TOKENS", "NEUTRAL", "NEUTRAL_TAILS", "OPENER", "OPINION_CUES", "P_OPENER", "P_SHOWN", "PHOTO_CUES",
            "PHOTO_INLINE", "REVEAL", "SECONDARY", "SEEN_REVEAL", "SHOWN", "TYPE_KIND", "UNAMBIGUOUS",
            "UNRELATED_KINDS", "image_information"]

WORLD_VERSION = 2
SCALE_PRESETS = {"default": 1.0, "tiny": 0.1}

# base sizes at scale 1
# v2: 1200 labelled pairs (600 in v1): with 432 training pairs the teacher overfit (test F1 ~75)
_BASE = {"pool_per_kind": 25, "relation": 1200, "unlabelled": 3000, "ner_train": 600, "ner_dev": 200, "ner_test": 200}
_MIN = {"pool_per_kind": 4, "relation": 40, "unlabelled": 60, "ner_train": 30, "ner_dev": 12, "ner_test": 12}


@dataclass
class DemoWorld:
    """Where the files of a generated demo world are.

    The image paths inside ``relation_file`` and ``unlabelled_file`` are relative to ``root`` (the
    folder of those files, e.g. ``images/person_003.png``), so read them with ``image_dir=None``
    (or ``image_dir=root``). ``image_dir`` is the folder that holds those pool images. The NER corpus
    loads with ``TwitterMNERCorpus(ner_dir)`` (its images are in ``ner_dir / "images"``, the default).
    """

    root: Path
    relation_file: Path
    unlabelled_file: Path
    ner_dir: Path
    image_dir: Path
    ner_image_dir: Path | None = None
    relation_truth_file: Path | None = None
    manifest_file: Path | None = None
    seed: int = 13
    scale: float = 1.0
    counts: dict = field(default_factory=dict)
    unseen_ner_contexts: bool = False
    """The variant whose NER dev/test tweets reveal types through contexts the NER train split never uses
    (:func:`generate_demo_world`)."""

    def ner_corpus(self, **corpusargs):
        """The NER part as a :class:`~flair_riva.datasets.TwitterMNERCorpus` (tags PER/LOC/ORG/OTHER)."""
        from flair_riva.datasets import TwitterMNERCorpus

        corpusargs.setdefault("name", "demo-world")
        return TwitterMNERCorpus(self.ner_dir, **corpusargs)

    def relation_truth(self) -> dict[str, int]:
        """image_id -> image_adds (1 related, 0 unrelated) for every NER tweet."""
        from flair_riva.datasets import read_relation_truth

        assert self.relation_truth_file is not None
        return read_relation_truth(self.relation_truth_file)

    def unlabelled_truth(self) -> dict[tuple[str, str], PairTruth]:
        """``(text, image file name) -> PairTruth`` for every pair of ``unlabelled_file``, by replaying the
        generator with the world's seed and scale (no file records it: a pretraining run sees only the
        teacher's pseudo-labels). ``recipes/pseudo_label_quality.py`` scores a run's pseudo-labels with it.

        Raises ValueError when the file is not what the generator writes for this seed and scale."""
        sizes = _sizes(self.scale)
        rows = [json.loads(line) for line in self.unlabelled_file.read_text(encoding="utf-8").splitlines() if line]
        truth, i = {}, -1
        pairs = _unlabelled_pairs(self.seed, sizes["unlabelled"], _pool_names(sizes["pool_per_kind"]))
        for i, (tw, image) in enumerate(pairs):
            if i >= len(rows) or rows[i] != {"text": tw.text, "image": image}:
                raise ValueError(f"{self.unlabelled_file} line {i + 1} is not the generator's pair for seed "
                                 f"{self.seed}, scale {self.scale}: regenerate the world")
            truth[(tw.text, Path(image).name)] = PairTruth(tw.related, tw.context, tw.image_kind, tw.entity_type)
        if len(rows) != i + 1:
            raise ValueError(f"{self.unlabelled_file} has {len(rows)} pairs, the generator {i + 1}")
        return truth


@dataclass(frozen=True)
class PairTruth:
    """What the generator knows of an unlabelled pair and the pseudo-labels cannot: its true relation."""

    image_adds: int
    """1 when the image adds to the meaning (the label the teacher's pseudo-label should be)."""
    context: str
    """``"neutral"`` or ``"reveal"``: whether the text tells the entity's type."""
    image_kind: str
    entity_type: str


def _pool_names(pool_per_kind: int) -> dict[str, list[str]]:
    """The pool images' paths relative to the world's root, by kind, in the order the generator draws them."""
    return {kind: [f"images/{kind}_{n:03d}.png" for n in range(pool_per_kind)] for kind in IMAGE_KINDS}


def _unlabelled_pairs(seed: int, n: int, pool: dict[str, list[str]]) -> Iterator[tuple[_Tweet, str]]:
    """The unlabelled pairs (tweet, pool image path) of a world, in file order: the one definition that
    :func:`generate_demo_world` writes and :meth:`DemoWorld.unlabelled_truth` replays."""
    maker = _TweetMaker(random.Random(f"flair-riva-demo/{seed}/unlabelled"))
    for _ in range(n):
        tw = _pair_tweet(maker, p_neutral_related=0.85)
        yield tw, maker.rng.choice(pool[tw.image_kind])


def default_demo_root(unseen_ner_contexts: bool = False) -> Path:
    """``flair.cache_root / "riva" / "demo-world-v2"`` (``$FLAIR_CACHE_ROOT`` or ``~/.flair``); the
    ``unseen_ner_contexts`` variant has a folder of its own, ``demo-world-v2-unseen-ner-contexts``."""
    import flair

    name = f"demo-world-v{WORLD_VERSION}" + ("-unseen-ner-contexts" if unseen_ner_contexts else "")
    return Path(flair.cache_root) / "riva" / name


def _tsv_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _resolve_scale(scale: float | str) -> float:
    if isinstance(scale, str):
        if scale in SCALE_PRESETS:
            return SCALE_PRESETS[scale]
        try:
            scale = float(scale)
        except ValueError:
            raise ValueError(f"scale must be a number or one of {sorted(SCALE_PRESETS)}, got {scale!r}") from None
    scale = float(scale)
    if not (0 < scale <= 50):
        raise ValueError(f"scale must be in (0, 50], got {scale}")
    return scale


def _sizes(scale: float) -> dict[str, int]:
    return {k: max(_MIN[k], round(v * scale)) for k, v in _BASE.items()}


def _world(root: Path, seed: int, scale: float, counts: dict | None = None,
           unseen_ner_contexts: bool = False) -> DemoWorld:
    return DemoWorld(
        root=root, relation_file=root / "relation.tsv", unlabelled_file=root / "unlabelled.jsonl",
        ner_dir=root / "ner", image_dir=root / "images", ner_image_dir=root / "ner" / "images",
        relation_truth_file=root / "ner" / "relation_truth.tsv", manifest_file=root / "manifest.json",
        seed=seed, scale=scale, counts=dict(counts or {}), unseen_ner_contexts=unseen_ner_contexts,
    )


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == "flair_riva.demo" else None


def _manifest_complete(root: Path, manifest: dict) -> bool:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, size in files.items():
        try:
            if (root / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


_UNSEEN_NOTE = """\
VARIANT unseen NER contexts: in ner/train.txt the tweets whose image doesn't add reveal their entity's type
only through the first {seen} revealing contexts of each type, in dev.txt and test.txt only through the
others. relation.tsv and unlabelled.jsonl are those of the default world and use all of them.

"""

_README = """\
flair-riva demo world (generated by `python -m flair_riva.demo`, world version {version}, seed {seed}, scale {scale})
=================================================================================================

A small synthetic multimodal tweet world in the formats of flair_riva.datasets. It is deterministic:
the same seed and scale give the same bytes. It shows what RIVA is for: entity names are ambiguous
(Jordan, Paris, Washington, ... can be a person, a place or an organisation), and in tweets whose
image adds to the meaning the image shows which; in the others the image is unrelated and can mislead.

Files
-----
relation.tsv           {relation} labelled text-image relation pairs (task 1): text, image, image_adds
                       (1 = the image adds to the meaning), text_is_represented. {relation_pos} are positive.
unlabelled.jsonl       {unlabelled} unlabelled pairs {{"text": ..., "image": ...}} (task 2, pseudo-labelling).
images/                {pool} images ({per_kind} per kind): person_*, location_*, organisation_*
                       (related kinds) and food_*, meme_* (unrelated kinds), 64x64 PNG. The image paths
                       in relation.tsv and unlabelled.jsonl are relative to this folder's parent (the root).
ner/train.txt dev.txt test.txt
                       {ner_train} / {ner_dev} / {ner_test} tweets in the IMGID format (IMGID:<id>, token<TAB>tag,
                       blank line), tags O, B-/I- PER, LOC, ORG, OTHER.
ner/images/<id>.jpg    the image of each NER tweet (JPEG; tweets that share a pool image have byte-identical files).
ner/relation_truth.tsv per NER tweet: image_id, image_adds (ground truth: 1 related, 0 unrelated), split,
                       image_kind, entity_type (of the tweet's main entity).
manifest.json          seed, scale, counts and the size of every file (written last).

How the world is built
----------------------
Image kinds differ in colour/layout statistics that survive a randomly initialised ResNet: person (a
face on a plain background), location (sky, ground, sun), organisation (logo and text bars on white),
food (a plate on a red checkered cloth), meme (white text bars on black).
Related tweets (image adds) show an image of the kind of their entity (person for PER, landscape for
LOC, logo for ORG) and use photo phrasing ("look at", "pic of", ...) 75% of the time; unrelated
tweets show food, a meme or another kind, and use opinion/news phrasing 75% of the time.
In the NER corpus, related tweets have a type-neutral context ("can't stop thinking about Jordan
today"): only the image tells the type. Unrelated tweets reveal the type in the text ("Jordan scored
30 points", "flying to Jordan", "Jordan announced record profits").
World v2: in the relation and unlabelled pairs whose image adds, the image predicts words of the text
(what it shows, right after the entity: "Paris skyline", "Jordan on stage"; an opening "portrait :" or
"view :"), so a language model gains from reading the image: about {info} nats per predicted word for
an ideal model (image_information_nats_per_token in manifest.json).

Use
---
    from flair_riva.datasets import TwitterMNERCorpus, read_relation_pairs, iter_unlabelled_pairs
    corpus = TwitterMNERCorpus("ROOT/ner")           # ROOT = the folder of this README
    pairs = read_relation_pairs("ROOT/relation.tsv")  # image paths resolve relative to ROOT
"""


def generate_demo_world(
    root: str | Path | None = None,
    seed: int = 13,
    scale: float | str = 1.0,
    *,
    size: float | str | None = None,
    force: bool = False,
    unseen_ner_contexts: bool = False,
) -> DemoWorld:
    """Write the demo world under ``root`` (default :func:`default_demo_root`) and return where its files are.

    Args:
        root: output folder (created if needed; files of a different world written there before are removed).
        seed: the seed of every random choice; the same seed and scale give byte-identical files.
        scale: size factor (1.0 = 1200 relation pairs, 3000 unlabelled pairs, 600/200/200 NER tweets,
            125 pool images), or a preset name: ``"default"`` (1.0), ``"tiny"`` (0.1, for tests).
        size: alias of ``scale`` (takes precedence when given).
        force: regenerate even when ``root`` holds a complete world with the same seed and scale.
        unseen_ner_contexts: the variant where the NER train split's unrelated tweets reveal their type only
            through the first :data:`SEEN_REVEAL` contexts of each type and dev/test only through the others.
            The relation and unlabelled pairs (everything pretraining reads) are byte-identical to the
            default world's and use all the contexts, so only RIVA's pretrained language model has seen the
            dev/test ones: the text tagger cannot learn them from NER train, and a misleading image that
            reaches RIVA's vectors (``-RGN``) can mislead there. Its default ``root`` is a folder of its own.

    Idempotent: when ``root/manifest.json`` describes a complete world (every file present with its
    recorded size) with the same seed, scale, world version and variant, nothing is written and that world is
    returned. The manifest is written last, atomically, so an interrupted run is regenerated.
    """
    start = time.perf_counter()
    scale = _resolve_scale(size if size is not None else scale)
    seed = int(seed)
    unseen_ner_contexts = bool(unseen_ner_contexts)
    root = Path(root).expanduser() if root is not None else default_demo_root(unseen_ner_contexts)
    old = _read_manifest(root)
    if (not force and old is not None and old.get("world_version") == WORLD_VERSION and old.get("seed") == seed
            and old.get("scale") == scale and bool(old.get("unseen_ner_contexts")) == unseen_ner_contexts
            and _manifest_complete(root, old)):
        log.info("reusing the demo world in %s (seed %d, scale %g)", root, seed, scale)
        return _world(root, seed, scale, old.get("counts"), unseen_ner_contexts)
    root.mkdir(parents=True, exist_ok=True)
    if old is not None:
        (root / "manifest.json").unlink(missing_ok=True)  # the world is incomplete until the new manifest exists

    sizes = _sizes(scale)
    written: dict[str, int] = {}

    def put(rel: str, data: bytes) -> None:
        atomic_write_bytes(root / rel, data)
        written[rel] = len(data)

    # pool images: one numpy stream per kind, so the kinds do not shift each other
    pool = _pool_names(sizes["pool_per_kind"])
    pixels: dict[str, np.ndarray] = {}
    for k, kind in enumerate(IMAGE_KINDS):
        img_rng = np.random.default_rng([seed, 1000 + k])
        for rel in pool[kind]:
            array = draw_image(kind, img_rng)
            pixels[rel] = array
            put(rel, _encode(array, "PNG"))

    # relation pairs and unlabelled pairs
    relation_counts: Counter = Counter()
    maker = _TweetMaker(random.Random(f"flair-riva-demo/{seed}/relation"))
    lines = ["text\timage\timage_adds\ttext_is_represented"]
    for _ in range(sizes["relation"]):
        tw = _pair_tweet(maker, p_neutral_related=0.6, p_shown=0.0, p_opener=0.0)
        image = maker.rng.choice(pool[tw.image_kind])
        represented = int(maker.rng.random() < (0.7 if tw.related else 0.15))
        lines.append(f"{_tsv_field(tw.text)}\t{image}\t{tw.related}\t{represented}")
        relation_counts[tw.related] += 1
    put("relation.tsv", ("\n".join(lines) + "\n").encode("utf-8"))

    rows = []
    info_nats, lm_predictions = 0.0, 0
    for tw, image in _unlabelled_pairs(seed, sizes["unlabelled"], pool):
        info_nats += image_information(tw)
        lm_predictions += 2 * len(tw.tokens)
        rows.append(json.dumps({"text": tw.text, "image": image}, ensure_ascii=False))
    put("unlabelled.jsonl", ("\n".join(rows) + "\n").encode("utf-8"))

    # NER corpus: one JPEG per tweet, byte-identical for tweets that share a pool image
    jpeg_cache: dict[str, bytes] = {}
    truth = ["image_id\timage_adds\tsplit\timage_kind\tentity_type"]
    ner_counts: dict[str, int] = {}
    for split in ("train", "dev", "test"):
        maker = _TweetMaker(random.Random(f"flair-riva-demo/{seed}/ner/{split}"))
        reveal = None
        if unseen_ner_contexts:
            reveal = {t: (c[:SEEN_REVEAL] if split == "train" else c[SEEN_REVEAL:]) for t, c in REVEAL.items()}
        blocks = []
        n_split = sizes[f"ner_{split}"]
        for i in range(n_split):
            tw = _ner_tweet(maker, reveal)
            image_id = f"{split}_{i:04d}"
            pool_rel = maker.rng.choice(pool[tw.image_kind])
            if pool_rel not in jpeg_cache:
                jpeg_cache[pool_rel] = _encode(pixels[pool_rel], "JPEG")
            put(f"ner/images/{image_id}.jpg", jpeg_cache[pool_rel])
            body = "\n".join(f"{tok}\t{tag}" for tok, tag in zip(tw.tokens, tw.tags))
            blocks.append(f"IMGID:{image_id}\n{body}\n")
            truth.append(f"{image_id}\t{tw.related}\t{split}\t{tw.image_kind}\t{tw.entity_type}")
        ner_counts[split] = n_split
        put(f"ner/{split}.txt", "\n".join(blocks).encode("utf-8"))
    put("ner/relation_truth.tsv", ("\n".join(truth) + "\n").encode("utf-8"))

    counts = {
        "relation": sizes["relation"], "relation_positive": relation_counts[1], "unlabelled": sizes["unlabelled"],
        "ner_train": ner_counts["train"], "ner_dev": ner_counts["dev"], "ner_test": ner_counts["test"],
        "pool_images": len(pixels), "pool_per_kind": sizes["pool_per_kind"],
        "unique_ner_images": len(jpeg_cache),
        "image_information_nats_per_token": round(info_nats / max(lm_predictions, 1), 5),
    }
    variant = _UNSEEN_NOTE.format(seen=SEEN_REVEAL) if unseen_ner_contexts else ""
    put("README.txt", variant.encode("utf-8") + _README.format(
        version=WORLD_VERSION, seed=seed, scale=scale, relation=counts["relation"],
        relation_pos=counts["relation_positive"], unlabelled=counts["unlabelled"], pool=counts["pool_images"],
        per_kind=counts["pool_per_kind"], ner_train=counts["ner_train"], ner_dev=counts["ner_dev"],
        ner_test=counts["ner_test"], info=counts["image_information_nats_per_token"],
    ).encode("utf-8"))

    # files of the previous world that this one does not have
    if old is not None and isinstance(old.get("files"), dict):
        for rel in old["files"]:
            if rel not in written and ".." not in Path(rel).parts and not Path(rel).is_absolute():
                (root / rel).unlink(missing_ok=True)

    manifest = {
        "generator": "flair_riva.demo", "world_version": WORLD_VERSION, "seed": seed, "scale": scale,
        "counts": counts, "files": dict(sorted(written.items())),
    }
    if unseen_ner_contexts:  # only then: the default world's manifest stays byte-identical
        manifest["unseen_ner_contexts"] = True
    atomic_write_bytes(root / "manifest.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    log.info("wrote the demo world to %s in %.1f s (seed %d, scale %g: %d relation pairs, %d unlabelled pairs, "
             "NER %d/%d/%d tweets, %d images)", root, time.perf_counter() - start, seed, scale, counts["relation"],
             counts["unlabelled"], counts["ner_train"], counts["ner_dev"], counts["ner_test"], counts["pool_images"])
    return _world(root, seed, scale, counts, unseen_ner_contexts)


def main(argv: list[str] | None = None) -> int:
    """``python -m flair_riva.demo --out DIR [--seed N] [--scale X|tiny|default] [--force]``."""
    parser = argparse.ArgumentParser(
        prog="python -m flair_riva.demo",
        description="Write the flair-riva demo world: a deterministic synthetic multimodal tweet world "
                    "(relation pairs, unlabelled pairs, an IMGID NER corpus and images).",
    )
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: FLAIR_CACHE_ROOT/riva/demo-world-v2)")
    parser.add_argument("--seed", type=int, default=13, help="random seed (default 13)")
    parser.add_argument("--scale", default="1.0",
                        help="size factor, or 'tiny' (0.1) / 'default' (1.0); default 1.0")
    parser.add_argument("--force", action="store_true", help="regenerate even if a complete world is there")
    parser.add_argument("--unseen-ner-contexts", action="store_true",
                        help="the variant whose NER dev/test tweets reveal types through contexts NER train never "
                             "uses (default --out: FLAIR_CACHE_ROOT/riva/demo-world-v2-unseen-ner-contexts)")
    args = parser.parse_args(argv)
    try:
        scale = _resolve_scale(args.scale)
    except ValueError as err:
        parser.error(str(err))
    world = generate_demo_world(args.out, seed=args.seed, scale=scale, force=args.force,
                                unseen_ner_contexts=args.unseen_ner_contexts)
    c = world.counts
    print(f"demo world in {world.root} (seed {world.seed}, scale {world.scale:g})")
    print(f"  relation pairs:   {world.relation_file} ({c.get('relation')} pairs, "
          f"{c.get('relation_positive')} image adds)")
    print(f"  unlabelled pairs: {world.unlabelled_file} ({c.get('unlabelled')} pairs)")
    print(f"  NER corpus:       {world.ner_dir} ({c.get('ner_train')}/{c.get('ner_dev')}/{c.get('ner_test')} tweets)")
    print(f"  images:           {world.image_dir} ({c.get('pool_images')} pool images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
