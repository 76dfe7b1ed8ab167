"""``python -m flair_riva.tag``: every input format, the output fields and order, resume, bad lines, figures,
scores, with a tiny tagger whose stack holds word vectors and two RivaEmbeddings (image and text-only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import flair
import pytest
import torch
from flair.data import Sentence
from flair.embeddings import StackedEmbeddings, WordEmbeddings
from flair.models import SequenceTagger

from flair_riva.config import RivaConfig
from flair_riva.datasets import CorpusFormatError, iter_imgid_tweets
from flair_riva.embeddings import RivaEmbeddings
from flair_riva.model import RivaModel
from flair_riva.scoring import predicted_bio, strict_f1
from flair_riva.tag import count_complete_records, detect_format, main, read_records, riva_embeddings, tag_file
from flair_riva.text import tokenize_tweet
from tests.conftest import IMAGES, TINY


@pytest.fixture(scope="module")
def tagger(corpus) -> SequenceTagger:
    """An untrained tagger over [word vectors, RIVA (image), RIVA (text only)]: its entities are arbitrary but
    deterministic, which is all these tests need."""
    torch.manual_seed(0)
    token_lists = [[t.text for t in s] for s in corpus.get_all_sentences()]
    riva = RivaModel.from_texts(RivaConfig(**TINY), token_lists).eval()
    words = sorted({w for tokens in token_lists for w in tokens})
    glove = WordEmbeddings(None, vocab={w: i for i, w in enumerate(words)}, embedding_length=8, name="toy-glove")
    with torch.no_grad():
        glove.embedding.weight.copy_(torch.randn_like(glove.embedding.weight))
    stack = StackedEmbeddings([glove, RivaEmbeddings(riva, name="riva-image"),
                               RivaEmbeddings(riva, use_image=False, name="riva-text")])
    flair.set_seed(3)
    tagger = SequenceTagger(hidden_size=8, embeddings=stack, tag_type="ner", use_crf=False,
                            tag_dictionary=corpus.make_label_dictionary("ner", add_unk=False))
    with torch.no_grad():  # make entities likely, so that spans and offsets are exercised
        tagger.linear.bias.copy_(torch.randn_like(tagger.linear.bias) * 3)
    return tagger.eval()


@pytest.fixture(scope="module")
def tagger_file(tagger, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tagger") / "tagger.pt"
    tagger.save(path)
    return path


TWEETS = [
    {"id": "t1", "text": "Look at Jordan in this photo #NBA 🏀", "image": IMAGES[0].name},
    {"id": 2, "text": "Can't stop thinking about Paris today", "image": "gone.jpg"},
    {"id": "t3", "text": "Jordan scored 30 points last night", "image": None},
    {"id": "t4", "text": "", "image": IMAGES[1].name},
    {"id": "t5", "text": "flying to Washington tomorrow with @mike", "image": "corrupt.jpg"},
    {"id": "t6", "text": "Paris Hilton in Paris http://t.co/x", "image": str(IMAGES[2])},  # absolute path
]


@pytest.fixture
def image_dir(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for path in IMAGES:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_jsonl_output_fields_order_images_and_relevance(tagger, tmp_path, image_dir):
    source = write_jsonl(tmp_path / "tweets.jsonl", TWEETS)
    summary = tag_file(tagger, source, tmp_path / "out.jsonl", image_dir=image_dir, batch_size=2, chunk_size=4,
                       progress=False)
    out = read_jsonl(tmp_path / "out.jsonl")
    names = [e.name for e in riva_embeddings(tagger)]
    assert names == ["1-riva-image", "2-riva-text"]  # the stack's names (StackedEmbeddings prefixes them)
    assert summary.records == len(out) == len(TWEETS) and summary.bad_lines == 0
    assert [o["id"] for o in out] == [t["id"] for t in TWEETS]  # input order, ids carried through as they are
    for tweet, o in zip(TWEETS, out):
        assert list(o) == ["id", "text", "tokens", "entities", "relevance", "image", "image_status"]
        assert o["text"] == tweet["text"] and o["tokens"] == tokenize_tweet(tweet["text"])
        assert list(o["relevance"]) == names and o["relevance"][names[1]] == 0.0
        for entity in o["entities"]:
            assert set(entity) == {"text", "type", "start", "end", "score"}
            assert 0 <= entity["start"] < entity["end"] <= len(o["tokens"])
            assert entity["text"] == " ".join(o["tokens"][entity["start"]:entity["end"]])
            assert entity["type"] in ("PER", "LOC", "ORG", "OTHER") and 0 < entity["score"] <= 1
    assert sum(len(o["entities"]) for o in out) == summary.entities > 0
    status = [o["image_status"] for o in out]
    assert status == ["ok", "missing", "no path", "not used: empty text", "corrupt", "ok"]
    assert out[0]["image"] == str(image_dir / IMAGES[0].name) and out[5]["image"] == str(IMAGES[2])
    assert out[2]["image"] is None
    assert out[0]["relevance"][names[0]] > 0 and out[5]["relevance"][names[0]] > 0
    assert [out[i]["relevance"][names[0]] for i in (1, 2, 3, 4)] == [0.0] * 4
    assert out[3]["entities"] == [] and out[3]["tokens"] == []
    # the same as SequenceTagger.predict on hand-built sentences
    sentence = Sentence(out[0]["tokens"])
    sentence.add_metadata("image_path", out[0]["image"])
    tagger.predict([sentence], label_name="x")
    assert [(s.tokens[0].idx - 1, s.tokens[-1].idx, s.get_label("x").value) for s in sentence.get_spans("x")] == \
        [(e["start"], e["end"], e["type"]) for e in out[0]["entities"]]


def test_tsv_input_gives_the_same_records(tagger, tmp_path, image_dir):
    write_jsonl(tmp_path / "tweets.jsonl", TWEETS)
    rows = ["text\timage\tid"] + [f"{t['text']}\t{t['image'] or ''}\t{t['id']}" for t in TWEETS]
    (tmp_path / "tweets.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert detect_format(tmp_path / "tweets.tsv") == "tsv"
    for name in ("tweets.jsonl", "tweets.tsv"):
        tag_file(tagger, tmp_path / name, tmp_path / f"{name}.out", image_dir=image_dir, progress=False)
    from_json, from_tsv = read_jsonl(tmp_path / "tweets.jsonl.out"), read_jsonl(tmp_path / "tweets.tsv.out")
    assert [o["id"] for o in from_tsv] == [str(t["id"]) for t in TWEETS]  # a TSV id is text
    for a, b in zip(from_json, from_tsv):
        a.pop("id"), b.pop("id")
        assert a == b


def test_imgid_input_conll_output_and_evaluate(tagger, world, corpus, tmp_path):
    test_file = Path(world.ner_dir) / "test.txt"
    assert detect_format(test_file) == "imgid"
    out = tmp_path / "out.txt"
    summary = tag_file(tagger, test_file, out, output_format="conll", evaluate=True, progress=False)
    sentences = list(corpus.test)
    assert summary.records == len(sentences) and summary.scored == len(sentences)
    tweets = list(iter_imgid_tweets(out))  # the output reads back as an IMGID file, in input order
    assert [t.tokens for t in tweets] == [[tok.text for tok in s] for s in sentences]
    assert [t.image_id for t in tweets] == [s.get_metadata("image_id") for s in sentences]
    assert [str(r.image) for r in read_records(test_file)] == [s.get_metadata("image_path") for s in sentences]
    # the scores are Flair's own evaluation and seqeval strict on the same predictions
    for s in sentences:
        s.clear_embeddings()
    result = tagger.evaluate(sentences, gold_label_type="ner", mini_batch_size=32)
    assert summary.f1 == pytest.approx(100 * result.main_score, abs=1e-6)
    gold = [t.tags for t in iter_imgid_tweets(test_file)]
    assert summary.f1_strict == pytest.approx(strict_f1(gold, [predicted_bio(s) for s in sentences]))
    assert [t.tags for t in tweets] == [predicted_bio(s) for s in sentences]


def test_imgid_without_tags_and_image_dir(tagger, tmp_path, image_dir):
    source = tmp_path / "new.txt"
    stem = IMAGES[0].stem
    source.write_text(f"IMGID:{stem}\nLook\nat\nJordan\n\nIMGID:nothere\nParis\n", encoding="utf-8")
    summary = tag_file(tagger, source, tmp_path / "out.jsonl", image_dir=image_dir, evaluate=True, progress=False)
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [o["id"] for o in out] == [stem, "nothere"] and out[0]["tokens"] == ["Look", "at", "Jordan"]
    assert [o["image_status"] for o in out] == ["ok", "missing"]
    assert out[0]["image"] == str(image_dir / f"{stem}.jpg")
    assert summary.f1 is None and summary.scored == 0


def test_bad_lines_are_reported_with_their_line_and_skipped_or_fail_with_strict(tagger, tmp_path, flair_log):
    source = tmp_path / "tweets.jsonl"
    lines = [json.dumps({"text": "first tweet"}).encode(), b"{not json", b"[1, 2]", b'{"image": "a.jpg"}', b"",
             json.dumps({"text": 5}).encode(), b'{"text": "bad \xff byte"}', json.dumps({"text": "last one"}).encode()]
    source.write_bytes(b"\n".join(lines) + b"\n")
    summary = tag_file(tagger, source, tmp_path / "out.jsonl", progress=False)
    assert [o["text"] for o in read_jsonl(tmp_path / "out.jsonl")] == ["first tweet", "last one"]
    assert summary.bad_lines == 5
    warned = [m for m in flair_log.messages() if "(line skipped)" in m]
    assert [m.split(":")[1] for m in warned] == ["2", "3", "4", "6", "7"]
    assert "malformed JSON" in warned[0] and "not valid UTF-8" in warned[-1]
    with pytest.raises(CorpusFormatError, match=r"tweets.jsonl:2: malformed JSON"):
        tag_file(tagger, source, tmp_path / "strict.jsonl", strict=True, progress=False)
    assert [o["text"] for o in read_jsonl(tmp_path / "strict.jsonl")] == []  # nothing past the bad line


def test_resume_keeps_finished_records_and_completes_the_output(tagger, tmp_path, image_dir, monkeypatch):
    records = [{"id": i, "text": f"tweet number {i} about Paris", "image": IMAGES[i % 4].name} for i in range(11)]
    source = write_jsonl(tmp_path / "tweets.jsonl", records)
    tag_file(tagger, source, tmp_path / "full.jsonl", image_dir=image_dir, chunk_size=3, progress=False)
    full = (tmp_path / "full.jsonl").read_text(encoding="utf-8")
    lines = full.splitlines(keepends=True)
    # an interrupted run: 6 finished records and half of the 7th
    (tmp_path / "part.jsonl").write_text("".join(lines[:6]) + lines[6][:20], encoding="utf-8")
    assert count_complete_records(tmp_path / "part.jsonl", truncate=False) == 6
    predicted: list[int] = []
    real_predict = tagger.predict
    monkeypatch.setattr(tagger, "predict", lambda sentences, **kw: predicted.append(len(sentences))
                        or real_predict(sentences, **kw))
    summary = tag_file(tagger, source, tmp_path / "part.jsonl", image_dir=image_dir, chunk_size=3, resume=True,
                       progress=False)
    assert summary.resumed == 6 and summary.records == 5 and sum(predicted) == 5
    assert (tmp_path / "part.jsonl").read_text(encoding="utf-8") == full
    # conll: blocks are the records
    tag_file(tagger, source, tmp_path / "full.txt", output_format="conll", image_dir=image_dir, progress=False)
    text = (tmp_path / "full.txt").read_text(encoding="utf-8")
    cut = text.index("IMGID:4")
    (tmp_path / "part.txt").write_text(text[: cut + 12], encoding="utf-8")
    tag_file(tagger, source, tmp_path / "part.txt", output_format="conll", image_dir=image_dir, resume=True,
             progress=False)
    assert (tmp_path / "part.txt").read_text(encoding="utf-8") == text


def test_figures_for_tweets_with_an_image(tagger, tmp_path, image_dir):
    source = write_jsonl(tmp_path / "tweets.jsonl", TWEETS)
    summary = tag_file(tagger, source, tmp_path / "out.jsonl", image_dir=image_dir, figures=tmp_path / "fig",
                       progress=False)
    assert summary.figures == 2 and sorted(p.name for p in (tmp_path / "fig").iterdir()) == \
        ["0000000_t1.png", "0000005_t6.png"]
    summary = tag_file(tagger, source, tmp_path / "out.jsonl", image_dir=image_dir, figures=tmp_path / "one",
                       figures_limit=1, progress=False)
    assert summary.figures == 1 and len(list((tmp_path / "one").iterdir())) == 1


def test_command_line_with_a_saved_tagger(tagger_file, tmp_path, image_dir, flair_log):
    source = write_jsonl(tmp_path / "tweets.jsonl", TWEETS)
    out = tmp_path / "out.jsonl"
    assert main(["--tagger", str(tagger_file), "--input", str(source), "--image-dir", str(image_dir),
                 "--output", str(out), "--feature-cache", str(tmp_path / "features"), "--no-progress"]) == 0
    assert [o["image_status"] for o in read_jsonl(out)][0] == "ok"
    assert any("tweets/s" in m for m in flair_log.messages())
    assert any((tmp_path / "features").rglob("*.safetensors"))  # the loaded tagger used the given cache
    assert main(["--tagger", str(tagger_file), "--input", str(tmp_path / "missing.jsonl"), "--output",
                 str(out), "--no-progress"]) == 1
    with pytest.raises(SystemExit):
        main(["--tagger", str(tmp_path / "no-tagger.pt"), "--input", str(source), "--output", str(out)])


def test_module_help_names_the_pickle_warning():
    done = subprocess.run([sys.executable, "-m", "flair_riva.tag", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "trust" in done.stdout and "--resume" in done.stdout and "--figures-limit" in done.stdout
