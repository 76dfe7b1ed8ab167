"""The RIVA pretrainer: teacher, pseudo-labels and Algorithm 1 (Sun et al., COLING 2020, §3.1, §3.3).

Stages (each skipped on ``--resume`` when its output is already on disk):

0. **Vocabulary** (:func:`~flair_riva.pretrain.stages.build_vocabulary`): one streamed count over the
   labelled and unlabelled texts (``vocab.json``).
1. **Teacher** (§3.1, :func:`~flair_riva.pretrain.stages.train_teacher`): a :class:`RivaModel` trained with
   task 1 only (the RGN's architecture) on the train part of the labelled relation data, split 8:2
   train/test as in the paper (seeded, stratified) with a dev part carved from train (``teacher/``).
2. **Pseudo-labels** (§3.1, :func:`~flair_riva.pretrain.stages.pseudo_label`): the teacher labels the
   unlabelled pairs in one streaming pass; pairs whose top class score exceeds the threshold (0.6) are
   written with that score (``pseudo_labelled.tsv``). A seeded 5% of them is held out for the LM perplexity.
3. **RIVA, Algorithm 1** (:class:`~flair_riva.pretrain.algorithm.AlgorithmOne`, on every rank).

:class:`Pretrainer` runs them in order: rank 0 checks the arguments and inputs, prepares the run folder
(:class:`~flair_riva.pretrain.run_folder.RunFolder`) and runs stages 0-2; then every rank reads their files
and runs Algorithm 1. Under ``torchrun`` the same code runs with DistributedDataParallel.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flair_riva.io import atomic_write_text
from flair_riva.model import CheckpointError, RivaModel
from flair_riva.pretrain import stages
from flair_riva.pretrain.algorithm import AlgorithmOne, Progress, StepCallback, StudentData, fmt_f1
from flair_riva.pretrain.data import heldout_split
from flair_riva.pretrain.distributed import DistContext
from flair_riva.pretrain.inputs import DataPaths, RunInputs
from flair_riva.pretrain.metrics import RelationScores
from flair_riva.pretrain.options import (
    CONTROL_ARGS,
    PretrainConfig,
    PretrainError,
    build_parser,
    check_config,
    flat_options,
    from_namespace,
    resolve_args,
)
from flair_riva.pretrain.run_folder import PSEUDO_FILE, VOCAB_FILE, RunFolder, RunState
from flair_riva.text import Vocabulary

log = logging.getLogger("flair")

#: Test-only hook: after this global step of stage 3 (and its checkpoint, if one is due), the process
#: SIGKILLs itself, so tests can check that ``--resume`` continues exactly where an uninterrupted run goes.
KILL_ENV = "FLAIR_RIVA_TEST_KILL_AFTER_STEP"


def kill_after(step: int) -> StepCallback:
    """A step callback that SIGKILLs this process after global step ``step`` (logs flushed first)."""
    def callback(progress: Progress) -> None:
        if progress.position.global_step == step:
            for handler in log.handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    return callback


def callbacks_from_env() -> list[StepCallback]:
    """The test hooks the environment asks for (read once, before training)."""
    step = int(os.environ.get(KILL_ENV, "0") or 0)
    return [kill_after(step)] if step else []


@dataclass
class PretrainResult:
    """What :func:`run_pretraining` returns (the same on every rank)."""

    output: Path
    final_dir: Path
    best_dir: Path | None
    best_epoch: int | None
    teacher: dict[str, Any] = field(default_factory=dict)
    """Teacher scores: ``{"dev": RelationScores dict, "test": ..., "epoch": best teacher epoch}``."""
    pseudo: dict[str, Any] = field(default_factory=dict)
    """Stage-2 counts: ``kept``, ``kept_per_class``, ``below_threshold``, ``without_image``, ``seen``."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per epoch with the columns of ``metrics.tsv``."""
    seconds: float = 0.0


