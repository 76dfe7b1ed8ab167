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
    assert perfect.count("100.00 ± 0.00") == 3, perfect  # every subset of the tiny world has tweets
    assert "0.00" in nothing and "100" not in nothing
    n = sum(int(part.split("n = ")[1].rstrip(") |")) for part in out.splitlines()[0].split("|")[2:-1])
    assert n == len(truth)

    (runs / "stranger-seed1").mkdir()
    (runs / "stranger-seed1" / "test.tsv").write_text("not O O\na tweet O O\n\n")
    with pytest.raises(SystemExit, match="not a test tweet of this world"):
        table6_by_image.main(["--runs", str(runs), "--world", str(world.root)])
