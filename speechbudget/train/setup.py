"""What every training stage does before its loop: data, encoder, cost, loader, trainer."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Dict

import torch
from lhotse import CutSet

from .. import atomic
from ..config import TrainConfig, split_csv
from ..data.dataset import SpeechDataset, make_loader, make_sampler
from ..data.manifests import cut_speaker, load_cuts, save_manifest, split_file, subset_hours
from ..errors import SpeechBudgetError
from ..models.base import Encoder
from ..models.presets import build_encoder
from .distributed import DistInfo


def load_train_cuts(spec: str, what: str = "train_cuts") -> CutSet:
    paths = split_csv(spec)
    if not paths:
        raise SpeechBudgetError(
            f"the recipe sets no {what} (a cuts_*.jsonl.gz from `speechbudget prepare` or `kmeans`)"
        )
    split = "dev" if what == "dev_cuts" else "train"  # a corpus folder: that split, never its test
    cuts = [load_cuts(split_file(p, split, what)) for p in paths]
    return cuts[0] if len(cuts) == 1 else CutSet.from_cuts(c for cs in cuts for c in cs)


def check_train_inputs(cfg: TrainConfig) -> None:
    """The training cuts exist and are cut manifests: checked before the run's folder is made, so a
    typo or a stage not yet run leaves no empty run folder behind (opening them is lazy, cheap)."""
    load_train_cuts(cfg.train_cuts)
    if split_csv(cfg.extra_train_cuts):
        load_train_cuts(cfg.extra_train_cuts, "extra_train_cuts")


def subset_speakers(cuts: CutSet, n: int, seed: int) -> CutSet:
    """The cuts of ``n`` speakers drawn with ``seed`` (cuts without a speaker count as one, '')."""
    cuts = cuts.to_eager()
    names = sorted({cut_speaker(c) for c in cuts})
    if n > len(names):
        raise SpeechBudgetError(
            f"train_speakers is {n} but the training cuts have only {len(names)} speakers"
        )
    chosen = set(random.Random(seed).sample(names, n))
    return cuts.filter(lambda c: cut_speaker(c) in chosen).to_eager()


def training_cuts(cfg: TrainConfig, is_main: bool) -> CutSet:
    """``train_cuts``, cut down to ``train_speakers`` and ``train_hours`` when asked (kept in
    EXP/train_cuts.jsonl.gz), then ``extra_train_cuts`` added whole."""
    cuts = load_train_cuts(cfg.train_cuts)
    if cfg.train_hours is not None or cfg.train_speakers is not None:
        if cfg.train_speakers is not None:
            cuts = subset_speakers(cuts, cfg.train_speakers, cfg.seed)
        if cfg.train_hours is not None:
            cuts = subset_hours(cuts, cfg.train_hours, cfg.seed)
        if is_main:
            save_manifest(cuts, Path(cfg.exp_dir) / "train_cuts.jsonl.gz")
    if not split_csv(cfg.extra_train_cuts):
        return cuts
    cuts, extra = cuts.to_eager(), load_train_cuts(cfg.extra_train_cuts, "extra_train_cuts").to_eager()
    shared = sorted(set(cuts.ids) & set(extra.ids))
    if shared:
        raise SpeechBudgetError(
            f"extra_train_cuts repeat {len(shared)} cut(s) of train_cuts (e.g. {shared[0]}): name other manifests"
        )
    return CutSet.from_cuts(list(cuts) + list(extra))


def dev_loader(cfg: TrainConfig, dataset: SpeechDataset):
    """Fixed-order batches of ``dev_cuts`` for validation (None when the recipe has none)."""
    if not cfg.dev_cuts:
        return None
    from lhotse.dataset import SimpleCutSampler

    cuts = load_train_cuts(cfg.dev_cuts, "dev_cuts")
    return make_loader(dataset, SimpleCutSampler(cuts, max_duration=cfg.max_duration, shuffle=False), 0)


def new_encoder(cfg: TrainConfig) -> Encoder:
    torch.manual_seed(cfg.seed)  # same seed, same initial weights
    return build_encoder(cfg.encoder)


def encoder_cost_cached(encoder: Encoder, exp_dir: Path, head_macs_per_frame: int) -> Dict[str, float]:
    """Forward multiply-adds per second of input, counted once per experiment and kept in cost.json
    so a resumed run accounts its budget exactly as the first one did. Transformer-family encoders
    (attention quadratic in length, token merging saving more on short clips) are also counted at
    several lengths, and batches are charged at their own length (``cost.flops.macs_rate``)."""
    path = Path(exp_dir) / "cost.json"
    if path.is_file():
        return json.loads(path.read_text())
    from ..models.catalog import encoder_cost

    c = encoder_cost(encoder, seconds=10.0)
    cost = {
        "macs_per_input_second": float(c["macs_per_audio_second"]),
        "head_macs_per_frame": float(head_macs_per_frame),
        "frame_rate_hz": float(encoder.frame_rate_hz),
        "input_rate_hz": float(encoder.input_rate_hz),
        "params": int(c["params"]),
    }
    if hasattr(encoder, "tome"):  # Transformers: attention, and merging, make the cost depend on length
        from ..cost.flops import length_curve

        cost["macs_by_length"] = length_curve(encoder, count=encoder_cost)
    atomic.write_json(path, cost)
    return cost


def input_kind(encoder: Encoder) -> str:
    return "waveform" if encoder.input_dim == 1 else "fbank"


def encoder_input(encoder: Encoder) -> Dict[str, object]:
    """What ``encoder`` reads, as dataset arguments: waveform, stored 80-bin fbank, or on-the-fly fbank
    of its own bin count (128 for AST, AuM and MobileNet presets), whatever the stage."""
    kind = input_kind(encoder)
    return {"input_kind": kind, "num_mel_bins": encoder.input_dim if kind == "fbank" else 80}


def dataset_for(encoder: Encoder, **kwargs) -> SpeechDataset:
    return SpeechDataset(**encoder_input(encoder), **kwargs)


def make_data(cfg: TrainConfig, cuts: CutSet, dataset: SpeechDataset, dist: DistInfo):
    sampler = make_sampler(
        cuts,
        cfg.max_duration,
        cfg.num_buckets,
        cfg.seed,
        shuffle=True,
        world_size=dist.world_size,
        rank=dist.rank,
    )
    return sampler, make_loader(dataset, sampler, cfg.num_workers)


def total_seconds(cuts: CutSet) -> float:
    return float(sum(c.duration for c in cuts))
