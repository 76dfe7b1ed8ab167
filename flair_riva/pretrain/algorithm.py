"""Stage 3, Algorithm 1 (all ranks): the student, its two passes per epoch, evaluation, checkpoints, resume.

Each epoch runs task 1 + task 2 on the pseudo-labelled pairs updating all parameters (lines 2-6), then task 1
on the labelled train part updating θ_RGN only (lines 7-11, a separate optimizer over the RGN's parameters);
then relation F1 on dev and test, the held-out perplexity, a row of ``metrics.tsv``, ``best/`` (chosen on dev
only) and a checkpoint ``epoch-N/``. :class:`Progress` is what a checkpoint records besides the weights,
optimizers and RNGs, so a resumed run skips the finished batches and ends where an uninterrupted one ends.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar

import torch

from flair_riva.config import RivaConfig
from flair_riva.model import RivaModel
from flair_riva.pretrain.inputs import RunInputs
from flair_riva.pretrain.metrics import select_best
from flair_riva.pretrain.options import PretrainError
from flair_riva.pretrain.run_folder import MID_EPOCH_DIR, TeacherRecord
from flair_riva.pretrain.state import capture_rng, restore_rng, seed_everything
from flair_riva.pretrain.steps import Step, StepRunner, evaluate_lm, evaluate_relation, make_optimizer, training_steps
from flair_riva.text import Vocabulary

log = logging.getLogger("flair")


@dataclass
class StudentData:
    """What Algorithm 1 trains and evaluates on (read from the files of stages 0-2 on every rank)."""

    vocab: Vocabulary
    config: RivaConfig
    pseudo: list[Any]
    """Pseudo-labelled pairs (the unlabelled texts for RIVA(text)), without the held-out part."""
    heldout: list[Any]
    train: list[Any] = field(default_factory=list)
    dev: list[Any] = field(default_factory=list)
    test: list[Any] = field(default_factory=list)
    teacher: TeacherRecord | None = None
    """The teacher's scores (``run_state.json``), repeated in every row of ``metrics.tsv``."""


@dataclass
class Position:
    """Where the run is: the epoch, its pass (``"pseudo"`` or ``"labelled"``) and the batches done."""

    epoch: int = 1
    phase: str = "pseudo"
    step: int = 0
    global_step: int = 0


@dataclass
class Running:
    """Sums over the current epoch (reset after it), for its row of ``metrics.tsv``: per pass (pseudo-labelled,
    lines 2-6; labelled θ_RGN, lines 7-11) the summed relation and LM losses and the updates, then the pairs
    trained on and the seconds spent in updates (the epoch's pairs/s)."""

    PHASES: ClassVar[tuple[str, ...]] = ("pseudo", "labelled")
    pseudo_rel: float = 0.0
    pseudo_lm: float = 0.0
    pseudo_steps: int = 0
    labelled_rel: float = 0.0
    labelled_lm: float = 0.0
    labelled_steps: int = 0
    pairs: int = 0
    seconds: float = 0.0
    after_pseudo: dict[str, Any] | None = None
    """Relation scores after the pseudo-labelled pass (Table 3's middle column)."""

    def add(self, phase: str, step: Step) -> None:
        assert phase in self.PHASES, phase
        setattr(self, f"{phase}_rel", getattr(self, f"{phase}_rel") + step.relation)
        setattr(self, f"{phase}_lm", getattr(self, f"{phase}_lm") + step.lm)
        setattr(self, f"{phase}_steps", getattr(self, f"{phase}_steps") + 1)
        self.pairs += step.pairs
        self.seconds += step.seconds


@dataclass
class Progress:
    """The training position and the epoch history, as a checkpoint's ``trainer_state.pt`` holds them."""

    position: Position = field(default_factory=Position)
    running: Running = field(default_factory=Running)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None

    def to_state(self) -> dict[str, Any]:
        running = {k: v for k, v in asdict(self.running).items() if v is not None}
        return {"position": asdict(self.position), "running": running, "history": self.history,
                "best_epoch": self.best_epoch}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        known = {f.name for f in fields(Running)}
        return cls(Position(**state["position"]), Running(**{k: v for k, v in state["running"].items() if k in known}),
                   list(state["history"]), state["best_epoch"])


#: A test hook or observer called after every update of Algorithm 1 (and its checkpoint, if one was due).
StepCallback = Callable[[Progress], None]


