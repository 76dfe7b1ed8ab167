"""The ResNet backbone of RIVA (paper §3.1-3.2) and the region features it yields.

The visual side of RIVA needs two views of a tweet image, both from the last convolutional layer of a
ResNet-34 (He et al., 2016), whose output is a ``7 x 7 x d_v`` map with ``d_v = 512``:

* the 49 region vectors ``V^r = {v^r_ij}`` used as keys and values of the VCN attention (§3.2, Eq. 3-5),
  flattened row-major (region ``i * 7 + j``);
* the average pooling of those regions, the image vector ``f_v`` of the RGN (§3.1).

:class:`RegionExtractor` is the torchvision ResNet trunk without ``avgpool``/``fc``; its
:meth:`~RegionExtractor.fingerprint` keys the feature cache (:mod:`flair_riva.feature_cache`).
:class:`VisualFeatures` is what the model consumes; :data:`BACKBONES` lists the backbones.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from flair_riva.images import IMAGE_SIZE, PREPROCESS_VERSION

GRID_SIZE = 7
NUM_REGIONS = GRID_SIZE * GRID_SIZE
VISUAL_DIM = 512


@dataclass
class VisualFeatures:
    """What the model consumes for a batch of images (paper §3.1-3.2)."""

    regions: torch.Tensor
    """(B, 49, 512) float32: the last conv map of ResNet, 7 x 7 regions flattened row-major (i*7+j)."""
    pooled: torch.Tensor
    """(B, 512): average pooling over the 49 regions, the image vector f_v of §3.1."""
    has_image: torch.Tensor
    """(B,) bool; rows without an image are zeros."""
    reasons: list[str | None] = field(default_factory=list)
    """Per item, ``None`` when ok, else one of :data:`BAD_IMAGE_REASONS`."""

    def __len__(self) -> int:
        return self.regions.shape[0]

    def to(self, device: str | torch.device) -> VisualFeatures:
        return VisualFeatures(self.regions.to(device), self.pooled.to(device), self.has_image.to(device),
                              list(self.reasons))

    @classmethod
    def empty(cls, batch_size: int, reasons: Sequence[str | None] | None = None) -> VisualFeatures:
        """All-zero features, ``has_image`` False (e.g. the text-only path); ``reasons`` default "no path"."""
        return cls(torch.zeros(batch_size, NUM_REGIONS, VISUAL_DIM), torch.zeros(batch_size, VISUAL_DIM),
                   torch.zeros(batch_size, dtype=torch.bool),
                   list(reasons) if reasons is not None else ["no path"] * batch_size)


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of the package needs to know about a backbone: the size of its region vectors and
    the number of regions of its last convolutional map at :data:`IMAGE_SIZE`."""

    visual_dim: int
    num_regions: int


#: The backbones flair-riva knows, and their visual sizes (the one place that lists them).
BACKBONES: dict[str, BackboneSpec] = {
    "resnet34": BackboneSpec(visual_dim=VISUAL_DIM, num_regions=NUM_REGIONS),  # the paper's
    "resnet18": BackboneSpec(visual_dim=VISUAL_DIM, num_regions=NUM_REGIONS),
}
SUPPORTED_ARCHS = tuple(BACKBONES)


def backbone_spec(arch: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a backbone name (``ValueError`` naming the choices otherwise)."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone {arch!r}: choose one of {', '.join(SUPPORTED_ARCHS)}")
    return BACKBONES[arch]


def parse_weights(weights: str | Path | None) -> str | Path | None:
    """The spelling of "no pretrained weights" (``None``, ``""``, ``"none"`` in any case) -> ``None``;
    anything else (a torchvision weights name or a file) unchanged."""
    if isinstance(weights, str) and weights.strip().lower() in ("", "none"):
        return None
    return weights


def _resnet_builders() -> dict:
    from torchvision import models

    return {
        "resnet18": (models.resnet18, models.ResNet18_Weights),
        "resnet34": (models.resnet34, models.ResNet34_Weights),
    }

_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _download_hint(arch: str) -> str:
    return (f"pass a local state-dict file instead (--backbone-weights FILE, or "
            f"RegionExtractor({arch!r}, weights='path/to/{arch}.pth'), a .pth/.pt or .safetensors file), "
            f"or 'none' (--backbone-weights none, weights=None) for a randomly initialised backbone")


