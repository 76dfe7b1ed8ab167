"""What a pretraining run is given: :class:`PretrainConfig`, its defaults and the command line built from it.

A :class:`PretrainConfig` holds the data, the optimisation, the splits and the run control of one run,
and a :class:`~flair_riva.config.RivaConfig` (``model``: architecture and ablation flags). Each option is
declared once, as a dataclass field whose metadata carries its help text, its group on the command line and,
where the paper's setting and the built-in demo world differ, both defaults (``paper=`` / ``demo=``; the
field's own default is then ``None``, "chosen by :func:`resolve_args`"). :func:`build_parser` generates
``python -m flair_riva.pretrain``'s options from these fields and from :data:`MODEL_OPTIONS` (the model
fields that are options); :data:`PAPER_DEFAULTS` and :data:`DEMO_DEFAULTS` are read off the same fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from flair_riva.config import INT_RANGES, RivaConfig
from flair_riva.vision import SUPPORTED_ARCHS


class PretrainError(Exception):
    """Bad input, arguments or run folder, found before training starts (the CLI exits with code 2)."""


def opt(default: Any, help: str, group: str, *, paper: Any = None, demo: Any = None, **cli: Any) -> Any:
    """A :class:`PretrainConfig` field: its default, help text, command-line group, world defaults and
    extra ``argparse`` keywords (``metavar``, ``choices``, ``dest`` of a ``--no-`` flag...)."""
    meta = {"help": help, "group": group, "cli": cli}
    if paper is not None:
        meta.update(paper=paper, demo=demo)
    return field(default=default, metadata=meta)


DATA, MODEL, OPTIM, SPLITS, CONTROL = ("data", "model (Table 2)", "optimisation (Table 2)",
                                       "semi-supervision and splits", "run control")
GROUPS = (DATA, MODEL, OPTIM, SPLITS, CONTROL)


@dataclass
class PretrainConfig:
    """Every option of ``python -m flair_riva.pretrain``; ``model`` holds the architecture options."""

    # data
    relation_data: str | None = opt(None, "labelled relation pairs (CSV/TSV: text, image, image_adds)", DATA,
                                    metavar="FILE")
    unlabelled: str | None = opt(None, "unlabelled pairs (JSONL or TSV: text, image), streamed", DATA, metavar="FILE")
    image_dir: str | None = opt(None, "where relative image paths resolve (default: the data file's folder)", DATA,
                                metavar="DIR")
    word_vectors: str | None = opt(
        None, "GloVe/word2vec text or binary, or flair-riva .safetensors vectors (sets --word-dim); pickled gensim "
        ".kv/.model files are refused: convert them with python -m flair_riva.convert_vectors", DATA, metavar="FILE")
    output: str = opt("riva-pretrain", "run folder (default: %(default)s)", DATA, metavar="DIR")
    demo_dir: str | None = opt(None, "demo world folder (default: FLAIR_CACHE_ROOT/riva/demo-world-v2)", DATA,
                               metavar="DIR")
    demo_scale: str = opt("default", "demo world size: default, tiny or a factor", DATA)
    model: RivaConfig = field(default_factory=RivaConfig)
    """Architecture and ablation flags (``--word-dim`` ... ``--no-gate``, see :data:`MODEL_OPTIONS`)."""
    # vision (in the model group on the command line)
    backbone_weights: str | None = opt(None, "torchvision weights name, a state-dict file, or none", MODEL,
                                       paper="IMAGENET1K_V1", demo="none", metavar="NAME|FILE|none")
    freeze_backbone: bool | None = opt(
        None, "freeze the ResNet and cache its features; otherwise it is fine-tuned at --backbone-lr "
        "(paper: fine-tuned; demo world: frozen)", MODEL, paper=False, demo=True, action=argparse.BooleanOptionalAction)
    feature_cache: str | None = opt(None, "feature cache of the frozen backbone (default: OUTPUT/feature-cache)",
                                    MODEL, metavar="DIR")
    fine_tune_word_vectors: bool = opt(False, "train the --word-vectors with the model (default: frozen; the token "
                                       "encoder also reads every word they know)", MODEL, action="store_true")
    # optimisation (Table 2 "Misc.")
    epochs: int | None = opt(None, "epochs of Algorithm 1", OPTIM, paper=35, demo=3)
    teacher_epochs: int | None = opt(None, "teacher epochs", OPTIM, paper=10, demo=15)
    batch_size: int = opt(16, "global batch size, split over torchrun ranks (%(default)s)", OPTIM)
    length_buckets: int = opt(50, "length bucketing: each pool of this many shuffled batches is sorted by tweet "
                              "length before it is cut into batches, and the batches are shuffled, so the LSTMs "
                              "run fewer padding steps; 0 = plain shuffled batches, as in 0.1.0 (%(default)s)",
                              OPTIM, metavar="POOL")
    optimizer: str | None = opt(None, "optimizer", OPTIM, paper="sgd", demo="adam", choices=("sgd", "adam", "adamw"))
    lr: float | None = opt(None, "learning rate", OPTIM, paper=2e-2, demo=1e-3)
    backbone_lr: float = opt(1e-4, "learning rate of the fine-tuned ResNet (%(default)s)", OPTIM)
    teacher: str | None = opt(None, "reuse a teacher another run trained on the same data and vocabulary "
                              "(OTHER_RUN/teacher), e.g. the image model's for the -RGN ablation", OPTIM, metavar="DIR")
    student_init: str = opt("teacher", "the student's token encoder and RGN start from the teacher's weights, or "
                            "random (%(default)s)", OPTIM, choices=("teacher", "fresh"))
    rgn_lr_factor: float = opt(1.0, "learning rate of the labelled RGN-only pass, as a factor of --lr; 1 = the "
                               "joint pass's rate, as Algorithm 1 is written (%(default)s)", OPTIM)
    clip: float = opt(5.0, "gradient norm clipping, 0 = off (%(default)s)", OPTIM)
    anneal_factor: float = opt(1.0, "ReduceLROnPlateau factor on dev F1; 1 = constant learning rate, as in the "
                               "paper (%(default)s)", OPTIM)
    patience: int = opt(3, "epochs without dev improvement before annealing (%(default)s)", OPTIM)
    # semi-supervision and splits
    threshold: float = opt(0.6, "keep pseudo labels whose top class score exceeds this (%(default)s)", SPLITS)
    heldout_fraction: float = opt(0.05, "pseudo-labelled pairs held out for the LM perplexity (%(default)s)", SPLITS)
    test_fraction: float = opt(0.2, "labelled test part, 8:2 in the paper (%(default)s)", SPLITS)
    dev_fraction: float = opt(0.1, "dev part carved from the labelled train part (%(default)s)", SPLITS)
    seed: int = opt(1, "random seed (%(default)s)", SPLITS)
    # run control (not part of run_args.json: they do not change what is computed)
    resume: bool = opt(False, "continue the run in --output (same arguments)", CONTROL, action="store_true")
    overwrite: bool = opt(False, "delete a previous run in --output and start again", CONTROL, action="store_true")
    checkpoint_every: int = opt(500, "also checkpoint every N steps for mid-epoch resume; 0 = end of epoch only "
                                "(%(default)s)", CONTROL)
    keep_checkpoints: int = opt(3, "epoch-N/ folders to keep (%(default)s)", CONTROL)
    device: str | None = opt(None, "torch device (default: flair.device; cuda:LOCAL_RANK under torchrun)", CONTROL)
    progress: bool = opt(True, "no tqdm progress bars", CONTROL, flag="--no-progress", action="store_false")

    @property
    def demo(self) -> bool:
        """True on the built-in demo world (neither data file given)."""
        return self.relation_data is None and self.unlabelled is None

    @property
    def frozen(self) -> bool:
        """The backbone is frozen and its features come from the cache."""
        return bool(self.freeze_backbone) and self.model.use_image


#: The model fields that are options, in the order of ``--help``: ``(help, argparse keywords)``. The five
#: Table 2 sizes show both worlds' defaults (the same: the demo keeps the paper's sizes).
TABLE2_SIZES = ("word_dim", "rgn_hidden_size", "rgn_layers", "vlcn_hidden_size", "vlcn_layers")
MODEL_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "word_dim": ("word vector size", {}),
    "char_dim": ("character embedding dimension (%(default)s)", {}),
    "char_hidden_size": ("character biLSTM hidden size (%(default)s)", {}),
    "rgn_hidden_size": ("biLSTM hidden size of the RGN", {}),
    "rgn_layers": ("biLSTM layers of the RGN", {}),
    "vlcn_hidden_size": ("LSTM hidden size of the VLCN", {}),
    "vlcn_layers": ("LSTM layers of the VLCN", {}),
    "num_heads": ("attention heads h of the VCN (%(default)s)", {}),
    "backbone": ("ResNet backbone (%(default)s)", {"choices": SUPPORTED_ARCHS}),
    "use_image": ("RIVA(text): no RGN/VCN, LM on the unlabelled texts only",
                  {"flag": "--no-image", "action": "store_false"}),
    "gate": ("-RGN ablation: s_G = 1", {"flag": "--no-gate", "action": "store_false"}),
    "vlcn_visual": ("how the gated visual vector enters the VLCN: 'paper' = FC+GELU(s_G v_c) replaces [BOS]/[EOS] "
                    "as in §3.3 (saturates); 'start' = [BOS] + s_G tanh(W v_c); 'state' = also the initial LSTM "
                    "states; 'step' = also appended to every token input (%(default)s; README design notes)",
                    {"choices": ("paper", "start", "state", "step")}),
    "visual_norm": ("normalisation of ResNet features: per feature over images, or per vector (0.1.0) (%(default)s)",
                    {"choices": ("standardize", "layer")}),
    "gate_dropout": ("training only: probability that s_G is set to 0 on its way to the VLCN, so the no-image "
                     "input is trained every epoch (%(default)s)", {}),
    "gate_open_rate": ("training only, a deviation (0 = off, the paper): probability that s_G is set to 1 on its "
                       "way to the VLCN for an item with an image, so the LM learns to discount images the text "
                       "contradicts (%(default)s; README)", {}),
    "max_vocab_size": ("size cap of the LM's output vocabulary (%(default)s)", {}),
    "min_word_count": ("minimum count of a vocabulary word (%(default)s)", {}),
    "dropout": ("dropout rate (%(default)s)", {}),
}
#: Where each option appears in ``--help`` (the order of 0.1.0's parser).
ORDER = {
    DATA: ("relation_data", "unlabelled", "image_dir", "word_vectors", "output", "demo_dir", "demo_scale"),
    MODEL: ("word_dim", "char_dim", "char_hidden_size", "rgn_hidden_size", "rgn_layers", "vlcn_hidden_size",
            "vlcn_layers", "num_heads", "backbone", "backbone_weights", "freeze_backbone", "feature_cache", "use_image",
            "gate", "vlcn_visual", "visual_norm", "gate_dropout", "gate_open_rate", "max_vocab_size", "min_word_count",
            "fine_tune_word_vectors"),
    OPTIM: ("epochs", "teacher_epochs", "batch_size", "length_buckets", "dropout", "optimizer", "lr", "backbone_lr",
            "teacher", "student_init", "rgn_lr_factor", "clip", "anneal_factor", "patience"),
    SPLITS: ("threshold", "heldout_fraction", "test_fraction", "dev_fraction", "seed"),
    CONTROL: ("resume", "overwrite", "checkpoint_every", "keep_checkpoints", "device", "progress"),
}

_FIELDS = {f.name: f for f in fields(PretrainConfig)}
_MODEL_DEFAULTS = RivaConfig().to_dict()


def _world_defaults(world: str) -> dict[str, Any]:
    values = {name: f.metadata[world] for name, f in _FIELDS.items() if world in f.metadata}
    return {**values, **{name: _MODEL_DEFAULTS[name] for name in TABLE2_SIZES}}


#: Defaults on real data: the paper (Table 2, §4.3; 35 epochs, ResNet-34 fine-tuned from ImageNet).
PAPER_DEFAULTS: dict[str, Any] = _world_defaults("paper")
#: Defaults on the built-in demo world (no data options), chosen so that a bare
#: ``python -m flair_riva.pretrain`` finishes in about 2-3 minutes on 2 CPU cores: no download is possible
#: (random-init ResNet, frozen, features cached under the output folder), fewer epochs, and Adam, because
#: plain SGD at 2e-2 barely moves in the few hundred steps of a demo run. The Table 2 sizes are kept.
DEMO_DEFAULTS: dict[str, Any] = _world_defaults("demo")
#: Options that do not change what a run computes: a resumed run may change them.
CONTROL_ARGS = frozenset(ORDER[CONTROL]) | {"feature_cache"}


def resolve_args(config: PretrainConfig) -> tuple[PretrainConfig, bool, list[str]]:
    """Fill the ``None`` defaults. Returns ``(config, on_demo_world, notes on demo defaults)``."""
    demo = config.demo
    changes: dict[str, Any] = {}
    notes: list[str] = []
    for name, f in _FIELDS.items():
        if "paper" not in f.metadata or getattr(config, name) is not None:
            continue
        changes[name] = f.metadata["demo" if demo else "paper"]
        if demo and changes[name] != f.metadata["paper"]:
            notes.append(f"{name}={changes[name]} (paper: {f.metadata['paper']})")
    return replace(config, **changes), demo, notes


# -- the flat view: PretrainArgs(...), run_args.json ------------------------------------------------------------


def check_model_options(values: dict[str, Any]) -> None:
    """Ranges of the model options, named as flags (checked before the :class:`RivaConfig` is built)."""
    for name in ("word_dim", "char_dim", "char_hidden_size", "rgn_hidden_size", "rgn_layers", "vlcn_hidden_size",
                 "vlcn_layers", "num_heads", "max_vocab_size"):
        value, (lo, hi) = values.get(name), INT_RANGES[name]
        if value is not None and not lo <= value <= hi:
            raise PretrainError(f"--{name.replace('_', '-')} must be in [{lo}, {hi}], got {value}")
    for name, hi in (("gate_dropout", 1.0), ("gate_open_rate", 1.0), ("dropout", 1.0)):
        value = values.get(name)
        if value is not None and (not math.isfinite(value) or not 0.0 <= value < hi):
            raise PretrainError(f"--{name.replace('_', '-')} must be a finite number in [0, 1), got {value}")
    if values.get("backbone", "resnet34") not in SUPPORTED_ARCHS:
        raise PretrainError(f"unknown --backbone {values['backbone']!r}: choose {' or '.join(SUPPORTED_ARCHS)}")


def PretrainArgs(**values: Any) -> PretrainConfig:  # noqa: N802 (the 0.1.0 name of the flat options)
    """A :class:`PretrainConfig` from the flat options of ``python -m flair_riva.pretrain`` (``word_dim=...``
    next to ``epochs=...``; ``None`` for "the default"), as 0.1.0's ``PretrainArgs`` took them."""
    model = {k: values.pop(k) for k in list(values) if k in MODEL_OPTIONS}
    check_model_options(model)
    try:
        riva = RivaConfig(**{k: v for k, v in model.items() if v is not None})
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise PretrainError(f"invalid model options: {err}") from err
    return PretrainConfig(**values, model=riva)


