"""The paper's multimodal NER experiments (§4.2-4.7; Tables 2, 4, 5, 6) with Flair's biLSTM-CRF.

One implementation behind ``recipes/twitter2015.py`` (Fudan Univ.), ``recipes/twitter2017.py``
(Snap Res.), ``recipes/real_tweets.py`` and ``recipes/quickstart.py`` (the demo world).

Configurations (``--configs``, default: every one whose models were given):

======================  =========  ===================================================================
name                    paper      token embeddings e_k fed to the biLSTM-CRF
======================  =========  ===================================================================
``text``                Table 4    word vectors + character biLSTM (Lample et al. 2016)
``image+text``          Table 4    + the pooled ResNet vector as a first pseudo-token ``[IMG]``
``+RIVA(text)``         Table 4    + RIVA pretrained text-only (RGN and VCN ablated)
``+RIVA(image+text)``   Table 4/5  + RIVA
``-RGN``                Table 6    + RIVA pretrained with the RGN ablated (s_G = 1)
``+BERT``               Table 5    + BERT-family transformer (local directory), subword mean
``+RIVA+BERT``          Table 5    + RIVA + BERT
``+RIVA+BERT+Flair``    Table 5    + RIVA + BERT + Flair forward/backward LMs (local files)
======================  =========  ===================================================================

Protocol (the same for every configuration of a table, issue 10): one biLSTM layer of ``--hidden-size``
(default 256 for all; Table 2 used 512 with RIVA and 1024 with BERT, which gives those configurations more
capacity than the baseline); Flair's SequenceTagger dropouts on purpose (locked dropout 0.5 on the stacked
embeddings and the biLSTM output, word dropout 0.05, no extra plain dropout: a recipe dropout of 0.5 on
top of the locked 0.5 keeps each input feature with p = 0.25); SGD with clip 5.0, trained to convergence:
the learning rate is halved after ``--patience`` epochs without a better dev F1 and training stops below
``--min-lr`` or after ``--epochs`` (``--time-budget`` stops it at an epoch boundary); the best dev epoch is
kept (selection on dev only); ``--seeds N`` runs N seeds and reports mean ± std. Every score is given as
Flair reports it (span micro F1 in the conlleval convention: an orphan ``I-`` starts an entity) and in
seqeval's strict IOB2 mode. Test tweets are also scored separately by the RGN's relation call ("image
adds": s_G >= 0.5), Table 6. Each run writes ``runs/<config>-seed<N>/result.json`` when it ends; a run
that has one is not trained again, so an interrupted experiment resumes where it stopped. Results go to
``results.md`` and ``results.csv`` in the run folder.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import flair
from flair.data import Corpus, Sentence
from flair.embeddings import (
    FlairEmbeddings,
    StackedEmbeddings,
    TokenEmbeddings,
    TransformerWordEmbeddings,
    WordEmbeddings,
)
from flair.models import SequenceTagger
from flair.trainers import ModelTrainer
from flair.trainers.plugins.base import TrainerPlugin, TrainingInterrupt

from flair_riva.char_embeddings import CharLSTMEmbeddings
from flair_riva.datasets import GOLD_TAGS_KEY
from flair_riva.scoring import predicted_bio, strict_f1
from flair_riva.tagger_files import char_dictionary_file, random_word_vectors_file, word_vectors_file

log = logging.getLogger("flair")

#: The character half of every tagger's word + character input (:mod:`flair_riva.char_embeddings`).
CHARACTER_ENCODER = "CharLSTMEmbeddings 25/25 (Lample et al. 2016)"
TABLE4 = ["text", "image+text", "+RIVA(text)", "+RIVA(image+text)"]
TABLE5 = ["+BERT", "+RIVA+BERT", "+RIVA+BERT+Flair"]
TABLE6 = ["+RIVA(image+text)", "-RGN"]
ALL_CONFIGS = TABLE4 + ["-RGN"] + TABLE5


@dataclass
class ExperimentArgs:
    """Everything a run needs; the CLI of each recipe fills it."""

    corpus: Corpus
    name: str
    output: Path
    gold_tags: dict[str, list[list[str]]] | None = None
    """Raw BIO tags of dev/test as in the files (for seqeval strict scoring); default: the sentences'
    ``gold_tags`` metadata that :class:`~flair_riva.datasets.TwitterMNERCorpus` sets while parsing."""
    word_vectors: Path | None = None
    riva: Path | None = None
    riva_text: Path | None = None
    riva_nogate: Path | None = None
    bert: Path | None = None
    flair_forward: Path | None = None
    flair_backward: Path | None = None
    feature_cache: Path | None = None
    configs: list[str] = field(default_factory=lambda: list(ALL_CONFIGS))
    seeds: int = 1
    epochs: int = 50
    """The most epochs of a run (annealing usually stops it before)."""
    learning_rate: float = 0.1
    batch_size: int = 16
    hidden_size: int = 256
    """The biLSTM hidden size of every configuration (one value per table: a fair comparison)."""
    anneal_factor: float = 0.5
    patience: int = 3
    min_learning_rate: float = 0.001
    deadline: float | None = None
    """``time.time()`` after which no new epoch starts (the best dev epoch so far is kept)."""
    image_backbone_weights: str | None = None
    relation_truth: dict[str, int] | None = None
    """image_id -> 1/0 (image adds or not), when known (the demo world): the test split of Table 6 then
    uses it instead of the RGN's call (s_G >= 0.5)."""
    dropout: float = 0.0
    word_dropout: float = 0.05
    locked_dropout: float = 0.5
    """The biLSTM-CRF's dropouts: Flair's SequenceTagger defaults (locked 0.5 on the stacked embeddings and
    the biLSTM output, word dropout 0.05, no plain dropout on top), the same for every configuration."""


