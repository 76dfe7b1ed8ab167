"""Command line of the MNER experiment protocol (:mod:`flair_riva.experiments`), shared by the recipes
``twitter2015.py``, ``twitter2017.py`` (``main_for``) and ``real_tweets.py`` (the protocol options)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from flair_riva.experiments import ALL_CONFIGS, ExperimentArgs, run_experiments
from flair_riva.scoring import require_seqeval

# -- command line --------------------------------------------------------------------------------------

def add_configs_argument(p: argparse.ArgumentParser, choices: list[str], help: str) -> None:
    """``--configs A B ...`` (default ``None``: the caller's default), which also takes ``-RGN`` among its
    values: argparse reads a value that starts with a dash as an option, so ``-RGN`` is also registered as
    one that adds itself, and the values after it, to the same list (``--configs text -RGN +RIVA(text)``,
    ``-RGN --configs text`` and ``--configs=-RGN`` all work)."""
    p.add_argument("--configs", nargs="+", action="extend", default=None, choices=choices, metavar="CONFIG",
                   help=help)
    if "-RGN" in choices:
        p.add_argument("-RGN", dest="configs", nargs="*", action=_DashRGN, choices=choices, metavar="CONFIG",
                       help="the -RGN configuration (Table 6); also accepted among --configs' values")


class _DashRGN(argparse.Action):
    """``-RGN [CONFIG ...]``: appends ``-RGN`` and the configurations after it to ``dest``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        # argparse checks the choices of each value itself (nargs="*"), so ``values`` are valid here
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), "-RGN", *values])


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """The tagger protocol's options (shared by the recipes)."""
    d = ExperimentArgs(corpus=None, name="", output=Path())
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=d.epochs, help="the most epochs of a run (%(default)s)")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="initial SGD learning rate (%(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--hidden-size", type=int, default=d.hidden_size,
                   help="biLSTM hidden size of every configuration (%(default)s)")
    p.add_argument("--anneal-factor", type=float, default=d.anneal_factor)
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--min-lr", type=float, default=d.min_learning_rate,
                   help="stop when annealing takes the learning rate below this (%(default)s)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="no epoch starts that would end later than this many minutes from now")


def protocol_kwargs(ns: argparse.Namespace) -> dict:
    """ExperimentArgs fields from the options of :func:`add_protocol_arguments`."""
    return dict(seeds=ns.seeds, epochs=ns.epochs, learning_rate=ns.lr, batch_size=ns.batch_size,
                hidden_size=ns.hidden_size, anneal_factor=ns.anneal_factor, patience=ns.patience,
                min_learning_rate=ns.min_lr,
                deadline=time.time() + 60 * ns.time_budget if ns.time_budget is not None else None)


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus_dir", type=Path, help="folder with train.txt, valid.txt|dev.txt, test.txt (IMGID format)")
    p.add_argument("--image-dir", type=Path, default=None, help="folder with <IMGID>.jpg (some or none may exist)")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--word-vectors", type=Path, help="GloVe/word2vec text (.txt, .txt.gz) or gensim .kv/.bin")
    p.add_argument("--riva", type=Path, help="RIVA model directory (image+text)")
    p.add_argument("--riva-text", type=Path, help="RIVA(text) model directory (pretrained with --no-image)")
    p.add_argument("--riva-nogate", type=Path, help="-RGN model directory (pretrained with --no-gate)")
    p.add_argument("--bert", type=Path, help="local BERT-family model directory (TransformerWordEmbeddings)")
    p.add_argument("--flair-forward", type=Path, help="local Flair forward LM file")
    p.add_argument("--flair-backward", type=Path, help="local Flair backward LM file")
    p.add_argument("--feature-cache", type=Path, help="feature-cache folder for image features")
    add_configs_argument(p, list(ALL_CONFIGS), f"subset of {ALL_CONFIGS}")
    add_protocol_arguments(p)
    return p


def main_for(corpus_cls, description: str, argv: list[str] | None = None) -> int:
    """Shared entry point of twitter2015.py / twitter2017.py."""
    parser = build_parser(description)
    ns = parser.parse_args(argv)
    require_seqeval()
    corpus = corpus_cls(ns.corpus_dir, image_dir=ns.image_dir)
    args = ExperimentArgs(
        corpus=corpus, name=corpus_cls.__name__, output=ns.output, word_vectors=ns.word_vectors,
        riva=ns.riva, riva_text=ns.riva_text, riva_nogate=ns.riva_nogate, bert=ns.bert,
        flair_forward=ns.flair_forward, flair_backward=ns.flair_backward, feature_cache=ns.feature_cache,
        configs=list(dict.fromkeys(ns.configs or ALL_CONFIGS)), **protocol_kwargs(ns),
    )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    _, text = run_experiments(args)
    print(text)
    return 0
