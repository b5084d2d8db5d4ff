"""Registry of named encoder presets across families.

Each family module (``zipformer``, ``transformer``, ``bimamba``; ``aum`` and ``ast`` for audio
classification, in ``audio_mamba`` and ``spectrogram_transformer``; ``mobilenet``, the CNN teacher of
knowledge distillation) exposes ``PRESETS`` (name ->
config dict of keyword arguments) and ``build(**config) -> Encoder``. A preset or a config
dict ``{"family": ..., **kwargs}`` builds an encoder; recipes use either.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Mapping, Union

from ..errors import SpeechBudgetError
from .base import Encoder

FAMILIES = ("zipformer", "transformer", "bimamba", "aum", "ast", "mobilenet")
MODULES = {"aum": "audio_mamba", "ast": "spectrogram_transformer"}  # family -> module, where they differ


def _family_module(family: str):
    if family not in FAMILIES:
        raise SpeechBudgetError(f"unknown encoder family {family!r}; choose one of {', '.join(FAMILIES)}")
    return importlib.import_module(f"speechbudget.models.{MODULES.get(family, family)}")


def all_presets() -> Dict[str, Dict[str, Any]]:
    """name -> config dict with ``family`` filled in, over every family."""
    out: Dict[str, Dict[str, Any]] = {}
    for family in FAMILIES:
        mod = _family_module(family)
        for name, cfg in mod.PRESETS.items():
            out[name] = {"family": family, **cfg}
    return out


def preset_names() -> List[str]:
    return list(all_presets())


def resolve(spec: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """A preset name, or a config dict (optionally ``{"preset": name, **overrides}``) -> full config."""
    presets = all_presets()
    if isinstance(spec, str):
        if spec not in presets:
            raise SpeechBudgetError(
                f"unknown encoder preset {spec!r}; run `speechbudget models list` (known: {', '.join(presets)})"
            )
        return dict(presets[spec])
    cfg = dict(spec)
    if "preset" in cfg:
        base = resolve(cfg.pop("preset"))
        base.update(cfg)
        cfg = base
    if "family" not in cfg:
        raise SpeechBudgetError(f"encoder config needs 'preset' or 'family' ({', '.join(FAMILIES)})")
    return cfg


def with_overrides(spec: Union[str, Mapping[str, Any]], **overrides: Any) -> Dict[str, Any]:
    """``spec`` with some keyword arguments replaced, kept as a spec (a checkpoint stores it)."""
    out = {"preset": spec} if isinstance(spec, str) else dict(spec)
    out.update(overrides)
    return out


def build_encoder(spec: Union[str, Mapping[str, Any]]) -> Encoder:
    cfg = resolve(spec)
    family = cfg.pop("family")
    mod = _family_module(family)
    try:
        encoder = mod.build(**cfg)
    except TypeError as e:  # unknown keyword in a user config
        raise SpeechBudgetError(f"bad {family} encoder config: {e}") from None
    # the config it was built from: the cost catalogue counts each architecture once per process
    encoder.built_from = {"family": family, **cfg}
    return encoder
