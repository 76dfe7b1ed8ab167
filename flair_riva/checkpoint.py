"""The RIVA model folder: ``config.json``, ``vocab.json`` and ``model.safetensors`` (JSON + safetensors, never pickle).

:func:`save_model` writes a folder atomically; frozen word vectors go to ``word_vectors.safetensors``
(:data:`VECTORS_FILE`), hard-linked from a sibling folder that holds the same vectors. :func:`load_model`
checks everything in a folder before it allocates the model (config fields, recorded sizes, file sizes,
the weights' names and shapes against a model built on the meta device) and raises a
:class:`CheckpointError` naming the file and field. Folders of flair-riva 0.1.0 (one vocabulary for input
and output, the word vectors inside ``model.safetensors``) load as well.

:meth:`RivaModel.save <flair_riva.model.RivaModel.save>` and :meth:`RivaModel.load
<flair_riva.model.RivaModel.load>` are the API; this module knows the format, not the model: the loader
builds the model through the class it is given.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from flair_riva.config import FORMAT_VERSION, RivaConfig, validate_config_dict
from flair_riva.io import atomic_directory, atomic_write_text
from flair_riva.text import Vocabulary

CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE = "config.json", "vocab.json", "model.safetensors"
VECTORS_FILE = "word_vectors.safetensors"
"""Frozen word vectors (``config.freeze_word_vectors``) are kept out of ``model.safetensors``: this file holds
them, and a model folder saved beside another one with the same vectors (the checkpoints, ``best/`` and
``final/`` of a pretraining run) hard-links the same file instead of writing a copy."""
WORD_VECTORS_KEY = "token_encoder.word_embedding.weight"

#: Bounds on what :func:`load_model` reads before checking it.
MAX_CONFIG_BYTES = 1 << 20
MAX_VOCAB_WORDS = 10_000_000
MAX_VOCAB_CHARS = 1_000_000

M = TypeVar("M", bound=nn.Module)


class CheckpointError(ValueError):
    """A model directory that is missing, damaged, or written by an incompatible format version."""


def save_model(state_dict: dict[str, torch.Tensor], config: RivaConfig, vocab: Vocabulary,
               directory: str | Path) -> None:
    """Write ``config.json``, ``vocab.json`` and ``model.safetensors`` atomically into ``directory``;
    frozen word vectors go to ``word_vectors.safetensors``, hard-linked from a sibling model folder
    that holds the same vectors (see :data:`VECTORS_FILE`)."""
    from safetensors.torch import save_file

    from flair_riva import __version__

    meta = {
        "format_version": FORMAT_VERSION,
        "flair_riva_version": __version__,
        "config": config.to_dict(),
        "vocab_size": len(vocab),
        "output_vocab_size": vocab.output_size,
        "num_chars": vocab.num_chars,
    }
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    vectors = state.pop(WORD_VECTORS_KEY) if config.freeze_word_vectors else None
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        if vectors is not None:
            _save_shared_vectors(vectors, tmp / VECTORS_FILE, directory.parent)
        atomic_write_text(tmp / VOCAB_FILE, vocab.to_json())
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(meta, indent=2, sort_keys=True))


def load_model(model_class: Callable[[RivaConfig, Any], M], directory: str | Path,
               map_location: str | torch.device | None = None) -> M:
    """Load a directory written by :func:`save_model` into ``model_class(config, vocab)``, on ``map_location``
    (CPU by default) and in eval mode. Reads JSON and safetensors only: never unpickles.

    Nothing in the directory is trusted before it is checked: every config field (type and range,
    :func:`~flair_riva.config.validate_config_dict`), the recorded vocabulary sizes, the file sizes,
    and the weights file's tensor names and shapes (read from its header and compared with a model
    built on the meta device) are checked before the model is allocated. Every failure is a
    :class:`CheckpointError` naming the file and field."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a RIVA model directory (it does not exist)")
    for name in (CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is not a RIVA model directory: {name} is missing")
    meta = _read_bounded_json(directory / CONFIG_FILE, MAX_CONFIG_BYTES)
    if not isinstance(meta, dict) or "format_version" not in meta:
        raise CheckpointError(f"{directory / CONFIG_FILE} is not a valid RIVA config: no format_version")
    version = meta["format_version"]
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory} was written in RIVA format version {version!r} (flair-riva "
            f"{meta.get('flair_riva_version', '?')}); this flair-riva reads version {FORMAT_VERSION}"
        )
    try:
        config = validate_config_dict(meta.get("config"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: bad config: {exc}") from exc
    sizes = {}
    meta.setdefault("output_vocab_size", meta.get("vocab_size"))  # 0.1.0: one vocabulary
    for key, limit in (("vocab_size", MAX_VOCAB_WORDS), ("output_vocab_size", MAX_VOCAB_WORDS),
                       ("num_chars", MAX_VOCAB_CHARS)):
        value = meta.get(key)
        if type(value) is not int or not 2 <= value <= limit:
            raise CheckpointError(f"{directory / CONFIG_FILE}: field {key}: {value!r} is not an integer in "
                                  f"[2, {limit}]")
        sizes[key] = value
    # the shapes this config and these sizes give, on the meta device (no memory, no time)
    try:
        with torch.device("meta"):
            skeleton = model_class(config, _SizedVocabulary(sizes["vocab_size"], sizes["num_chars"],
                                                            sizes["output_vocab_size"]))
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: the config does not give a valid model: "
                              f"{type(exc).__name__}: {exc}") from exc
    del skeleton
    weights_path = directory / WEIGHTS_FILE
    files = [weights_path] + ([directory / VECTORS_FILE] if (directory / VECTORS_FILE).is_file() else [])
    found: dict[str, tuple] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                found.update({k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()})  # noqa: SIM118
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} cannot be read: {exc}") from exc
    if found != expected:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        wrong = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else "",
                 ", ".join(f"{k} is {found[k]} not {expected[k]}" for k in wrong[:3])]
        raise CheckpointError(f"{directory}: weights do not fit the recorded config: "
                              f"{'; '.join(p for p in parts if p)}")
    # vocab.json: a word costs at most a tweet's length in JSON escapes; bounded by the recorded sizes
    vocab_limit = 4096 + 2048 * sizes["vocab_size"] + 64 * sizes["num_chars"]
    vocab_data = _read_bounded_json(directory / VOCAB_FILE, vocab_limit)
    try:
        vocab = Vocabulary.from_data(vocab_data)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{directory / VOCAB_FILE}: bad vocabulary: {exc}") from exc
    if len(vocab) != sizes["vocab_size"] or vocab.num_chars != sizes["num_chars"] or \
            vocab.output_size != sizes["output_vocab_size"]:
        raise CheckpointError(f"{directory}: vocab.json does not match the sizes recorded in config.json")
    device = torch.device(map_location) if map_location is not None else torch.device("cpu")
    state = {}
    for path in files:
        try:
            state.update(load_file(str(path), device=str(device)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path} cannot be read: {exc}") from exc
    model = model_class(config, vocab)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory}: weights do not fit the recorded config: {exc}") from exc
    return model.to(device).eval()


