"""Tests of flair_riva.datasets on fixtures written to tmp_path (no /work/shared needed)."""

from __future__ import annotations

import pickle
import types
from pathlib import Path

import pytest

from flair_riva.datasets import (
    TWITTER2015,
    TWITTER2017,
    CorpusFormatError,
    RelationPair,
    TwitterMNERCorpus,
    iter_imgid_tweets,
    iter_unlabelled_pairs,
    iter_unlabelled_records,
    read_pseudo_labelled,
    read_relation_pairs,
    scan_imgid_file,
    write_pseudo_labelled,
)

TRAIN = (
    "IMGID:101\nRT\tO\n@fan\tO\n:\tO\nJordan\tB-PER\nscored\tO\n30\tO\n\n"
    "IMGID:102\nflying\tO\nto\tO\nNew\tB-LOC\nYork\tI-LOC\nwith\tO\nAcme\tB-ORG\n\n"
    "IMGID:103\nSt\tO\n.\tO\nLouis\tI-LOC\nBlues\tO\n"
)
DEV = "IMGID:201\nwatching\tO\nSuper\tB-OTHER\nBowl\tI-OTHER\n\n"
TEST = "IMGID:301\nlook\tO\nat\tO\nParis\tB-LOC\n"




def make_corpus(folder: Path, dev_name: str | None = "valid.txt", images: tuple[str, ...] = ("101", "102", "103",
                "201", "301"), train: str = TRAIN) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(train, encoding="utf-8")
    if dev_name:
        (folder / dev_name).write_text(DEV, encoding="utf-8")
    (folder / "test.txt").write_text(TEST, encoding="utf-8")
    (folder / "images").mkdir(exist_ok=True)
    for image_id in images:
        (folder / "images" / f"{image_id}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


# ------------------------------------------------------------------------------------------------ IMGID


def test_corpus_with_valid_txt_has_metadata_and_gold_spans(tmp_path):
    folder = make_corpus(tmp_path / "c15")
    corpus = TwitterMNERCorpus(folder)
    assert (len(corpus.train), len(corpus.dev), len(corpus.test)) == (3, 1, 1)
    s = corpus.train[0]
    assert s.get_metadata("image_id") == "101"
    assert s.get_metadata("image_path") == str((folder / "images" / "101.jpg").resolve())
    assert Path(s.get_metadata("image_path")).is_absolute()
    assert [t.text for t in s] == ["RT", "@fan", ":", "Jordan", "scored", "30"]  # IMGID line is not a token
    assert [(sp.text, sp.tag) for sp in s.get_spans("ner")] == [("Jordan", "PER")]
    assert [(sp.text, sp.tag) for sp in corpus.train[1].get_spans("ner")] == [("New York", "LOC"), ("Acme", "ORG")]
    assert [(sp.text, sp.tag) for sp in corpus.dev[0].get_spans("ner")] == [("Super Bowl", "OTHER")]
    assert corpus.image_stats["train"] == {"tweets": 3, "with_image": 3, "missing": 0,
                                           "image_dir": str((folder / "images").resolve())}
    assert corpus.name == "c15"
    assert corpus.split_stats["train"].tokens == 16
    assert corpus.split_stats["train"].begin_tags == {"PER": 1, "LOC": 1, "ORG": 1}


def test_orphan_inside_tag_is_kept_as_an_entity_and_counted(tmp_path):
    corpus = TwitterMNERCorpus(make_corpus(tmp_path / "c"))
    s = corpus.train[2]
    assert [(sp.text, sp.tag) for sp in s.get_spans("ner")] == [("Louis", "LOC")]
    stats = corpus.split_stats["train"]
    assert stats.orphan_inside == {"LOC": 1}
    assert (stats.entities_b, stats.entities_lenient) == (3, 4)


def test_dev_txt_is_found_and_flair_does_not_sample_dev(tmp_path):
    corpus = TWITTER2017(make_corpus(tmp_path / "c17", dev_name="dev.txt"))
    assert corpus.name == "twitter2017"
    assert len(corpus.dev) == 1 and len(corpus.train) == 3
    assert corpus.files["dev"].name == "dev.txt"


def test_no_dev_file_raises_listing_candidates(tmp_path):
    folder = make_corpus(tmp_path / "c", dev_name=None)
    with pytest.raises(FileNotFoundError, match=r"valid\.txt and dev\.txt"):
        TWITTER2015(folder)
    corpus = TWITTER2015(folder, dev_file=False)
    assert corpus.dev is None and len(corpus.train) == 3  # nothing sampled out of train


def test_missing_split_file_names_the_path(tmp_path):
    folder = make_corpus(tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        TwitterMNERCorpus(folder, test_file="nope.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TwitterMNERCorpus(tmp_path / "no-such-folder")


def test_missing_images_are_counted_and_logged_once_per_split(tmp_path, flair_log):
    folder = make_corpus(tmp_path / "c", images=("101",))
    corpus = TwitterMNERCorpus(folder)
    assert corpus.image_stats["train"]["missing"] == 2 and corpus.image_stats["train"]["with_image"] == 1
    assert corpus.image_stats["test"]["missing"] == 1
    messages = [r.getMessage() for r in flair_log.records]
    assert sum("2 of 3 tweets have no image file in" in m for m in messages) == 1
    assert sum("1 of 1 tweets have no image file" in m for m in messages) == 2  # dev and test
    assert corpus.train[1].get_metadata("image_path").endswith("102.jpg")  # path kept even if absent


def test_image_dir_argument_and_absent_image_dir(tmp_path, flair_log):
    folder = make_corpus(tmp_path / "c")
    other = tmp_path / "imgs"
    other.mkdir()
    (other / "102.jpg").write_bytes(b"x")
    corpus = TwitterMNERCorpus(folder, image_dir=other)
    assert corpus.train[0].get_metadata("image_path") == str(other.resolve() / "101.jpg")
    assert corpus.image_stats["train"]["with_image"] == 1
    corpus = TwitterMNERCorpus(folder, image_dir=tmp_path / "absent")
    assert corpus.image_stats["dev"] == {"tweets": 1, "with_image": 0, "missing": 1,
                                         "image_dir": str((tmp_path / "absent").resolve())}
    assert any("does not exist" in r.getMessage() for r in flair_log.records)


def test_lazy_mode_keeps_metadata(tmp_path):
    corpus = TwitterMNERCorpus(make_corpus(tmp_path / "c"), in_memory=False)
    s = corpus.train[1]
    assert s.get_metadata("image_id") == "102"
    assert [(sp.text, sp.tag) for sp in s.get_spans("ner")] == [("New York", "LOC"), ("Acme", "ORG")]


def test_crlf_bom_and_id_with_extension(tmp_path):
    folder = make_corpus(tmp_path / "c")
    (folder / "train.txt").write_bytes(("\ufeff" + TRAIN.replace("IMGID:103", "IMGID:103.png")).replace(
        "\n", "\r\n").encode("utf-8"))
    corpus = TwitterMNERCorpus(folder)
    assert corpus.train[0].get_metadata("image_id") == "101"
    assert [t.text for t in corpus.train[0]][:2] == ["RT", "@fan"]
    assert corpus.train[2].get_metadata("image_path").endswith("/103.png")
    assert [(sp.text, sp.tag) for sp in corpus.train[1].get_spans("ner")] == [("New York", "LOC"), ("Acme", "ORG")]


def test_entity_types_parameter(tmp_path):
    folder = make_corpus(tmp_path / "c", train="IMGID:1\nComic\tB-EVENT\nCon\tI-EVENT\n")
    with pytest.raises(CorpusFormatError, match="unknown tag 'B-EVENT'"):
        TwitterMNERCorpus(folder)
    corpus = TwitterMNERCorpus(folder, entity_types=("EVENT", "PER", "LOC", "ORG", "OTHER"))
    assert [(sp.text, sp.tag) for sp in corpus.train[0].get_spans("ner")] == [("Comic Con", "EVENT")]


BAD_IMGID = [
    ("IMGID:1\nJordan\n", 2, "without a tag"),
    ("IMGID:1\nJordan\t\n", 2, "without a tag"),
    ("IMGID:1\nJordan\tB-FOO\n", 2, "unknown tag 'B-FOO'"),
    ("IMGID:1\na\tO\nJordan\tS-PER\n", 3, "unknown tag 'S-PER'"),
    ("IMGID:1\na\tO\nb\tb-per\n", 3, "unknown tag"),
    ("Jordan\tB-PER\nIMGID:1\n", 1, "before any IMGID line"),
    ("IMGID:1\na\tO\n\nb\tO\n", 4, "without an IMGID line"),
    ("IMGID:\na\tO\n", 1, "empty id"),
    ("IMGID:   \na\tO\n", 1, "empty id"),
    ("IMGID:1\na\tO\n\nIMGID:../etc\nb\tO\n", 4, "malformed image id"),
    ("IMGID:1\n\nIMGID:2\na\tO\n", 1, "tweet without tokens"),
    ("IMGID:1\nIMGID:2\na\tO\n", 1, "tweet without tokens"),
    ("IMGID:1\na\tO\n\nIMGID:2\n", 4, "tweet without tokens"),
    ("IMGID:1\na\tO\n\nIMGID:2\n\n\n", 4, "tweet without tokens"),
    ("IMGID:1\na\tO\nIMGID:2\nb\tO\n", 3, "IMGID line inside the tweet that starts at line 1"),
    ("IMGID:1\na\tO\tX\n", 2, "3 TAB-separated columns"),
    ("IMGID:1\na\t\tO\n", 2, "3 TAB-separated columns"),
    ("IMGID:1\n\tO\n", 2, "empty token"),
    ("IMGID:1\na\rb\tO\n", 2, "carriage return"),
]


@pytest.mark.parametrize("content,line,fragment", BAD_IMGID)
def test_malformed_imgid_file_names_file_and_line(tmp_path, content, line, fragment):
    folder = make_corpus(tmp_path / "c", train=content)
    with pytest.raises(CorpusFormatError) as info:
        TwitterMNERCorpus(folder)
    err = info.value
    assert err.line == line and err.path.name == "train.txt"
    assert f"train.txt:{line}: " in str(err) and fragment in str(err)


def test_not_utf8_reports_the_line(tmp_path):
    folder = make_corpus(tmp_path / "c")
    (folder / "test.txt").write_bytes(b"IMGID:1\na\tO\n\nIMGID:2\ncaf\xe9\tO\n")
    with pytest.raises(CorpusFormatError, match=r"test\.txt:5: not valid UTF-8 \(byte 0xe9 at column 4\)") as info:
        TwitterMNERCorpus(folder)
    assert info.value.line == 5


def test_empty_file_is_an_error(tmp_path):
    folder = make_corpus(tmp_path / "c", train="\n\n")
    with pytest.raises(CorpusFormatError, match="no tweets"):
        TwitterMNERCorpus(folder)


def test_scan_counts_and_error_pickles(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text(TRAIN + "\n" + DEV, encoding="utf-8")
    stats = scan_imgid_file(path)
    assert stats.tweets == 4 and stats.image_ids == ["101", "102", "103", "201"]
    err = pickle.loads(pickle.dumps(CorpusFormatError(path, 3, "bad")))
    assert (err.path, err.line, err.reason, str(err)) == (path, 3, "bad", f"{path}:3: bad")


# ------------------------------------------------------------------------------------------------ relation


def test_relation_csv_with_quotes_newlines_and_images(tmp_path, flair_log):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    path = tmp_path / "rel.csv"
    path.write_text(
        'text,image,image_adds,text_is_represented\n'
        '"Jordan, what a game",img/a.jpg,1,1\n'
        '"two\nlines ""quoted""",img/missing.jpg,0,\n'
        f'plain,{tmp_path / "img" / "a.jpg"},0,0\n',
        encoding="utf-8",
    )
    pairs = read_relation_pairs(path)
    assert [p.label for p in pairs] == [1, 0, 0]
    assert pairs[0].text == "Jordan, what a game" and pairs[0].tokens == ["Jordan", ",", "what", "a", "game"]
    assert pairs[1].text == 'two\nlines "quoted"'
    assert pairs[0].image == tmp_path / "img" / "a.jpg" and pairs[1].image == tmp_path / "img" / "missing.jpg"
    assert pairs[2].image == tmp_path / "img" / "a.jpg"
    assert [p.text_is_represented for p in pairs] == [1, None, 0]
    assert any("1 of 3 relation pairs" in r.getMessage() for r in flair_log.records)
    other = tmp_path / "elsewhere"
    assert read_relation_pairs(path, image_dir=other)[0].image == other / "img" / "a.jpg"


def test_relation_tsv_escapes_and_sniffing(tmp_path):
    content = "text\timage\timage_adds\n\" quoted start\\tand tab\ta.png\t1\n\nsecond\t\t0\n"
    for name in ("rel.tsv", "rel.txt"):  # by extension, and sniffed from the header
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        pairs = read_relation_pairs(path)
        assert [p.text for p in pairs] == ['" quoted start\tand tab', "second"]
        assert pairs[0].image == tmp_path / "a.png" and pairs[1].image is None
        assert [p.label for p in pairs] == [1, 0]


def test_relation_bloomberg_columns(tmp_path):
    path = tmp_path / "textimage-data.csv"
    path.write_text(
        '"tweet_id","user_id","tweet","text_is_represented","image_adds","image_adds_text_repr"\n'
        '"698197155698184192","540310244","happy birthday ily @victoria https://t.co/K8","0","0","0"\n'
        '"689161440901607424","23521579","This is my \\"I am so done\\" face","1","1","0"\n',
        encoding="utf-8",
    )
    pairs = read_relation_pairs(path, image_dir=tmp_path / "images")
    assert pairs[0].image == tmp_path / "images" / "T698197155698184192.jpg"
    assert pairs[1].text == 'This is my "I am so done" face'
    assert [(p.label, p.text_is_represented) for p in pairs] == [(0, 0), (1, 1)]
    assert pairs[0].tokens[-1] == "https://t.co/K8"


BAD_RELATION = [
    ("rel.csv", "text,image,image_adds\nok,a.jpg,1\nno label,a.jpg,\n", 3, "missing image_adds label"),
    ("rel.csv", "text,image,image_adds\nok,a.jpg,2\n", 2, "image_adds must be 0 or 1, got '2'"),
    ("rel.csv", "text,image,image_adds\nok,a.jpg,yes\n", 2, "must be 0 or 1"),
    ("rel.csv", "text,image,image_adds\n  ,a.jpg,1\n", 2, "empty text"),
    ("rel.csv", "text,image,image_adds,text_is_represented\nok,a.jpg,1,5\n", 2, "text_is_represented must be 0 or 1"),
    ("rel.csv", "text,image,image_adds\nok,a.jpg\n", 2, "2 fields, the header has 3"),
    ("rel.csv", 'text,image,image_adds\n"ok" trailing,a.jpg,1\n', 2, "malformed CSV"),
    ("rel.tsv", "text\timage\timage_adds\nok\ta.jpg\t1\nok\twith\ttab\t1\n", 3, "4 fields, the header has 3"),
    ("rel.tsv", "text\timage\tlabel\nok\ta.jpg\t1\n", 1, "an 'image_adds' column"),
    ("rel.csv", "tweet,image_adds\nok,1\n", 1, "an 'image' (or 'tweet_id') column"),
    ("rel.csv", "tweet_id,tweet,image_adds\n,ok,1\n", 2, "empty tweet_id"),
]


@pytest.mark.parametrize("name,content,line,fragment", BAD_RELATION)
def test_bad_relation_rows(tmp_path, name, content, line, fragment):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusFormatError) as info:
        read_relation_pairs(path)
    assert info.value.line == line and f"{name}:{line}: " in str(info.value) and fragment in str(info.value)


def test_relation_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_relation_pairs(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="empty file"):
        read_relation_pairs(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,image,image_adds\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="no data rows"):
        read_relation_pairs(tmp_path / "header.csv")
    (tmp_path / "latin.csv").write_bytes(b"text,image,image_adds\ncaf\xe9,a.jpg,1\n")
    with pytest.raises(CorpusFormatError, match=r"latin\.csv:2: not valid UTF-8"):
        read_relation_pairs(tmp_path / "latin.csv")


# ------------------------------------------------------------------------------------------------ unlabelled


def test_unlabelled_jsonl_is_a_lazy_generator(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text('{"text": "look at Jordan", "image": "images/p.png"}\n\n'
                    '{"text": "second", "image": null}\n{"text": broken\n', encoding="utf-8")
    stream = iter_unlabelled_pairs(path)
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)  # the malformed line 4 has not been read yet
    assert first.tokens == ["look", "at", "Jordan"] and first.image == tmp_path / "images" / "p.png"
    assert first.label is None
    second = next(stream)
    assert second.image is None
    with pytest.raises(CorpusFormatError, match=r"u\.jsonl:4: malformed JSON") as info:
        next(stream)
    assert info.value.line == 4


def test_unlabelled_tsv_and_empty_text_skipped_with_one_warning(tmp_path, flair_log):
    path = tmp_path / "u.tsv"
    path.write_text("text\timage\na\\tb\tx.png\n \ty.png\nc\t\n", encoding="utf-8")
    pairs = list(iter_unlabelled_pairs(path, image_dir=tmp_path / "imgs"))
    assert [p.text for p in pairs] == ["a\tb", "c"]
    assert pairs[0].image == tmp_path / "imgs" / "x.png" and pairs[1].image is None
    warnings = [r.getMessage() for r in flair_log.records if "skipped" in r.getMessage()]
    assert warnings == [f"skipped 1 of 3 unlabelled pairs in {path}: empty text"]


@pytest.mark.parametrize("content,line,fragment", [
    ('{"text": "a"}\n[1, 2]\n', 2, "expected a JSON object"),
    ('{"text": "a"}\n{"image": "x.png"}\n', 2, 'without a "text" field'),
    ('{"text": 3}\n', 1, '"text" must be a string'),
    ('{"text": "a", "image": 5}\n', 1, '"image" must be a string or null'),
])
def test_unlabelled_bad_records(tmp_path, content, line, fragment):
    path = tmp_path / "u.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusFormatError) as info:
        list(iter_unlabelled_pairs(path))
    assert info.value.line == line and fragment in str(info.value)


def test_unlabelled_sniffing_and_missing_file(tmp_path):
    path = tmp_path / "pairs.data"
    path.write_text('{"text": "hello there"}\n', encoding="utf-8")
    assert [p.text for p in iter_unlabelled_pairs(path)] == ["hello there"]
    path.write_text("just some text\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="JSON lines"):
        iter_unlabelled_pairs(path)
    with pytest.raises(FileNotFoundError):
        iter_unlabelled_pairs(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------------ pseudo labels


def test_pseudo_labelled_round_trip_with_tabs_newlines_and_backslashes(tmp_path):
    texts = ["tab\there", "new\nline and \\n literal", "back\\slash \\t", "plain 😂 text", '"quoted" start']
    pairs = [RelationPair(text=t, tokens=[], image=tmp_path / f"i{i}.png" if i % 2 else None, label=i % 2,
                          score=0.1 * i + 0.6123456789 if i != 3 else None) for i, t in enumerate(texts)]
    path = tmp_path / "out" / "pseudo.tsv"
    assert write_pseudo_labelled(path, iter(pairs)) == 5
    assert path.read_text(encoding="utf-8").splitlines()[0] == "text\timage\tlabel\tscore"
    assert len(path.read_text(encoding="utf-8").splitlines()) == 6  # one record per line
    back = read_pseudo_labelled(path)
    assert [p.text for p in back] == texts
    assert [p.label for p in back] == [p.label for p in pairs]
    assert [p.score for p in back] == [p.score for p in pairs]
    assert [p.image for p in back] == [p.image for p in pairs]
    assert back[0].tokens == ["tab", "here"]
    # the unlabelled reader decodes the same escapes
    assert [p.text for p in iter_unlabelled_pairs(path)] == texts


def test_pseudo_labelled_write_is_atomic(tmp_path):
    path = tmp_path / "pseudo.tsv"
    write_pseudo_labelled(path, [RelationPair("old", [], None, 1, 0.9)])
    before = path.read_bytes()

    def pairs():
        yield RelationPair("fine", [], None, 0, 0.7)
        yield RelationPair("no label", [], None, None, 0.7)

    with pytest.raises(ValueError, match="pair 1 has label None"):
        write_pseudo_labelled(path, pairs())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pseudo.tsv"]  # no temp file left behind


def test_read_pseudo_labelled_errors(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("text\timage\tlabel\tscore\na\t\t1\thigh\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"p\.tsv:2: score must be a number"):
        read_pseudo_labelled(path)
    path.write_text("text\timage\tlabel\tscore\na\t\t\t0.9\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"p\.tsv:2: missing label"):
        read_pseudo_labelled(path)


# ------------------------------------------------------------------------------------ record streams (tagging)


def test_iter_imgid_tweets_skips_bad_tweets_with_on_error_and_accepts_untagged_tokens(tmp_path):
    path = tmp_path / "new.txt"
    path.write_bytes(b"IMGID:1\nLook\tO\nJordan\tB-PER\n\n"
                     b"IMGID:2\nbad\tO\tX\nrest\tO\n\n"        # 3 columns: the tweet is skipped
                     b"IMGID:3\nno\nnaked\ntags\n\n"            # no tag column at all: fine without require_tags
                     b"IMGID:4\ncaf\xe9\n\n"                      # not UTF-8
                     b"IMGID:5\nmixed\tO\nlast\n\n"
                     b"IMGID:6\nweird\tB-FOOD\n")
    errors = []
    tweets = list(iter_imgid_tweets(path, entity_types=None, require_tags=False, on_error=errors.append))
    assert [(t.image_id, t.tokens, t.tags) for t in tweets] == [
        ("1", ["Look", "Jordan"], ["O", "B-PER"]), ("3", ["no", "naked", "tags"], None),
        ("6", ["weird"], ["B-FOOD"])]
    assert [e.line for e in errors] == [6, 15, 19]
    assert "not valid UTF-8" in str(errors[1]) and "token line without a tag" in str(errors[2])
    with pytest.raises(CorpusFormatError, match=r"new\.txt:6: 3 TAB-separated columns"):
        list(iter_imgid_tweets(path, entity_types=None, require_tags=False))
    errors.clear()  # the corpus defaults: tags required, the known entity types
    assert [t.image_id for t in iter_imgid_tweets(path, on_error=errors.append)] == ["1"]
    assert [e.line for e in errors] == [6, 10, 15, 19, 22] and "unknown tag 'B-FOOD'" in str(errors[-1])


def test_iter_unlabelled_records_keeps_empty_texts_ids_and_lines(tmp_path):
    path = tmp_path / "u.jsonl"
    path.write_text('{"text": "a b", "id": 7}\n{"text": ""}\n\n{"text": 1}\n{"text": "c", "id": "x", '
                    '"image": "i.jpg"}\n', encoding="utf-8")
    errors = []
    records = list(iter_unlabelled_records(path, image_dir=tmp_path / "imgs", on_error=errors.append))
    assert [(r.line, r.text, r.tokens, r.id) for r in records] == [(1, "a b", ["a", "b"], 7), (2, "", [], None),
                                                                    (5, "c", ["c"], "x")]
    assert records[2].image == tmp_path / "imgs" / "i.jpg"
    assert [e.line for e in errors] == [4]
    tsv = tmp_path / "u.tsv"
    tsv.write_text("text\timage\tid\na\t\t1\nb\tc\n\t\t3\n", encoding="utf-8")
    errors.clear()
    records = list(iter_unlabelled_records(tsv, on_error=errors.append))
    assert [(r.line, r.tokens, r.image, r.id) for r in records] == [(2, ["a"], None, "1"), (4, [], None, "3")]
    assert [e.line for e in errors] == [3] and "2 fields" in str(errors[0])
