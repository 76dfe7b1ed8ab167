"""pretrain.stages: the pseudo-labels of stage 2 (the other stages run in test_pretrain's runs)."""

from __future__ import annotations

import json

import torch

from flair_riva.config import RivaConfig
from flair_riva.datasets import read_pseudo_labelled
from flair_riva.model import RivaModel
from flair_riva.pretrain import resolve_args, stages
from flair_riva.pretrain.distributed import DistContext
from flair_riva.text import Vocabulary
from tests.conftest import TINY, tiny_args


def test_pseudo_labelling_filters_by_top_class_score_in_one_stream(world, cache_dir, tmp_path, monkeypatch):
    """Stage 2 with scripted teacher probabilities: top class score > 0.6 kept, with that score."""
    import flair_riva.datasets as datasets

    p_adds = {"aa": 0.1, "bb": 0.35, "cc": 0.45, "dd": 0.55, "ee": 0.62, "ff": 0.7, "gg": 0.9, "hh": 0.5, "ii": 0.99}
    images = sorted(world.image_dir.glob("*.png"))
    lines = [json.dumps({"text": f"{w} pic", "image": str(images[i])}) for i, w in enumerate(p_adds)]
    lines[-1] = json.dumps({"text": "ii pic", "image": "missing.png"})
    unlabelled = tmp_path / "u.jsonl"
    unlabelled.write_text("\n".join(lines) + "\n", encoding="utf-8")
    from flair_riva.pretrain.inputs import DataPaths, RunInputs
    from flair_riva.pretrain.run_folder import RunFolder

    config = resolve_args(tiny_args(world, tmp_path / "out", cache_dir, threshold=0.6))[0]
    folder = RunFolder(config.output)
    folder.path.mkdir(parents=True)
    run = RunInputs(config, DistContext(), folder, DataPaths(None, unlabelled, None))
    teacher = RivaModel(RivaConfig(**TINY), Vocabulary.build([["aa"]], 10, 1))

    def scripted_logits(text, visual):
        p = torch.tensor([p_adds[tokens[0]] for tokens in text.tokens])
        return torch.stack([torch.log(1 - p), torch.log(p)], dim=-1)

    teacher.relation_logits = scripted_logits
    streams = []
    real_iter = datasets.iter_unlabelled_pairs
    monkeypatch.setattr(datasets, "iter_unlabelled_pairs", lambda *a, **k: streams.append(1) or real_iter(*a, **k))
    info = stages.pseudo_label(run, teacher, expected=9)
    assert len(streams) == 1, "the unlabelled pairs are read in one streaming pass"
    assert info.kept == 5 and info.below_threshold == 3 and info.without_image == 1 and info.seen == 9
    assert info.kept_per_class == {"image does not add": 2, "image adds": 3}
    kept = read_pseudo_labelled(folder / "pseudo_labelled.tsv")
    assert [(p.tokens[0], p.label) for p in kept] == [("aa", 0), ("bb", 0), ("ee", 1), ("ff", 1), ("gg", 1)]
    assert [round(p.score, 4) for p in kept] == [0.9, 0.65, 0.62, 0.7, 0.9]
