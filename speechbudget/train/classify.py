"""``speechbudget finetune`` with ``task: classify``: a clip classifier trained like CTC fine-tuning.

The same Trainer (budgets, checkpoints, exact resume) runs a :class:`ClassifierModel` on an encoder
from a preset or from a pretrained checkpoint (``classify.init_checkpoint``, as CTC's). Patch
encoders (AuM, AST) read 128-bin fbank computed on the fly and normalised with the training set's
mean and std, which go into the encoder config so every checkpoint carries them; the other
encoders read the stored 80-bin fbank. The experiment folder keeps ``labels.json`` (the class
order of the head) and ``feature_stats.json``; ``evaluate`` and ``predict`` read both from there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from lhotse import CutSet

from ..config import ClassifyConfig, TrainConfig, split_csv
from ..data.augment import NoiseMixer
from ..data.feature_stats import compute_feature_stats, read_feature_stats, stats_path, write_feature_stats
from ..data.labels import VOCAB_FILE, LabelVocabulary, label_transform, load_vocabulary, write_vocabulary
from ..errors import SpeechBudgetError
from ..models.base import Encoder
from ..models.presets import build_encoder, resolve
from ..objectives.classify import ClassifierModel
from ..objectives.distill import DistillationModel
from ..objectives.teacher_logits import load_teacher_logits
from . import checkpoint as ckpt
from . import distributed
from .finetune import check_encoder
from .setup import (
    check_train_inputs,
    dataset_for,
    dev_loader,
    encoder_cost_cached,
    load_train_cuts,
    make_data,
    total_seconds,
    training_cuts,
)
from .trainer import check_resumable, claim_exp_dir, finetune_trainer

log = logging.getLogger(__name__)


def normalises_features(encoder: Encoder) -> bool:
    """AuM, AST (their patch front end) and the MobileNet teacher keep the dataset's fbank mean/std
    as buffers, set from the ``feature_mean``/``feature_std`` of their config."""
    return hasattr(getattr(encoder, "patches", None), "set_feature_stats") or hasattr(
        encoder, "feature_stats"
    )


def vocabulary_for(cfg: TrainConfig, cuts: CutSet) -> LabelVocabulary:
    """EXP/labels.json when resuming; else the labels.json beside the training manifest (written by
    ``prepare``), else the classes of the training cuts. Always checked against the cuts."""
    kept = Path(cfg.exp_dir) / VOCAB_FILE
    if kept.is_file():
        return load_vocabulary(kept, cuts)
    beside = Path(split_csv(cfg.train_cuts)[0]).parent / VOCAB_FILE
    return load_vocabulary(beside, cuts) if beside.is_file() else LabelVocabulary.from_cuts(cuts)


def feature_stats(cfg: TrainConfig, cuts: CutSet, num_mel_bins: int) -> Dict[str, float]:
    """Mean/std of the training cuts' on-the-fly fbank, computed once per experiment."""
    if stats_path(cfg.exp_dir).is_file():
        return read_feature_stats(cfg.exp_dir)
    return compute_feature_stats(cuts, num_mel_bins, cfg.classify.max_stats_cuts)


def build_classifier(
    encoder: Encoder, vocab: LabelVocabulary, c: ClassifyConfig, training: bool = True
) -> ClassifierModel:
    """The classifier of ``c``'s options; ``training=False`` for evaluation (no augmentation)."""
    return ClassifierModel(
        encoder,
        len(vocab),
        multi_label=vocab.multi_label,
        pooling=c.pooling,
        label_smoothing=c.label_smoothing,
        spec_augment=c.spec_augment and training,
        time_masks=c.time_masks.count,
        time_mask_width=c.time_masks.width,
        freq_masks=c.freq_masks.count,
        freq_mask_width=c.freq_masks.width,
        mixup=c.mixup.prob if training else 0.0,
        mixup_alpha=c.mixup.alpha,
        time_roll=c.time_roll and training,
        encoder_lr_scale=c.encoder_lr_scale,
        dropout=c.dropout,
        loss=c.loss,
        gain_db=c.gain_db,
    )


def build_model(
    cfg: TrainConfig, vocab: LabelVocabulary, cuts: CutSet, is_main: bool
) -> Tuple[ClassifierModel, Optional[Dict], Optional[Dict]]:
    """(model, init, stats): from ``classify.init_checkpoint`` or a fresh ``cfg.encoder``; a fresh
    encoder that normalises its fbank gets the training set's statistics in its config (``cfg.encoder``)."""
    torch.manual_seed(cfg.seed)
    init, stats = None, None
    if cfg.classify.init_checkpoint:
        spec, weights, path = ckpt.encoder_state(Path(cfg.classify.init_checkpoint))
        check_encoder(cfg, spec, path, "classify.init_checkpoint")
        cfg.encoder = spec
        encoder = build_encoder(spec)
        missing, _ = encoder.load_state_dict(weights, strict=False)
        if missing:
            raise SpeechBudgetError(f"{cfg.classify.init_checkpoint} lacks encoder weights {missing[:3]}...")
        init = {"checkpoint": str(path), "encoder": spec}
        check_clip_lengths(encoder, cuts, "train_cuts")
    else:
        encoder = build_encoder(cfg.encoder)
        check_clip_lengths(encoder, cuts, "train_cuts")  # before the feature statistics are computed
        if normalises_features(encoder):
            stats = feature_stats(cfg, cuts, encoder.input_dim)
            cfg.encoder = {**resolve(cfg.encoder), "feature_mean": stats["mean"], "feature_std": stats["std"]}
            torch.manual_seed(cfg.seed)  # same initial weights as without statistics
            encoder = build_encoder(cfg.encoder)
            if is_main:
                write_feature_stats(cfg.exp_dir, stats)
    return build_classifier(encoder, vocab, cfg.classify), init, stats


