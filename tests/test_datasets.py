"""Tests of flair_riva.datasets on fixtures written to tmp_path (no /work/shared needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flair_riva.datasets import (
    TWITTER2015,
    TWITTER2017,
    CorpusFormatError,
    TwitterMNERCorpus,
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


# ------------------------------------------------------------------------------------ the module's names


def test_readers_are_importable_from_datasets():
    """The readers live in data_files, imgid and pairs; flair_riva.datasets still offers all of them."""
    from flair_riva import data_files, datasets, imgid, pairs

    for name in datasets.__all__:
        assert hasattr(datasets, name), name
    assert datasets.CorpusFormatError is data_files.CorpusFormatError
    assert datasets.iter_imgid_tweets is imgid.iter_imgid_tweets
    assert datasets.read_relation_pairs is pairs.read_relation_pairs
    assert datasets.read_relation_truth is pairs.read_relation_truth
    assert datasets.GOLD_TAGS_KEY == "gold_tags" and callable(datasets.sentence_image_path)
    assert datasets._require_file is data_files._require_file  # private, but importable here before the split
    assert datasets._first_content_line is pairs._first_content_line
    assert datasets._unlabelled_kind is pairs._unlabelled_kind
