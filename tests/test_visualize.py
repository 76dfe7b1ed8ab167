"""flair_riva.visualize: the Table 7 view (image, Eq. 8 heat map, s_G, tagged text), drawn with PIL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flair.data import Sentence
from PIL import Image

from flair_riva.config import RivaConfig
from flair_riva.embeddings import RivaEmbeddings
from flair_riva.model import RivaModel
from flair_riva.visualize import PANEL, colormap, draw_table7, heatmap_image, main, overlay, tagged_text
from tests.conftest import TINY

IMAGE = sorted((Path(__file__).parent / "data" / "images").glob("*.jpg"))[0]
TEXT = "Nice image of Kevin Love and Kyle Korver during 1 st half # NBAFinals # CavsIn9 # Cleveland"
PAD = 12
TOP = PAD + 18  # panels start below their captions


def kevin_love(image: Path | None = IMAGE) -> Sentence:
    s = Sentence(TEXT.split())
    s[3:5].add_label("ner", "PER")
    s[6:8].add_label("ner", "PER")
    s[17:18].add_label("ner", "LOC")
    if image is not None:
        s.add_metadata("image_path", str(image))
    return s


def panels(png: Path) -> tuple[np.ndarray, np.ndarray]:
    """The left (image) and middle (attention) panels of a drawn figure."""
    arr = np.asarray(Image.open(png).convert("RGB")).astype(int)
    left = arr[TOP:TOP + PANEL, PAD:PAD + PANEL]
    x = PAD + PANEL + PAD
    return left, arr[TOP:TOP + PANEL, x:x + PANEL]


def test_tagged_text_brackets_spans_like_table_7():
    s = kevin_love()
    assert tagged_text(s, "ner") == ("Nice image of [PER Kevin Love] and [PER Kyle Korver] during 1 st half "
                                     "# NBAFinals # CavsIn9 # [LOC Cleveland]")
    assert tagged_text(s, "predicted") == TEXT


def test_colormap_goes_from_blue_to_yellow():
    low, high = colormap(np.array([0.0, 1.0]))
    assert low[2] > low[0] and low[2] > low[1]            # blue
    assert high[0] > 200 and high[1] > 200 and high[2] < 60  # yellow
    assert colormap(np.zeros((7, 7))).shape == (7, 7, 3)


def test_heatmap_is_bilinear_upsampled_and_hot_where_the_attention_is():
    att = torch.zeros(7, 7)
    att[6, 6] = 1.0
    heat = np.asarray(heatmap_image(att)).astype(int)
    assert heat.shape == (PANEL, PANEL, 3)
    assert heat[-1, -1].tolist() == colormap(np.array(1.0)).tolist()
    assert heat[0, 0].tolist() == colormap(np.array(0.0)).tolist()
    # bilinear: a smooth ramp towards the hot corner, not a 32-pixel block
    ramp = heat[-1, 150:, 0]
    assert len(set(ramp.tolist())) > 10
    with pytest.raises(ValueError, match="square"):
        heatmap_image(torch.ones(10))


def test_overlay_blends_the_heat_map_over_the_image():
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    att = np.zeros((7, 7), dtype=np.float32)
    att[0, 0] = 1.0
    out = np.asarray(overlay(image, att)).astype(int)
    assert out.shape == (PANEL, PANEL, 3)
    assert out[0, 0, 0] > 100 and out[0, 0, 1] > 100     # yellow shows through at the hot corner
    assert out[-1, -1, 2] > out[-1, -1, 0]              # blue elsewhere
    assert out.max() < 255                             # blended, not pasted


def test_draw_table7_for_a_sentence_embedded_with_an_image(tmp_path):
    torch.manual_seed(0)
    model = RivaModel.from_texts(RivaConfig(**TINY), [TEXT.split()])
    emb = RivaEmbeddings(model)
    s = kevin_love()
    emb.embed([s])
    att = RivaEmbeddings.attention_map(s)
    assert att is not None
    out = draw_table7(s, tmp_path / "figs" / "case.png")
    assert out.is_file()
    figure = Image.open(out)
    assert figure.height >= PANEL and figure.width > 2 * PANEL
    left, middle = panels(out)
    photo = np.asarray(Image.open(IMAGE).convert("RGB").resize((PANEL, PANEL), Image.Resampling.BILINEAR))
    assert np.abs(left - photo.astype(int)).mean() < 2       # the image itself
    assert np.abs(middle - left).mean() > 10                 # with the heat map over it
    expected = np.asarray(overlay(Image.open(IMAGE), att)).astype(int)
    assert np.abs(middle - expected).mean() < 2


def test_draw_table7_prefers_predicted_labels_and_draws_placeholders_without_image(tmp_path):
    s = kevin_love(image=None)
    s[17:18].add_label("predicted", "ORG")
    s.add_metadata("riva_relevance", 0.0)
    s.add_metadata("riva_attention", None)
    s.add_metadata("riva_image_reason", "missing")
    out = draw_table7(s, tmp_path / "text_only.png")
    left, middle = panels(out)
    assert np.median(left) == 236 and np.median(middle) == 236  # grey placeholders
    from flair_riva.visualize import _label_type

    assert _label_type(s, "ner") == ("predicted", "prediction")
    assert _label_type(kevin_love(), "ner") == ("ner", "gold")


def test_draw_table7_for_a_sentence_that_was_never_embedded(tmp_path):
    out = draw_table7(kevin_love(), tmp_path / "raw.png")  # image shown, no attention: placeholder
    left, middle = panels(out)
    assert np.median(middle) == 236 and np.abs(left - 236).mean() > 10


def test_cli_draws_figures_for_a_saved_tagger(tmp_path, capsys):
    from flair.embeddings import StackedEmbeddings
    from flair.models import SequenceTagger

    from flair_riva.datasets import TwitterMNERCorpus
    from flair_riva.demo import generate_demo_world

    world = generate_demo_world(tmp_path / "world", size="tiny")
    corpus = TwitterMNERCorpus(world.ner_dir)
    torch.manual_seed(0)
    model = RivaModel.from_texts(RivaConfig(**TINY), [[t.text for t in s] for s in corpus.get_all_sentences()])
    tagger = SequenceTagger(hidden_size=8, embeddings=StackedEmbeddings([RivaEmbeddings(model)]),
                            tag_dictionary=corpus.make_label_dictionary("ner", add_unk=False), tag_type="ner")
    tagger.save(tmp_path / "tagger.pt")
    assert main(["--tagger", str(tmp_path / "tagger.pt"), "--corpus", str(world.ner_dir), "--split", "test",
                 "--output", str(tmp_path / "figs"), "--limit", "3"]) == 0
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert len(pngs) == 3 and all(Image.open(p).width > 2 * PANEL for p in pngs)
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_pictures_are_decoded_by_load_image_code_with_its_limits(tmp_path, monkeypatch):
    from flair_riva import vision
    from flair_riva.visualize import _open_picture

    assert _open_picture(IMAGE).mode == "RGB"
    monkeypatch.setattr(vision, "MAX_IMAGE_PIXELS", 100)  # one limit for training and display
    assert _open_picture(IMAGE) is None
    assert vision.load_picture(IMAGE) == (None, "decompression bomb")
    not_an_image = tmp_path / "passwd.jpg"
    not_an_image.write_text("root:x:0:0:root:/root:/bin/bash\n")
    assert _open_picture(not_an_image) is None