def with_teacher(model: ClassifierModel, cfg: TrainConfig, cuts: CutSet, vocab: LabelVocabulary):
    """The student wrapped for CMKD when ``distill:`` is set -> (model, what the run card records).

    Training clips the table lacks train on their labels alone; they are counted here, once, and
    the run card and the log say how many."""
    d = cfg.distill
    if d is None:
        return model, None
    if not d.targets:
        raise SpeechBudgetError("distill.targets is empty: give the teacher-logits table (distill-targets)")
    table = load_teacher_logits(d.targets, vocab.classes)
    missing = sum(1 for c in cuts if c.id not in table.row)
    info = {
        "targets": d.targets,
        "teacher": table.teacher,
        "lambda": d.lam,
        "temperature": d.temperature,
        "train_clips": len(cuts),
        "train_clips_without_teacher": missing,
    }
    if missing == len(cuts):
        raise SpeechBudgetError(
            f"teacher logits {d.targets} cover none of the {len(cuts)} training clips: were they made for"
            " another cut set?"
        )
    if missing:
        log.warning(
            "distillation: %d of %d training clips have no teacher logits (labels only)", missing, len(cuts)
        )
    return DistillationModel(model, table, d.lam, d.temperature), info


def check_clip_lengths(encoder: Encoder, cuts: CutSet, key: str) -> None:
    """Training batches go through the encoder whole: a clip longer than a patch encoder's learned
    positions would stop the run at its first batch, after the set-up. (Evaluation and prediction
    score long clips in windows instead.)"""
    limit = encoder.max_input_frames
    if limit is None or len(cuts) == 0:
        return
    longest = max(cuts, key=lambda c: c.duration)
    rate = encoder.input_rate_hz
    if round(longest.duration * rate) > limit:
        raise SpeechBudgetError(
            f"{key}: clip {longest.id} lasts {longest.duration:.2f} s, longer than the {limit / rate:.2f} s "
            f"({limit} frames) the encoder's learned positions reach; raise the encoder's max_frames "
            "(encoder: {preset: ..., max_frames: N}), use position: sinusoidal, or cut the clips shorter"
        )


def classify(cfg: TrainConfig, recipe: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    dist = distributed.setup(cfg.device)
    lock = None
    try:
        check_train_inputs(cfg)
        lock = claim_exp_dir(cfg.exp_dir)  # before labels.json and the cost files are written there
        check_resumable(cfg)
        cuts = training_cuts(cfg, dist.is_main).to_eager()
        vocab = vocabulary_for(cfg, cuts)
        model, init, stats = build_model(cfg, vocab, cuts, dist.is_main)
        if dist.is_main:
            Path(cfg.exp_dir).mkdir(parents=True, exist_ok=True)
            write_vocabulary(Path(cfg.exp_dir) / VOCAB_FILE, vocab)
        cost = {
            **encoder_cost_cached(model.encoder, cfg.exp_dir, model.head_macs_per_frame()),
            "head_macs_per_clip": float(model.head_macs_per_clip()),
        }
        model, distill = with_teacher(model, cfg, cuts, vocab)
        c = cfg.classify
        mixer = NoiseMixer(Path(c.noise_dir), c.noise_snr_db, c.noise_prob) if c.noise_dir else None
        dataset = dataset_for(model.encoder, transform=label_transform(cuts, vocab), cut_transform=mixer)
        sampler, loader = make_data(cfg, cuts, dataset, dist)
        valid = None
        if cfg.dev_cuts:
            dev = load_train_cuts(cfg.dev_cuts, "dev_cuts").to_eager()
            vocab.check(dev)
            check_clip_lengths(model.encoder, dev, "dev_cuts")
            valid = dev_loader(cfg, dataset_for(model.encoder, transform=label_transform(dev, vocab)))
        hours = total_seconds(cuts) / 3600
        trainer = finetune_trainer(
            cfg,
            model,
            loader=loader,
            sampler=sampler,
            dist=dist,
            cost=cost,
            labeled_seconds=hours * 3600,
            recipe=recipe,
            freeze_encoder_steps=c.freeze_encoder_steps,
            valid_loader=valid,
            card_extra={
                "task": "classify",
                "init": init,
                "classes": vocab.classes,
                "multi_label": vocab.multi_label,
                "feature_stats": stats,
                "distill": distill,
            },
        )
        out = trainer.fit()
        out.update(task="classify", labeled_hours=hours, classes=len(vocab))
        if distill:
            out["distill"] = distill
        return out
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(dist)
