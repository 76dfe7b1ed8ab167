"""Tests of flair_riva.pairs: relation, unlabelled and pseudo-labelled text-image pairs."""

from __future__ import annotations

import types

import pytest

from flair_riva.data_files import CorpusFormatError
from flair_riva.pairs import (
    RelationPair,
    iter_unlabelled_pairs,
    iter_unlabelled_records,
    read_pseudo_labelled,
    read_relation_pairs,
    write_pseudo_labelled,
)

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


def test_read_relation_truth_reports_a_malformed_line(tmp_path):
    from flair_riva.pairs import read_relation_truth

    good = tmp_path / "truth.tsv"
    good.write_text("image_id\timage_adds\nA\t1\nB\t0\n\n", encoding="utf-8")
    assert read_relation_truth(good) == {"A": 1, "B": 0}
    bad = tmp_path / "bad.tsv"
    bad.write_text("image_id\timage_adds\nA\t1\nB\tyes\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError) as err:
        read_relation_truth(bad)
    assert err.value.line == 3 and "image_adds" in err.value.reason
