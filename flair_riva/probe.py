"""Does a RIVA model carry what the image shows into its token vectors? A probe on frozen vectors.

RIVA's claim (paper §3.3, §4.2) is that the VLCN's token states carry what the image adds to the tweet.
This module tests that claim on any RIVA model and any MNER corpus with gold tags, before hours are spent
on taggers: a multinomial logistic regression reads each gold entity's type off the frozen RIVA vector
of the entity's first token. It is trained on the train split (each tweet with its own image) and scored
on dev three ways:

* ``own``: each dev tweet with its own image;
* ``shuffled``: the dev images permuted among the dev tweets (a control: if ``own`` is not above it,
  the vectors do not use the image);
* ``no_image``: every dev tweet without an image (s_G = 0);
* ``gate_open``: each dev tweet with its own image and s_G forced to 1 (a control of the gate: where the RGN
  closed it, this lets the image in; for a ``-RGN`` model it equals ``own``);
* ``text_bow``: no RIVA at all, a control of what the text alone tells a linear probe: the same logistic
  regression on the bag of words of the entity's tweet (its :data:`BOW_WORDS` most frequent train words)
  plus its surface form. Where RIVA(text) is below chance, this shows whether the text itself points away.

Scores are reported for all entities and for the *text-ambiguous* ones (surface forms annotated with
more than one type in the train split: only context or image can tell their type), and, given a
relation truth file (``image_id<TAB>image_adds``, as the demo world writes), split by whether the image
adds. Chance is the share of the most frequent type.

``python -m flair_riva.probe --model DIR --corpus DIR [--image-dir DIR] [--feature-cache DIR]``
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flair.data import Sentence

from flair_riva.datasets import read_relation_truth, sentence_image_path

log = logging.getLogger("flair")

SHUFFLED_KEY = "riva_probe_shuffled_image"


@dataclass
class ProbeExample:
    """One gold entity: the RIVA vector of its first token, its type and what the subsets need."""

    vector: torch.Tensor
    label: str
    surface: str
    image_id: str | None
    words: tuple[str, ...] = ()
    """The tweet's tokens, lowercased (for the ``text_bow`` control)."""


@dataclass
class ProbeReport:
    """Accuracies (in [0, 1]) of the entity-type probe on dev, per condition and subset."""

    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    """``accuracy[condition][subset]``; conditions ``own``, ``shuffled``, ``no_image``, ``gate_open`` and
    ``text_bow``."""
    counts: dict[str, int] = field(default_factory=dict)
    """Number of dev entities per subset."""
    chance: dict[str, float] = field(default_factory=dict)
    """Share of the most frequent type per subset (what a constant guess scores)."""
    train_entities: int = 0

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "counts": self.counts, "chance": self.chance,
                "train_entities": self.train_entities}

    def table(self) -> str:
        """A Markdown table: one row per subset, one column per condition."""
        conditions = list(self.accuracy)
        lines = ["| dev entities | n | chance | " + " | ".join(conditions) + " |",
                 "|---|---:|---:|" + "---:|" * len(conditions)]
        for subset, n in self.counts.items():
            cells = " | ".join(f"{100 * self.accuracy[c][subset]:.1f}" for c in conditions)
            lines.append(f"| {subset} | {n} | {100 * self.chance[subset]:.1f} | {cells} |")
        return "\n".join(lines)


def entity_examples(sentences: Sequence[Sentence], embedding_name: str, tag_type: str = "ner"
                    ) -> list[ProbeExample]:
    """One :class:`ProbeExample` per gold entity of embedded ``sentences`` (first token's vector)."""
    examples = []
    for sentence in sentences:
        image_id = sentence.get_metadata("image_id") if sentence.has_metadata("image_id") else None
        words = tuple(token.text.lower() for token in sentence)
        for span in sentence.get_spans(tag_type):
            vector = span.tokens[0].get_embedding([embedding_name]).detach().float().cpu()
            examples.append(ProbeExample(vector, span.get_label(tag_type).value, span.text.lower(), image_id,
                                         words))
    return examples


#: Vocabulary size of the ``text_bow`` control (the most frequent words of the train tweets).
BOW_WORDS = 2000