class RegionExtractor(nn.Module):
    """A torchvision ResNet trunk (``conv1`` ... ``layer4``, no ``avgpool``/``fc``), §3.1-3.2.

    ``forward(pixels)`` maps (B, 3, 224, 224) normalised pixels to the 49 region vectors (B, 49, 512)
    of the last convolutional layer, flattened row-major from the 7 x 7 map, and their average pooling
    (B, 512), which is ``f_v`` of §3.1 (identical to torchvision's ``avgpool``).

    The state-dict keys are torchvision's (``conv1.weight``, ``layer4.1.bn2.running_var``, ...), so a
    torchvision ResNet checkpoint loads directly (its ``fc.*`` is dropped).

    Args:
        arch: ``"resnet34"`` (the paper) or ``"resnet18"`` (small, for tests); both end in 512 channels.
        weights: ``None`` or ``"none"``: random init (torchvision's initialisation, drawn from torch's
            global RNG, so ``torch.manual_seed`` makes it reproducible); a torchvision weights name such
            as ``"IMAGENET1K_V1"`` or ``"DEFAULT"`` (downloaded once into the torch hub cache; with no
            network a ``RuntimeError`` says what to pass instead); or a local state-dict file
            (``.safetensors`` via safetensors, anything else via ``torch.load(weights_only=True)``, so
            a file never runs code).
    """

    def __init__(self, arch: str = "resnet34", weights: str | Path | None = None):
        super().__init__()
        builders = _resnet_builders()
        self.spec = backbone_spec(arch)
        self.arch = arch
        builder, weights_enum = builders[arch]
        resnet = builder(weights=None)
        for name in _TRUNK:
            setattr(self, name, getattr(resnet, name))
        self.weights_source = "none"
        state = self._resolve_weights(weights, weights_enum)
        if state is not None:
            self._load_trunk_state(state[0], state[1])
        self._fp_key: tuple | None = None
        self._fp_value: str | None = None

    # ---- weights ---------------------------------------------------------------------------------

    def _resolve_weights(self, weights: str | Path | None, weights_enum) -> tuple[dict, str] | None:
        if weights is None:
            return None
        if isinstance(weights, Path):
            return self._read_state_file(weights), str(weights)
        if not isinstance(weights, str):
            raise TypeError(f"weights must be None, a name or a path, not {type(weights).__name__}")
        if parse_weights(weights) is None:
            return None
        text = weights.strip()
        if os.path.exists(text):
            return self._read_state_file(Path(text)), text
        name = text.replace(weights_enum.__name__ + ".", "")
        if name in weights_enum.__members__:
            member = weights_enum[name]
            try:
                state = member.get_state_dict(progress=False, check_hash=True)
            except Exception as err:
                raise RuntimeError(
                    f"could not load torchvision weights {weights_enum.__name__}.{member.name} for "
                    f"{self.arch} ({type(err).__name__}: {err}); the machine may be offline: "
                    f"{_download_hint(self.arch)}"
                ) from err
            self.weights_source = f"torchvision:{weights_enum.__name__}.{member.name}"
            return state, self.weights_source
        looks_like_path = any(sep in text for sep in ("/", os.sep)) or Path(text).suffix.lower() in (
            ".pth", ".pt", ".bin", ".safetensors", ".ckpt")
        if looks_like_path:
            raise FileNotFoundError(f"backbone weights file not found: {text}")
        raise ValueError(
            f"unknown backbone weights {text!r} for {self.arch}: not an existing file and not a torchvision "
            f"name ({', '.join(weights_enum.__members__)}); use a file path or 'none'")

    def _read_state_file(self, path: Path) -> dict:
        if not path.is_file():
            what = "is not a file" if path.exists() else "not found"
            raise FileNotFoundError(f"backbone weights file {what}: {path}")
        try:
            if path.suffix.lower() == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path), device="cpu")
            else:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            # torch's unpickling message spans several lines: keep its first line (errors are one line)
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
            hint = (" (only tensors are loaded, weights_only=True: save a plain state dict, or .safetensors)"
                    if "weights_only" in str(err) or "Unsupported global" in str(err) else "")
            raise ValueError(f"cannot read backbone weights file {path}: {type(err).__name__}: {first}{hint}"
                             ) from err
        for wrapper in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"backbone weights file {path} does not hold a state dict of tensors")
        self.weights_source = f"file:{path}"
        return state

    def _load_trunk_state(self, state: dict, source: str) -> None:
        cleaned = {}
        for key, value in state.items():
            for prefix in ("module.", "backbone."):
                if key.startswith(prefix):
                    key = key[len(prefix):]
            if key.startswith("fc."):
                continue
            cleaned[key] = value
        own = self.state_dict()
        missing = sorted(set(own) - set(cleaned))
        unexpected = sorted(set(cleaned) - set(own))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:5])})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:5])})")
            raise ValueError(f"backbone weights {source} do not fit a torchvision {self.arch}: "
                             + "; ".join(parts))
        bad = [f"{k} {tuple(cleaned[k].shape)} != {tuple(own[k].shape)}"
               for k in own if tuple(cleaned[k].shape) != tuple(own[k].shape)]
        if bad:
            raise ValueError(f"backbone weights {source} do not fit a torchvision {self.arch}: shape "
                             f"mismatch for {len(bad)} tensors (e.g. {'; '.join(bad[:3])})")
        self.load_state_dict(cleaned, strict=True)

    # ---- forward ---------------------------------------------------------------------------------

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, 224, 224) -> regions (B, 49, 512) and pooled (B, 512) (§3.1: average pooling)."""
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"RegionExtractor expects pixels of shape (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), "
                             f"got {tuple(pixels.shape)}")
        x = pixels
        for name in _TRUNK:
            x = getattr(self, name)(x)
        regions = x.flatten(2).transpose(1, 2)  # (B, C, 7, 7) -> (B, 49, C), region i*7+j
        return regions, regions.mean(dim=1)

    # ---- fingerprint -----------------------------------------------------------------------------

    def _version_key(self) -> tuple:
        return tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape))
                     for name, t in self.state_dict(keep_vars=True).items())

    def fingerprint(self) -> str:
        """sha256 (hex) of :data:`PREPROCESS_VERSION`, the architecture and every parameter and buffer
        (sorted names, dtypes, shapes and bytes). The cache key of :class:`FeatureCache`.

        Cached on the instance and recomputed automatically when any tensor changed in place (its
        version counter moved) or was replaced; :meth:`refresh_fingerprint` forces a recomputation."""
        key = self._version_key()
        if self._fp_value is None or key != self._fp_key:
            self._fp_value = self._compute_fingerprint()
            self._fp_key = key
        return self._fp_value

    def refresh_fingerprint(self) -> str:
        self._fp_value = None
        return self.fingerprint()

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"{PREPROCESS_VERSION}\n{self.arch}\n".encode())
        with torch.no_grad():
            for name, t in sorted(self.state_dict().items()):
                t = t.detach().to("cpu").contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
        return h.hexdigest()

    @property
    def device(self) -> torch.device:
        return self.conv1.weight.device

    def extra_repr(self) -> str:
        return f"arch={self.arch}, weights={self.weights_source}"