class AlgorithmOne:
    """Algorithm 1 for one run, on every rank (see the module docstring)."""

    def __init__(self, run: RunInputs, data: StudentData, callbacks: Sequence[StepCallback] = ()) -> None:
        a = run.config
        self.run, self.data, self.config, self.ctx, self.callbacks = run, data, a, run.ctx, list(callbacks)
        self.source = run.visual_source()
        self.student = run.fresh_model(data.vocab, data.config, a.seed + 21)
        if a.model.use_image and a.student_init == "teacher":
            self._init_from_teacher()
        groups = self.student.trainable_parameters("joint", backbone=not a.frozen)
        main = [p for part, ps in groups.items() if part != "backbone" for p in ps]
        self.optimizers = {"joint": make_optimizer(a.optimizer, [{"params": main, "lr": a.lr},
                                                                 {"params": groups.get("backbone", []),
                                                                  "lr": a.backbone_lr}])}
        if a.model.use_image:  # Algorithm 1 line 10: a separate optimizer over θ_RGN only
            # at --rgn-lr-factor x the joint rate (default 1, as written): this pass is what corrects the errors
            # the student inherits from the teacher's pseudo-labels (README, "Table 3 on the demo world")
            rgn = self.student.trainable_parameters("rgn")["rgn"]
            self.optimizers["rgn"] = make_optimizer(a.optimizer, [{"params": rgn, "lr": a.lr * a.rgn_lr_factor}])
        self.schedulers: dict[str, Any] = {}
        if a.anneal_factor < 1.0:
            for key, opt in self.optimizers.items():
                self.schedulers[key] = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    opt, mode="max", factor=a.anneal_factor, patience=a.patience)
        self.runner = StepRunner(self.student, self.source, self.ctx, self.optimizers, a.clip)
        self.progress = Progress()
        if not (a.resume and self._resume()):
            seed_everything(a.seed + 31 + 7919 * self.ctx.rank)

    def _init_from_teacher(self) -> None:
        """The student's token encoder and RGN start as the teacher's (same architecture, §3.1), so Algorithm 1
        begins from the teacher's relation classifier instead of re-learning it from its pseudo-labels."""
        teacher = RivaModel.load(self.run.folder / "teacher", map_location=self.run.device)
        for part in ("token_encoder", "rgn"):
            getattr(self.student, part).load_state_dict(getattr(teacher, part).state_dict())
        if self.ctx.is_main:
            log.info("student: token encoder and RGN initialised from the teacher (--student-init teacher)")

    def _resume(self) -> bool:
        """Continue from the latest readable checkpoint, if any: weights, optimizers, schedulers, RNGs, position."""
        found = self.run.folder.checkpoints()
        if not found:
            return False
        path, state = found[-1].path, found[-1].state
        loaded = RivaModel.load(path, map_location=self.run.device)
        if loaded.vocab.words != self.data.vocab.words or loaded.config.to_dict() != self.data.config.to_dict():
            raise PretrainError(f"checkpoint {path} does not match this run's vocabulary or config")
        self.student.load_state_dict(loaded.state_dict())
        del loaded
        self.progress = Progress.from_state(state)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sched in self.schedulers.items():
            if key in state["schedulers"]:
                sched.load_state_dict(state["schedulers"][key])
        rng, ctx = state["rng"], self.ctx
        if len(rng) == ctx.world_size:
            restore_rng(rng[ctx.rank])
        else:
            log.warning("checkpoint was written by %d processes, this run has %d: RNG streams are reseeded, "
                        "so the run is not bit-identical to an uninterrupted one", len(rng), ctx.world_size)
            seed_everything(self.config.seed + 1000 * self.progress.position.epoch + ctx.rank)
        pos = self.progress.position
        if ctx.is_main:
            log.info("resuming from %s: epoch %d, %s pass, after batch %d", path, pos.epoch, pos.phase, pos.step)
        return True

    def save_checkpoint(self, name: str) -> None:
        """Weights, optimizers, schedulers, every rank's RNG and the progress. Collective (gathers the RNGs)."""
        rng = self.ctx.all_gather_object(capture_rng())
        self.run.folder.save_checkpoint(name, self.student, {
            "world_size": self.ctx.world_size, "rng": rng,
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            **self.progress.to_state()})

    # -- the loop ------------------------------------------------------------------------------------------------
    def train(self) -> tuple[RivaModel, list[dict[str, Any]], int | None]:
        """All epochs; returns the final student, the epoch history and the best epoch (on dev)."""
        a, d = self.config, self.data
        if self.ctx.is_main:
            log.info("-" * 100)
            log.info("stage 3: Algorithm 1 for %d epochs | %d pseudo-labelled pairs (+%d held out) | %d labelled "
                     "train pairs | global batch %d%s", a.epochs, len(d.pseudo), len(d.heldout), len(d.train),
                     a.batch_size, f" over {self.ctx.world_size} processes" if self.ctx.distributed else "")
            log.info("student parameters: %s",
                     ", ".join(f"{k} {v:,}" for k, v in self.student.num_parameters().items()))
        while self.progress.position.epoch <= a.epochs:
            self.epoch()
        self.run.folder.save_final(self.student, self.progress.history)
        self.ctx.barrier()
        return self.student, self.progress.history, self.progress.best_epoch

    def epoch(self) -> None:
        """One epoch of Algorithm 1, then its evaluation, row, best/ and checkpoint."""
        pos, use_image = self.progress.position, self.config.model.use_image
        epoch = pos.epoch
        if pos.phase == "pseudo":
            self.run_pass("pseudo", self.data.pseudo, "joint")      # lines 2-6: task 1 + 2, all parameters
            if use_image:
                self.progress.running.after_pseudo = self.evaluate(perplexity=False)
            pos.phase, pos.step = "labelled", 0
        if use_image:
            self.run_pass("labelled", self.data.train, "rgn")       # lines 7-11: task 1, θ_RGN only
        teacher = self.data.teacher.to_dict() if self.data.teacher else {}
        row = history_row(epoch, self.progress.running, self.evaluate(perplexity=True), teacher,
                          self.optimizers["joint"], use_image)
        self.progress.history.append(row)
        for sched in self.schedulers.values():
            sched.step(row["FINETUNED_DEV_F1"] if use_image else -row["HELDOUT_PPL"])
        is_best = select_best(self.progress.history) == len(self.progress.history) - 1
        if is_best:
            self.progress.best_epoch = epoch
        if self.ctx.is_main:
            log_epoch(row, is_best, use_image)
        pos.epoch, pos.phase, pos.step = epoch + 1, "pseudo", 0
        self.progress.running = Running()
        if is_best:
            self.run.folder.save_best(self.student, epoch, row)
        self.save_checkpoint(f"epoch-{epoch}")
        self.run.folder.end_epoch(self.progress.history, self.config.keep_checkpoints)
        self.ctx.barrier()

    def run_pass(self, phase: str, pairs: list[Any], mode: str) -> None:
        """The rest of one pass (from ``position.step``): updates, progress bar, log lines, mid-epoch checkpoints."""
        a, pos, running = self.config, self.progress.position, self.progress.running
        batches = self.run.batches(pairs, pos.epoch, phase)
        done = sum(len(b) for b in batches[:pos.step])
        bar = self.run.bar(total=len(pairs), initial=done, desc=f"epoch {pos.epoch}/{a.epochs} {phase}")
        log_every = max(1, len(batches) // 5)
        end_of_epoch_pass = phase == "labelled" or not a.model.use_image
        for step in training_steps(self.runner, mode, pairs, batches[pos.step:], self.data.vocab, self.source):
            running.add(phase, step)
            pos.step += 1
            pos.global_step += 1
            bar.update(step.pairs)
            bar.set_postfix(loss=f"{step.relation + step.lm:.3f}", refresh=False)
            if self.ctx.is_main and (pos.step % log_every == 0 or pos.step == len(batches)):
                parts = f"relation {step.relation:.4f}, LM {step.lm:.4f}" if mode == "joint" else "relation, θ_RGN only"
                log.info("| epoch %3d | %-8s | %4d/%d batches | %6.0f ms/batch | loss %.4f (%s) | %.1f pairs/s",
                         pos.epoch, phase, pos.step, len(batches), 1000 * step.seconds, step.relation + step.lm,
                         parts, running.pairs / max(running.seconds, 1e-9))
            last_of_epoch = pos.step == len(batches) and end_of_epoch_pass
            if a.checkpoint_every and pos.global_step % a.checkpoint_every == 0 and not last_of_epoch:
                self.save_checkpoint(MID_EPOCH_DIR)
            for callback in self.callbacks:
                callback(self.progress)
        bar.close()

    def evaluate(self, perplexity: bool) -> dict[str, Any]:
        """Rank 0 evaluates; every rank gets the result (so LR schedules stay in step)."""
        result = None
        if self.ctx.is_main:
            result = {}
            size, model, d = self.run.eval_batch_size, self.student, self.data
            if self.config.model.use_image:
                result["dev"] = evaluate_relation(model, d.dev, self.source, size).to_dict()
                result["test"] = evaluate_relation(model, d.test, self.source, size).to_dict()
            if perplexity:
                result["lm"] = evaluate_lm(model, d.heldout, self.source, size)
        return self.ctx.broadcast_object(result)


# -- the epoch's row of metrics.tsv ------------------------------------------------------------------------------


def _number(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _fmt_plain(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_f1(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def history_row(epoch: int, running: Running, scores: dict[str, Any], teacher: dict[str, Any],
                optimizer: torch.optim.Optimizer, use_image: bool) -> dict[str, Any]:
    """The columns of ``metrics.tsv`` (:data:`~flair_riva.pretrain.state.METRIC_COLUMNS`) for one epoch."""
    def f1(block: dict | None, split: str, key: str = "f1") -> float | None:
        return None if not block or split not in block else float(block[split][key])

    after, lm = running.after_pseudo, scores.get("lm", {})
    p_steps, l_steps = running.pseudo_steps, running.labelled_steps
    return {
        "EPOCH": epoch,
        "TIMESTAMP": datetime.now().strftime("%H:%M:%S"),
        "LEARNING_RATE": float(optimizer.param_groups[0]["lr"]),
        "PSEUDO_LOSS": (running.pseudo_rel + running.pseudo_lm) / max(p_steps, 1),
        "PSEUDO_REL_LOSS": running.pseudo_rel / max(p_steps, 1) if use_image else None,
        "PSEUDO_LM_LOSS": running.pseudo_lm / max(p_steps, 1),
        "LABELLED_LOSS": running.labelled_rel / l_steps if l_steps else None,
        "TEACHER_DEV_F1": f1(teacher, "dev"),
        "TEACHER_TEST_F1": f1(teacher, "test"),
        "PSEUDO_DEV_F1": f1(after, "dev"),
        "PSEUDO_TEST_F1": f1(after, "test"),
        "FINETUNED_DEV_F1": f1(scores, "dev"),
        "FINETUNED_TEST_F1": f1(scores, "test"),
        "FINETUNED_TEST_MACRO_F1": f1(scores, "test", "macro_f1"),
        "FINETUNED_TEST_ACC": f1(scores, "test", "accuracy"),
        "HELDOUT_PPL": lm["ppl"] if "lm" in scores else None,
        "IMAGE_GAIN": _number(lm.get("image_gain")),
        "GATE_SEPARATION": _number(lm.get("gate_separation")),
        "PAIRS_PER_SECOND": running.pairs / max(running.seconds, 1e-9),
    }


def log_epoch(row: dict[str, Any], is_best: bool, use_image: bool) -> None:
    log.info("-" * 100)
    log.info("EPOCH %d done: pseudo loss %.4f | labelled loss %s | lr %.4g | %.1f pairs/s", row["EPOCH"],
             row["PSEUDO_LOSS"], "-" if row["LABELLED_LOSS"] is None else f"{row['LABELLED_LOSS']:.4f}",
             row["LEARNING_RATE"], row["PAIRS_PER_SECOND"])
    if use_image:
        log.info("relation F1 (image adds)  dev / test: teacher %s / %s | after pseudo pass %s / %s | "
                 "after fine-tuning %s / %s", fmt_f1(row["TEACHER_DEV_F1"]), fmt_f1(row["TEACHER_TEST_F1"]),
                 fmt_f1(row["PSEUDO_DEV_F1"]), fmt_f1(row["PSEUDO_TEST_F1"]), fmt_f1(row["FINETUNED_DEV_F1"]),
                 fmt_f1(row["FINETUNED_TEST_F1"]))
    log.info("held-out perplexity %.2f%s", row["HELDOUT_PPL"] if row["HELDOUT_PPL"] is not None else math.nan,
             " | new best on dev -> best/" if is_best else "")
    if use_image:
        log.info("image gain %s nats/token (held-out LM loss, images shuffled among pairs minus own images; "
                 "> 0: the LM uses the image) | gate separation %s (mean s_G, pseudo 'adds' minus 'doesn't add')",
                 _fmt_plain(row["IMAGE_GAIN"], 4), _fmt_plain(row["GATE_SEPARATION"], 3))
    log.info("-" * 100)
