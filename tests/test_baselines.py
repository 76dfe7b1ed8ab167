"""baselines: the image+text baseline of Table 4 (§4.5), the [IMG] pseudo-token and its embedding."""

from __future__ import annotations

import torch
from flair.data import Sentence

from flair_riva.baselines import IMAGE_TOKEN, ImageTokenEmbeddings, with_image_token


def test_image_token_keeps_spans_and_metadata():
    s = Sentence(["Kevin", "Love", "in", "Cleveland"])
    s[0:2].add_label("ner", "PER")
    s[3:4].add_label("ner", "LOC")
    s.add_metadata("image_path", "x.jpg")
    new = with_image_token(s)
    assert new[0].text == IMAGE_TOKEN and len(new) == 5
    assert [(sp.text, sp.get_label("ner").value) for sp in new.get_spans("ner")] == [
        ("Kevin Love", "PER"), ("Cleveland", "LOC")]
    assert new.get_metadata("image_path") == "x.jpg"


def test_image_token_embedding_round_trip(tmp_path):
    from flair.embeddings.base import load_embeddings

    torch.manual_seed(0)
    emb = ImageTokenEmbeddings("resnet18")
    s = with_image_token(Sentence(["hello", "world"]))   # no image: the [IMG] vector is zero
    emb.embed(s)
    assert s[0].get_embedding().shape == (512,) and torch.all(s[1].get_embedding() == 0)
    params = emb.save_embeddings(use_state_dict=True)
    again = load_embeddings(params)
    assert not again.training
    assert torch.equal(again.extractor.conv1.weight, emb.extractor.conv1.weight)
