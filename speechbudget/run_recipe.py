"""A `run` recipe's sections, typed, and the recipe read and checked whole before any stage starts.

`speechbudget run` (:mod:`speechbudget.pipeline`) runs what this module has accepted: a typo in
``finetune`` or an unknown source option is reported when the recipe is read, not after hours of
pretraining. Each section's keys are its dataclass's fields (``from_dict`` names unknown ones).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .config import (
    KmeansConfig,
    TrainSection,
    deep_merge,
    from_dict,
    load_train_config,
    load_yaml,
    parse_overrides,
)
from .data.corpus_spec import CorpusSpec
from .data.pool import PoolEntry, check_names
from .errors import SpeechBudgetError
from .folds import check_kind

#: ``tts:``'s corpus, in ``data/`` beside the prepared ones but made by the fine-tuning stage
TTS_CORPUS = "finetune-tts"


@dataclass
class PlanSection:
    budget: float = 0.0  # in `unit`
    unit: str = "flops"
    device: str = "cpu"
    family: str = "zipformer"
    presets: List[str] = field(default_factory=list)  # candidates (default: the family's presets + grid)
    grid: str = "none"  # none | small | full
    tome: List[int] = field(default_factory=list)  # also Transformer presets with r tokens merged per block
    law: Optional[str] = None  # a fitted law.json (default: the documented, uncalibrated law)
    use_recommendation: bool = False  # replace pretrain.encoder and budget.flops with the plan's choice
    #: run pilots first (this share of the budget, 0 < F < 0.5), fit the law on them, and plan what
    #: is left with it (plan/pilots.py); the pilots train like `pretrain:` and go to EXP/pilots/
    pilot_fraction: Optional[float] = None
    pilot_sizes: int = 4
    pilot_budgets: int = 3
    min_steps: int = 100  # pilots with fewer optimizer steps are not designed, nor fitted on
    bootstrap: int = 200  # refits of the pilots' law, for the best-size range


@dataclass
class DecodeSection:
    sets: List[str] = field(default_factory=lambda: ["test"])  # splits of the prepared corpus
    cuts: List[str] = field(default_factory=list)  # or explicit cut manifests (another corpus)
    method: str = "greedy"
    beam_size: int = 8


@dataclass(frozen=True)
class TtsSection:
    """``tts:``: the fine-tuning split's transcripts spoken by synthetic voices and added to its
    training cuts (the ``tts`` source's options and the options every source shares; the pipeline
    sets ``transcripts``: the fine-tuning split, a fold's own)."""

    spec: CorpusSpec

    @classmethod
    def from_config(cls, value: Any, key: str) -> TtsSection:
        if isinstance(value, TtsSection):
            return value
        if not isinstance(value, dict):
            raise SpeechBudgetError(
                f"config key '{key}' must be a mapping of the tts source's options "
                "(copies, speakers, noise_dir, snr, band_limit_hz; {} for the defaults)"
            )
        if "transcripts" in value or "source" in value:
            raise SpeechBudgetError(
                f"{key}.{'transcripts' if 'transcripts' in value else 'source'}: set by the pipeline "
                "(the fine-tuning split's transcripts, spoken by the tts source); drop it"
            )
        return cls(CorpusSpec.build("tts", {"name": TTS_CORPUS, **value}, key))

    def speaking(self, transcripts: Path) -> CorpusSpec:
        return dataclasses.replace(
            self.spec, options=dataclasses.replace(self.spec.options, transcripts=transcripts)
        )


@dataclass
class RunRecipe:
    exp_dir: str = ""
    name: str = ""
    description: str = ""
    seed: int = 0
    device: str = "auto"
    #: the pretraining corpus: `source:` plus that source's options (the flags of `prepare SOURCE`)
    prepare: CorpusSpec = field(default_factory=lambda: CorpusSpec.build("synthetic", {}))
    #: the transcribed corpus, when it is not the pretraining corpus (fine-tuning, dev and decoding
    #: read it; k-means, pretraining and the plan stay on `prepare`)
    labeled: Optional[CorpusSpec] = None
    #: more unlabeled corpora for k-means and pretraining, beside `prepare` (splits: [train] unless said)
    pool: List[PoolEntry] = field(default_factory=list)
    plan: Optional[PlanSection] = None
    kmeans: KmeansConfig = field(default_factory=KmeansConfig)
    kmeans2: Optional[KmeansConfig] = None  # HuBERT iteration 2: labels from a layer of the first model
    pretrain: TrainSection = field(default_factory=TrainSection)  # TrainConfig keys, checked on load
    finetune: TrainSection = field(default_factory=TrainSection)
    #: a CMKD teacher (finetune keys, `task: classify` implied) trained from scratch on the labelled
    #: training split; fine-tuning then distils from its logits (`finetune.distill`)
    teacher: Optional[TrainSection] = None
    #: more voices for fine-tuning (and the scratch baseline): its transcripts spoken by espeak-ng voices
    tts: Optional[TtsSection] = None
    scratch_baseline: bool = False  # also fine-tune from scratch with the same total compute
    #: train the scratch baseline in a second process beside kmeans -> pretrain -> finetune, the cores
    #: split between them (two 1-thread runs outdo one 2-thread run on a CPU). None = when it can:
    #: a CPU with >= 2 threads, FLOP budgets, no folds/teacher/kmeans2; false = after fine-tuning
    scratch_alongside: Optional[bool] = None
    decode: DecodeSection = field(default_factory=DecodeSection)
    #: "speakers": leave-one-speaker-out folds over the labelled non-test speakers before the final run
    folds: Optional[str] = None
    fold_seeds: int = 1  # fine-tune each fold with this many seeds (seed, seed + 1, ...)
    #: folds fine-tuned at once, each in a process of its own with its share of the threads (two
    #: 1-thread runs outdo one 2-thread run on a CPU); a fold's numbers depend on its thread count
    #: (the sums' order), not on the folds beside it: folds.json records the threads of each
    fold_jobs: int = 1


def load_run_recipe(path: Path, overrides: List[str]) -> Dict[str, Any]:
    """The recipe with its overrides, every section validated now: a typo in ``finetune`` must not
    wait hours for the pretraining stage to end before it is reported."""
    return validated_recipe(deep_merge(load_yaml(path), parse_overrides(overrides)), path)


def validated_recipe(data: Dict[str, Any], path: Path) -> Dict[str, Any]:
    """``data`` (a recipe with its overrides) once every section is checked."""
    r = from_dict(RunRecipe, data)  # validates every section, names unknown keys
    if r.pool:
        check_names(
            [("prepare", r.prepare.name), ("labeled", r.labeled and r.labeled.name)]
            + [(f"pool[{i}]", e.name) for i, e in enumerate(r.pool)]
        )
    check_kind(data.get("folds"))
    if r.tts is not None:
        if (data.get("finetune") or {}).get("task") == "classify":
            raise SpeechBudgetError(
                "tts: speaks transcripts for CTC fine-tuning; drop it for finetune.task: classify"
            )
        check_names(
            [("prepare", r.prepare.name), ("labeled", r.labeled and r.labeled.name), ("tts", r.tts.spec.name)]
        )
    if r.fold_seeds < 1:
        raise SpeechBudgetError(f"fold_seeds (--fold-seeds) must be 1 or more, got {r.fold_seeds}")
    if r.fold_jobs < 1:
        raise SpeechBudgetError(f"fold_jobs (--fold-jobs) must be 1 or more, got {r.fold_jobs}")
    if r.fold_seeds > 1 and not r.folds:
        raise SpeechBudgetError(
            f"fold_seeds {r.fold_seeds} (--fold-seeds) repeats the folds' fine-tuning: add --folds speakers "
            "(recipe: folds: speakers)"
        )
    from .decode import METHODS

    if r.decode.method not in METHODS:
        raise SpeechBudgetError(f"decode.method is {r.decode.method!r}; choose {', '.join(METHODS)}")
    if data.get("folds") and (data.get("finetune") or {}).get("task") == "classify":
        raise SpeechBudgetError(
            "folds: speakers scores WER of CTC recipes; drop it for finetune.task: classify"
        )
    if not data.get("exp_dir"):
        raise SpeechBudgetError(f"recipe {path} needs exp_dir")
    if data.get("teacher") is not None and (data.get("finetune") or {}).get("task") != "classify":
        raise SpeechBudgetError(
            "a teacher: section needs finetune.task: classify (CMKD distils a classifier)"
        )
    from .models.presets import resolve
    from .train.targets import check_kmeans_args

    for key in ("kmeans", "kmeans2"):
        km = getattr(r, key)
        if km is not None:
            check_kmeans_args(km.features, km.num_clusters, key, km.max_frames)
    for section in ("pretrain", "finetune", "teacher", "pretrain2"):
        encoder = (data.get(section) or {}).get("encoder")
        if encoder is not None:
            try:
                resolve(encoder)
            except SpeechBudgetError as e:
                raise SpeechBudgetError(f"{section}.encoder: {e}") from None
    top = {k: data[k] for k in ("seed", "device") if k in data}
    for section in (
        "pretrain",
        "finetune",
        "teacher",
    ):  # the stages fill in exp_dir and train_cuts themselves
        if section == "teacher" and data.get("teacher") is None:
            continue
        sec = {**(data.get(section) or {}), "exp_dir": str(Path(data["exp_dir"]) / section)}
        load_train_config({**top, section: sec}, section)
    return data
