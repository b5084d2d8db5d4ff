"""``speechbudget finetune``: a CTC head on a pretrained (or fresh) encoder, within a budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from lhotse import CutSet

from .. import atomic
from ..asr.tokenizer import Tokenizer, train_tokenizer
from ..config import TrainConfig
from ..data.augment import NoiseMixer
from ..data.dataset import SpeechDataset
from ..errors import SpeechBudgetError
from ..models.presets import build_encoder
from ..objectives.ctc import CtcModel
from . import checkpoint as ckpt
from . import distributed
from .setup import dev_loader, encoder_cost_cached, input_kind, make_data, total_seconds, training_cuts
from .trainer import Trainer


def cut_text(cut) -> str:
    return " ".join(s.text or "" for s in cut.supervisions).strip()


def tokenizer_for(cfg: TrainConfig, cuts: CutSet) -> Tokenizer:
    """Train the tokenizer on the training transcripts once per experiment; reuse it after."""
    out = Path(cfg.exp_dir) / "tokenizer"
    if not (out / "tokenizer.model").is_file():
        texts = [t for t in (cut_text(c) for c in cuts) if t]
        if not texts:
            raise SpeechBudgetError("the fine-tuning cuts have no transcripts; prepare a labeled corpus")
        train_tokenizer(texts, out, model_type=cfg.ctc.tokenizer, vocab_size=cfg.ctc.vocab_size)
    return Tokenizer(out / "tokenizer.model")


def filter_cuts(
    cuts: CutSet, tokenizer: Tokenizer, frame_rate_hz: float
) -> Tuple[CutSet, Dict[str, int], List[Dict]]:
    """Drop cuts with empty transcripts, unknown characters or more tokens than encoder frames."""
    kept, counts, dropped = [], {"empty_transcript": 0, "unknown_chars": 0, "ctc_infeasible": 0}, []
    for c in cuts:
        text = cut_text(c)
        reason = None
        if not tokenizer.normalize(text):
            reason = "empty_transcript"
        elif tokenizer.unknown_chars(text):
            reason = "unknown_chars"
        elif len(tokenizer.encode(text)) > int(c.duration * frame_rate_hz) - 2:
            reason = "ctc_infeasible"
        if reason:
            counts[reason] += 1
            dropped.append({"id": c.id, "reason": reason, "text": text})
        else:
            kept.append(c)
    return CutSet.from_cuts(kept), counts, dropped


class Tokenize:
    """Dataset transform: texts -> padded token ids (picklable for worker processes)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, batch: Dict) -> Dict:
        ids = [torch.tensor(self.tokenizer.encode(t), dtype=torch.long) for t in batch["texts"]]
        batch["token_lengths"] = torch.tensor([len(i) for i in ids], dtype=torch.long)
        batch["tokens"] = (
            torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=0)
            if ids
            else torch.zeros(0, 0)
        )
        return batch


def build_model(cfg: TrainConfig, vocab_size: int, blank_id: int) -> Tuple[CtcModel, Optional[Dict]]:
    torch.manual_seed(cfg.seed)
    init = None
    if cfg.ctc.init_checkpoint:
        spec, weights, path = ckpt.encoder_state(Path(cfg.ctc.init_checkpoint))
        cfg.encoder = spec
        encoder = build_encoder(spec)
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
        if missing:
            raise SpeechBudgetError(f"{cfg.ctc.init_checkpoint} lacks encoder weights {missing[:3]}...")
        init = {"checkpoint": str(path), "encoder": spec}
    else:
        encoder = build_encoder(cfg.encoder)
    a = cfg.ctc
    model = CtcModel(
        encoder,
        vocab_size,
        blank_id,
        spec_augment=a.spec_augment,
        time_masks=a.time_masks,
        time_mask_width=a.time_mask_width,
        freq_masks=a.freq_masks,
        freq_mask_width=a.freq_mask_width,
        encoder_lr_scale=a.encoder_lr_scale,
        gain_db=a.gain_db,
    )
    return model, init


def finetune(cfg: TrainConfig, recipe: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``task: ctc`` (here) or ``task: classify`` (:mod:`.classify`)."""
    if cfg.task == "classify":
        from .classify import classify

        return classify(cfg, recipe)
    dist = distributed.setup(cfg.device)
    try:
        cuts = training_cuts(cfg, dist.is_main).to_eager()
        tokenizer = tokenizer_for(cfg, cuts)
        model, init = build_model(cfg, tokenizer.vocab_size, tokenizer.blank_id)
        cuts, dropped_counts, dropped = filter_cuts(cuts, tokenizer, model.encoder.frame_rate_hz)
        if dist.is_main:
            atomic.write_json(
                Path(cfg.exp_dir) / "filtered_train.json", {"counts": dropped_counts, "dropped": dropped}
            )
        if len(cuts) == 0:
            raise SpeechBudgetError(f"no usable fine-tuning cuts left after filtering: {dropped_counts}")
        cost = encoder_cost_cached(model.encoder, cfg.exp_dir, model.head_macs_per_frame())
        mixer = (
            NoiseMixer(Path(cfg.ctc.noise_dir), cfg.ctc.noise_snr_db, cfg.ctc.noise_prob)
            if cfg.ctc.noise_dir
            else None
        )
        dataset = SpeechDataset(
            input_kind(model.encoder), with_text=True, transform=Tokenize(tokenizer), cut_transform=mixer
        )
        sampler, loader = make_data(cfg, cuts, dataset, dist)
        freeze = cfg.ctc.freeze_encoder_steps

        def before_step(m, counters):
            m.freeze_encoder = counters.step < freeze

        hours = total_seconds(cuts) / 3600
        trainer = Trainer(
            cfg,
            model,
            loader=loader,
            sampler=sampler,
            dist=dist,
            cost=cost,
            epoch_seconds=hours * 3600,
            stage="finetune",
            recipe=recipe,
            before_step=before_step,
            find_unused_parameters=freeze > 0,
            valid_loader=dev_loader(
                cfg, SpeechDataset(input_kind(model.encoder), with_text=True, transform=Tokenize(tokenizer))
            ),
            card_extra={"labeled_hours": hours, "init": init, "filtered": dropped_counts},
        )
        out = trainer.fit()
        out["filtered"] = dropped_counts
        out["labeled_hours"] = hours
        out["tokenizer"] = str(Path(cfg.exp_dir) / "tokenizer" / "tokenizer.model")
        return out
    finally:
        distributed.teardown(dist)