# -- corpus helpers ------------------------------------------------------------------------------------

def gold_tags_of(sentences: Sequence[Sentence]) -> list[list[str]]:
    """The BIO tags as written in the corpus file, kept on each sentence while parsing."""
    missing = sum(1 for s in sentences if not s.has_metadata(GOLD_TAGS_KEY))
    if missing:
        raise ValueError(f"{missing} sentences carry no '{GOLD_TAGS_KEY}' metadata: read the corpus with "
                         "TwitterMNERCorpus, or pass ExperimentArgs.gold_tags")
    return [list(s.get_metadata(GOLD_TAGS_KEY)) for s in sentences]


def read_gold_tags(path: Path) -> list[list[str]]:
    """BIO tags per tweet, exactly as written in an IMGID-format file."""
    tweets: list[list[str]] = []
    current: list[str] | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("IMGID:"):
            current = []
            tweets.append(current)
        elif line.strip() and current is not None:
            current.append(line.split("\t")[-1].strip())
    return [t for t in tweets if t]


def image_coverage(corpus: Corpus) -> dict[str, tuple[int, int]]:
    """(tweets with an image file on disk, tweets) per split."""
    out = {}
    for split in ("train", "dev", "test"):
        sentences = getattr(corpus, split) or []
        have = sum(1 for s in sentences
                   if s.has_metadata("image_path") and Path(s.get_metadata("image_path")).is_file())
        out[split] = (have, len(sentences))
    return out


# -- embeddings per configuration ---------------------------------------------------------------------

