"""Where does the image's entity type get lost? The entity-type probe at every stage of the image path.

``python -m flair_riva.probe`` reads the type off the token vectors a tagger receives. This script fits the
same logistic regression (:func:`flair_riva.probe.fit_logistic_regression`, trained on the train split's
entities, scored on dev) on each stage between the image and those vectors, at each gold entity's first
token:

* ``pooled``: the RGN's standardised pooled ResNet vector f_v (§3.1);
* ``v_c``: the VCN's attended visual vector (§3.2, Eq. 3-5);
* ``g``: the VLCN's per-step visual input s_G · tanh(W v̂_c) (``vlcn_visual="step"``; README design notes);
* ``fwd`` / ``bwd``: the forward / backward LM state at the token (§3.3);
* ``both``: [fwd; bwd], what the probe and the tagger read (§4.2).

It reports dev accuracy on the text-ambiguous entities of tweets whose image adds (the demo world's
relation truth), with own images and with images shuffled among the dev tweets.

Usage: ``python recipes/probe_stages.py --model RUN/final --world DEMO_WORLD_DIR``
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

from flair_riva.datasets import TwitterMNERCorpus, read_relation_truth, sentence_image
from flair_riva.model import RivaModel
from flair_riva.probe import derangement, fit_logistic_regression, predict, text_ambiguous
from flair_riva.vision import open_featurizer

STAGES = ("pooled", "v_c", "g", "fwd", "bwd", "both")


def stage_vectors(model: RivaModel, featurizer, sentences, shuffle: bool = False, batch_size: int = 64):
    """Per gold entity: the vector of each stage, and the entity's type, surface form and image id."""
    paths = [sentence_image(s)[0] for s in sentences]
    if shuffle:
        paths = [paths[j] for j in derangement(len(paths), 1)]
    rows: dict[str, list[torch.Tensor]] = defaultdict(list)
    entities = []
    vlcn = model.vlcn
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start:start + batch_size]
        visual = featurizer(paths[start:start + batch_size])
        text = model.encode([[t.text for t in s] for s in batch])
        with torch.no_grad():
            out = model(text, visual)
            pooled = model.rgn.visual_norm(visual.pooled, visual.has_image)
            v_hat = vlcn.visual_norm(out.v_c, out.v_c.abs().sum(-1) > 0)
            g = out.s_g[:, None] * torch.tanh(vlcn.visual_step(v_hat))
        h = out.token_states.shape[-1] // 2
        for i, sentence in enumerate(batch):
            for span in sentence.get_spans("ner"):
                k = span.tokens[0].idx - 1
                state = out.token_states[i, k]
                for name, vector in zip(STAGES, (pooled[i], out.v_c[i], g[i], state[:h], state[h:], state)):
                    rows[name].append(vector.float())
                entities.append((span.get_label("ner").value, span.text.lower(), sentence.get_metadata("image_id")))
    return {name: torch.stack(v) for name, v in rows.items()}, entities


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a RIVA model folder with vlcn_visual='step'")
    parser.add_argument("--world", type=Path, required=True, help="a demo world folder (ner/, feature-cache/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = RivaModel.load(args.model).eval()
    if model.config.vlcn_visual != "step" or not model.config.use_image:
        parser.error("the stages need a RIVA model with the image and vlcn_visual='step'")
    corpus = TwitterMNERCorpus(args.world / "ner")
    truth = read_relation_truth(args.world / "ner" / "relation_truth.tsv")
    featurizer = open_featurizer(model.backbone, args.world / "feature-cache")
    train_x, train_entities = stage_vectors(model, featurizer, list(corpus.train))
    types = sorted({e[0] for e in train_entities})
    index = {t: i for i, t in enumerate(types)}
    y = torch.tensor([index[e[0]] for e in train_entities])
    ambiguous = text_ambiguous((surface, label) for label, surface, _ in train_entities)
    probes = {name: fit_logistic_regression(train_x[name], y, len(types)) for name in STAGES}
    print(f"{args.model}: dev accuracy (%) on text-ambiguous entities of tweets whose image adds")
    print("| images | n | " + " | ".join(STAGES) + " |")
    print("|---|---:|" + "---:|" * len(STAGES))
    for condition in ("own", "shuffled"):
        dev_x, dev_entities = stage_vectors(model, featurizer, list(corpus.dev), shuffle=condition == "shuffled")
        subset = [i for i, (label, surface, image) in enumerate(dev_entities)
                  if surface in ambiguous and truth.get(image) == 1 and label in index]
        if not subset:
            print(f"| {condition} | 0 | " + " | ".join("–" for _ in STAGES) + " |")
            continue
        gold = torch.tensor([index[dev_entities[i][0]] for i in subset])
        cells = [100 * (predict(probes[name], dev_x[name][subset]) == gold).float().mean().item() for name in STAGES]
        print(f"| {condition} | {len(subset)} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
