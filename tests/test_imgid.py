"""Tests of flair_riva.imgid: streaming and scanning IMGID files (the corpus on top: test_datasets)."""

from __future__ import annotations

import pickle

import pytest

from flair_riva.data_files import CorpusFormatError
from flair_riva.imgid import iter_imgid_tweets, scan_imgid_file
from tests.test_datasets import DEV, TRAIN


def test_scan_counts_and_error_pickles(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text(TRAIN + "\n" + DEV, encoding="utf-8")
    stats = scan_imgid_file(path)
    assert stats.tweets == 4 and stats.image_ids == ["101", "102", "103", "201"]
    err = pickle.loads(pickle.dumps(CorpusFormatError(path, 3, "bad")))
    assert (err.path, err.line, err.reason, str(err)) == (path, 3, "bad", f"{path}:3: bad")


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