def build_embeddings(config: str, args: ExperimentArgs) -> list[TokenEmbeddings]:
    """The token embeddings of one configuration."""
    from flair_riva.baselines import ImageTokenEmbeddings
    from flair_riva.embeddings import RivaEmbeddings
    from flair_riva.model import RivaModel

    cache = args.output / "cache"
    base: list[TokenEmbeddings] = []
    if args.word_vectors is not None:
        base.append(WordEmbeddings(str(word_vectors_file(args.word_vectors, cache)), name="word"))
    else:  # no pretrained vectors (the demo world): randomly initialised word vectors trained with the tagger
        base.append(WordEmbeddings(str(random_word_vectors_file(args.corpus, cache / "random-word-vectors.kv")),
                                   fine_tune=True, name="word"))
    base.append(CharLSTMEmbeddings(str(char_dictionary_file(args.corpus, cache / "chars.pkl"))))  # Lample: 25 / 25
    fc = str(args.feature_cache) if args.feature_cache else None

    def need(path: Path | None, option: str) -> Path:
        if path is None:
            raise SkipConfig(f"needs {option}")
        return path

    if config == "text":
        return base
    if config == "image+text":
        if args.riva is None:
            emb = ImageTokenEmbeddings(backbone_weights=args.image_backbone_weights, feature_cache=fc)
        else:  # the same ResNet as RIVA's, so both configurations see the same visual features
            backbone = RivaModel.load(args.riva).backbone
            emb = ImageTokenEmbeddings(backbone=backbone.arch, feature_cache=fc)
            emb.extractor.load_state_dict(backbone.state_dict())
        return base + [emb]
    if config == "+RIVA(text)":
        return base + [RivaEmbeddings(need(args.riva_text, "--riva-text"), name="riva-text")]
    if config == "+RIVA(image+text)":
        return base + [RivaEmbeddings(need(args.riva, "--riva"), feature_cache=fc, name="riva")]
    if config == "-RGN":
        return base + [RivaEmbeddings(need(args.riva_nogate, "--riva-nogate"), feature_cache=fc,
                                      name="riva-nogate")]
    bert = TransformerWordEmbeddings(str(need(args.bert, "--bert")), layers="-1", subtoken_pooling="mean",
                                     fine_tune=False, name="bert") if "BERT" in config else None
    if config == "+BERT":
        return base + [bert]
    riva = RivaEmbeddings(need(args.riva, "--riva"), feature_cache=fc, name="riva")
    if config == "+RIVA+BERT":
        return base + [riva, bert]
    if config == "+RIVA+BERT+Flair":
        fw = FlairEmbeddings(str(need(args.flair_forward, "--flair-forward")), name="flair-fw")
        bw = FlairEmbeddings(str(need(args.flair_backward, "--flair-backward")), name="flair-bw")
        return base + [riva, bert, fw, bw]
    raise ValueError(f"unknown configuration {config!r}; choose from {ALL_CONFIGS}")


class SkipConfig(Exception):
    """A configuration whose models were not given: it is reported as skipped, not run."""


# -- scoring (predicted_bio, strict_f1: flair_riva.scoring) ---------------------------------------------

def relevance_of(sentences: Sequence[Sentence], riva_dir: Path, feature_cache: Path | None) -> list[float]:
    """s_G of every sentence under the RIVA model's RGN (Table 6 splits the test set at 0.5)."""
    from flair_riva.embeddings import RivaEmbeddings

    emb = RivaEmbeddings(riva_dir, feature_cache=str(feature_cache) if feature_cache else None, name="riva-rgn")
    copies = [Sentence([t.text for t in s.tokens]) for s in sentences]
    for copy, s in zip(copies, sentences):
        if s.has_metadata("image_path"):
            copy.add_metadata("image_path", s.get_metadata("image_path"))
    for i in range(0, len(copies), 64):
        emb.embed(copies[i : i + 64])
    return [float(c.get_metadata("riva_relevance")) for c in copies]


# -- one run ------------------------------------------------------------------------------------------

