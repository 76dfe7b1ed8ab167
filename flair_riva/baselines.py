"""The tagger-level "image+text" baseline of Table 4 (paper §4.5): the pooled ResNet vector of the
tweet's image is fed to the biLSTM-CRF as a first pseudo-token of the sequence.

* :func:`with_image_token` returns a copy of a sentence with the pseudo-token ``[IMG]`` in front
  (tag ``O``; gold spans, other labels and metadata kept).
* :class:`ImageTokenEmbeddings` is a Flair ``TokenEmbeddings`` that gives the ``[IMG]`` token the
  pooled image vector f_v (512 dims) and every other token zeros. The backbone is frozen and its
  features come from the feature cache when one is given.

Stack it with word embeddings: ``StackedEmbeddings([WordEmbeddings(...), ImageTokenEmbeddings(...)])``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import flair
import torch
from flair.data import Sentence
from flair.embeddings import TokenEmbeddings
from flair.embeddings.base import register_embeddings

from flair_riva.datasets import sentence_image_path
from flair_riva.vision import RegionExtractor, open_featurizer

log = logging.getLogger("flair")

IMAGE_TOKEN = "[IMG]"


def with_image_token(sentence: Sentence, label_type: str = "ner") -> Sentence:
    """A copy of ``sentence`` with the pseudo-token ``[IMG]`` first; spans of ``label_type`` shift by one."""
    new = Sentence([IMAGE_TOKEN] + [t.text for t in sentence.tokens])
    for span in sentence.get_spans(label_type):
        start, end = span.tokens[0].idx, span.tokens[-1].idx  # 1-based in the old sentence
        new[start : end + 1].add_label(label_type, span.get_label(label_type).value)
    for key, value in sentence._metadata.items():  # noqa: SLF001 - Flair has no public accessor for all
        new.add_metadata(key, value)
    return new


@register_embeddings
class ImageTokenEmbeddings(TokenEmbeddings):
    """Pooled image vector on the ``[IMG]`` pseudo-token, zeros elsewhere (Table 4, "image+text")."""

    def __init__(self, backbone: str = "resnet34", backbone_weights: str | Path | None = None,
                 image_key: str = "image_path", feature_cache: str | None = None,
                 name: str = "image-token") -> None:
        self.name = name
        self.static_embeddings = True
        super().__init__()
        self.backbone_arch = backbone
        self.image_key = image_key
        self.feature_cache = feature_cache
        self.extractor = RegionExtractor(backbone, weights=backbone_weights)
        self.extractor.requires_grad_(False)
        self._featurizer = None
        self.to(flair.device)
        self.eval()

    @property
    def embedding_length(self) -> int:
        return self.extractor.spec.visual_dim

    def train(self, mode: bool = True):  # frozen: stays in eval mode while the tagger trains
        return super().train(False)

    def _featurize(self, paths):
        if self._featurizer is None:
            self._featurizer = open_featurizer(self.extractor, self.feature_cache, owner=f"baseline {self.name}")
        return self._featurizer(paths)

    def _add_embeddings_internal(self, sentences: list[Sentence]) -> list[Sentence]:
        sentences = [s for s in sentences if len(s) > 0]
        if not sentences:
            return sentences
        paths = [sentence_image_path(s, self.image_key) for s in sentences]
        with torch.no_grad():
            visual = self._featurize(paths)
        missing = int((~visual.has_image).sum())
        if missing:
            log.info("image-token baseline: %d of %d sentences in this batch have no usable image", missing,
                     len(sentences))
        zeros = torch.zeros(self.embedding_length, device=flair.device)
        for sentence, pooled in zip(sentences, visual.pooled.to(flair.device)):
            for token in sentence.tokens:
                token.set_embedding(self.name, pooled if token.text == IMAGE_TOKEN and token.idx == 1 else zeros)
        return sentences

    def to_params(self) -> dict:
        return {"backbone": self.backbone_arch, "image_key": self.image_key,
                "feature_cache": self.feature_cache, "name": self.name}

    @classmethod
    def from_params(cls, params: dict) -> ImageTokenEmbeddings:
        return cls(backbone_weights=None, **params)  # weights arrive through the tagger's state dict