def flat_options(config: PretrainConfig) -> dict[str, Any]:
    """The flat ``{option: value}`` of a config (the layout of ``run_args.json``). ``word_dim`` is None when
    the word vectors set it (a model ``word_dim`` left at its default)."""
    values = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "model"}
    values.update({name: getattr(config.model, name) for name in MODEL_OPTIONS})
    if config.word_vectors and config.model.word_dim == _MODEL_DEFAULTS["word_dim"]:
        values["word_dim"] = None
    return values


# -- the command line ---------------------------------------------------------------------------------------------


def _add_option(group: argparse._ArgumentGroup, name: str, help: str, default: Any, kind: str, cli: dict) -> None:
    cli = dict(cli)
    flag = cli.pop("flag", "--" + name.replace("_", "-"))
    if "action" in cli:
        if flag.startswith("--no-") and cli["action"] == "store_false":
            cli["dest"] = name
        if cli["action"] is argparse.BooleanOptionalAction:
            cli["default"] = default
        group.add_argument(flag, help=help, **cli)
        return
    if default is not None:
        cli["default"] = default
    kind_type = {"int": int, "float": float}.get(kind.split(" ")[0])
    if kind_type is not None and "choices" not in cli:
        cli["type"] = kind_type
    group.add_argument(flag, help=help, **cli)


