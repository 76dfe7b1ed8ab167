"""Tests of the demo world generator (flair_riva.demo)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter, defaultdict
from pathlib import Path

import flair
import numpy as np
import pytest
from PIL import Image

from flair_riva.datasets import TwitterMNERCorpus, iter_unlabelled_pairs, read_relation_pairs
from flair_riva.demo import (
    AMBIGUOUS_NAMES,
    FILLERS,
    IMAGE_KINDS,
    NEUTRAL,
    NEUTRAL_TAILS,
    OPINION_CUES,
    PHOTO_CUES,
    PHOTO_INLINE,
    REVEAL,
    SECONDARY,
    TYPE_KIND,
    default_demo_root,
    generate_demo_world,
    main,
)
from flair_riva.text import tokenize_tweet


@pytest.fixture(scope="module")
def full_world(tmp_path_factory):
    """The default-size world (generation takes well under a second)."""
    start = time.perf_counter()
    world = generate_demo_world(tmp_path_factory.mktemp("full") / "world", seed=13)
    world.elapsed = time.perf_counter() - start
    return world


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return generate_demo_world(tmp_path_factory.mktemp("tiny") / "world", seed=13, scale="tiny")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path, tiny_world):
    again = generate_demo_world(tmp_path / "again", seed=13, scale="tiny")
    a, b = _files(tiny_world.root), _files(again.root)
    assert a.keys() == b.keys() and len(a) > 50
    assert a == b  # text files and images, byte for byte
    other = _files(generate_demo_world(tmp_path / "other", seed=14, scale="tiny").root)
    for name in ("relation.tsv", "unlabelled.jsonl", "ner/train.txt", "images/person_000.png"):
        assert other[name] != a[name]


def test_sizes_balance_and_speed(full_world):
    c = full_world.counts
    assert full_world.elapsed < 20
    assert (c["relation"], c["unlabelled"], c["ner_train"], c["ner_dev"], c["ner_test"]) == (1200, 3000, 600, 200, 200)
    pairs = read_relation_pairs(full_world.relation_file)
    assert len(pairs) == 1200
    positive = sum(p.label for p in pairs) / len(pairs)
    assert 0.38 <= positive <= 0.52  # ~45%, as the paper's ~44%
    assert sum(1 for _ in iter_unlabelled_pairs(full_world.unlabelled_file)) == 3000
    truth = full_world.relation_truth()
    assert len(truth) == 1000 and 0.4 <= sum(truth.values()) / len(truth) <= 0.6
    # unique image contents stay small (cheap feature extraction)
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in full_world.root.rglob("*.png")}
    digests |= {hashlib.sha256(p.read_bytes()).hexdigest() for p in full_world.ner_image_dir.glob("*.jpg")}
    assert len(digests) <= 250


def test_tiny_preset_is_fast_and_small(tmp_path):
    start = time.perf_counter()
    world = generate_demo_world(tmp_path / "w", scale=0.1)
    assert time.perf_counter() - start < 2
    assert world.counts["ner_train"] == 60 and world.counts["relation"] == 120
    assert generate_demo_world(tmp_path / "w", size="tiny").counts == world.counts  # `size` alias, reused


def test_demo_corpus_loads_and_every_image_decodes(tiny_world):
    corpus = tiny_world.ner_corpus()
    assert (len(corpus.train), len(corpus.dev), len(corpus.test)) == (60, 20, 20)
    for split in ("train", "dev", "test"):
        assert corpus.image_stats[split]["missing"] == 0
    tags = Counter(sp.tag for s in corpus.get_all_sentences() for sp in s.get_spans("ner"))
    assert set(tags) == {"PER", "LOC", "ORG", "OTHER"}
    for sentence in corpus.get_all_sentences():
        with Image.open(sentence.get_metadata("image_path")) as img:
            assert img.format == "JPEG"
            img.convert("RGB").load()
    pairs = read_relation_pairs(tiny_world.relation_file)
    unlabelled = list(iter_unlabelled_pairs(tiny_world.unlabelled_file))
    for pair in pairs + unlabelled:
        assert not pair.image.is_absolute() or pair.image.is_relative_to(tiny_world.root)
        with Image.open(pair.image) as img:
            assert img.format == "PNG" and img.size == (64, 64)
            img.load()
    raw = tiny_world.relation_file.read_text(encoding="utf-8").splitlines()[1]
    assert raw.split("\t")[1].startswith("images/")  # relative to the data file's folder


def test_tweets_follow_the_format_rules(full_world):
    corpus = TwitterMNERCorpus(full_world.ner_dir)
    truth = full_world.relation_truth()
    rows = [line.split("\t") for line in full_world.relation_truth_file.read_text().splitlines()[1:]]
    kind_of = {r[0]: r[3] for r in rows}
    type_of = {r[0]: r[4] for r in rows}
    other_templates = NEUTRAL + NEUTRAL_TAILS + PHOTO_CUES + PHOTO_INLINE + OPINION_CUES + FILLERS + tuple(
        t for ts in SECONDARY.values() for t in ts)
    reveal_words = {w for ts in REVEAL.values() for t in ts for w in t.split()} - {
        w for t in other_templates for w in t.split()} - {",", ":"}
    assert {"scored", "flying", "profits", "weather"} <= reveal_words
    types_per_name: dict[str, set] = defaultdict(set)
    related_neutral = unrelated_revealing = 0
    for s in corpus.get_all_sentences():
        tokens = [t.text for t in s]
        assert 5 <= len(tokens) <= 30
        assert tokenize_tweet(s.to_plain_string()) == tokens  # raw text tokenises back to the corpus tokens
        image_id = s.get_metadata("image_id")
        spans = s.get_spans("ner")
        in_spans = {t.idx for sp in spans for t in sp.tokens}
        context = {t.text for t in s if t.idx not in in_spans}  # words outside entities
        assert 1 <= len(spans) <= 2
        for sp in spans:
            if sp.text in AMBIGUOUS_NAMES:
                types_per_name[sp.text].add(sp.tag)
        if truth[image_id] == 1:  # the image shows the main entity's kind; the text does not reveal it
            assert kind_of[image_id] == TYPE_KIND[type_of[image_id]]
            related_neutral += not (context & reveal_words)
        else:  # the text reveals the type; the image is another kind
            assert kind_of[image_id] != TYPE_KIND[type_of[image_id]]
            unrelated_revealing += bool(context & reveal_words)
    assert related_neutral == sum(truth.values())
    assert unrelated_revealing == len(truth) - sum(truth.values())
    # names are ambiguous: most take all three types somewhere in the corpus
    assert sum(len(v) == 3 for v in types_per_name.values()) >= 15


def test_text_alone_is_imperfect_for_the_relation(full_world):
    """Photo phrasing predicts 'image adds' only ~75% of the time; the image kind is needed too."""
    pairs = read_relation_pairs(full_world.relation_file)
    photo = ("look at", "pic of", "this photo", "here is", "shot", "snapped", "took a pic")
    guess = [int(any(c in p.text for c in photo)) for p in pairs]
    accuracy = np.mean([g == p.label for g, p in zip(guess, pairs)])
    assert 0.65 <= accuracy <= 0.85
    food_or_meme = [p for p in pairs if p.image.name.startswith(("food", "meme"))]
    assert food_or_meme and all(p.label == 0 for p in food_or_meme)
    person = [p.label for p in pairs if p.image.name.startswith("person")]
    assert 0.2 < np.mean(person) < 0.9  # a person photo alone does not decide the label either


def test_image_kinds_are_separable_by_colour_statistics(full_world):
    """Coarse colour layout (what survives random conv features + pooling) tells the kinds apart."""
    feats, labels = [], []
    for kind in IMAGE_KINDS:
        for path in sorted(full_world.image_dir.glob(f"{kind}_*.png")):
            arr = np.asarray(Image.open(path).convert("RGB").resize((4, 4), Image.BILINEAR), float) / 255.0
            feats.append(arr.ravel())
            labels.append(kind)
    feats, labels = np.stack(feats), np.array(labels)
    correct = 0
    for i in range(len(labels)):  # leave-one-out nearest centroid
        mask = np.arange(len(labels)) != i
        centroids = {k: feats[mask & (labels == k)].mean(0) for k in IMAGE_KINDS}
        correct += min(centroids, key=lambda k: np.linalg.norm(feats[i] - centroids[k])) == labels[i]
    assert correct / len(labels) >= 0.95
    # ...and no two images are identical
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in full_world.image_dir.glob("*.png")]
    assert len(set(digests)) == len(digests) == 125


def test_reuse_regenerate_and_stale_files(tmp_path):
    root = tmp_path / "w"
    world = generate_demo_world(root, scale="tiny")
    manifest = json.loads(world.manifest_file.read_text())
    assert manifest["seed"] == 13 and manifest["scale"] == 0.1
    assert set(manifest["files"]) | {"manifest.json"} == set(_files(root))
    stamp = world.relation_file.stat().st_mtime_ns
    time.sleep(0.01)
    again = generate_demo_world(root, scale="tiny")
    assert again.relation_file.stat().st_mtime_ns == stamp and again.counts == world.counts
    # an incomplete world (a file missing) is regenerated
    (root / "ner" / "dev.txt").unlink()
    generate_demo_world(root, scale="tiny")
    assert (root / "ner" / "dev.txt").is_file()
    # force rewrites
    generate_demo_world(root, scale="tiny", force=True)
    assert world.relation_file.stat().st_mtime_ns != stamp
    # a different scale replaces the world and removes files the new one does not have
    generate_demo_world(root, scale=0.2)
    assert (root / "ner" / "images" / "train_0100.jpg").is_file()
    generate_demo_world(root, scale="tiny")
    assert not (root / "ner" / "images" / "train_0100.jpg").exists()
    assert len(list((root / "ner" / "images").glob("*.jpg"))) == 100


def test_bad_scale_and_default_root():
    with pytest.raises(ValueError, match="scale"):
        generate_demo_world("/nonexistent/never-written", scale="huge")
    with pytest.raises(ValueError, match="scale"):
        generate_demo_world("/nonexistent/never-written", scale=0)
    assert default_demo_root() == Path(flair.cache_root) / "riva" / "demo-world-v2"


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "cli"), "--scale", "tiny", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "60/20/20 tweets" in out and str(tmp_path / "cli") in out
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["seed"] == 5
    assert (tmp_path / "cli" / "README.txt").read_text().startswith("flair-riva demo world")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--scale", "big"])


def test_world_v2_images_predict_words_of_related_pretraining_pairs_only(full_world):
    """The effect can show: in unlabelled pairs whose image shows the entity's kind, the words after an
    ambiguous entity name what the image shows; related NER tweets keep type-neutral contexts."""
    import json

    from flair_riva.demo import AMBIGUOUS_NAMES, OPENER, SHOWN, TYPE_KIND

    kind_type = {v: k for k, v in TYPE_KIND.items()}
    agree = disagree = 0
    for line in full_world.unlabelled_file.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        tokens = row["text"].split()
        kind = row["image"].split("/")[-1].split("_")[0]
        for i, token in enumerate(tokens[:-1]):
            for t, phrases in SHOWN.items():
                if token in AMBIGUOUS_NAMES and any(tokens[i + 1:i + 1 + len(p.split())] == p.split() for p in phrases):
                    agree += kind_type.get(kind) == t
                    disagree += kind_type.get(kind) != t
    assert agree > 300 and disagree == 0, (agree, disagree)
    assert full_world.counts["image_information_nats_per_token"] > 0.02
    phrases = [p for ps in SHOWN.values() for p in ps] + [f"{w} :" for ws in OPENER.values() for w in ws]
    truth = full_world.relation_truth()
    for split in ("train", "dev", "test"):
        text = (full_world.ner_dir / f"{split}.txt").read_text(encoding="utf-8")
        for block in text.strip().split("\n\n"):
            lines = block.splitlines()
            image_id = lines[0][len("IMGID:"):]
            text = " " + " ".join(line.split("\t")[0] for line in lines[1:]) + " "
            if truth[image_id] == 1:
                assert not [p for p in phrases if f" {p} " in text], (image_id, text)


def test_pictures_and_templates_are_importable_from_demo():
    """They live in demo_images and demo_tweets; flair_riva.demo still offers them."""
    from flair_riva import demo, demo_images, demo_tweets

    for name in demo.__all__:
        assert hasattr(demo, name), name
    assert demo.draw_image is demo_images.draw_image and demo.IMAGE_KINDS is demo_images.IMAGE_KINDS
    assert demo.image_information is demo_tweets.image_information and demo.SHOWN is demo_tweets.SHOWN


def test_unlabelled_truth_replays_the_generator(full_world, tmp_path):
    """Every unlabelled pair's true relation, replayed from the seed: the world's rule (the image shows the
    entity's kind) holds for each, the class mix is the task-1 mixture, and a file the generator did not write
    for this seed is refused rather than given wrong labels."""
    truth = full_world.unlabelled_truth()
    rows = [json.loads(line) for line in full_world.unlabelled_file.read_text().splitlines()]
    assert {(r["text"], Path(r["image"]).name) for r in rows} == set(truth)
    for (_, image), t in truth.items():
        assert image.startswith(t.image_kind + "_")
        assert t.image_adds == int(TYPE_KIND[t.entity_type] == t.image_kind)
        assert t.context in ("neutral", "reveal") and (t.image_adds or t.context == "reveal"
                                                       or t.image_kind not in TYPE_KIND.values())
    share = sum(t.image_adds for t in truth.values()) / len(truth)
    assert 0.38 < share < 0.52, share
    other = generate_demo_world(tmp_path / "other", seed=14, scale="tiny")
    shutil.copy(other.unlabelled_file, tmp_path / "swapped.jsonl")
    tiny = generate_demo_world(tmp_path / "tiny", seed=13, scale="tiny")
    shutil.copy(tmp_path / "swapped.jsonl", tiny.unlabelled_file)
    with pytest.raises(ValueError, match="regenerate the world"):
        tiny.unlabelled_truth()


def _reveal_index(text: str, etype: str) -> int | None:
    """Which of REVEAL[etype]'s contexts a tweet's text uses (None: none)."""
    import re

    found = []
    for i, template in enumerate(REVEAL[etype]):
        pattern = " ".join(r".+?" if w == "{E}" else re.escape(w).replace(r"\{N\}", r"\d+").replace(r"\{Y\}", r"\d+")
                           for w in template.split())
        if re.search(rf"(^| ){pattern}( |$)", text):
            found.append(i)
    assert len(found) <= 1, (text, found)
    return found[0] if found else None


def test_unseen_ner_contexts_variant(full_world, tmp_path):
    """The variant's NER train reveals types only through the first SEEN_REVEAL contexts, dev and test only
    through the others; what pretraining reads is the default world's, byte for byte."""
    from flair_riva.demo import SEEN_REVEAL

    variant = generate_demo_world(tmp_path / "variant", seed=13, unseen_ner_contexts=True)
    assert variant.unseen_ner_contexts and not full_world.unseen_ner_contexts
    for name in ("relation.tsv", "unlabelled.jsonl"):
        assert (variant.root / name).read_bytes() == (full_world.root / name).read_bytes()
    assert json.loads(variant.manifest_file.read_text())["unseen_ner_contexts"] is True
    assert "unseen_ner_contexts" not in json.loads(full_world.manifest_file.read_text())
    assert (variant.root / "README.txt").read_text().startswith("VARIANT unseen NER contexts")
    truth = {row.split("\t")[0]: row.split("\t") for row in variant.relation_truth_file.read_text().splitlines()[1:]}
    corpus = variant.ner_corpus()
    used: dict[str, Counter] = {}
    for split, sentences in (("train", corpus.train), ("dev", corpus.dev), ("test", corpus.test)):
        used[split] = Counter()
        for sentence in sentences:
            _, adds, _, _, etype = truth[sentence.get_metadata("image_id")]
            if adds == "0":
                index = _reveal_index(" ".join(t.text for t in sentence), etype)
                assert index is not None, sentence
                used[split][index < SEEN_REVEAL] += 1
    assert used["train"][False] == 0 and used["train"][True] > 200
    for split in ("dev", "test"):
        assert used[split][True] == 0 and used[split][False] > 70
    # the default world uses both kinds of context in every split
    corpus = full_world.ner_corpus()
    truth = {row.split("\t")[0]: row.split("\t") for row in full_world.relation_truth_file.read_text().splitlines()[1:]}
    for sentences in (corpus.train, corpus.test):
        seen = Counter(_reveal_index(" ".join(t.text for t in s), truth[s.get_metadata("image_id")][4]) < SEEN_REVEAL
                       for s in sentences if truth[s.get_metadata("image_id")][1] == "0")
        assert seen[True] > 0 and seen[False] > 0
    # asking for the other world in the same folder regenerates it; the variant has a default folder of its own
    assert not generate_demo_world(variant.root, seed=13).unseen_ner_contexts
    assert (variant.root / "ner" / "test.txt").read_bytes() == (full_world.root / "ner" / "test.txt").read_bytes()
    assert default_demo_root(unseen_ner_contexts=True).name == "demo-world-v2-unseen-ner-contexts"
    assert main(["--out", str(tmp_path / "cli"), "--scale", "tiny", "--unseen-ner-contexts"]) == 0
    assert json.loads((tmp_path / "cli" / "manifest.json").read_text())["unseen_ner_contexts"] is True
