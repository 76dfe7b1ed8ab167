"""RivaConfig: the architecture of the RIVA model and its ablation flags, with the paper's Table 2 as defaults.

The config is a plain dataclass that round-trips through JSON (``config.json`` in a model directory).
Training settings live in :class:`~flair_riva.pretrain.options.PretrainConfig`; the visual sizes follow
from the backbone (:data:`~flair_riva.vision.BACKBONES`).
It is also pickled inside a Flair tagger (``RivaEmbeddings.to_params``), so that unpickling a saved
tagger imports ``flair_riva`` and registers the embedding class (see notes §1.3): keep its module
path and field names stable, and give every new field a default.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from flair_riva.vision import SUPPORTED_ARCHS, backbone_spec

VLCN_VISUAL_MODES = ("paper", "start", "state", "step")
VISUAL_NORMS = ("standardize", "layer")
#: Values of fields added after 0.1.0 that a config written without them had (so 0.1.0 models load as
#: they were trained).
LEGACY_VALUES: dict[str, Any] = {"vlcn_visual": "paper", "visual_norm": "layer", "gate_dropout": 0.0}
#: Fields flair-riva 0.1.0 wrote that the config no longer has: training settings no library code read (now
#: :class:`~flair_riva.pretrain.options.PretrainConfig`'s) and the visual sizes, which follow from the
#: backbone. A config that has them loads without them (logged).
RETIRED_FIELDS = ("visual_dim", "num_regions", "learning_rate", "backbone_learning_rate", "optimizer", "batch_size",
                  "clip_grad_norm")

#: Version of the on-disk model directory format (config.json + vocab.json + model.safetensors).
FORMAT_VERSION = 1


@dataclass
class RivaConfig:
    """Architecture and ablation flags of RIVA (Sun et al., COLING 2020, §3 and Table 2)."""

    # -- text encoder (§3.1: word + character embeddings as in Lample et al. 2016) ----------------
    word_dim: int = 100
    """Word vector size (the paper uses 100-d GloVe in RIVA, §4.3)."""
    char_dim: int = 25
    """Character embedding dimension (Table 2)."""
    char_hidden_size: int = 25
    """Hidden size per direction of the character biLSTM (Lample et al. 2016 use 25)."""
    freeze_word_vectors: bool = False
    """Keep pretrained word vectors fixed during pretraining."""
    max_vocab_size: int = 50000
    min_word_count: int = 2

    # -- RGN (§3.1) -------------------------------------------------------------------------------
    rgn_hidden_size: int = 256
    """biLSTM hidden size of the RGN (Table 2); f_t has 2 * 256 = 512 dims."""
    rgn_layers: int = 2

    # -- vision (§3.1, §3.2) ----------------------------------------------------------------------
    backbone: str = "resnet34"
    visual_norm: str = "standardize"
    """How ResNet features are normalised before the RGN and VCN: ``"standardize"`` (per feature, with
    running statistics over the training images) or ``"layer"`` (per vector, flair-riva 0.1.0; keeps the
    component every image shares, so random-init features barely differ between images)."""

    # -- VCN (§3.2) -------------------------------------------------------------------------------
    num_heads: int = 8
    """h in Eq. (4)-(5); d_h = d_v / h."""

    # -- VLCN (§3.3) ------------------------------------------------------------------------------
    vlcn_hidden_size: int = 256
    vlcn_layers: int = 2
    adaptive_softmax_cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
    """Cluster boundaries of the adaptive softmax output layer (Grave et al. 2017), clipped to the vocabulary."""
    adaptive_softmax_div_value: float = 4.0
    vlcn_visual: str = "step"
    """How the gated visual vector enters the VLCN (README, design notes):

    * ``"paper"``: §3.3 as written, FC+GELU(s_G · v_c) replaces [BOS]/[EOS] (flair-riva 0.1.0). Unbounded:
      in trained models the first LSTM step saturates and the image never reaches the token states.
    * ``"start"``: a learned [BOS]/[EOS] plus s_G · tanh(W v_c): bounded, and equal to the no-image start
      at s_G = 0.
    * ``"state"``: ``"start"`` and the LSTMs' initial states s_G · tanh(W v_c).
    * ``"step"``: ``"start"`` and s_G · tanh(W v_c) appended to every token input of both LMs (a deviation
      from §3.3, the default: the only route that carries the image to the token states in a demo budget).
    """
    visual_step_dim: int = 32
    """Size of the per-step visual input of ``vlcn_visual="step"``."""
    gate_dropout: float = 0.1
    """Training only: the probability that an item's s_G is replaced by 0 on its way to the VLCN, so the
    no-image input (s_G = 0) is one the language model is trained on in every epoch."""
    gate_open_rate: float = 0.0
    """Training only, a deviation (default 0: off, as in the paper): the probability that an item with an
    image has its s_G replaced by 1 on its way to the VLCN, so the language model also meets images the RGN
    would keep out (those that contradict the text) and learns to discount them, as ``-RGN``'s does."""

    # -- regularisation (Table 2, "Misc.") ---------------------------------------------------------
    dropout: float = 0.5

    # -- ablations (§4.5 "RIVA (text)", §4.6 "-RGN") ---------------------------------------------
    use_image: bool = True
    """False gives RIVA(text): the RGN and VCN are ablated and the LMs start from learned [BOS]/[EOS]."""
    gate: bool = True
    """False gives -RGN: s_G = 1 for every item that has an image."""

    def __post_init__(self) -> None:
        if self.visual_dim % self.num_heads:
            raise ValueError(f"visual_dim ({self.visual_dim}) must be divisible by num_heads ({self.num_heads})")
        for name in ("word_dim", "char_dim", "char_hidden_size", "rgn_hidden_size", "vlcn_hidden_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.vlcn_visual not in VLCN_VISUAL_MODES:
            raise ValueError(f"vlcn_visual must be one of {VLCN_VISUAL_MODES}, got {self.vlcn_visual!r}")
        if self.visual_norm not in VISUAL_NORMS:
            raise ValueError(f"visual_norm must be one of {VISUAL_NORMS}, got {self.visual_norm!r}")
        if not 0.0 <= self.gate_dropout < 1.0:
            raise ValueError(f"gate_dropout must be in [0, 1), got {self.gate_dropout}")
        if not 0.0 <= self.gate_open_rate < 1.0:
            raise ValueError(f"gate_open_rate must be in [0, 1), got {self.gate_open_rate}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def visual_dim(self) -> int:
        """d_v: channels of the backbone's last convolutional map (512 for ResNet-18/34: 7 x 7 x 512)."""
        return backbone_spec(self.backbone).visual_dim

    @property
    def num_regions(self) -> int:
        """Regions of the backbone's last convolutional map (7 x 7 = 49)."""
        return backbone_spec(self.backbone).num_regions

    @property
    def text_dim(self) -> int:
        """d_t: size of the RGN's text vector f_t (forward last + backward first state)."""
        return 2 * self.rgn_hidden_size

    @property
    def token_input_dim(self) -> int:
        """Size of one token's input: word vector + character biLSTM encoding."""
        return self.word_dim + 2 * self.char_hidden_size

    @property
    def embedding_length(self) -> int:
        """Size of one token's RIVA embedding [h_fwd; h_bwd] (§4.2)."""
        return 2 * self.vlcn_hidden_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RivaConfig:
        known = {f.name for f in dataclasses.fields(cls)} | set(RETIRED_FIELDS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown RivaConfig fields {unknown}: this checkpoint was written by a newer flair-riva"
            )
        data = {**{k: v for k, v in LEGACY_VALUES.items() if k not in data}, **_without_retired(data)}
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> RivaConfig:
        return dataclasses.replace(self, **changes)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Taggers pickle the config: fill fields added after the tagger was saved with their defaults.
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                    for f in dataclasses.fields(self)}
        defaults.update({k: v for k, v in LEGACY_VALUES.items() if k not in state})
        defaults.update(_without_retired(state))
        self.__dict__.update(defaults)


def _without_retired(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without :data:`RETIRED_FIELDS` (named in a log line when there were any)."""
    retired = sorted(k for k in data if k in RETIRED_FIELDS)
    if not retired:
        return data
    logging.getLogger("flair").info("RivaConfig: dropping fields flair-riva no longer uses: %s", ", ".join(retired))
    return {k: v for k, v in data.items() if k not in RETIRED_FIELDS}


#: Ranges of the numeric fields a model directory's ``config.json`` may hold (inclusive). They bound what a
#: hostile or damaged file can make :meth:`~flair_riva.model.RivaModel.load` build: the weights file's
#: shapes are compared with the config on the meta device before anything is allocated.
INT_RANGES: dict[str, tuple[int, int]] = {
    "word_dim": (1, 4096), "char_dim": (1, 4096), "char_hidden_size": (1, 4096),
    "max_vocab_size": (4, 10_000_000), "min_word_count": (1, 1_000_000_000),
    "rgn_hidden_size": (1, 16384), "rgn_layers": (1, 16), "num_heads": (1, 512), "vlcn_hidden_size": (1, 16384),
    "vlcn_layers": (1, 16), "visual_step_dim": (1, 4096),
}
FLOAT_RANGES: dict[str, tuple[float, float]] = {
    "adaptive_softmax_div_value": (1.0, 64.0), "dropout": (0.0, 0.999999), "gate_dropout": (0.0, 0.999999),
    "gate_open_rate": (0.0, 0.999999),
}
BOOL_FIELDS = ("freeze_word_vectors", "use_image", "gate")
#: Values a retired field may hold in a 0.1.0 config (checked, then dropped).
RETIRED_RANGES: dict[str, tuple[float, float]] = {
    "visual_dim": (512, 512), "num_regions": (49, 49), "batch_size": (1, 1_000_000), "learning_rate": (0.0, 1e6),
    "backbone_learning_rate": (0.0, 1e6), "clip_grad_norm": (0.0, 1e12)}
CHOICES: dict[str, tuple[str, ...]] = {"backbone": SUPPORTED_ARCHS, "optimizer": ("sgd", "adam", "adamw"),
                                       "vlcn_visual": VLCN_VISUAL_MODES, "visual_norm": VISUAL_NORMS}


def _increasing_ints(value: Any) -> bool:
    return (isinstance(value, list) and 1 <= len(value) <= 16
            and all(type(c) is int and 0 < c <= 10_000_000 for c in value)
            and all(a < b for a, b in zip(value, value[1:])))


def validate_config_dict(data: Any) -> RivaConfig:
    """Check every field of a config read from a file (types and ranges) and build the config.

    Raises ``ValueError`` naming the first bad field. Cheap: nothing is allocated."""
    if not isinstance(data, dict):
        raise ValueError(f"the config must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(RivaConfig)} | set(RETIRED_FIELDS)
    unknown = sorted(str(k) for k in set(data) - known)
    if unknown:
        raise ValueError(f"unknown RivaConfig fields {unknown}: this checkpoint was written by a newer flair-riva")
    for name, value in data.items():
        if name in INT_RANGES or name in ("visual_dim", "num_regions", "batch_size"):
            lo, hi = INT_RANGES.get(name) or RETIRED_RANGES[name]
            if type(value) is not int:
                raise ValueError(f"field {name}: must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"field {name}: {value} is outside [{lo}, {hi}]")
        elif name in FLOAT_RANGES or name in RETIRED_RANGES:
            lo, hi = FLOAT_RANGES.get(name) or RETIRED_RANGES[name]
            if type(value) not in (int, float) or not math.isfinite(value):
                raise ValueError(f"field {name}: must be a finite number, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"field {name}: {value} is outside [{lo}, {hi}]")
        elif name in BOOL_FIELDS:
            if type(value) is not bool:
                raise ValueError(f"field {name}: must be true or false, got {value!r}")
        elif name in CHOICES:
            if value not in CHOICES[name]:
                raise ValueError(f"field {name}: {value!r} is not one of {', '.join(CHOICES[name])}")
        elif name == "adaptive_softmax_cutoffs" and not _increasing_ints(value):
            raise ValueError(f"field {name}: must be 1 to 16 increasing positive integers, got {value!r}")
    merged = {**RivaConfig().to_dict(), **data}
    visual_dim = backbone_spec(merged["backbone"]).visual_dim
    if visual_dim % merged["num_heads"]:
        raise ValueError(f"field num_heads: {merged['num_heads']} does not divide visual_dim {visual_dim}")
    return RivaConfig.from_dict(data)  # fields a 0.1.0 config lacks take their 0.1.0 values
