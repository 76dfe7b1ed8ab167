"""The run folder: its file names, the check of a folder against the arguments, the stage records, checkpoints.

A run folder follows Flair's ``LanguageModelTrainer`` (``training.log``, a metrics table, a checkpoint per
epoch) and resumes properly: ``run_args.json`` records what the run computes (a resumed run must give the
same), ``run_state.json`` records the finished stages 0-2 (:class:`RunState`), and every checkpoint folder is
a model folder plus ``trainer_state.pt`` (:mod:`flair_riva.pretrain.state`), written as one atomic folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flair_riva.io import atomic_directory, atomic_write_text
from flair_riva.model import RivaModel
from flair_riva.pretrain.metrics import RelationScores
from flair_riva.pretrain.options import PretrainError
from flair_riva.pretrain.state import STATE_FILE, STATE_FORMAT, load_state, save_state, write_metrics

log = logging.getLogger("flair")

RUN_ARGS_FILE = "run_args.json"
RUN_STATE_FILE = "run_state.json"
VOCAB_FILE = "vocab.json"
PSEUDO_FILE = "pseudo_labelled.tsv"
METRICS_FILE = "metrics.tsv"
LOG_FILE = "training.log"
MID_EPOCH_DIR = "checkpoint"
#: Files and folders a run writes (what ``--overwrite`` removes; the feature cache is kept: its entries
#: are keyed by backbone fingerprint and image content, so they stay valid).
RUN_ARTIFACTS = (RUN_ARGS_FILE, RUN_STATE_FILE, VOCAB_FILE, PSEUDO_FILE, METRICS_FILE, LOG_FILE, "teacher",
                 MID_EPOCH_DIR, "best", "final")
#: run_args.json entries added after 0.1.0, with the value a run that did not record them had.
LEGACY_RUN_ARGS: dict[str, Any] = {"length_buckets": 0}
#: run_args.json entries that are paths: compared resolved (symlinks, ``..``, trailing slashes).
PATH_ARGS = frozenset({"relation_data", "unlabelled", "image_dir", "word_vectors", "demo_dir", "backbone_weights"})


def read_run_args(folder: Path) -> dict[str, Any] | None:
    """The ``args`` of ``folder/run_args.json``, or None when the file is missing or unreadable."""
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        args = json.loads((folder / RUN_ARGS_FILE).read_text(encoding="utf-8")).get("args")
        return None if args is None else {**LEGACY_RUN_ARGS, **args}
    return None


def same_arg(name: str, previous: Any, current: Any) -> bool:
    """Whether a run_args.json entry is unchanged (paths compared resolved)."""
    if previous == current:
        return True
    if name in PATH_ARGS and isinstance(previous, str) and isinstance(current, str):
        if name == "backbone_weights" and not (os.path.exists(previous) or os.path.exists(current)):
            return False  # a torchvision weights name, not a path
        return os.path.realpath(os.path.expanduser(previous)) == os.path.realpath(os.path.expanduser(current))
    return False


@dataclass
class VocabularyRecord:
    """Stage 0: the vocabulary's sizes, the word vector size, and the unlabelled pairs counted on the way."""

    words: int
    chars: int
    word_dim: int
    unlabelled: int
    unlabelled_with_image: int