def run_args(config: PretrainConfig, data: DataPaths, folder: RunFolder) -> dict[str, Any]:
    """The arguments that define what this run computes (``run_args.json``)."""
    values = {k: v for k, v in flat_options(config).items() if k not in CONTROL_ARGS}
    values["output"] = str(folder.path)  # for the record: a run folder may be moved, so resume ignores it
    values["relation_data"] = str(data.relation) if data.relation else None
    values["unlabelled"] = str(data.unlabelled) if data.unlabelled else None
    values["image_dir"] = str(data.image_dir) if data.image_dir else None
    values["word_vectors"] = str(Path(config.word_vectors).expanduser().absolute()) if config.word_vectors else None
    values["demo_dir"] = str(data.demo_root) if data.demo_root else None
    if not config.demo:
        values["demo_scale"] = None
    return values


class Pretrainer:
    """One pretraining run (see the module docstring). Use :func:`run_pretraining`."""

    def __init__(self, config: PretrainConfig, ctx: DistContext, callbacks: Sequence[StepCallback] = ()) -> None:
        self.config, self.demo, self.demo_notes = resolve_args(config)
        self.ctx = ctx
        self.callbacks = list(callbacks)
        self.folder = RunFolder(self.config.output, ctx.is_main)
        self.resuming = False
        self.state = RunState()
        self.inputs: RunInputs | None = None

    def setup(self) -> RunInputs:
        """Argument checks and data location (every rank)."""
        check_config(self.config, self.ctx.world_size)
        self.inputs = RunInputs(self.config, self.ctx, self.folder, DataPaths.locate(self.config))
        return self.inputs

    def check_inputs(self, run: RunInputs) -> None:
        """Rank 0, before anything is written: read and check the labelled data (images included), the word
        vectors and the backbone weights, so that bad input leaves no run folder behind. (The unlabelled
        file is streamed once, in stage 0; a run that fails there never finished stage 0 and its folder
        counts as empty, see :meth:`RunFolder.prepare`.)"""
        from flair_riva.data_files import _require_file

        if run.data.unlabelled is not None:
            try:
                _require_file(run.data.unlabelled, "unlabelled pairs file")
            except (ValueError, OSError) as err:
                raise PretrainError(f"cannot read the unlabelled pairs {run.data.unlabelled}: {err}") from err
        if self.config.model.use_image:
            _ = run.labelled
            run.initial_backbone()  # fails now (not after the teacher) when named weights cannot be loaded
        _ = run.word_vectors

    # -- stages 0-2 on rank 0 ----------------------------------------------------------------------------------
    def prepare_stages(self, run: RunInputs) -> None:
        """Rank 0: run (or skip, when done) stages 0-2. Writes files only."""
        state = self.state = self.folder.read_state() if self.resuming else RunState()
        if not self.config.model.use_image and run.data.relation is not None:
            log.info("--no-image: the relation data is not used (RIVA(text) has no RGN)")
        vocab_path = self.folder / VOCAB_FILE
        if state.vocab is not None and vocab_path.is_file():
            vocab = Vocabulary.from_json(vocab_path.read_text(encoding="utf-8"))
            log.info("stage 0 done before: reusing %s (%d words)", vocab_path, len(vocab))
        else:
            stages.log_line()
            log.info("stage 0: vocabulary")
            vocab, state.vocab = stages.build_vocabulary(run)
            atomic_write_text(vocab_path, vocab.to_json())
            state.teacher = state.pseudo = None
            self.folder.write_state(state)
        if not self.config.model.use_image:
            return
        config = run.model_config(state.vocab.word_dim)
        teacher_dir = self.folder / "teacher"
        teacher = None
        if state.teacher is not None and teacher_dir.is_dir():
            try:
                teacher = RivaModel.load(teacher_dir, map_location=run.device)
                log.info("stage 1 done before: reusing %s (test %s)", teacher_dir, state.teacher.test)
            except CheckpointError as err:
                log.warning("cannot reuse %s (%s): training the teacher again", teacher_dir, err)
                teacher = None
        if teacher is None:
            stage = stages.reuse_teacher if self.config.teacher is not None else stages.train_teacher
            teacher, state.teacher = stage(run, vocab, config)
            teacher.save(teacher_dir)
            state.pseudo = None
            self.folder.write_state(state)
        if state.pseudo is not None and (self.folder / PSEUDO_FILE).is_file():
            log.info("stage 2 done before: reusing %s", self.folder / PSEUDO_FILE)
            stages.log_pseudo(state.pseudo)
        else:
            if self.config.frozen:
                teacher.backbone.requires_grad_(False)
            state.pseudo = stages.pseudo_label(run, teacher, state.vocab.unlabelled)
            self.folder.write_state(state)

    def student_data(self, run: RunInputs) -> StudentData:
        """All ranks: the files of stages 0-2 (vocabulary, splits, pseudo-labelled pairs, held-out part)."""
        from flair_riva.datasets import iter_unlabelled_pairs, read_pseudo_labelled

        self.state = self.folder.read_state()
        vocab = Vocabulary.from_json((self.folder / VOCAB_FILE).read_text(encoding="utf-8"))
        data = StudentData(vocab, run.model_config(self.state.vocab.word_dim), [], [], teacher=self.state.teacher)
        if self.config.model.use_image:
            split = run.splits()
            data.train, data.dev, data.test = split.train, split.dev, split.test
            corpus = read_pseudo_labelled(self.folder / PSEUDO_FILE)
        else:
            corpus = list(iter_unlabelled_pairs(run.data.unlabelled, run.data.image_dir))
        train_idx, held_idx = heldout_split(len(corpus), self.config.heldout_fraction, self.config.seed)
        data.pseudo = [corpus[i] for i in train_idx]
        data.heldout = [corpus[i] for i in held_idx]
        return data

    # -- the whole run ---------------------------------------------------------------------------------------------
    def _rank0_prepare(self) -> None:
        run = self.setup()
        self.check_inputs(run)
        self.resuming = self.folder.prepare(run_args(self.config, run.data, self.folder), self.config.resume,
                                            self.config.overwrite)
        self.folder.clean_temp()
        self._handler = self.folder.open_log(self.resuming)
        self._log_header(run)
        self.prepare_stages(run)

    def run(self) -> PretrainResult:
        start = time.time()
        self._handler: logging.Handler | None = None
        error: str | None = None
        ctx = self.ctx
        level = log.level
        if not ctx.is_main:
            log.setLevel(logging.WARNING)  # one copy of the INFO lines (rank 0's) is enough
        try:
            if ctx.is_main:
                try:
                    self._rank0_prepare()
                except PretrainError as err:
                    error = str(err)
                    log.error("error: %s", error)
                except BaseException as err:
                    ctx.broadcast_object(f"rank 0 failed: {type(err).__name__}: {err}")
                    raise
            error = ctx.broadcast_object(error)
            if error is not None:
                raise PretrainError(error)
            run = self.inputs if ctx.is_main else self.setup()
            _, history, best_epoch = AlgorithmOne(run, self.student_data(run), self.callbacks).train()
            result = PretrainResult(
                output=self.folder.path, final_dir=self.folder / "final",
                best_dir=self.folder / "best" if best_epoch is not None else None, best_epoch=best_epoch,
                teacher=self.state.teacher.to_dict() if self.state.teacher else {},
                pseudo=asdict(self.state.pseudo) if self.state.pseudo else {}, history=history,
                seconds=time.time() - start)
            if ctx.is_main:
                self._log_summary(result)
            return result
        finally:
            log.setLevel(level)
            if self._handler is not None:
                log.removeHandler(self._handler)
                self._handler.close()

    def _log_header(self, run: RunInputs) -> None:
        a, m = self.config, self.config.model
        stages.log_line()
        log.info("RIVA pretraining (Sun et al., COLING 2020) -> %s%s", self.folder.path,
                 " (resuming)" if self.resuming else "")
        if self.demo:
            log.info("no data options: running on the demo world in %s", run.data.demo_root)
            log.info("demo-world defaults: %s", "; ".join(self.demo_notes) or "none (all given explicitly)")
        else:
            log.info("relation data %s | unlabelled %s | images %s", run.data.relation, run.data.unlabelled,
                     run.data.image_dir or "(relative to the data files)")
        log.info("model: RGN %dx%d, VLCN %dx%d, %d heads, word %s + char %d/%d, dropout %g, image %s, gate %s",
                 m.rgn_layers, m.rgn_hidden_size, m.vlcn_layers, m.vlcn_hidden_size, m.num_heads,
                 flat_options(a)["word_dim"] or "(from vectors)", m.char_dim, m.char_hidden_size, m.dropout,
                 m.use_image, m.gate)
        if m.use_image:
            log.info("backbone %s, weights %s, %s", m.backbone, a.backbone_weights,
                     "frozen (feature cache)" if a.frozen else f"fine-tuned at lr {a.backbone_lr:g}")
        log.info("optimizer %s lr %g, batch %d, clip %g | teacher %d epochs, %d epochs of Algorithm 1 | "
                 "threshold %g | seed %d | %s", a.optimizer, a.lr, a.batch_size, a.clip, a.teacher_epochs,
                 a.epochs, a.threshold, a.seed, self.ctx.describe())
        stages.log_line()

    def _log_summary(self, result: PretrainResult) -> None:
        stages.log_line()
        log.info("done in %.1f s: best/ = epoch %s (chosen on dev), final/ = epoch %d", result.seconds,
                 result.best_epoch, len(result.history))
        if result.teacher:
            log.info("teacher: test %s", RelationScores.from_dict(result.teacher["test"]))
        if result.history:
            last = result.history[-1]
            log.info("Table 3 columns (test F1, image adds): teacher %s | pseudo-labelled %s | + fine-tuning %s",
                     fmt_f1(last["TEACHER_TEST_F1"]), fmt_f1(last["PSEUDO_TEST_F1"]), fmt_f1(last["FINETUNED_TEST_F1"]))
        if self.config.model.use_image and result.history:
            gain = result.history[-1].get("IMAGE_GAIN")
            if gain is not None and gain <= 0:
                log.warning("the language model does not use the image: image gain %.4f nats/token on the held-out "
                            "pairs (LM loss with shuffled images minus own images) is not above 0; its token "
                            "vectors will not carry what the image shows (README: 'Is the image used?')", gain)
        log.info("run folder: %s", self.folder.path)
        stages.log_line()


def run_pretraining(config: PretrainConfig, callbacks: Sequence[StepCallback] = ()) -> PretrainResult:
    """Run (or resume) RIVA pretraining; see the module docstring. Raises :class:`PretrainError` for bad
    input before training starts. Under ``torchrun`` every rank calls this; only rank 0 writes files.
    ``callbacks`` are called after every update of Algorithm 1 (observers, test hooks)."""
    ctx = DistContext.from_env(config.device)
    try:
        return Pretrainer(config, ctx, callbacks).run()
    finally:
        ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: 0 on success, 2 for bad input (with a message on stderr)."""
    namespace = build_parser().parse_args(argv)
    main_rank = int(os.environ.get("RANK", "0") or 0) == 0
    try:
        result = run_pretraining(from_namespace(namespace), callbacks_from_env())
    except PretrainError as err:
        if main_rank:
            print(f"error: {' '.join(str(err).split())}", file=sys.stderr)  # always one line
        return 2
    if main_rank:
        print(f"RIVA pretraining finished in {result.seconds:.1f} s: final model {result.final_dir}, "
              f"best model {result.best_dir} (epoch {result.best_epoch})")
    return 0
