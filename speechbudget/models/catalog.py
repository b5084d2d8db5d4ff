"""Descriptions of presets for `speechbudget models`: parameters, frame rate, FLOPs."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch

from ..errors import SpeechBudgetError
from .presets import FAMILIES, all_presets, build_encoder


def preset_rows(family: Optional[str] = None) -> List[Dict[str, Any]]:
    if family is not None and family not in FAMILIES:
        raise SpeechBudgetError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    rows = []
    for name, cfg in all_presets().items():
        if family and cfg["family"] != family:
            continue
        with torch.device("meta"):  # shapes only: no memory, no init time for the 300M models
            enc = build_encoder(name)
        rows.append(
            {
                "name": name,
                "family": cfg["family"],
                "params": sum(p.numel() for p in enc.parameters()),
                "frame_rate_hz": enc.frame_rate_hz,
                "output_dim": enc.output_dim,
            }
        )
    return rows


def describe_preset(name: str, seconds: float = 10.0, breakdown: bool = False) -> Dict[str, Any]:
    """Parameters, output frame rate and forward cost (fvcore) of a preset."""
    from ..budget.flops import encoder_cost

    cfg = all_presets().get(name)
    if cfg is None:
        raise SpeechBudgetError(f"unknown preset {name!r}; run `speechbudget models list`")
    c = encoder_cost(name, seconds=seconds)
    d = {
        "name": name,
        "family": cfg["family"],
        "params": c["params"],
        "encoder_params": c.get("encoder_params"),
        "frame_rate_hz": c["frame_rate_hz"],
        "gflops_per_audio_second": c["gflops_per_audio_second"],
        "gmacs_per_audio_second": c["macs_per_audio_second"] / 1e9,
        "flops_convention": "FLOPs = 2 x multiply-adds",
        "counted_at_seconds": seconds,
        "unsupported": c.get("unsupported") or {},
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
    }
    if breakdown:
        d["by_module"] = c["by_module"]
    return d
