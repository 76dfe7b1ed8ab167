"""The pretraining losses and gradient norm of one fixed batch, to compare two versions of the code.

Builds RIVA (Table 2 sizes, ResNet-18 random weights frozen: cached features) with seed 0 on the first 32
unlabelled pairs of the demo world (random pseudo labels, seed 0) and prints task 1 + task 2 (Eq. 1-2 and
7) with the gradient norm, in evaluation mode and in training mode with every dropout set to 0. Two
versions that compute the same model print the same numbers (float32 tolerance):

    PYTHONPATH=../old-worktree python recipes/fixed_batch_loss.py
    PYTHONPATH=. python recipes/fixed_batch_loss.py [cuda]
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import torch

from flair_riva.config import RivaConfig
from flair_riva.datasets import iter_unlabelled_pairs
from flair_riva.demo import generate_demo_world
from flair_riva.model import RivaModel
from flair_riva.pretrain.data import VisualSource, prepare_batch
from flair_riva.text import Vocabulary
from flair_riva.vision import FeatureCache, ImageFeaturizer, RegionExtractor


def main() -> int:
    torch.set_num_threads(1)
    device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
    with tempfile.TemporaryDirectory(prefix="riva-fixed-") as tmp:
        world = generate_demo_world(Path(tmp) / "world")
        pairs = list(iter_unlabelled_pairs(world.unlabelled_file))[:32]
        rng = random.Random(0)
        for pair in pairs:
            pair.label = rng.randint(0, 1)
        vocab = Vocabulary.build([p.tokens for p in pairs], 50000, 1)
        torch.manual_seed(0)
        model = RivaModel(RivaConfig(backbone="resnet18"), vocab).to(device)
        extractor = RegionExtractor("resnet18")
        extractor.load_state_dict(model.backbone.state_dict())
        extractor.to(device).eval()
        source = VisualSource(ImageFeaturizer(extractor, FeatureCache(Path(tmp) / "cache", extractor.fingerprint())))
        batch = prepare_batch(pairs, vocab, source)
        visual = source.features(model, batch.visual, grad=False)
        for mode in ("eval", "train"):
            model.train(mode == "train")
            if mode == "train":   # no random masks: dropout layers, LSTM inter-layer dropout, gate dropout
                for module in model.modules():
                    if isinstance(module, torch.nn.Dropout):
                        module.p = 0.0
                    if isinstance(module, torch.nn.LSTM):
                        module.dropout = 0.0
                model.config = model.config.replace(gate_dropout=0.0)
            out = model(batch.text.to(device), visual)
            task1 = model.relation_loss(out.relation_logits, batch.labels, batch.has_image)
            loss = task1 + model.lm_loss(out, batch.text.to(device))
            model.zero_grad()
            loss.backward()
            norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
            print(f"{mode}: loss {loss.item():.9f}, gradient norm {norm.item():.9f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