def build_parser() -> argparse.ArgumentParser:
    """``python -m flair_riva.pretrain``'s options, generated from :class:`PretrainConfig` and :data:`MODEL_OPTIONS`."""
    p = argparse.ArgumentParser(
        prog="python -m flair_riva.pretrain",
        description="Pretrain RIVA (Sun et al., COLING 2020): teacher on labelled text-image relation data, "
                    "pseudo-labels on unlabelled pairs, then Algorithm 1. With no data options it runs on the "
                    "built-in demo world (demo defaults, logged). Also runs under torchrun.")
    model_fields = {f.name: f for f in dataclasses.fields(RivaConfig)}
    for title in GROUPS:
        group = p.add_argument_group(title)
        for name in ORDER[title]:
            if name in MODEL_OPTIONS:
                help, cli = MODEL_OPTIONS[name]
                default = None if name in TABLE2_SIZES else _MODEL_DEFAULTS[name]
                kind = str(model_fields[name].type)
            else:
                f = _FIELDS[name]
                help, cli, default, kind = f.metadata["help"], f.metadata["cli"], f.default, str(f.type)
            if name in PAPER_DEFAULTS and name != "freeze_backbone":
                help = f"{help} (paper {PAPER_DEFAULTS[name]}; demo world {DEMO_DEFAULTS[name]})"
            _add_option(group, name, help, default, kind, cli)
    return p