class StopAtDeadline(TrainerPlugin):
    """Stops Flair's training at an epoch boundary when the next epoch would end after ``deadline``
    (estimated from the longest epoch so far); the best dev epoch so far is what the run keeps."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline
        self.started: float | None = None
        self.longest = 0.0

    @TrainerPlugin.hook
    def before_training_epoch(self, epoch, **kw):
        now = time.time()
        if self.started is not None:
            self.longest = max(self.longest, now - self.started)
            if now + self.longest > self.deadline:
                raise TrainingInterrupt(f"time budget: stopping before epoch {epoch} (best dev epoch kept)")
        self.started = now


def run_name(config: str, seed: int) -> str:
    return f"{config.replace('+', 'plus-').replace('(', '').replace(')', '')}-seed{seed}"


RESULT_FILE = "result.json"


def train_one(config: str, seed: int, args: ExperimentArgs, relevance: list[float] | None) -> dict:
    """Train and evaluate one configuration with one seed; returns one results.csv row, also written to
    ``runs/<name>/result.json``. A run whose result file exists is not trained again."""
    from flair_riva.baselines import with_image_token
    from flair_riva.io import atomic_write_text

    run_dir = args.output / "runs" / run_name(config, seed)
    settings = run_settings(args)
    if (run_dir / RESULT_FILE).is_file():
        done = json.loads((run_dir / RESULT_FILE).read_text(encoding="utf-8"))
        if done.get("settings") == settings:
            log.info("%s seed %d: finished before, reusing %s", config, seed, run_dir / RESULT_FILE)
            return done
        log.info("%s seed %d: %s was written with other settings: training again", config, seed, run_dir)
    clear_run_dir(run_dir)  # Flair appends to an old loss.tsv (the epoch count would add up)
    flair.set_seed(seed)
    embeddings = build_embeddings(config, args)
    corpus = args.corpus
    offset = 0
    if config == "image+text":
        offset = 1
        corpus = Corpus([with_image_token(s) for s in corpus.train], [with_image_token(s) for s in corpus.dev],
                        [with_image_token(s) for s in corpus.test], name=corpus.name, sample_missing_splits=False)
    tag_dictionary = corpus.make_label_dictionary("ner", add_unk=False)
    tagger = SequenceTagger(hidden_size=args.hidden_size, embeddings=StackedEmbeddings(embeddings),
                            tag_dictionary=tag_dictionary, tag_type="ner", use_crf=True, use_rnn=True, rnn_layers=1,
                            dropout=args.dropout, word_dropout=args.word_dropout, locked_dropout=args.locked_dropout)
    start = time.time()
    plugins = [StopAtDeadline(args.deadline)] if args.deadline is not None else []
    ModelTrainer(tagger, corpus).train(
        run_dir, learning_rate=args.learning_rate, mini_batch_size=args.batch_size, max_epochs=args.epochs,
        anneal_factor=args.anneal_factor, patience=args.patience, min_learning_rate=args.min_learning_rate,
        # "none", not "cpu": Flair 0.15 stores *trainable* embeddings (the character biLSTM) of dev sentences
        # during evaluation (they carry no grad there) and reuses them, stale, in every later dev evaluation,
        # which corrupts model selection; frozen RIVA vectors are cheap to recompute each epoch
        embeddings_storage_mode="none", max_grad_norm=5.0, save_final_model=True, create_file_logs=True,
        main_evaluation_metric=("micro avg", "f1-score"), use_final_model_for_eval=False, plugins=plugins,
    )  # the best dev epoch (best-model.pt) is reloaded before the final evaluation: selection on dev only
    train_seconds = time.time() - start
    epochs_run = _epochs_run(run_dir)
    row: dict = {"corpus": args.name, "config": config, "seed": seed, "epochs": epochs_run,
                 "train_seconds": round(train_seconds, 1)}
    for split in ("dev", "test"):
        sentences = list(getattr(corpus, split))
        for s in sentences:
            s.clear_embeddings()
        # as Flair reports it (span micro F1, conlleval convention); the predictions stay on the sentences
        row[f"{split}_f1"] = 100 * tagger.evaluate(sentences, gold_label_type="ner", mini_batch_size=32).main_score
        pred = [predicted_bio(s, offset=offset) for s in sentences]
        gold = args.gold_tags[split] if args.gold_tags is not None else gold_tags_of(getattr(args.corpus, split))
        if [len(g) for g in gold] != [len(p) for p in pred]:
            raise RuntimeError(f"{split}: gold tags of the file do not align with the corpus sentences")
        row[f"{split}_f1_strict"] = strict_f1(gold, pred)
        if split == "test" and (relevance is not None or args.relation_truth is not None):
            # Table 6: split by the ground truth of the relation when known, else by the RGN's call
            if args.relation_truth is not None:
                adds = [args.relation_truth.get(s.get_metadata("image_id")) == 1 for s in sentences]
            else:
                adds = [r >= 0.5 for r in relevance]
            for subset, keep in (("adds", adds), ("not_adds", [not a for a in adds])):
                chosen = [s for s, k in zip(sentences, keep) if k]
                row[f"test_{subset}_n"] = len(chosen)
                row[f"test_{subset}_f1"] = (100 * tagger.evaluate(chosen, gold_label_type="ner").main_score
                                            if chosen else float("nan"))
                row[f"test_{subset}_f1_strict"] = strict_f1([g for g, k in zip(gold, keep) if k],
                                                            [p for p, k in zip(pred, keep) if k])
        for s in sentences:
            s.remove_labels("predicted")
    row["model"] = str(run_dir / ("best-model.pt" if (run_dir / "best-model.pt").exists() else "final-model.pt"))
    log.info("%s seed %d: dev F1 %.2f, test F1 %.2f (strict %.2f), %d epochs", config, seed, row["dev_f1"],
             row["test_f1"], row["test_f1_strict"], epochs_run)
    row["settings"] = settings
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(row, indent=2))
    return row


def run_settings(args: ExperimentArgs) -> dict:
    """What a run's result depends on, besides the configuration and seed (a result file is reused only
    when they are the same)."""
    keys = ("epochs", "learning_rate", "batch_size", "hidden_size", "anneal_factor", "patience", "min_learning_rate",
            "dropout", "word_dropout", "locked_dropout", "word_vectors", "riva", "riva_text", "riva_nogate", "bert",
            "flair_forward", "flair_backward")
    settings = {k: str(getattr(args, k)) if isinstance(getattr(args, k), Path) else getattr(args, k) for k in keys}
    settings["character_encoder"] = CHARACTER_ENCODER  # results of Flair's CharacterEmbeddings are not reused
    for key in ("riva", "riva_text", "riva_nogate"):  # a model pretrained again under the same path is another model
        weights = Path(settings[key]) / "model.safetensors" if settings[key] is not None else None
        if weights is not None and weights.is_file():
            settings[key] += f" (weights written {weights.stat().st_mtime_ns})"
    return settings


#: What Flair's ModelTrainer and :func:`train_one` write into a run folder.
RUN_FILES = ("loss.tsv", "training.log", "dev.tsv", "test.tsv", "best-model.pt", "final-model.pt", RESULT_FILE)


def clear_run_dir(run_dir: Path) -> None:
    """Remove what an earlier, unfinished or differently configured run left in ``run_dir``."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def _epochs_run(run_dir: Path) -> int:
    """Epochs Flair trained (rows of its loss.tsv)."""
    path = run_dir / "loss.tsv"
    if not path.is_file():
        return 0
    return max(0, len(path.read_text(encoding="utf-8").strip().splitlines()) - 1)


