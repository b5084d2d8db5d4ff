"""Recipe schema: YAML + ``key=value`` overrides -> validated, typed dataclasses.

A recipe is the single source of truth of a run. Every section is a dataclass, so the valid
keys and their defaults are readable in one place; an unknown key or a wrong type stops with
one line naming the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

from .errors import SpeechBudgetError
from .userfiles import read_user_text

#: the optimizers and learning-rate schedules train/optim.py builds (checked here, before a run starts)
OPTIMIZERS = ("scaled_adam", "adamw")
SCHEDULES = ("eden", "cosine", "step")
#: what CTC predicts: sentencepiece pieces, or the words' phones (asr/tokenizer.py)
TOKENIZER_TYPES = ("bpe", "unigram", "char", "phone")


# ------------------------------------------------------------------------------------- sections
@dataclass
class BudgetConfig:
    """Stop training when the first of these limits is reached (at most one step over)."""

    flops: Optional[float] = None  # training FLOPs (forward + backward = 3 x forward)
    gpu_hours: Optional[float] = None  # converted to FLOPs with device peak x utilisation
    wall_hours: Optional[float] = None  # wall-clock hours of training (this run and its resumes)
    audio_hours: Optional[float] = None  # hours of audio processed
    steps: Optional[int] = None  # optimizer steps
    device: str = "cpu"  # device whose peak converts gpu_hours to FLOPs
    dtype: str = "fp32"  # peak to use: fp32, tf32, bf16, fp16
    utilisation: Optional[float] = None  # model-FLOP utilisation; None = calibrated or default


@dataclass
class OptimConfig:
    name: str = "scaled_adam"  # scaled_adam | adamw
    lr: float = 0.045
    weight_decay: float = 0.0
    clipping_scale: float = 2.0


@dataclass
class ScheduleConfig:
    name: str = "eden"  # eden | cosine | step
    lr_batches: float = 7500.0  # Eden B
    lr_epochs: float = 10.5  # Eden E
    warmup_batches: int = 500
    #: what Eden's "epoch" counts: "epochs" over the training set, or "hours" of audio processed
    epoch_unit: str = "epochs"
    min_lr_ratio: float = 0.0  # cosine
    #: step: lr x decay after each epoch from decay_start_epoch on (AuM/AST Speech Commands: 0.85 from 5)
    decay_start_epoch: int = 5
    decay: float = 0.85


@dataclass
class HubertConfig:
    mask_prob: float = 0.65
    mask_length: int = 10
    temperature: float = 0.1
    unmasked_weight: float = 0.0
    final_dim: int = 256
    num_clusters: Optional[int] = None  # None = max label in the training cuts + 1
    #: in training, each utterance's input log-mel warped by a factor in [1 - vtlp, 1 + vtlp]
    #: (data/vtlp.py) while its k-means targets stay those of the unwarped audio, so the encoder
    #: learns to give other vocal tract lengths the same units (ContentVec's idea); 0 = off
    vtlp: float = 0.0


@dataclass
class KmeansConfig:
    features: str = "mfcc"  # mfcc | fbank | layer
    num_clusters: int = 100
    max_frames: int = 500_000
    layer: Optional[int] = None  # for features=layer (iteration 2)
    checkpoint: Optional[str] = None  # encoder checkpoint for features=layer
    seed: int = 0
    #: subtract each utterance's mean feature before clustering (and labelling): the targets then
    #: carry less of a voice's average spectrum and more of what changes within the utterance
    cmn: bool = False


@dataclass
class CtcConfig:
    tokenizer: str = "bpe"  # bpe | unigram | char | phone (words spelled by espeak-ng's phones)
    vocab_size: int = 64
    #: the espeak-ng voice that pronounces the transcripts for ``tokenizer: phone``
    g2p_voice: str = "en-us"
    freeze_encoder_steps: int = 0
    #: the encoder learns at optim.lr x this, the CTC head at optim.lr: a pretrained encoder needs a
    #: gentler rate than a fresh head (k2SSL fine-tunes at ~1/20 of its pretraining rate)
    encoder_lr_scale: float = 1.0
    #: lhotse's SpecAugment in training (never at evaluation): frequency and time masks, time warp
    spec_augment: bool = True
    gain_db: float = 0.0  # random gain per utterance, +-dB (fbank only, with spec_augment): level robustness
    time_masks: int = 2  # lhotse num_frame_masks
    time_mask_width: int = 40  # input frames (lhotse frames_mask_size)
    time_mask_max_fraction: float = 0.15  # at most this share of an utterance masked in time, in all
    freq_masks: int = 2  # lhotse num_feature_masks
    freq_mask_width: int = 15  # fbank bins (lhotse features_mask_size)
    time_warp: int = 0  # lhotse time_warp_factor in input frames; 0 = off
    #: vocal tract length perturbation (fbank, with spec_augment): each utterance's frequency axis
    #: warped by a factor in [1 - vtlp, 1 + vtlp] (data/vtlp.py); 0 = off
    vtlp: float = 0.0
    #: tempo perturbation (fbank, with spec_augment): each utterance's frames stretched in time by a
    #: factor in [1 / (1 + tempo), 1 + tempo], rate without pitch (data/tempo.py); 0 = off
    tempo: float = 0.0
    #: edge jitter (fbank, with spec_augment): each end of each utterance moved by up to this many
    #: seconds, out (silence recorded in the batch) or in (cropped) (data/edges.py); 0 = off
    edge_jitter: float = 0.0
    #: mixup (MixSpeech; fbank, with spec_augment): this share of the training utterances blended with
    #: another of the batch, the loss weighted alike over both transcripts (data/mixup.py); 0 = off
    mixup: float = 0.0
    #: consistency-regularised CTC (CR-CTC; fbank, with spec_augment): each training utterance seen
    #: twice, with its own gain, VTLP and SpecAugment draws, the loss adding this weight x the KL
    #: divergence between the two views' frame posteriors (data/views.py); 0 = off, the paper's 0.2
    consistency: float = 0.0
    #: confidence penalty (MaxEnt CTC; training only): the loss subtracts this weight x the mean
    #: entropy of the frame posteriors, so two training voices are not fitted to certainty; 0 = off
    entropy_weight: float = 0.0
    #: intermediate CTC (training only): a second CTC head on block ``inter_ctc_layer``'s output (1-based;
    #: 0 = the middle block), the loss (1 - w) x CTC + w x its CTC (not on ``mixup``'s blended batches,
    #: nor while the encoder is frozen); 0 = off
    inter_ctc_weight: float = 0.0
    inter_ctc_layer: int = 0
    #: speaker-adversarial fine-tuning: a classifier of the training speakers on every encoder frame,
    #: the encoder trained (x this weight) to leave it at chance (objectives/speaker_adversary.py); 0 = off
    speaker_adversary: float = 0.0
    noise_dir: Optional[str] = None
    noise_snr_db: float = 15.0
    noise_prob: float = 0.5  # used when noise_dir is set
    #: speed perturbation: the training set once per factor (e.g. [0.9, 1.0, 1.1]); [] = off
    speed_perturb: List[float] = field(default_factory=list)
    reverb_prob: float = 0.0  # share of training utterances reverberated (lhotse reverb_rir); 0 = off
    rir_dir: Optional[str] = None  # measured RIR .wav files; default: simulated RIRs (data/augment.py)
    init_checkpoint: Optional[str] = None  # a pretrained encoder; None = from scratch
    #: move each speaker's mean log-mel onto the training speakers' (fbank; decode does it too):
    #: a recording chain's constant offset is not learned as speech (data/speaker_cmn.py)
    speaker_cmn: bool = False
    #: with speaker_cmn, also scale each speaker's per-bin std onto the training speakers' (Kaldi's
    #: --norm-vars)
    speaker_cvn: bool = False
    #: dropout on the encoder's residual branches while fine-tuning (pretrained or fresh; the encoder
    #: spec's ``dropout``, which has no parameters); None = the encoder's own (zipformer: 0)
    encoder_dropout: Optional[float] = None


@dataclass
class MaskConfig:
    """SpecAugment masks of one axis: how many, and the widest (in input frames or bins)."""

    count: int = 1
    width: int = 48


@dataclass
class MixupConfig:
    prob: float = 0.0  # probability that a batch is mixed (AuM/AST Speech Commands: 0.6)
    alpha: float = 10.0  # Beta(alpha, alpha) of the mixing weight


@dataclass
class ClassifyConfig:
    """``task: classify``: a clip classifier (AuM, AST, or any encoder with mean/attention pooling)."""

    pooling: str = "auto"  # auto (CLS when the encoder has one, else mean) | cls | mean | attention
    loss: Optional[str] = None  # ce | bce; None = ce single-label, bce multi-label
    label_smoothing: float = 0.0
    spec_augment: bool = True
    time_masks: MaskConfig = field(default_factory=MaskConfig)
    freq_masks: MaskConfig = field(default_factory=MaskConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    time_roll: bool = True
    dropout: float = 0.0
    gain_db: float = 0.0  # random gain per clip, +-dB (an offset on log-mel fbank; with spec_augment)
    noise_dir: Optional[str] = None  # mix noise from this folder (data/augment.py NoiseMixer)
    noise_snr_db: float = 15.0
    noise_prob: float = 0.5
    #: the encoder learns at optim.lr x this, the head at optim.lr (a pretrained encoder wants less)
    encoder_lr_scale: float = 1.0
    freeze_encoder_steps: int = 0
    init_checkpoint: Optional[str] = None  # an SSL-pretrained (or classifier) encoder; None = from scratch
    max_stats_cuts: int = 2000  # training cuts the feature mean/std of patch encoders is computed from


@dataclass
class DistillConfig:
    """``distill:`` CMKD from precomputed teacher logits (``speechbudget distill-targets``): loss =
    lambda x hard-label loss + (1 - lambda) x soft-target loss; clips without logits get the hard loss."""

    targets: str = ""  # the teacher-logits table (NAME, NAME.npz or NAME.json); a run fills in its own
    lam: float = 0.1  # written `lambda` in recipes (FastAST: 0.1 with a CNN teacher)
    temperature: float = 1.0

    @classmethod
    def from_config(cls, value: Any, key: str) -> DistillConfig:
        if isinstance(value, DistillConfig):
            return value
        if not isinstance(value, Mapping):
            raise SpeechBudgetError(f"config key '{key}' must be a mapping of targets, lambda, temperature")
        data = dict(value)
        if "lambda" in data:
            data["lam"] = data.pop("lambda")
        cfg = from_dict(cls, data, prefix=key + ".")
        if not 0.0 <= cfg.lam <= 1.0:
            raise SpeechBudgetError(f"config key '{key}.lambda' must be in [0, 1], got {cfg.lam}")
        if not cfg.temperature > 0:
            raise SpeechBudgetError(f"config key '{key}.temperature' must be positive, got {cfg.temperature}")
        return cfg


@dataclass
class TrainConfig:
    """Everything one training run needs; pretraining and fine-tuning share it."""

    encoder: Union[str, Dict[str, Any]] = "zipformer-tiny"  # preset name or {preset|family: ..., **kwargs}
    train_cuts: str = ""  # cut manifest(s), comma-separated
    dev_cuts: Optional[str] = None
    exp_dir: str = ""
    max_duration: float = 60.0  # seconds of audio per batch (lhotse DynamicBucketingSampler)
    num_buckets: int = 10
    grad_accum: int = 1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | off
    num_workers: int = 0
    checkpoint_every: int = 100  # steps
    keep_last: int = 3
    average_last: int = 0  # >0: also save the average of the last N checkpoints
    log_every: int = 10
    max_bad_steps: int = 10  # NaN/inf losses in a row before the run stops
    #: train on a seeded subset of this many hours of train_cuts (data-size studies; "10 labeled minutes")
    train_hours: Optional[float] = None
    #: train only on the cuts of this many speakers (seeded choice), before train_hours: transcribed
    #: audio usually comes from a few speakers, unlabeled audio from many
    train_speakers: Optional[int] = None
    #: more transcribed cut manifests (comma-separated) that join the training set after
    #: train_speakers/train_hours: e.g. synthetic speech with its text beside a few real speakers.
    #: In a recipe, ``prepare`` names the prepared unlabeled corpus's train split.
    extra_train_cuts: str = ""
    valid_every: int = 0  # steps between validations on dev_cuts (0: only at the end)
    #: record this many steps with torch.profiler into EXP/profile/ (trace.json, top_ops.txt); 0 = off
    profile_steps: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    hubert: HubertConfig = field(default_factory=HubertConfig)
    ctc: CtcConfig = field(default_factory=CtcConfig)
    #: what `finetune` trains: a CTC recognizer, or a clip classifier (the `classify:` section)
    task: str = "ctc"
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    #: cross-model distillation from a teacher's logits (classification; see DistillConfig)
    distill: Optional[DistillConfig] = None


@dataclass
class TrainSection:
    """A recipe's ``pretrain:`` or ``finetune:`` section as written: partial, since ``speechbudget run``
    fills in ``exp_dir`` and ``train_cuts`` (and the plan may pick ``encoder`` and the budget). Every key
    and type is checked against :class:`TrainConfig` when the recipe is read."""

    values: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, value: Any, key: str) -> TrainSection:
        if isinstance(value, TrainSection):
            return value
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            names = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
            raise SpeechBudgetError(f"config key '{key}' must be a mapping of {names}")
        from_dict(TrainConfig, value, prefix=f"{key}.")
        return cls(dict(value))


# ----------------------------------------------------------------------------------- machinery
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def split_csv(text: Optional[str]) -> List[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the one parser of comma-separated lists (flags and keys)."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if hasattr(tp, "from_config"):  # a section that validates itself (e.g. a corpus source's options)
        return tp.from_config(value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        items = split_csv(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise SpeechBudgetError(
                f"config key '{key}' must be a list (or a comma-separated string), got {value!r}"
            )
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(items)]
    if tp is Path:
        if isinstance(value, (str, Path)) and str(value).strip():
            return Path(value)
        raise SpeechBudgetError(f"config key '{key}' must be a path, got {value!r}")
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(value, args[0], key)
        for arg in args:  # the first type the value fits, e.g. a preset name or a config mapping
            try:
                return _coerce(value, arg, key)
            except SpeechBudgetError:
                continue
        names = " or ".join("mapping" if typing.get_origin(a) is dict else _type_name(a) for a in args)
        raise SpeechBudgetError(f"config key '{key}' must be a {names}, got {value!r}")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SpeechBudgetError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise SpeechBudgetError(
                f"config key '{key}' must be a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
            )
        return from_dict(tp, value, prefix=key + ".")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return _finite(float(value), key)
    if tp is float and isinstance(value, str):
        try:
            number = float(value)  # YAML reads 1e18 as a string
        except ValueError:
            pass
        else:
            return _finite(number, key)
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads `off`/`on`/`no`/`yes` as booleans
        return "on" if value else "off"
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise SpeechBudgetError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    return value


def _finite(value: float, key: str) -> float:
    """NaN slips through every ``<= 0`` range check (a NaN budget never ends), inf is never reached."""
    if not math.isfinite(value):
        raise SpeechBudgetError(f"config key '{key}' must be a finite number, got {value!r}")
    return value


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys name the valid ones."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in (data or {}).items():
        if k not in names:
            raise SpeechBudgetError(f"unknown config key '{prefix}{k}'; valid keys: {', '.join(names)}")
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    return cls(**kwargs)


def to_dict(obj: Any) -> Dict[str, Any]:
    return dataclasses.asdict(obj)


def parse_overrides(overrides: Sequence[str]) -> Dict[str, Any]:
    """``["optim.lr=0.01", "budget.steps=100"]`` -> nested dict, values parsed as YAML scalars."""
    out: Dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise SpeechBudgetError(f"override {item!r} must look like key=value (e.g. budget.steps=100)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def deep_merge(base: Dict[str, Any], upd: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key written twice in one mapping (two ``finetune:`` blocks) is an
    error at its line instead of the last one silently winning."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise SpeechBudgetError(f"recipe {path} does not exist (see `speechbudget recipes list`)")
    text = read_user_text(path, "recipe")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpeechBudgetError(
            f"recipe {path} is not valid YAML{where}: {getattr(e, 'problem', e)}"
        ) from None
    if not isinstance(data, dict):
        raise SpeechBudgetError(f"recipe {path} must be a mapping of sections (pretrain:, finetune:, ...)")
    return data


def load_train_config(
    recipe: Union[str, Path, Mapping[str, Any]], section: str, overrides: Sequence[str] = ()
) -> TrainConfig:
    """The ``section`` (pretrain / finetune) of a recipe, with top-level defaults and overrides.

    Top-level keys that are TrainConfig fields (e.g. ``exp_dir``, ``seed``) apply to every
    section; a section's own keys win; command-line overrides win over both.
    """
    data = dict(recipe) if isinstance(recipe, Mapping) else load_yaml(recipe)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    merged: Dict[str, Any] = {k: v for k, v in data.items() if k in names}
    merged = deep_merge(merged, data.get(section) or {})
    ov = parse_overrides(overrides)
    ov = deep_merge({k: v for k, v in ov.items() if k != section}, ov.get(section, {}))
    merged = deep_merge(merged, ov)
    cfg = from_dict(TrainConfig, merged, prefix=f"{section}.")
    check_ranges(cfg, section)
    if not cfg.exp_dir:
        raise SpeechBudgetError(f"recipe needs exp_dir (top level or {section}.exp_dir)")
    return cfg


TASKS = ("ctc", "classify")


def classify_rules(c: ClassifyConfig) -> List[tuple]:
    """Range rules of the ``classify:`` section, checked with the others by :func:`check_ranges`."""
    return [
        (
            "classify.pooling",
            c.pooling in ("auto", "cls", "mean", "attention"),
            "must be auto, cls, mean or attention",
        ),
        ("classify.loss", c.loss in (None, "ce", "bce"), "must be ce or bce"),
        ("classify.label_smoothing", 0 <= c.label_smoothing < 1, "must be in [0, 1)"),
        ("classify.mixup.prob", 0 <= c.mixup.prob <= 1, "must be between 0 and 1"),
        ("classify.mixup.alpha", c.mixup.alpha > 0, "must be positive"),
        ("classify.time_masks.count", c.time_masks.count >= 0, "must be >= 0"),
        ("classify.freq_masks.count", c.freq_masks.count >= 0, "must be >= 0"),
        ("classify.time_masks.width", c.time_masks.width >= 1, "must be at least 1"),
        ("classify.freq_masks.width", c.freq_masks.width >= 1, "must be at least 1"),
        ("classify.gain_db", 0 <= c.gain_db <= 40, "must be between 0 and 40"),
        ("classify.dropout", 0 <= c.dropout < 1, "must be in [0, 1)"),
        ("classify.noise_prob", 0 <= c.noise_prob <= 1, "must be between 0 and 1"),
        ("classify.encoder_lr_scale", 0 < c.encoder_lr_scale <= 1, "must be in (0, 1]"),
        ("classify.max_stats_cuts", c.max_stats_cuts >= 1, "must be at least 1"),
    ]


def ctc_augment_rules(c: CtcConfig) -> List[tuple]:
    """Range rules of the CTC augmentation keys."""
    return [
        ("ctc.time_masks", c.time_masks >= 0, "must be >= 0"),
        ("ctc.freq_masks", c.freq_masks >= 0, "must be >= 0"),
        ("ctc.time_mask_width", c.time_mask_width >= 1, "must be at least 1"),
        ("ctc.freq_mask_width", c.freq_mask_width >= 1, "must be at least 1"),
        ("ctc.time_mask_max_fraction", 0 < c.time_mask_max_fraction < 1, "must be in (0, 1)"),
        ("ctc.time_warp", c.time_warp >= 0, "must be >= 0 (0 = off)"),
        ("ctc.vtlp", 0 <= c.vtlp <= 0.3, "must be between 0 (off) and 0.3 (warp factors 0.7-1.3)"),
        ("ctc.tempo", 0 <= c.tempo <= 1, "must be between 0 (off) and 1 (stretch factors 0.5-2)"),
        ("ctc.edge_jitter", 0 <= c.edge_jitter <= 0.5, "must be between 0 (off) and 0.5 seconds"),
        ("ctc.mixup", 0 <= c.mixup <= 1, "must be a share between 0 (off) and 1"),
        ("ctc.consistency", c.consistency >= 0, "must be >= 0 (0 = off; CR-CTC's weight is 0.2)"),
        ("ctc.entropy_weight", 0 <= c.entropy_weight <= 1, "must be between 0 (off) and 1"),
        ("ctc.inter_ctc_weight", 0 <= c.inter_ctc_weight < 1, "must be between 0 (off) and 1 (exclusive)"),
        (
            "ctc.inter_ctc_layer",
            c.inter_ctc_layer >= 0,
            "must be >= 0 (a block, 1-based; 0 = the middle one)",
        ),
        ("ctc.speaker_adversary", 0 <= c.speaker_adversary <= 10, "must be between 0 (off) and 10"),
        (
            "ctc.consistency",
            c.consistency == 0 or c.spec_augment,
            "needs ctc.spec_augment: true (the two views differ by its draws)",
        ),
        (
            "ctc.speed_perturb",
            all(0.5 <= f <= 2.0 for f in c.speed_perturb)
            and len(set(c.speed_perturb)) == len(c.speed_perturb),
            "must be distinct factors between 0.5 and 2.0, e.g. [0.9, 1.0, 1.1]",
        ),
        ("ctc.reverb_prob", 0 <= c.reverb_prob <= 1, "must be between 0 and 1"),
        ("ctc.speaker_cvn", c.speaker_cmn or not c.speaker_cvn, "needs ctc.speaker_cmn: true"),
        (
            "ctc.encoder_dropout",
            c.encoder_dropout is None or 0 <= c.encoder_dropout < 1,
            "must be in [0, 1) (or null: the encoder's own)",
        ),
    ]


def budget_rules(b: BudgetConfig) -> List[tuple]:
    """Each limit a recipe gives must be positive; whether one is given at all is checked when
    training starts (a plan may still fill it in)."""
    rules = [
        (f"budget.{k}", getattr(b, k) is None or getattr(b, k) > 0, f"must be positive (got {getattr(b, k)})")
        for k in ("flops", "gpu_hours", "wall_hours", "audio_hours", "steps")
    ]
    ok = b.utilisation is None or 0 < b.utilisation <= 1
    return rules + [("budget.utilisation", ok, f"must be in (0, 1] (got {b.utilisation})")]


def task_rules(cfg: TrainConfig) -> List[tuple]:
    """Keys of the other task are refused, not ignored: a classifier would silently start from
    scratch with ``ctc.init_checkpoint``, CTC would silently drop ``distill``."""
    return [
        (
            "ctc.init_checkpoint",
            not (cfg.task == "classify" and cfg.ctc.init_checkpoint),
            "is for CTC; a classifier starts from classify.init_checkpoint",
        ),
        ("distill", not (cfg.task == "ctc" and cfg.distill is not None), "is for task: classify (CMKD)"),
    ]


def check_ranges(cfg: TrainConfig, section: str) -> None:
    """Values that parse but make no sense stop here, with the key named."""
    rules = [
        ("max_duration", cfg.max_duration > 0, "must be positive"),
        ("num_buckets", cfg.num_buckets >= 2, "must be at least 2 (lhotse's bucketing sampler)"),
        ("grad_accum", cfg.grad_accum >= 1, "must be at least 1"),
        ("train_speakers", cfg.train_speakers is None or cfg.train_speakers >= 1, "must be at least 1"),
        ("checkpoint_every", cfg.checkpoint_every >= 1, "must be at least 1"),
        ("keep_last", cfg.keep_last >= 1, "must be at least 1"),
        (
            "average_last",
            0 <= cfg.average_last <= cfg.keep_last,
            f"must be between 0 (off) and keep_last ({cfg.keep_last}): only kept checkpoints can be averaged",
        ),
        ("num_workers", cfg.num_workers >= 0, "must be 0 (load in this process) or more"),
        ("hubert.temperature", cfg.hubert.temperature > 0, "must be positive (the logits are divided by it)"),
        *budget_rules(cfg.budget),
        ("log_every", cfg.log_every >= 1, "must be at least 1"),
        ("profile_steps", cfg.profile_steps >= 0, "must be 0 (off) or more"),
        ("max_bad_steps", cfg.max_bad_steps >= 1, "must be at least 1"),
        ("optim.lr", cfg.optim.lr > 0, "must be positive"),
        ("hubert.mask_prob", 0 <= cfg.hubert.mask_prob <= 1, "must be between 0 and 1"),
        ("hubert.mask_length", cfg.hubert.mask_length >= 1, "must be at least 1"),
        (
            "hubert.vtlp",
            0 <= cfg.hubert.vtlp <= 0.3,
            "must be between 0 (off) and 0.3 (warp factors 0.7-1.3)",
        ),
        ("ctc.encoder_lr_scale", 0 < cfg.ctc.encoder_lr_scale <= 1, "must be in (0, 1]"),
        ("ctc.gain_db", 0 <= cfg.ctc.gain_db <= 40, "must be between 0 and 40"),
        *ctc_augment_rules(cfg.ctc),
        (
            "schedule.epoch_unit",
            cfg.schedule.epoch_unit in ("epochs", "hours"),
            "must be 'epochs' or 'hours'",
        ),
        (
            "ctc.tokenizer",
            cfg.ctc.tokenizer in TOKENIZER_TYPES,
            f"must be {', '.join(TOKENIZER_TYPES[:-1])} or {TOKENIZER_TYPES[-1]}",
        ),
        ("ctc.vocab_size", cfg.ctc.vocab_size >= 2, "must be at least 2"),
        ("optim.name", cfg.optim.name in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"),
        ("schedule.name", cfg.schedule.name in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
        ("device", cfg.device in ("auto", "cpu", "cuda"), "must be auto, cpu or cuda"),
        ("task", cfg.task in TASKS, f"must be {' or '.join(TASKS)}"),
        *classify_rules(cfg.classify),
        ("amp", cfg.amp in ("auto", "bf16", "off"), "must be auto, bf16 or off"),
    ]
    for key, ok, msg in rules + task_rules(cfg):
        if not ok:
            raise SpeechBudgetError(f"config key '{section}.{key}' {msg}")