def from_namespace(namespace: argparse.Namespace) -> PretrainConfig:
    """The config of parsed command-line options (a :class:`PretrainError` for a bad model option)."""
    return PretrainArgs(**vars(namespace))


def check_config(config: PretrainConfig, world_size: int = 1) -> None:
    """Pure checks of a resolved config (no file access); a :class:`PretrainError` naming the flag."""
    a = config
    if not 0.0 <= a.threshold < 1.0:
        raise PretrainError(f"--threshold {a.threshold} keeps nothing: a class score is at most 1; "
                            "use a value in [0, 1) (the paper uses 0.6)")
    for name in ("epochs", "teacher_epochs", "batch_size", "keep_checkpoints"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            raise PretrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    for name in ("max_vocab_size", "min_word_count"):
        if getattr(a.model, name) < 1:
            raise PretrainError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a.model, name)}")
    check_model_options({name: getattr(a.model, name) for name in MODEL_OPTIONS})
    if a.length_buckets < 0:
        raise PretrainError(f"--length-buckets must be >= 0 (0 = plain shuffled batches), got {a.length_buckets}")
    if a.checkpoint_every < 0:
        raise PretrainError(f"--checkpoint-every must be >= 0 (0 = end of epoch only), got {a.checkpoint_every}")
    if a.batch_size < world_size:
        raise PretrainError(f"--batch-size {a.batch_size} is the global batch, split over {world_size} processes: "
                            "it must be at least the number of processes")
    for name in ("test_fraction", "dev_fraction"):
        if not 0.0 < getattr(a, name) < 1.0:
            raise PretrainError(f"--{name.replace('_', '-')} must be in (0, 1), got {getattr(a, name)}")
    if not 0.0 <= a.heldout_fraction < 1.0:
        raise PretrainError(f"--heldout-fraction must be in [0, 1), got {a.heldout_fraction}")
    if not 0.0 < a.anneal_factor <= 1.0:
        raise PretrainError(f"--anneal-factor must be in (0, 1] (1 = no annealing), got {a.anneal_factor}")
    if a.optimizer not in ("sgd", "adam", "adamw"):
        raise PretrainError(f"unknown --optimizer {a.optimizer!r}: choose sgd, adam or adamw")
    for option, value, low_open in (("--lr", a.lr, True), ("--backbone-lr", a.backbone_lr, False),
                                    ("--rgn-lr-factor", a.rgn_lr_factor, False), ("--clip", a.clip, False)):
        if value is None:
            continue
        hi = 1e12 if option == "--clip" else 1e6
        if not math.isfinite(value) or (value <= 0.0 if low_open else value < 0.0) or value > hi:
            bounds = f"{'(' if low_open else '['}0, {hi:g}]"
            raise PretrainError(f"{option} must be a finite number in {bounds}, got {value}"
                                + (" (0 = no clipping)" if option == "--clip" else ""))
    if a.patience < 0:
        raise PretrainError(f"--patience must be >= 0, got {a.patience}")
    if not 0 <= a.seed < 2**32:
        raise PretrainError(f"--seed must be in [0, 2**32), got {a.seed}")
    if not a.demo:
        if a.unlabelled is None:
            raise PretrainError("--relation-data needs --unlabelled (the unlabelled pairs to pseudo-label); "
                                "give neither to run on the built-in demo world")
        if a.relation_data is None and a.model.use_image:
            raise PretrainError("--unlabelled needs --relation-data (the labelled pairs of the teacher); "
                                "give neither to run on the built-in demo world, or --no-image for RIVA(text)")