@dataclass
class TeacherRecord:
    """Stage 1: the teacher's epoch (chosen on dev; 0 when reused), its scores and the split sizes."""

    epoch: int
    dev: RelationScores
    test: RelationScores
    train_pairs: int
    dev_pairs: int
    test_pairs: int
    source: str | None = None
    """The ``--teacher`` folder it was reused from (``"from"`` in ``run_state.json``)."""

    def to_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "dev": self.dev.to_dict(), "test": self.test.to_dict()}
        source = data.pop("source")
        return data if source is None else {**data, "from": source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TeacherRecord:
        return cls(data["epoch"], RelationScores.from_dict(data["dev"]), RelationScores.from_dict(data["test"]),
                   data["train_pairs"], data["dev_pairs"], data["test_pairs"], data.get("from"))


@dataclass
class PseudoRecord:
    """Stage 2: what the pseudo-labelling pass saw and kept (kept pairs per class name)."""

    seen: int
    kept: int
    threshold: float
    kept_per_class: dict[str, int]
    below_threshold: int
    without_image: int
    highest_score: float


@dataclass
class RunState:
    """What stages 0-2 recorded (``run_state.json``): each record is present once its stage finished."""

    vocab: VocabularyRecord | None = None
    teacher: TeacherRecord | None = None
    pseudo: PseudoRecord | None = None

    @classmethod
    def from_dict(cls, data: Any) -> RunState:
        data = data if isinstance(data, dict) else {}
        vocab, teacher, pseudo = (data.get(k) for k in ("vocab", "teacher", "pseudo"))
        return cls(VocabularyRecord(**vocab) if vocab else None, TeacherRecord.from_dict(teacher) if teacher else None,
                   PseudoRecord(**pseudo) if pseudo else None)

    def to_dict(self) -> dict[str, Any]:
        records = {"vocab": self.vocab, "teacher": self.teacher, "pseudo": self.pseudo}
        return {k: v.to_dict() if isinstance(v, TeacherRecord) else asdict(v) for k, v in records.items()
                if v is not None}


@dataclass
class Checkpoint:
    """A checkpoint folder found on disk: its position key, its path and its trainer state."""

    key: tuple
    path: Path
    state: dict[str, Any] = field(repr=False)


class RunFolder:
    """One run's folder (only rank 0 writes; every method that writes returns at once on other ranks)."""

    def __init__(self, path: str | Path, is_main: bool = True) -> None:
        self.path = Path(os.path.abspath(Path(path).expanduser()))
        self.is_main = is_main

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def epoch_dir(self, epoch: int) -> Path:
        return self.path / f"epoch-{epoch}"

    # -- arguments ----------------------------------------------------------------------------------------
    def _present(self) -> list[str]:
        return [name for name in RUN_ARTIFACTS if (self.path / name).exists()] + \
            sorted(p.name for p in self.path.glob("epoch-*") if p.is_dir())

    def prepare(self, current: dict[str, Any], resume: bool, overwrite: bool) -> bool:
        """Check the folder against ``run_args.json``; returns True when resuming (rank 0 only).

        A folder whose run never finished stage 0 (no vocabulary in ``run_state.json``: it failed on bad
        input, or was killed early) holds nothing worth keeping and counts as empty. Paths are compared
        resolved (``r3/``, ``./r3`` and ``/abs/r3`` are one folder), and the output folder itself is left out
        of the comparison, so a moved run folder resumes."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise PretrainError(f"--output {out} exists and is not a folder")
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=out, prefix=".write-test-"):
                pass
        except OSError as err:
            raise PretrainError(f"--output {out} is not a writable folder: {err.strerror or err}") from err
        present = self._present()
        args_file = out / RUN_ARGS_FILE
        if present and self.read_state().vocab is None and \
                not set(present) - {RUN_ARGS_FILE, LOG_FILE, RUN_STATE_FILE, VOCAB_FILE}:
            log.info("%s holds a run that never finished stage 0 (%s): starting afresh", out, ", ".join(present))
            for name in present:
                (out / name).unlink(missing_ok=True)
            present = []
        if args_file.exists() or present:
            previous = read_run_args(out)
            if overwrite:
                self._wipe(present)
            elif previous is None:
                raise PretrainError(
                    f"--output {out} holds files of a pretraining run ({', '.join(present)}) without a readable "
                    f"{RUN_ARGS_FILE}: choose another folder, or pass --overwrite to delete them")
            else:
                diffs = [f"{k}: {previous.get(k)!r} -> {current.get(k)!r}"
                         for k in sorted(set(previous) | set(current))
                         if k != "output" and not same_arg(k, previous.get(k), current.get(k))]
                if diffs:
                    raise PretrainError(
                        f"--output {out} holds another run with different arguments ({'; '.join(diffs)}): "
                        "choose another --output for this run, or continue that one with its own arguments "
                        "and --resume")
                if not resume:
                    raise PretrainError(
                        f"--output {out} already holds a run with these arguments: pass --resume to continue "
                        "it, or choose another --output")
                return True
        elif resume:
            log.info("--resume: nothing to resume in %s, starting a new run", out)
        from flair_riva import __version__

        atomic_write_text(args_file, json.dumps({"flair_riva_version": __version__, "args": current},
                                                indent=2, sort_keys=True))
        return False

    def _wipe(self, present: list[str]) -> None:
        log.info("--overwrite: deleting the previous run in %s (%s)", self.path, ", ".join(present) or "-")
        for name in present:
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    def clean_temp(self) -> None:
        """Remove temporary folders/files a killed run left behind (atomic writes in progress)."""
        for path in self.path.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        for path in self.path.glob(".*.old"):
            shutil.rmtree(path, ignore_errors=True)

    def open_log(self, resuming: bool) -> logging.Handler:
        """``training.log`` as a handler of the ``flair`` logger (appended to when resuming)."""
        path = self.path / LOG_FILE
        if resuming:
            # flair's add_file_handler opens with mode "w", which would erase the log of the interrupted run
            handler = logging.FileHandler(path, mode="a", encoding="utf-8")
            handler.setLevel(logging.INFO)
            handler.setFormatter(logging.Formatter("%(asctime)-15s %(message)s"))
            log.addHandler(handler)
            return handler
        from flair.training_utils import add_file_handler

        return add_file_handler(log, path)

    # -- stage records --------------------------------------------------------------------------------------
    def read_state(self) -> RunState:
        try:
            return RunState.from_dict(json.loads((self.path / RUN_STATE_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, KeyError):  # none, damaged, or of another layout: stages rerun
            return RunState()

    def write_state(self, state: RunState) -> None:
        if self.is_main:
            atomic_write_text(self.path / RUN_STATE_FILE, json.dumps(state.to_dict(), indent=2, sort_keys=True))

    # -- checkpoints --------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[Checkpoint]:
        """Readable checkpoints (``checkpoint/`` and ``epoch-N/``), oldest position first."""
        found = []
        for path in [self.path / MID_EPOCH_DIR] + [p for p in self.path.glob("epoch-*") if p.is_dir()]:
            if not (path / STATE_FILE).is_file():
                continue
            try:
                state = load_state(path / STATE_FILE)
            except Exception as err:  # a damaged file must not stop the resume from an older one
                log.warning("ignoring checkpoint %s: %s", path, err)
                continue
            pos = state["position"]
            found.append(Checkpoint((pos["epoch"], 0 if pos["phase"] == "pseudo" else 1, pos["step"]), path, state))
        return sorted(found, key=lambda c: c.key)

    def save_checkpoint(self, name: str, model: RivaModel, state: dict[str, Any]) -> None:
        """Model folder + ``trainer_state.pt`` as one atomic folder (rank 0)."""
        if not self.is_main:
            return
        with atomic_directory(self.path / name) as tmp:
            model.save(tmp)
            save_state(tmp / STATE_FILE, {"format": STATE_FORMAT, **state})

    def end_epoch(self, history: list[dict[str, Any]], keep: int) -> None:
        """After an epoch's checkpoint: rewrite ``metrics.tsv``, drop ``checkpoint/`` and old ``epoch-N/``."""
        if not self.is_main:
            return
        write_metrics(self.path / METRICS_FILE, history)
        shutil.rmtree(self.path / MID_EPOCH_DIR, ignore_errors=True)
        epochs = sorted((int(p.name.split("-", 1)[1]), p) for p in self.path.glob("epoch-*")
                        if p.is_dir() and p.name.split("-", 1)[1].isdigit())
        for _, path in epochs[:-keep]:
            shutil.rmtree(path, ignore_errors=True)

    def save_best(self, model: RivaModel, epoch: int, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with atomic_directory(self.path / "best") as tmp:
            model.save(tmp)
            atomic_write_text(tmp / "selection.json", json.dumps(
                {"epoch": epoch, "rule": "highest FINETUNED_DEV_F1, ties -> lower HELDOUT_PPL (dev only)",
                 "metrics": row}, indent=2, sort_keys=True))

    def save_final(self, model: RivaModel, history: list[dict[str, Any]]) -> None:
        if not self.is_main:
            return
        write_metrics(self.path / METRICS_FILE, history)
        model.save(self.path / "final")
