"""recipes/table6_by_image.py: the demo world's Table 6 with the tweets whose image doesn't add split by what
their image shows, read from the taggers' test predictions (Flair's test.tsv) and the world's truth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from flair_riva.experiments import gold_tags_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import table6_by_image  # noqa: E402


def _write_run(folder: Path, sentences, predict, config: str | None = None, img_token: bool = False) -> None:
    folder.mkdir(parents=True)
    lines = []
    for sentence, gold in zip(sentences, gold_tags_of(sentences)):
        if img_token:
            lines.append("[IMG] O O")
        lines += [f"{t.text} {g} {p}" for t, g, p in zip(sentence, gold, predict(gold))] + [""]
    (folder / "test.tsv").write_text("\n".join(lines) + "\n")
    if config is not None:
        (folder / "result.json").write_text(json.dumps({"config": config}))


def test_subsets_scores_and_the_gate(world, tmp_path, capsys):
    test = list(world.ner_corpus().test)
    truth = {s.get_metadata("image_id"): s for s in test}
    rows = table6_by_image.subset_of
    assert rows({"image_adds": "1", "image_kind": "person"}) == "image adds"
    assert rows({"image_adds": "0", "image_kind": "location"}) == "doesn't add, misleading image"
    assert rows({"image_adds": "0", "image_kind": "food"}) == "doesn't add, unrelated picture"
    runs = tmp_path / "runs"
    _write_run(runs / "perfect-seed1", test, lambda gold: gold, config="+RIVA(image+text)", img_token=True)
    _write_run(runs / "perfect-seed2", test, lambda gold: gold, config="+RIVA(image+text)")
    _write_run(runs / "nothing-seed1", test, lambda gold: ["O"] * len(gold))
    assert table6_by_image.main(["--runs", str(runs), "--world", str(world.root)]) == 0
    out = capsys.readouterr().out
    perfect = next(line for line in out.splitlines() if line.startswith("| +RIVA(image+text) |"))
    nothing = next(line for line in out.splitlines() if line.startswith("| nothing |"))
    assert perfect.startswith("| +RIVA(image+text) | 2 |"), perfect  # two runs of that configuration
    assert perfect.count("100.00 ± 0.00") == 4, perfect  # all tweets, and every subset of the tiny world
    assert "0.00" in nothing and "100" not in nothing
    sizes = [int(part.split("n = ")[1].rstrip(") |")) for part in out.splitlines()[0].split("|")[3:-1]]
    assert sizes[0] == len(truth) == sum(sizes[1:])

    (runs / "stranger-seed1").mkdir()
    (runs / "stranger-seed1" / "test.tsv").write_text("not O O\na tweet O O\n\n")
    with pytest.raises(SystemExit, match="not a test tweet of this world"):
        table6_by_image.main(["--runs", str(runs), "--world", str(world.root)])


def test_the_papers_split_by_the_rgn(world, tmp_path, capsys, monkeypatch):
    """With --riva, Table 6 is also split as the paper splits it: by the RGN's s_G >= 0.5, not by the truth."""
    import flair_riva.experiments

    test = list(world.ner_corpus().test)
    gates = [1.0 if i % 2 == 0 else 0.2 for i in range(len(test))]  # the RGN's call, unrelated to the truth
    monkeypatch.setattr(flair_riva.experiments, "relevance_of", lambda sentences, *_: gates[:len(sentences)])
    runs = tmp_path / "runs"
    # right exactly on the tweets the RGN calls "image adds", nothing elsewhere
    _write_run(runs / "half-seed1", test, lambda gold: gold, config="half")
    lines = (runs / "half-seed1" / "test.tsv").read_text().split("\n\n")
    kept = [block if i % 2 == 0 else "\n".join(f"{line.rsplit(' ', 1)[0]} O" for line in block.splitlines())
            for i, block in enumerate(lines[:len(test)])]
    (runs / "half-seed1" / "test.tsv").write_text("\n\n".join(kept) + "\n\n")
    assert table6_by_image.main(["--runs", str(runs), "--world", str(world.root), "--riva", "unused"]) == 0
    out = capsys.readouterr().out.split("as the paper splits it")[1]
    header = next(line for line in out.splitlines() if line.startswith("| tagger |"))
    assert f"RGN: image adds (n = {(len(test) + 1) // 2})" in header
    assert f"RGN: image doesn't add (n = {len(test) // 2})" in header
    row = next(line for line in out.splitlines() if line.startswith("| half |"))
    assert row.split("|")[3].strip() == "100.00" and row.split("|")[4].strip() == "0.00", row


def test_runs_of_several_pretraining_seeds_are_pooled(world, tmp_path, capsys, monkeypatch):
    """Several --runs folders, each split by its own model's RGN; one --riva per folder."""
    import flair_riva.experiments

    test = list(world.ner_corpus().test)
    gates = {"model-a": [1.0] * len(test), "model-b": [0.0] * len(test)}  # every tweet "adds", none "adds"
    monkeypatch.setattr(flair_riva.experiments, "relevance_of", lambda sentences, model, *_: gates[str(model)])
    for folder in ("a", "b"):
        _write_run(tmp_path / folder / "perfect-seed1", test, lambda gold: gold, config="perfect")
    argv = ["--runs", str(tmp_path / "a"), str(tmp_path / "b"), "--world", str(world.root)]
    assert table6_by_image.main(argv + ["--riva", "model-a", "model-b"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].startswith("| perfect | 2 | 100.00 ± 0.00 |")
    header = next(line for line in out.split("as the paper splits it")[1].splitlines() if line.startswith("| tagger"))
    assert f"RGN: image adds (n = {len(test)} / 0)" in header and f"doesn't add (n = 0 / {len(test)})" in header
    assert "1.000 / 0.000" in out  # the share of open gates, per model
    rgn_row = next(line for line in out.split("as the paper splits it")[1].splitlines() if line.startswith("| perfect"))
    assert rgn_row == "| perfect | 2 | 100.00 | 100.00 |"  # one run in each subset, two runs in all
    with pytest.raises(SystemExit):
        table6_by_image.main(argv + ["--riva", "model-a"])
    assert "one per folder" in capsys.readouterr().err
