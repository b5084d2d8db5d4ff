"""Descriptions of presets for `speechbudget models`: parameters, frame rate, FLOPs."""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from ..cost.count_cache import count_cache
from ..cost.flops import module_cost, training_flops
from ..errors import SpeechBudgetError
from .presets import FAMILIES, all_presets, build_encoder

EncoderSpec = Union[str, Mapping[str, Any], nn.Module]
_COST_CACHE: Dict[str, dict] = {}
_FINGERPRINT: Optional[str] = None


def _code_fingerprint() -> str:
    """Hash of what a count depends on besides the architecture: the model code, the counting code,
    torch and fvcore. A count on disk must not outlive a change to any of them."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha1(f"{torch.__version__} {metadata.version('fvcore')}".encode())
        for f in sorted((root / "models").glob("*.py")) + [root / "cost" / "flops.py"]:
            h.update(f.read_bytes())
        _FINGERPRINT = h.hexdigest()
    return _FINGERPRINT


def _count_key(built_from: Mapping[str, Any], encoder: nn.Module, seconds: float, batch: int) -> str:
    shapes = [(n, list(t.shape)) for n, t in encoder.state_dict().items()]
    blob = json.dumps(
        [built_from, shapes, float(seconds), int(batch), _code_fingerprint()], sort_keys=True, default=str
    )
    return hashlib.sha1(blob.encode()).hexdigest()


def _shapes_only(spec: Union[str, Mapping[str, Any]]) -> nn.Module:
    """The encoder built on the meta device: shapes, no memory, no initialisation (seconds for a
    300M-parameter model). A module that cannot be created there gets a real build, the caller's
    RNG untouched."""
    try:
        with torch.device("meta"):
            return build_encoder(spec)
    except SpeechBudgetError:
        raise
    except Exception:  # noqa: BLE001 - any module that cannot live on meta: pay for a real build
        with torch.random.fork_rng(devices=[]):
            return build_encoder(spec)


def _countable(encoder: nn.Module) -> nn.Module:
    """A meta-device encoder with real memory and constant weights (a count needs shapes, and a
    finite forward); any other encoder as it is."""
    if not any(t.is_meta for t in [*encoder.parameters(), *encoder.buffers()]):
        return encoder
    encoder = encoder.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*encoder.parameters(), *encoder.buffers()]:
            t.fill_(0.01) if t.is_floating_point() else t.zero_()
    return encoder


def encoder_cost(spec_or_encoder: EncoderSpec, seconds: float = 10.0, batch: int = 1) -> dict:
    """:func:`module_cost` of a preset, config or built encoder (and its ``output_dim``): the one
    place the planner, the trainer and `models` count an encoder.

    fvcore traces the whole forward pass (seconds for a small Zipformer), and every training run,
    fold and planner candidate counts its encoder. An encoder built by :func:`build_encoder`, or a
    preset or config (built on the meta device to be looked up), is counted once per machine and
    (config, parameter shapes, seconds, batch, code): kept in memory and in the cache folder's
    ``encoder_counts.json``. A layer replaced in place changes the shapes; any other module is
    counted every call.
    """
    encoder = spec_or_encoder if isinstance(spec_or_encoder, nn.Module) else _shapes_only(spec_or_encoder)
    built_from = getattr(encoder, "built_from", None)
    if built_from is None:
        return _count(encoder, seconds, batch)
    key = _count_key(built_from, encoder, seconds, batch)
    if key not in _COST_CACHE:
        stored = count_cache().get(key)
        if stored is None:
            stored = _count(_countable(encoder), seconds, batch)
            count_cache().put(key, stored)
        _COST_CACHE[key] = stored
    return copy.deepcopy(_COST_CACHE[key])


def _count(encoder: nn.Module, seconds: float, batch: int) -> dict:
    return {**module_cost(encoder, seconds, batch), "output_dim": int(encoder.output_dim)}


def training_flops_per_audio_second(
    spec: EncoderSpec, head_macs_per_frame: float = 0, seconds: float = 10.0
) -> float:
    """Training FLOPs per second of audio: encoder forward + objective head, forward + backward.

    The head (e.g. HuBERT's projection onto cluster embeddings) runs once per output frame; its
    MACs per frame are the caller's, since it depends on the objective.
    """
    cost = encoder_cost(spec, seconds=seconds)
    return training_flops(
        1.0, cost["macs_per_audio_second"], float(head_macs_per_frame), cost["frame_rate_hz"]
    )


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