def mean_std(values: list[float]) -> str:
    """``mean ± std`` in %.2f of the values that are not NaN (one value: itself; none: ``–``)."""
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def protocol_line(args: ExperimentArgs) -> str:
    """The tagger settings, as results.md states them."""
    return (f"biLSTM-CRF, 1 layer, hidden size {args.hidden_size} for every configuration; dropout {args.dropout}, "
            f"word dropout {args.word_dropout}, locked dropout {args.locked_dropout} (Flair's SequenceTagger "
            f"defaults, not stacked); SGD lr {args.learning_rate}, batch {args.batch_size}, clip 5.0, lr x "
            f"{args.anneal_factor} after {args.patience} epochs without a better dev F1, stop below lr "
            f"{args.min_learning_rate} or after {args.epochs} epochs; the best dev epoch is kept (selection on dev "
            "only)")


def write_results(rows: list[dict], args: ExperimentArgs, skipped: dict[str, str], coverage: dict) -> str:
    """results.csv (one row per configuration and seed) and results.md (the paper's tables)."""
    args.output.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k != "settings"]
    with open(args.output / "results.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def agg(config: str, key: str) -> str:
        return mean_std([r[key] for r in rows if r["config"] == config and key in r])

    def table(title: str, configs: list[str], cols: list[tuple[str, str]]) -> list[str]:
        present = [c for c in configs if any(r["config"] == c for r in rows)]
        if not present:
            return []
        out = [f"### {title}", "", "| configuration | " + " | ".join(h for h, _ in cols) + " |",
               "|---|" + "---:|" * len(cols)]
        out += [f"| biLSTM-CRF {c} | " + " | ".join(agg(c, k) for _, k in cols) + " |" for c in present]
        return out + [""]

    main_cols = [("dev F1", "dev_f1"), ("test F1 (conlleval, as Flair)", "test_f1"),
                 ("test F1 (seqeval strict IOB2)", "test_f1_strict"), ("epochs", "epochs"),
                 ("train s", "train_seconds")]
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"# {args.name}: multimodal NER with flair-riva", "",
             f"Seeds: {seeds}; F1 in %, mean ± std over seeds; model selection on dev only.",
             f"Protocol: {protocol_line(args)}.",
             "Tweets with an image file: " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in coverage.items()) + ".", ""]
    lines += table("Table 4", TABLE4, main_cols)
    if any(r["config"] in TABLE5 for r in rows):
        lines += table("Table 5", ["+RIVA(image+text)"] + TABLE5, main_cols)
    split_by = ("the ground truth of the relation" if args.relation_truth is not None
                else "the RGN: s_G >= 0.5 is \"image adds\"")
    if any("test_adds_f1" in r for r in rows):
        lines += table(f"Table 6 (test split by {split_by})", TABLE4 + ["-RGN"],
                       [("image adds", "test_adds_f1"), ("image doesn't add", "test_not_adds_f1"),
                        ("overall", "test_f1")])
    if skipped:
        lines += ["Skipped: " + "; ".join(f"{c} ({why})" for c, why in skipped.items()), ""]
    text = "\n".join(lines)
    (args.output / "results.md").write_text(text, encoding="utf-8")
    return text


