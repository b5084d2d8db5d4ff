"""``speechbudget finetune``: a CTC head on a pretrained (or fresh) encoder, within a budget."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from lhotse import CutSet

from .. import atomic
from ..asr.lexicon import lexicon_words, write_lexicon
from ..asr.tokenizer import Tokenizer, train_tokenizer
from ..config import TrainConfig
from ..data import speaker_cmn
from ..data.augment import Chain, NoiseMixer, Reverb, speed_perturbed
from ..data.edges import EdgeJitter
from ..data.manifests import cut_speaker, cut_text
from ..data.mixup import MixUp
from ..data.tempo import TempoPerturb
from ..data.views import TwoViews
from ..errors import SpeechBudgetError
from ..models.presets import build_encoder, with_overrides
from ..objectives.ctc import CtcModel
from ..objectives.speaker_adversary import SpeakerAdversary
from . import checkpoint as ckpt
from . import distributed
from .setup import (
    check_train_inputs,
    dataset_for,
    dev_loader,
    encoder_cost_cached,
    encoder_input,
    input_kind,
    load_train_cuts,
    make_data,
    total_seconds,
    training_cuts,
)
from .trainer import check_resumable, claim_exp_dir, finetune_trainer

log = logging.getLogger(__name__)


def tokenizer_for(cfg: TrainConfig, cuts: CutSet) -> Tuple[Tokenizer, Optional[Path]]:
    """The experiment's tokenizer, trained once on the training transcripts and reused after.

    A new one is trained into a temporary folder and returned with that folder: the caller moves it
    to EXP/tokenizer (:func:`commit_tokenizer`) only once the run really starts, so a run that fails
    before training leaves no tokenizer that a later run (with other settings) would silently reuse.
    """
    out = Path(cfg.exp_dir) / "tokenizer"
    if (out / "tokenizer.model").is_file():
        return Tokenizer(out / "tokenizer.model"), None
    texts = [t for t in (cut_text(c) for c in cuts) if t]
    if not texts:
        raise SpeechBudgetError("the fine-tuning cuts have no transcripts; prepare a labeled corpus")
    tmp = Path(cfg.exp_dir) / f".tmp{os.getpid()}.tokenizer"
    shutil.rmtree(tmp, ignore_errors=True)
    train_tokenizer(
        texts, tmp, model_type=cfg.ctc.tokenizer, vocab_size=cfg.ctc.vocab_size, g2p_voice=cfg.ctc.g2p_voice
    )
    tokenizer = Tokenizer(tmp / "tokenizer.model")
    write_lexicon(tmp, lexicon_words(texts, tokenizer))  # what `decode --method lexicon` may output
    return tokenizer, tmp


def commit_tokenizer(cfg: TrainConfig, tmp: Optional[Path]) -> Tokenizer:
    """Move a newly trained tokenizer to EXP/tokenizer (one rename) and load it from there."""
    out = Path(cfg.exp_dir) / "tokenizer"
    if tmp is not None:
        try:
            os.replace(tmp, out)
        except OSError:  # another rank (DDP) committed first: same texts, same settings, same model
            if not (out / "tokenizer.model").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return Tokenizer(out / "tokenizer.model")


def check_encoder(cfg: TrainConfig, spec: Any, path: Path, key: str = "ctc.init_checkpoint") -> None:
    """The init checkpoint decides the architecture. An explicit other encoder is a contradiction
    (refused); the default one is replaced, and the log says so."""
    if cfg.encoder == spec:
        return
    if cfg.encoder != TrainConfig.encoder:
        raise SpeechBudgetError(
            f"encoder={_spec_name(cfg.encoder)} but {key} {path} holds a {_spec_name(spec)} "
            "encoder: drop the encoder setting (the checkpoint decides) or use a matching checkpoint"
        )
    log.warning("finetune: using the checkpoint's encoder %s (from %s)", _spec_name(spec), path)


def _spec_name(spec: Any) -> str:
    if isinstance(spec, dict):
        return str(spec.get("preset") or spec.get("family") or spec)
    return str(spec)


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


def no_usable_cuts(counts: Dict[str, int], frame_rate_hz: float) -> str:
    """Why fine-tuning has nothing to train on, and what to change when the encoder is the reason."""
    msg = f"no usable fine-tuning cuts left after filtering: {counts}"
    if counts["ctc_infeasible"] and not counts["empty_transcript"] + counts["unknown_chars"]:
        msg += (
            f"; the encoder emits {frame_rate_hz:g} frames a second, fewer than the transcripts' tokens "
            "(CTC needs one frame per token): fine-tune an encoder with a higher frame rate (`speechbudget "
            "models list`), or a tokenizer with longer tokens (ctc.tokenizer: bpe)"
        )
    return msg


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


def build_model(
    cfg: TrainConfig, vocab_size: int, blank_id: int, speakers: Sequence[str] = ()
) -> Tuple[CtcModel, Optional[Dict]]:
    """The CTC model and where its encoder came from; ``speakers``: the training cuts' speakers, the
    classes of ``ctc.speaker_adversary``."""
    torch.manual_seed(cfg.seed)
    init, weights, spec = None, None, cfg.encoder
    if cfg.ctc.init_checkpoint:
        spec, weights, path = ckpt.encoder_state(Path(cfg.ctc.init_checkpoint), expect_task="ctc")
        check_encoder(cfg, spec, path)
        init = {"checkpoint": str(path), "encoder": spec}
    if cfg.ctc.encoder_dropout is not None:  # kept in the spec the run's checkpoints store
        spec = with_overrides(spec, dropout=cfg.ctc.encoder_dropout)
    cfg.encoder = spec
    encoder = build_encoder(spec)
    if weights is not None:
        missing, unexpected = encoder.load_state_dict(weights, strict=False)
        if missing:
            raise SpeechBudgetError(f"{cfg.ctc.init_checkpoint} lacks encoder weights {missing[:3]}...")
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
        time_warp=a.time_warp,
        time_mask_max_fraction=a.time_mask_max_fraction,
        vtlp_warp=a.vtlp,
        consistency=a.consistency,
        entropy_weight=a.entropy_weight,
        inter_ctc_weight=a.inter_ctc_weight,
        inter_ctc_layer=a.inter_ctc_layer,
        adversary=SpeakerAdversary(encoder.output_dim, speakers, a.speaker_adversary)
        if a.speaker_adversary > 0
        else None,
    )
    return model, init


def tempo_transform(cfg: TrainConfig, model: CtcModel) -> Optional[TempoPerturb]:
    """``ctc.tempo``: the training batches' rate perturbation (log-mel, with SpecAugment on, like gain and
    VTLP); None when off."""
    return TempoPerturb(cfg.ctc.tempo) if cfg.ctc.tempo > 0 and model.augment else None


def edge_transform(cfg: TrainConfig, model: CtcModel) -> Optional[EdgeJitter]:
    """``ctc.edge_jitter``: the training batches' clip margins moved (log-mel, with SpecAugment on); None
    when off."""
    return EdgeJitter(cfg.ctc.edge_jitter) if cfg.ctc.edge_jitter > 0 and model.augment else None


def mixup_transform(cfg: TrainConfig, model: CtcModel) -> Optional[MixUp]:
    """``ctc.mixup``: a share of each training batch blended in pairs (log-mel, with SpecAugment on); None
    when off."""
    return MixUp(cfg.ctc.mixup) if cfg.ctc.mixup > 0 and model.augment else None


def views_transform(cfg: TrainConfig, model: CtcModel) -> Optional[TwoViews]:
    """``ctc.consistency``: each training batch twice, for the two views the loss compares (after tempo,
    edge jitter and mixup, so both views share their frames' times); None when off."""
    return TwoViews() if cfg.ctc.consistency > 0 and model.augment else None


def audio_augmentation(cfg: TrainConfig) -> Optional[Chain]:
    """Reverberation, then noise (lhotse, on the audio of each training batch); None when both are off."""
    a = cfg.ctc
    reverb = (
        Reverb(a.reverb_prob, Path(a.rir_dir) if a.rir_dir else None, cfg.seed) if a.reverb_prob else None
    )
    noise = NoiseMixer(Path(a.noise_dir), a.noise_snr_db, a.noise_prob) if a.noise_dir else None
    return Chain(reverb, noise) if reverb or noise else None


def speaker_cmn_transforms(
    cfg: TrainConfig, model: CtcModel, recorded: CutSet
) -> Tuple[Optional[speaker_cmn.SpeakerCmn], Optional[speaker_cmn.SpeakerCmn]]:
    """``ctc.speaker_cmn``: the training and dev batch transforms, both moving their speakers onto
    the training speakers' mean (and spread, ``ctc.speaker_cvn``): the ``target``, which the run keeps
    for decoding. Speakers' statistics come from the ``recorded`` training cuts: a speed-perturbed
    copy keeps its speaker's."""
    if not cfg.ctc.speaker_cmn:
        return None, None
    if input_kind(model.encoder) != "fbank":
        raise SpeechBudgetError("ctc.speaker_cmn is for log-mel (fbank) encoders; set it to false")
    moments = speaker_cmn.speaker_moments(recorded, int(encoder_input(model.encoder)["num_mel_bins"]))
    target = speaker_cmn.pooled(moments, norm_vars=cfg.ctc.speaker_cvn)
    dev = speaker_cmn.for_cuts(target, load_train_cuts(cfg.dev_cuts, "dev_cuts")) if cfg.dev_cuts else None
    return speaker_cmn.SpeakerCmn(target, moments), dev


def warn_unspellable_dev(cfg: TrainConfig, tokenizer: Tokenizer) -> int:
    """Dev transcripts with characters the tokenizer cannot spell score ``<unk>`` in the validation loss
    (training drops such cuts and counts them): say how many, and which characters. Returns that number."""
    if not cfg.dev_cuts:
        return 0
    cuts = load_train_cuts(cfg.dev_cuts, "dev_cuts")
    unknown = [tokenizer.unknown_chars(cut_text(c)) for c in cuts]
    bad = [u for u in unknown if u]
    if bad:
        chars = "".join(sorted(set().union(*bad)))[:20]
        log.warning(
            "%d of %d dev utterances have characters the tokenizer cannot spell (%r): their validation loss "
            "scores <unk> for them; is dev_cuts the same language and text normalisation as train_cuts?",
            len(bad),
            len(unknown),
            chars,
        )
    return len(bad)


def warn_unwarped(factor: int, cuts, input_rate_hz: float) -> int:
    """lhotse's time warp leaves an utterance of at most 2 x factor + 1 frames as it is, silently: say
    how many training utterances ``ctc.time_warp`` cannot reach (FSDD's 0.4 s digits and the usual
    factor 80 make it a no-op). Returns that number."""
    if factor <= 0:
        return 0
    longest_unwarped = 2 * factor + 1
    short = sum(1 for c in cuts if round(c.duration * input_rate_hz) <= longest_unwarped)
    if short:
        log.warning(
            "ctc.time_warp %d leaves %d of %d training utterances unwarped: lhotse warps only utterances "
            "longer than %d frames (%.2f s); a smaller factor reaches them",
            factor,
            short,
            len(cuts),
            longest_unwarped,
            longest_unwarped / input_rate_hz,
        )
    return short


def finetune(cfg: TrainConfig, recipe: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``task: ctc`` (here) or ``task: classify`` (:mod:`.classify`)."""
    if cfg.task == "classify":
        from .classify import classify

        return classify(cfg, recipe)
    dist = distributed.setup(cfg.device)
    lock = tok_tmp = None
    try:
        check_train_inputs(cfg)
        lock = claim_exp_dir(cfg.exp_dir)  # before anything is written there
        check_resumable(cfg)  # before the tokenizer and the speaker means are written
        cuts = training_cuts(cfg, dist.is_main).to_eager()
        tokenizer, tok_tmp = tokenizer_for(cfg, cuts)
        speakers = [cut_speaker(c) for c in cuts] if cfg.ctc.speaker_adversary > 0 else ()
        model, init = build_model(cfg, tokenizer.vocab_size, tokenizer.blank_id, speakers=speakers)
        train_cmn, dev_cmn = speaker_cmn_transforms(cfg, model, cuts)
        recorded_hours = total_seconds(cuts) / 3600
        if cfg.ctc.speed_perturb:  # before filtering: a faster copy may no longer fit its tokens
            cuts = speed_perturbed(cuts, cfg.ctc.speed_perturb)
        cuts, dropped_counts, dropped = filter_cuts(cuts, tokenizer, model.encoder.frame_rate_hz)
        if len(cuts) == 0:
            raise SpeechBudgetError(no_usable_cuts(dropped_counts, model.encoder.frame_rate_hz))
        if model.augment:
            warn_unwarped(cfg.ctc.time_warp, cuts, model.encoder.input_rate_hz)
        warn_unspellable_dev(cfg, tokenizer)
        # the run really starts: only now do the tokenizer and the filtering record land in EXP
        tokenizer, tok_tmp = commit_tokenizer(cfg, tok_tmp), None
        if dist.is_main:
            atomic.write_json(
                Path(cfg.exp_dir) / "filtered_train.json", {"counts": dropped_counts, "dropped": dropped}
            )
            speaker_cmn.keep_target(Path(cfg.exp_dir), train_cmn.target if train_cmn else None)
        cost = encoder_cost_cached(model.encoder, cfg.exp_dir, model.head_macs_per_frame())
        dataset = dataset_for(
            model.encoder,
            with_text=True,
            transform=Chain(
                train_cmn,
                tempo_transform(cfg, model),
                edge_transform(cfg, model),
                mixup_transform(cfg, model),
                Tokenize(tokenizer),
                views_transform(cfg, model),
            ),
            cut_transform=audio_augmentation(cfg),
            on_the_fly=bool(cfg.ctc.speed_perturb),  # perturbed copies have no stored features
        )
        sampler, loader = make_data(cfg, cuts, dataset, dist)
        # with speed perturbation: the hours of all copies, each at its own duration (an epoch is all of them)
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
            freeze_encoder_steps=cfg.ctc.freeze_encoder_steps,
            valid_loader=dev_loader(
                cfg,
                dataset_for(model.encoder, with_text=True, transform=Chain(dev_cmn, Tokenize(tokenizer))),
            ),
            card_extra={
                "init": init,
                "filtered": dropped_counts,
                "speed_perturb": cfg.ctc.speed_perturb,
                "recorded_labeled_hours": recorded_hours,
            },
        )
        out = trainer.fit()
        out["filtered"] = dropped_counts
        out["labeled_hours"] = hours
        out["tokenizer"] = str(Path(cfg.exp_dir) / "tokenizer" / "tokenizer.model")
        return out
    finally:
        if tok_tmp is not None:
            shutil.rmtree(tok_tmp, ignore_errors=True)
        if lock is not None:
            lock.release()
        distributed.teardown(dist)