def bag_of_words(train: Sequence[ProbeExample], dev: Sequence[ProbeExample], size: int = BOW_WORDS
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 features of each example: the ``size`` most frequent words of the train tweets present in its
    tweet, and its surface form (one feature per train surface form). Returns ``(x_train, x_dev)``."""
    counts = Counter(w for e in train for w in set(e.words))
    index = {("w", w): i for i, (w, _) in enumerate(counts.most_common(size))}
    for surface in sorted({e.surface for e in train}):
        index[("s", surface)] = len(index)

    def encode(examples: Sequence[ProbeExample]) -> torch.Tensor:
        x = torch.zeros(len(examples), len(index))
        for row, e in enumerate(examples):
            columns = [index[k] for k in [("w", w) for w in set(e.words)] + [("s", e.surface)] if k in index]
            x[row, columns] = 1.0
        return x

    return encode(train), encode(dev)


def _accuracy(predicted: torch.Tensor, examples: Sequence[ProbeExample], index: dict[str, int],
              subsets: dict[str, list[int]]) -> dict[str, float]:
    """Accuracy of the predicted type ids on each subset of ``examples`` (indices into it)."""
    correct = [int(predicted[i]) == index[e.label] for i, e in enumerate(examples)]
    return {name: sum(correct[i] for i in members) / len(members) for name, members in subsets.items()}


def text_ambiguous(surface_labels: Iterable[tuple[str, str]]) -> set[str]:
    """The surface forms annotated with more than one type: only context or image can tell their type."""
    labels: dict[str, set[str]] = defaultdict(set)
    for surface, label in surface_labels:
        labels[surface].add(label)
    return {surface for surface, found in labels.items() if len(found) > 1}


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-2,
                            iterations: int = 200) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on standardised features (L-BFGS, L2 penalty ``l2``).

    Returns ``(weight, bias, mean, std)``; predict with :func:`predict`."""
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach(), mean, std


def predict(params: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    weight, bias, mean, std = params
    return (((x - mean) / std) @ weight + bias).argmax(dim=-1)


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (n >= 2): item i gets the image of perm[i]."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    perm = [0] * n
    for k in range(n):  # a cycle through the shuffled order moves every item
        perm[order[k]] = order[(k + 1) % n]
    return perm


def _embed(embedding, sentences: Sequence[Sentence], batch_size: int) -> None:
    for start in range(0, len(sentences), batch_size):
        embedding.embed(list(sentences[start:start + batch_size]))


def run_probe(model, train: Sequence[Sentence], dev: Sequence[Sentence], *, feature_cache: str | Path | None = None,
              relation_truth: dict[str, int] | None = None, batch_size: int = 64, seed: int = 1,
              tag_type: str = "ner") -> ProbeReport:
    """Train the entity-type probe on ``train`` RIVA vectors and score it on ``dev`` (module docstring).

    ``model``: a RIVA model directory or :class:`~flair_riva.model.RivaModel`. The sentences need gold
    ``tag_type`` spans and ``image_path`` metadata (as :class:`~flair_riva.datasets.TwitterMNERCorpus`
    gives). Their RIVA vectors are removed again afterwards."""
    from flair_riva.embeddings import RivaEmbeddings

    own = RivaEmbeddings(model, feature_cache=feature_cache, name="riva-probe")
    uses_image = own.use_image
    conditions = {"own": own}
    if uses_image:
        paths = [sentence_image_path(s) for s in dev]
        perm = derangement(len(dev), seed) if len(dev) > 1 else list(range(len(dev)))
        for sentence, j in zip(dev, perm):
            sentence.add_metadata(SHUFFLED_KEY, paths[j])
        conditions["shuffled"] = RivaEmbeddings(own.model, feature_cache=feature_cache, image_key=SHUFFLED_KEY,
                                                name="riva-probe")
        conditions["no_image"] = RivaEmbeddings(own.model, use_image=False, name="riva-probe")
        conditions["gate_open"] = RivaEmbeddings(own.model, feature_cache=feature_cache, name="riva-probe",
                                                 force_relevance=1.0)

    def clear(sentences: Sequence[Sentence]) -> None:
        for sentence in sentences:
            sentence.clear_embeddings(["riva-probe"])

    try:
        _embed(own, train, batch_size)
        train_examples = entity_examples(train, "riva-probe", tag_type)
        clear(train)
        if not train_examples:
            raise ValueError("the train split has no gold entity: nothing to train the probe on")
        types = sorted({e.label for e in train_examples})
        index = {t: i for i, t in enumerate(types)}
        x = torch.stack([e.vector for e in train_examples])
        y = torch.tensor([index[e.label] for e in train_examples])
        params = fit_logistic_regression(x, y, len(types))
        ambiguous = text_ambiguous((e.surface, e.label) for e in train_examples)

        report = ProbeReport(train_entities=len(train_examples))
        own_examples: list[ProbeExample] = []
        own_subsets: dict[str, list[int]] = {}
        for condition, embedding in conditions.items():
            _embed(embedding, dev, batch_size)
            examples = [e for e in entity_examples(dev, "riva-probe", tag_type) if e.label in index]
            clear(dev)
            subsets = _subsets(examples, ambiguous, relation_truth)
            predicted = predict(params, torch.stack([e.vector for e in examples])) if examples else torch.zeros(0)
            report.accuracy[condition] = _accuracy(predicted, examples, index, subsets)
            if condition == "own":
                report.counts = {name: len(members) for name, members in subsets.items()}
                report.chance = {name: Counter(examples[i].label for i in members).most_common(1)[0][1] / len(members)
                                 for name, members in subsets.items()}
                own_examples, own_subsets = examples, subsets
        if own_examples:  # the text-only control: the same probe on the tweet's bag of words
            x_train, x_dev = bag_of_words(train_examples, own_examples)
            bow = predict(fit_logistic_regression(x_train, y, len(types)), x_dev)
            report.accuracy["text_bow"] = _accuracy(bow, own_examples, index, own_subsets)
        return report
    finally:
        for sentence in dev:
            sentence._metadata.pop(SHUFFLED_KEY, None)  # Flair has no public way to remove metadata
        clear(list(train) + list(dev))


def _subsets(examples: Sequence[ProbeExample], ambiguous: set[str], truth: dict[str, int] | None
             ) -> dict[str, list[int]]:
    subsets: dict[str, list[int]] = {"all": list(range(len(examples)))}
    subsets["text-ambiguous"] = [i for i, e in enumerate(examples) if e.surface in ambiguous]
    if truth:
        for flag, name in ((1, "image adds"), (0, "image doesn't add")):
            members = [i for i, e in enumerate(examples) if truth.get(e.image_id or "") == flag]
            subsets[name] = members
            subsets[f"{name}, text-ambiguous"] = [i for i in members if examples[i].surface in ambiguous]
    return {name: members for name, members in subsets.items() if members}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flair_riva.probe",
        description="Entity-type probe on frozen RIVA vectors: does the model carry what the image shows? "
                    "Trained on the corpus's train split, scored on dev with own, shuffled and no images, and with "
                    "the gate forced open.")
    parser.add_argument("--model", required=True, help="a RIVA model directory (e.g. RUN/final or RUN/best)")
    parser.add_argument("--corpus", required=True, help="an MNER corpus folder in the IMGID format")
    parser.add_argument("--image-dir", default=None, help="the corpus images (default: CORPUS/images)")
    parser.add_argument("--feature-cache", default=None, help="feature-cache directory (optional)")
    parser.add_argument("--relation-truth", default=None,
                        help="TSV image_id<TAB>image_adds with a header: also report by whether the image adds")
    parser.add_argument("--max-train", type=int, default=None, help="use at most this many train tweets")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1, help="seed of the image shuffle")
    parser.add_argument("--output", default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    from flair_riva.datasets import TwitterMNERCorpus
    from flair_riva.model import CheckpointError, RivaModel

    try:
        model = RivaModel.load(args.model)
        corpus = TwitterMNERCorpus(args.corpus, image_dir=args.image_dir)
        truth = read_relation_truth(args.relation_truth) if args.relation_truth else None
    except (CheckpointError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train = list(corpus.train)[: args.max_train] if args.max_train else list(corpus.train)
    if corpus.dev is None or len(corpus.dev) == 0:
        print("error: the corpus has no dev split", file=sys.stderr)
        return 2
    report = run_probe(model, train, list(corpus.dev), feature_cache=args.feature_cache, relation_truth=truth,
                       batch_size=args.batch_size, seed=args.seed)
    print(f"entity-type probe on frozen RIVA vectors of {args.model} ({report.train_entities} train entities); "
          "dev accuracy (%):")
    print(report.table())
    if args.output:
        Path(args.output).write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
