"""Stages 0-2 of pretraining: the vocabulary, the teacher (§3.1) and the pseudo-labels (§3.1).

Each stage is a function from typed inputs (the run's :class:`~flair_riva.pretrain.inputs.RunInputs`, a
:class:`~flair_riva.text.Vocabulary`, a model) to its result; the record it leaves in ``run_state.json`` is a
plain dict (:class:`~flair_riva.pretrain.run_folder.RunState`). They run on rank 0 only.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from flair_riva.config import RivaConfig
from flair_riva.model import CheckpointError, RivaModel
from flair_riva.pretrain.distributed import DistContext
from flair_riva.pretrain.inputs import CLASS_NAMES, RunInputs, reason_summary
from flair_riva.pretrain.options import PretrainError
from flair_riva.pretrain.run_folder import (
    PSEUDO_FILE,
    PseudoRecord,
    TeacherRecord,
    VocabularyRecord,
    read_run_args,
    same_arg,
)
from flair_riva.pretrain.state import seed_everything
from flair_riva.pretrain.steps import (
    StepRunner,
    evaluate_relation,
    make_optimizer,
    relation_probabilities,
    training_steps,
)
from flair_riva.text import Vocabulary
from flair_riva.text import build_vocabulary as vocabulary_policy

log = logging.getLogger("flair")

#: Unlabelled images checked to be images in stage 0 (the file is streamed: checking all would read every image
#: twice); checking goes on past this number until one usable image is found.
UNLABELLED_PROBES = 2000


def log_line() -> None:
    log.info("-" * 100)


# -- stage 0 -------------------------------------------------------------------------------------------------------


def build_vocabulary(run: RunInputs) -> tuple[Vocabulary, VocabularyRecord]:
    """Stage 0: one streamed pass over the labelled and unlabelled texts (the unlabelled file is never
    loaded whole). Also counts the unlabelled pairs and those with an existing image file."""
    from flair_riva.datasets import iter_unlabelled_pairs
    from flair_riva.vision import probe_image

    counts: Counter = Counter()
    reasons: Counter = Counter()
    examples: dict[str, Any] = {}
    bar = run.bar(desc="vocabulary")
    a = run.config
    check_images = a.model.use_image
    labelled = run.labelled if a.model.use_image else []
    unlabelled_path = run.data.unlabelled

    def texts():
        for pair in labelled:
            yield pair.tokens
        for pair in iter_unlabelled_pairs(unlabelled_path, run.data.image_dir):
            counts["unlabelled"] += 1
            if pair.image is not None and pair.image.is_file():
                counts["unlabelled_with_image"] += 1
            # the first UNLABELLED_PROBES images (and on, until one is usable) are checked to be images
            if check_images and (counts["probed"] < UNLABELLED_PROBES or not counts["usable"]):
                counts["probed"] += 1
                reason = probe_image(pair.image)
                if reason is None:
                    counts["usable"] += 1
                else:
                    reasons[reason] += 1
                    examples.setdefault(reason, pair.image)
            bar.update(1)
            yield pair.tokens

    vectors = run.word_vectors
    try:  # output vocabulary: the frequent words; input: + every word the vectors know (issue 10); logs <unk>
        vocab = vocabulary_policy(texts(), a.model.max_vocab_size, a.model.min_word_count, vectors)
    except (ValueError, OSError, UnicodeError) as err:
        raise PretrainError(f"cannot read the unlabelled pairs {unlabelled_path}: {err}") from err
    finally:
        bar.close()
    if counts["unlabelled"] == 0:
        raise PretrainError(f"the unlabelled pairs file {unlabelled_path} holds no pair with text")
    if check_images and counts["usable"] == 0:
        raise PretrainError(
            f"every image of the {counts['unlabelled']} unlabelled pairs in {unlabelled_path} is unusable "
            f"({reason_summary(reasons, examples)}): relative image paths resolve inside --image-dir (or the "
            "file's folder when it is not given), absolute paths are used as written")
    if reasons and run.ctx.is_main:
        log.warning("%d of the first %d unlabelled pairs have no usable image (%s)", sum(reasons.values()),
                    counts["probed"], reason_summary(reasons, examples))
    word_dim = a.model.word_dim
    if vectors is not None:
        if word_dim != RivaConfig().word_dim and word_dim != vectors.vector_size:
            raise PretrainError(f"--word-dim {word_dim} does not match the {vectors.vector_size}-d word "
                                f"vectors of {a.word_vectors}")
        word_dim = vectors.vector_size
    info = VocabularyRecord(len(vocab), vocab.num_chars, word_dim, counts["unlabelled"],
                            counts["unlabelled_with_image"])
    log.info("vocabulary: %d words, %d characters (from %d labelled and %d unlabelled texts; "
             "%d unlabelled pairs have an image file)", len(vocab), vocab.num_chars,
             len(labelled), counts["unlabelled"], counts["unlabelled_with_image"])
    return vocab, info


# -- stage 1 -------------------------------------------------------------------------------------------------------


def train_teacher(run: RunInputs, vocab: Vocabulary, config: RivaConfig) -> tuple[RivaModel, TeacherRecord]:
    """§3.1: the teacher, a RivaModel trained with relation_logits + relation_loss only, selected on dev."""
    a = run.config
    split = run.splits()
    teacher = run.fresh_model(vocab, config, a.seed + 11)
    groups = teacher.trainable_parameters("teacher", backbone=not a.frozen)
    params = [{"params": groups["text"] + groups["rgn"], "lr": a.lr}]
    if "backbone" in groups:
        params.append({"params": groups["backbone"], "lr": a.backbone_lr})
    source = run.visual_source()
    runner = StepRunner(teacher, source, DistContext(device=run.device),
                        {"teacher": make_optimizer(a.optimizer, params)}, a.clip)
    log_line()
    log.info("stage 1: teacher (RGN architecture) on %d labelled pairs (dev %d, test %d), %d epochs",
             len(split.train), len(split.dev), len(split.test), a.teacher_epochs)
    best_f1, best_epoch, best_state = -1.0, 0, None
    seed_everything(a.seed + 12)
    for epoch in range(1, a.teacher_epochs + 1):
        batches = run.batches(split.train, epoch, "teacher")
        bar = run.bar(total=len(split.train), desc=f"teacher epoch {epoch}/{a.teacher_epochs}")
        loss_sum, start = 0.0, time.perf_counter()
        for step in training_steps(runner, "teacher", split.train, batches, vocab, source):
            loss_sum += step.relation
            bar.update(step.pairs)
            bar.set_postfix(loss=f"{step.relation:.3f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - start
        scores = evaluate_relation(teacher, split.dev, source, run.eval_batch_size)
        improved = scores.f1 > best_f1
        if improved:
            best_f1, best_epoch = scores.f1, epoch
            best_state = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
        log.info("teacher epoch %d/%d | loss %.4f | dev %s | %.1f pairs/s%s", epoch, a.teacher_epochs,
                 loss_sum / max(len(batches), 1), scores, len(split.train) / max(seconds, 1e-9),
                 " | best so far" if improved else "")
    teacher.load_state_dict(best_state)
    dev_scores = evaluate_relation(teacher, split.dev, source, run.eval_batch_size)
    test_scores = evaluate_relation(teacher, split.test, source, run.eval_batch_size)
    log.info("teacher: epoch %d chosen on dev | dev %s", best_epoch, dev_scores)
    log.info("teacher: test %s", test_scores)
    return teacher, TeacherRecord(best_epoch, dev_scores, test_scores, len(split.train), len(split.dev),
                                  len(split.test))


#: Config fields a reused teacher must share with the run (its token encoder and RGN are the student's start).
TEACHER_FIELDS = ("word_dim", "char_dim", "char_hidden_size", "rgn_hidden_size", "rgn_layers", "backbone",
                  "visual_norm")


def reuse_teacher(run: RunInputs, vocab: Vocabulary, config: RivaConfig) -> tuple[RivaModel, TeacherRecord]:
    """Stage 1 from ``--teacher DIR``: a teacher another run trained on the same data (e.g. the image
    model's, for the -RGN ablation, whose teacher is the same network), checked and scored here."""
    path = run.config.teacher
    try:
        teacher = RivaModel.load(path, map_location=run.device)
    except CheckpointError as err:
        raise PretrainError(f"--teacher {path}: {err}") from err
    if teacher.vocab.words != vocab.words:
        raise PretrainError(f"--teacher {path} was trained with another vocabulary than this run's")
    differ = [f for f in TEACHER_FIELDS if getattr(teacher.config, f) != getattr(config, f)]
    if differ or not teacher.config.use_image:
        raise PretrainError(f"--teacher {path} does not fit this run's model (differs in {differ or 'use_image'})")
    _check_teacher_run(Path(path), run)
    if run.config.frozen and teacher.backbone is not None:
        initial = run.initial_backbone()
        own = teacher.backbone.state_dict()
        if set(own) != set(initial) or any(not torch.equal(own[k], initial[k]) for k in initial):
            raise PretrainError(
                f"--teacher {path} was trained on the features of another frozen backbone than this run's (a "
                "random-init ResNet depends on --seed and --backbone-weights): its RGN would read features it "
                "never saw. Reuse a teacher of a run with the same --seed and --backbone-weights")
        teacher.backbone.requires_grad_(False)
    split = run.splits()
    source = run.visual_source()
    log_line()
    log.info("stage 1: reusing the teacher %s", path)
    dev_scores = evaluate_relation(teacher, split.dev, source, run.eval_batch_size)
    test_scores = evaluate_relation(teacher, split.test, source, run.eval_batch_size)
    log.info("teacher: dev %s", dev_scores)
    log.info("teacher: test %s", test_scores)
    return teacher, TeacherRecord(0, dev_scores, test_scores, 0, len(split.dev), len(split.test), str(path))


#: run_args.json entries that fix the labelled pairs and their train/dev/test split.
SPLIT_ARGS = ("relation_data", "seed", "test_fraction", "dev_fraction")


def _check_teacher_run(path: Path, run: RunInputs) -> None:
    """A reused teacher must come from a run with the same labelled pairs and split (its ``run_args.json``,
    beside the teacher folder, when there is one): otherwise its training pairs would be scored as test
    pairs, and a seeded random-init backbone would differ."""
    other = read_run_args(path.parent)
    current = read_run_args(run.folder.path)  # written by RunFolder.prepare before the stages
    if not isinstance(other, dict) or not isinstance(current, dict):
        return  # a teacher folder on its own: the backbone check below still applies
    differ = [f"{name}: {other[name]!r} -> {current.get(name)!r}" for name in SPLIT_ARGS
              if name in other and not same_arg(name, other[name], current.get(name))]
    if differ:
        raise PretrainError(f"--teacher {path} comes from a run with other labelled pairs or another split "
                            f"({'; '.join(differ)}): its training pairs would be scored as this run's test pairs")


# -- stage 2 -------------------------------------------------------------------------------------------------------


def pseudo_label(run: RunInputs, teacher: RivaModel, expected: int | None) -> PseudoRecord:
    """§3.1: label the unlabelled pairs in one streaming pass; keep top class score > threshold."""
    from flair_riva.datasets import RelationPair, iter_unlabelled_pairs, write_pseudo_labelled

    threshold = run.config.threshold
    unlabelled = run.data.unlabelled
    counts: Counter = Counter()
    highest = [0.0]
    log_line()
    log.info("stage 2: pseudo-labelling %s with the teacher (keep top class score > %g)", unlabelled, threshold)
    bar = run.bar(total=expected, desc="pseudo-labels")

    def kept():
        stream = iter_unlabelled_pairs(unlabelled, run.data.image_dir)
        for chunk, batch, probs in relation_probabilities(teacher, stream, run.visual_source(), run.eval_batch_size):
            for i, pair in enumerate(chunk):
                counts["seen"] += 1
                if not bool(batch.has_image[i]):
                    counts["without_image"] += 1
                    continue
                score, label = probs[i].max(dim=0)
                score, label = float(score), int(label)
                highest[0] = max(highest[0], score)
                if score > threshold:
                    counts[f"kept_{label}"] += 1
                    yield RelationPair(text=pair.text, tokens=pair.tokens, image=pair.image, label=label, score=score)
                else:
                    counts["below_threshold"] += 1
            bar.update(len(chunk))

    path = run.folder / PSEUDO_FILE
    try:
        written = write_pseudo_labelled(path, kept())
    except (ValueError, OSError, UnicodeError) as err:
        raise PretrainError(f"cannot read the unlabelled pairs {unlabelled}: {err}") from err
    finally:
        bar.close()
    info = PseudoRecord(counts["seen"], written, threshold, {CLASS_NAMES[c]: counts[f"kept_{c}"] for c in (0, 1)},
                        counts["below_threshold"], counts["without_image"], highest[0])
    log_pseudo(info)
    if written == 0:
        path.unlink(missing_ok=True)
        if counts["without_image"] == counts["seen"]:
            raise PretrainError(
                f"none of the {counts['seen']} unlabelled pairs in {unlabelled} has a usable image "
                "(every image failed to decode): the teacher cannot label them")
        raise PretrainError(
            f"--threshold {threshold} keeps none of the {counts['seen']} unlabelled pairs "
            f"({counts['without_image']} without a readable image; the highest teacher score was "
            f"{highest[0]:.3f}): lower --threshold")
    return info


def log_pseudo(info: PseudoRecord) -> None:
    per = info.kept_per_class
    log.info("pseudo-labels: kept %d of %d pairs (threshold %g): %s; %d below the threshold, %d without a "
             "readable image", info.kept, info.seen, info.threshold,
             ", ".join(f"{n} '{name}'" for name, n in per.items()), info.below_threshold, info.without_image)
    if info.kept and min(per.values()) == 0:
        log.warning("pseudo-labels: every kept pair has the same class; task 1 on them teaches one class only")
