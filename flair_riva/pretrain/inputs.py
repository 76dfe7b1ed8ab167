"""What every stage reads: the located data, the labelled pairs, the word vectors and the run's backbone.

:class:`RunInputs` is built once per run (per rank) from a resolved :class:`PretrainConfig`. Each resource
is read on first use and kept: the labelled relation pairs (checked: both classes, usable images), the word
vectors, and the ResNet weights every model of the run starts from, with the frozen backbone's
featurizer. :meth:`RunInputs.fresh_model` builds a seeded model from them.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from flair_riva.config import RivaConfig
from flair_riva.model import RivaModel
from flair_riva.pretrain.data import VisualSource, epoch_batches, stratified_split
from flair_riva.pretrain.distributed import DistContext
from flair_riva.pretrain.options import PretrainConfig, PretrainError
from flair_riva.pretrain.run_folder import RunFolder
from flair_riva.pretrain.state import seed_everything
from flair_riva.text import Vocabulary

log = logging.getLogger("flair")

CLASS_NAMES = {0: "image does not add", 1: "image adds"}


def reason_summary(reasons: Counter, examples: dict[str, Any]) -> str:
    """``"3 missing (e.g. a.jpg), 2 corrupt (e.g. /etc/passwd)"``: why rows had no usable image."""
    return ", ".join(f"{n} {reason} (e.g. {examples.get(reason)})" for reason, n in reasons.most_common())


@dataclass
class DataPaths:
    """Where the run's data is: the user's files, or the generated demo world."""

    relation: Path | None
    unlabelled: Path | None
    image_dir: Path | None
    demo_root: Path | None = None

    @classmethod
    def locate(cls, config: PretrainConfig) -> DataPaths:
        """Data paths; on the demo world, generate it (idempotent)."""
        if config.demo:
            from flair_riva.demo import default_demo_root, generate_demo_world

            root = Path(config.demo_dir).expanduser() if config.demo_dir else default_demo_root()
            try:
                world = generate_demo_world(root, scale=config.demo_scale)
            except (ValueError, OSError) as err:
                raise PretrainError(f"cannot write the demo world to {root}: {err}") from err
            return cls(world.relation_file, world.unlabelled_file, None, world.root)

        def path(value: str | None) -> Path | None:
            return Path(value).expanduser().absolute() if value else None

        return cls(path(config.relation_data), path(config.unlabelled), path(config.image_dir))


@dataclass
class LabelledSplits:
    """The labelled relation pairs with a usable image, split train/dev/test (§4.1: 8:2, dev from train)."""

    train: list[Any]
    dev: list[Any]
    test: list[Any]


class RunInputs:
    """The inputs of one run on one rank (see the module docstring)."""

    def __init__(self, config: PretrainConfig, ctx: DistContext, folder: RunFolder, data: DataPaths) -> None:
        self.config = config
        self.ctx = ctx
        self.folder = folder
        self.data = data
        self.device = ctx.device
        self.show_progress = bool(config.progress) and ctx.is_main
        self.eval_batch_size = max(64, 4 * config.batch_size)
        self._labelled: list[Any] | None = None
        self._word_vectors: Any = None
        self._initial_backbone: dict[str, torch.Tensor] | None = None
        self._source: VisualSource | None = None

    def bar(self, **kwargs) -> tqdm:
        kwargs.setdefault("unit", "pair")
        kwargs.setdefault("dynamic_ncols", True)
        kwargs.setdefault("mininterval", 1.0)
        return tqdm(disable=not self.show_progress, file=sys.stderr, **kwargs)

    def batches(self, pairs: list[Any], epoch: int, stream: str) -> list[list[int]]:
        """This run's global batches of ``pairs`` for one epoch of ``stream`` (indices into ``pairs``):
        seeded by (--seed, epoch, stream), length-bucketed in pools of --length-buckets batches."""
        c = self.config
        return epoch_batches(len(pairs), c.batch_size, c.seed, epoch, stream, [len(p.tokens) for p in pairs],
                             c.length_buckets)

    def model_config(self, word_dim: int) -> RivaConfig:
        """The model of this run; given word vectors are frozen unless --fine-tune-word-vectors (issue 10)."""
        frozen = self.config.word_vectors is not None and not self.config.fine_tune_word_vectors
        return self.config.model.replace(word_dim=word_dim,
                                         freeze_word_vectors=self.config.model.freeze_word_vectors or frozen)

    # -- data ----------------------------------------------------------------------------------------------
    @property
    def labelled(self) -> list[Any]:
        """Labelled relation pairs with a usable image; checks for the teacher's needs."""
        if self._labelled is None:
            self._labelled = self._read_labelled()
        return self._labelled

    def _read_labelled(self) -> list[Any]:
        from flair_riva.datasets import read_relation_pairs
        from flair_riva.vision import probe_image

        path = self.data.relation
        try:
            pairs = read_relation_pairs(path, self.data.image_dir)
        except (ValueError, OSError, UnicodeError) as err:  # CorpusFormatError is a ValueError
            raise PretrainError(f"cannot read the relation data {path}: {err}") from err
        labels = Counter(p.label for p in pairs)
        if len(labels) < 2:
            (only,) = labels
            raise PretrainError(
                f"the relation data {path} has a single class: all {len(pairs)} pairs are "
                f"'{CLASS_NAMES.get(only, only)}'; the teacher needs pairs of both classes (image_adds 0 and 1)")
        reasons: Counter = Counter()
        examples: dict[str, Any] = {}
        with_image = []
        for pair in pairs:
            reason = probe_image(pair.image)  # a regular file that identifies as an image, within the limits
            if reason is None:
                with_image.append(pair)
            else:
                reasons[reason] += 1
                examples.setdefault(reason, pair.image)
        if not with_image:
            raise PretrainError(
                f"every image of the relation data {path} is unusable: {len(pairs)} pairs without a usable image "
                f"({reason_summary(reasons, examples)}); relative image paths resolve inside --image-dir (or the "
                "data file's folder when it is not given), absolute paths are used as written")
        counts = Counter(p.label for p in with_image)
        for cls in (0, 1):
            if counts[cls] < 3:
                raise PretrainError(
                    f"the relation data {path} has {counts[cls]} pairs with an image for class '{CLASS_NAMES[cls]}': "
                    "at least 3 per class are needed for the train/dev/test split")
        dropped = len(pairs) - len(with_image)
        if dropped and self.ctx.is_main:
            log.warning("%d of %d labelled pairs have no usable image (%s) and are left out of the relation task",
                        dropped, len(pairs), reason_summary(reasons, examples))
        return with_image

    def splits(self) -> LabelledSplits:
        c = self.config
        pairs = self.labelled
        train, dev, test = stratified_split([p.label for p in pairs], c.seed, c.test_fraction, c.dev_fraction)
        return LabelledSplits([pairs[i] for i in train], [pairs[i] for i in dev], [pairs[i] for i in test])

    @property
    def word_vectors(self):
        if self._word_vectors is None and self.config.word_vectors:
            from flair_riva.text import load_word_vectors

            try:
                self._word_vectors = load_word_vectors(self.config.word_vectors)
            except Exception as err:  # gensim raises many types for a bad file
                raise PretrainError(f"cannot read --word-vectors {self.config.word_vectors}: "
                                    f"{type(err).__name__}: {err}") from err
        return self._word_vectors

    # -- the backbone ----------------------------------------------------------------------------------------
    def initial_backbone(self) -> dict[str, torch.Tensor]:
        """The ResNet weights every model of the run starts from (named, a file, or a seeded random init)."""
        if self._initial_backbone is None:
            from flair_riva.vision import RegionExtractor, parse_weights

            seed_everything(self.config.seed)
            try:
                extractor = RegionExtractor(self.config.model.backbone,
                                            weights=parse_weights(self.config.backbone_weights))
            except (RuntimeError, ValueError, FileNotFoundError, TypeError) as err:
                raise PretrainError(f"backbone weights: {err}") from err
            self._initial_backbone = {k: v.detach().clone() for k, v in extractor.state_dict().items()}
        return self._initial_backbone

    def visual_source(self) -> VisualSource:
        """Image paths -> model input: cached features of the frozen backbone, or pixels to fine-tune on."""
        if self._source is None:
            if not self.config.model.use_image:
                self._source = VisualSource(None, use_image=False)
            elif not self.config.frozen:
                self._source = VisualSource(None)
            else:
                self._source = VisualSource(self.featurizer())
        return self._source

    def featurizer(self):
        """The frozen backbone's :class:`~flair_riva.vision.ImageFeaturizer` with its on-disk cache."""
        from flair_riva.vision import RegionExtractor, open_featurizer

        extractor = RegionExtractor(self.config.model.backbone, weights=None)
        extractor.load_state_dict(self.initial_backbone())
        extractor.to(self.device).eval().requires_grad_(False)
        root = Path(self.config.feature_cache).expanduser() if self.config.feature_cache \
            else self.folder / "feature-cache"
        featurizer = open_featurizer(extractor, root, batch_size=64)
        if self.ctx.is_main and featurizer.cache is not None:
            log.info("frozen backbone: region features cached in %s", featurizer.cache.directory)
        return featurizer

    def fresh_model(self, vocab: Vocabulary, config: RivaConfig, seed: int) -> RivaModel:
        """A new model: seeded init, the run's initial backbone, the word vectors if given."""
        seed_everything(seed)
        model = RivaModel(config, vocab, backbone_weights=None)
        if model.backbone is not None:
            model.backbone.load_state_dict(self.initial_backbone())
            if self.config.frozen:
                model.backbone.requires_grad_(False)
        if self.word_vectors is not None:
            model.init_word_vectors(self.word_vectors)
        return model.to(self.device)
