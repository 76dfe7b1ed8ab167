"""The RIVA(text) pretraining text of the real-tweet experiments, and what its vocabulary covers (issue 10).

**Disjoint pretraining text.** For a target corpus (say Twitter-2015) :func:`disjoint_pretraining_text`
writes, as unlabelled JSON lines for ``python -m flair_riva.pretrain --no-image --unlabelled``, the
target's *train* tweets plus every tweet (train, dev and test) of the other corpora, leaving out each
tweet whose normalised text (:func:`tweet_key`: tokens lower-cased, digits -> 0, URLs -> ``<url>``, joined
by spaces) equals that of a target dev or test tweet. No dev/test tweet of the corpus being tagged is
then in the language model's text; the counts (kept, dropped) are returned and logged.

**Vocabulary report.** :func:`corpus_unk_rates` counts, per split, the tokens and the entity tokens
(gold tag other than ``O``) that are ``<unk>`` for a model's token encoder; :func:`old_policy_vocabulary`
rebuilds the vocabulary of flair-riva 0.1.0 (pretraining words only) for the "before" figure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from flair_riva.text import UNK_ID, Vocabulary, normalize_word

log = logging.getLogger("flair")


def tweet_key(tokens: Sequence[str]) -> str:
    """The normalised text of a tweet, for duplicate detection."""
    return " ".join(normalize_word(t) for t in tokens)


def _tokens(sentence) -> list[str]:
    return [t.text for t in sentence.tokens]


def disjoint_pretraining_text(target, others: Iterable, output: str | Path) -> dict[str, int]:
    """Write the target corpus's train tweets and every tweet of ``others`` (corpora), minus the tweets
    whose normalised text is that of a target dev/test tweet, as JSON lines ``{"text": ...}``.

    Returns ``{"target_train": n, "other": n, "dropped": n, "written": n}``."""
    from flair_riva.io import atomic_write_text

    held_out = {tweet_key(_tokens(s)) for split in (target.dev, target.test) for s in (split or [])}
    lines: list[str] = []
    counts = {"target_train": 0, "other": 0, "dropped": 0, "written": 0}
    sources = [("target_train", target.train or [])]
    for corpus in others:
        sources += [("other", split or []) for split in (corpus.train, corpus.dev, corpus.test)]
    for kind, sentences in sources:
        for s in sentences:
            tokens = _tokens(s)
            counts[kind] += 1
            if tweet_key(tokens) in held_out:
                counts["dropped"] += 1
                continue
            lines.append(json.dumps({"text": " ".join(tokens)}, ensure_ascii=False))
    counts["written"] = len(lines)
    atomic_write_text(Path(output), "\n".join(lines) + "\n")
    log.info("pretraining text %s: %d train tweets of %s + %d tweets of the other corpora; %d dropped as "
             "duplicates of a %s dev/test tweet (normalised text); %d written", output, counts["target_train"],
             target.name, counts["other"], counts["dropped"], target.name, counts["written"])
    return counts


def read_vocabulary(model_dir: str | Path) -> Vocabulary:
    """The vocabulary of a RIVA model folder (``vocab.json``), without loading the weights."""
    return Vocabulary.from_json((Path(model_dir) / "vocab.json").read_text(encoding="utf-8"))


def _entity_flags(sentence) -> list[bool]:
    if sentence.has_metadata("gold_tags"):
        return [tag != "O" for tag in sentence.get_metadata("gold_tags")]
    flags = [False] * len(sentence)
    for span in sentence.get_spans("ner"):
        for token in span.tokens:
            flags[token.idx - 1] = True
    return flags


def corpus_unk_rates(vocab: Vocabulary, corpus) -> dict[str, dict[str, float]]:
    """Per split: ``tokens``, ``unk`` (% of tokens that are <unk> for the token encoder), ``entity_tokens``
    and ``entity_unk`` (the same over tokens inside a gold entity)."""
    rates = {}
    for split in ("train", "dev", "test"):
        counts = [0, 0, 0, 0]  # tokens, unk, entity tokens, entity unk
        for s in getattr(corpus, split) or []:
            for token, entity in zip(s.tokens, _entity_flags(s)):
                unk = vocab.word_id(token.text) == UNK_ID
                counts[0] += 1
                counts[1] += unk
                counts[2] += entity
                counts[3] += unk and entity
        rates[split] = {"tokens": counts[0], "unk": 100 * counts[1] / max(counts[0], 1),
                        "entity_tokens": counts[2], "entity_unk": 100 * counts[3] / max(counts[2], 1)}
    return rates


def format_unk_rates(rates: dict[str, dict[str, float]]) -> str:
    return "; ".join(f"{split} {r['unk']:.1f} % of {r['tokens']} tokens, {r['entity_unk']:.1f} % of "
                     f"{r['entity_tokens']} entity tokens" for split, r in rates.items())


def old_policy_vocabulary(token_lists: Iterable[Sequence[str]], vectors=None, max_size: int = 50000,
                          min_count: int = 2) -> Vocabulary:
    """The vocabulary flair-riva 0.1.0 built: words of the pretraining text only (the frequent ones, and
    those the word vectors know whatever their count), for input and output alike."""
    extra = list(vectors.key_to_index) if vectors is not None else ()
    return Vocabulary.build(token_lists, max_size, min_count, extra_words=extra)