class _SizedVocabulary:
    """Stands in for a :class:`Vocabulary` of known sizes when building a model on the meta device."""

    def __init__(self, words: int, chars: int, output_size: int | None = None) -> None:
        self.words_count, self.num_chars = words, chars
        self.output_size = words if output_size is None else output_size

    def __len__(self) -> int:
        return self.words_count


def _save_shared_vectors(vectors: torch.Tensor, path: Path, siblings_root: Path) -> None:
    """Write the frozen word vectors to ``path``, or hard-link an identical file of a sibling model folder
    (same SHA-256 of the tensor, recorded in the file's metadata) so that checkpoints share one copy."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    digest = hashlib.sha256(vectors.numpy().tobytes()).hexdigest()
    for candidate in sorted(siblings_root.glob(f"*/{VECTORS_FILE}")):
        try:
            with safe_open(str(candidate), framework="pt") as handle:
                same = (handle.metadata() or {}).get("sha256") == digest
            if same:
                os.link(candidate, path)
                return
        except (SafetensorError, OSError, ValueError):
            continue  # a folder being replaced, or a file system without hard links: write a copy
    save_file({WORD_VECTORS_KEY: vectors}, str(path),
              metadata={"format_version": str(FORMAT_VERSION), "sha256": digest})


def _read_bounded_json(path: Path, limit: int) -> Any:
    """Parse a JSON file of at most ``limit`` bytes (regular files only); a :class:`CheckpointError` otherwise."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CheckpointError(f"{path} is not a regular file")
            if st.st_size > limit:
                raise CheckpointError(f"{path} is {st.st_size} bytes, more than the {limit} this model can need")
            data = handle.read(limit + 1)
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read: {exc}") from exc
    if len(data) > limit:
        raise CheckpointError(f"{path} holds more than the {limit} bytes this model can need")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
