"""Dataset-wide fbank mean and std for the AuM/AST normalisation ``(x - mean) / (2 std)``.

Both papers use one scalar mean and std over every frame and bin of the training set (AudioSet:
-4.27, 4.57). They are computed once from the training cuts and kept as ``feature_stats.json``
in the run folder, so fine-tuning, evaluation and prediction all normalise the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
from lhotse import CutSet

from ..atomic import write_json
from ..errors import SpeechBudgetError
from .features import NUM_MEL_BINS, cut_fbank

STATS_FILE = "feature_stats.json"


def compute_feature_stats(
    cuts: CutSet, num_mel_bins: int = NUM_MEL_BINS, max_cuts: Optional[int] = None
) -> Dict[str, float]:
    """Mean and std over all frames and bins of ``cuts``' ``num_mel_bins``-bin fbank (stored when the
    cuts have it at that size, else computed from the audio; float64 sums)."""
    total, total_sq, count = 0.0, 0.0, 0
    for i, cut in enumerate(cuts):
        if max_cuts is not None and i >= max_cuts:
            break
        feats = cut_fbank(cut, num_mel_bins)
        total += feats.sum()
        total_sq += np.square(feats).sum()
        count += feats.size
    if count == 0:
        raise SpeechBudgetError("no audio to compute feature statistics from (empty cut set)")
    mean = total / count
    std = float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
    return {"mean": float(mean), "std": std, "values": int(count), "num_mel_bins": int(num_mel_bins)}


def stats_path(path: Union[str, Path]) -> Path:
    """A manifest folder -> its ``feature_stats.json``; a file path is kept."""
    path = Path(path)
    return path / STATS_FILE if path.is_dir() or not path.suffix else path


def write_feature_stats(path: Union[str, Path], stats: Dict[str, float]) -> Path:
    out = stats_path(path)
    write_json(out, stats)
    return out


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def read_feature_stats(path: Union[str, Path]) -> Dict[str, float]:
    src = stats_path(path)
    if not src.is_file():
        raise SpeechBudgetError(f"no feature statistics at {src}; compute them from the training cuts first")
    try:
        stats = json.loads(src.read_text(encoding="utf-8"))
    except ValueError:
        stats = None
    if not (isinstance(stats, dict) and {"mean", "std"} <= set(stats) and _positive(stats["std"])):
        raise SpeechBudgetError(f"{src} is not a feature statistics file (needs mean and a positive std)")
    return stats