def run_experiments(args: ExperimentArgs, relevance: list[float] | None = None) -> tuple[list[dict], str]:
    """Every configuration × seed; returns the rows and the markdown tables. ``relevance``: the RGN's s_G
    of every test tweet, when the caller has it already (else computed here)."""
    args.output.mkdir(parents=True, exist_ok=True)
    coverage = image_coverage(args.corpus)
    for split, (have, total) in coverage.items():
        log.info("%s %s: %d of %d tweets have an image file; the others are embedded text-only", args.name, split,
                 have, total)
    log_unk_rates(args)
    wanted = any(c in args.configs for c in TABLE6 + TABLE4)
    if relevance is None and args.riva is not None and args.relation_truth is None and wanted:
        relevance = relevance_of(list(args.corpus.test), args.riva, args.feature_cache)
    rows, skipped = [], {}
    for config in args.configs:
        for seed in range(1, args.seeds + 1):
            try:
                rows.append(train_one(config, seed, args, relevance))
            except SkipConfig as why:
                skipped[config] = str(why)
                log.warning("skipping %s: %s", config, why)
                break
            write_results(rows, args, skipped, coverage)  # partial results survive a long run's interruption
    text = write_results(rows, args, skipped, coverage)
    (args.output / "args.json").write_text(json.dumps(
        {k: str(v) for k, v in vars(args).items() if k not in ("corpus", "gold_tags")}, indent=2))
    return rows, text


def log_unk_rates(args: ExperimentArgs) -> dict[str, dict[str, dict[str, float]]]:
    """Log the ``<unk>`` rate of every corpus split (tokens, entity tokens) for each RIVA model given."""
    from flair_riva.pretraining_text import corpus_unk_rates, format_unk_rates, read_vocabulary

    rates = {}
    for name in ("riva", "riva_text", "riva_nogate"):
        model_dir = getattr(args, name)
        if model_dir is not None and Path(model_dir).is_dir():
            rates[name] = corpus_unk_rates(read_vocabulary(model_dir), args.corpus)
            log.info("<unk> for the token encoder of %s (%s): %s", name, model_dir, format_unk_rates(rates[name]))
    return rates
