"""Which corpus to prepare: a recipe's ``prepare:`` / ``labeled:`` section or one ``speechbudget
prepare`` call, validated against the source registry.

Kept apart from :mod:`speechbudget.data.prepare` (which does the work) so that the command line can
build its ``prepare <source>`` commands and their help without loading torch and lhotse.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from ..config import from_dict
from ..errors import SpeechBudgetError
from .audio import SAMPLE_RATE
from .sources import get_source, option, option_names


@dataclass
class PrepareOptions:
    """What every source shares: how the corpus is named, featurised and computed."""

    name: Optional[str] = option(
        help="Corpus name (default: the source name); the corpus goes to OUT/<name>/."
    )
    features: bool = option(True, help="Compute 80-dim fbank features.")
    force: bool = option(False, help="Redo splits that are already prepared.")
    num_jobs: int = option(1, help="Parallel worker processes.")
    executor: str = option("local", help="local (process pool) or dask.")
    scheduler: Optional[str] = option(help="Dask scheduler address for executor dask.")
    band_limit_hz: Optional[int] = option(
        help="Keep only frequencies below this (Hz): pretrain on the band the labelled audio has "
        "(8 kHz recordings such as FSDD: 4000)."
    )


@dataclass
class CorpusSpec:
    """A recipe's ``prepare:`` or ``labeled:`` section, or one ``speechbudget prepare`` call:
    which source, its own options, and the options every source shares."""

    source: str
    options: Any  # the source's options dataclass
    common: PrepareOptions = field(default_factory=PrepareOptions)

    @property
    def name(self) -> str:
        return self.common.name or self.source

    @classmethod
    def build(cls, source: str, values: Mapping[str, Any], key: str = "prepare") -> CorpusSpec:
        """Validate ``values`` (flat: source keys and shared keys together) against the registry."""
        src = get_source(source)
        shared = [f.name for f in dataclasses.fields(PrepareOptions)]
        own = option_names(src)
        unknown = [k for k in values if k not in shared and k not in own]
        if unknown:
            raise SpeechBudgetError(
                f"unknown key '{key}.{unknown[0]}' for source {source}; valid keys: "
                f"source, {', '.join(own + shared)}"
            )
        opts = from_dict(src.options, {k: v for k, v in values.items() if k in own}, prefix=f"{key}.")
        common = from_dict(PrepareOptions, {k: v for k, v in values.items() if k in shared}, prefix=f"{key}.")
        if src.path_field and getattr(opts, src.path_field) is None:
            raise SpeechBudgetError(
                f"{key}.{src.path_field} is required for source {source!r} (the corpus folder)"
            )
        for field_name, value in (("name", common.name), ("split", getattr(opts, "split", None))):
            if value is not None and (not _SAFE_NAME.fullmatch(str(value)) or str(value) in (".", "..")):
                raise SpeechBudgetError(
                    f"{key}.{field_name} {value!r} names a folder or file: use letters, digits, '.', '_' "
                    "and '-' only (no '/')"
                )
        if not 1 <= common.num_jobs <= 1024:
            raise SpeechBudgetError(f"{key}.num_jobs must be between 1 and 1024 (got {common.num_jobs})")
        if common.band_limit_hz is not None and not 0 < common.band_limit_hz < SAMPLE_RATE // 2:
            raise SpeechBudgetError(
                f"{key}.band_limit_hz must be between 1 and {SAMPLE_RATE // 2 - 1} Hz "
                f"(got {common.band_limit_hz}): the audio is {SAMPLE_RATE} Hz"
            )
        return cls(source, opts, common)

    @classmethod
    def from_config(cls, value: Any, key: str) -> CorpusSpec:
        if isinstance(value, CorpusSpec):
            return value
        if not isinstance(value, Mapping):
            raise SpeechBudgetError(f"config key '{key}' must be a mapping (source: NAME, then its options)")
        values = dict(value)
        return cls.build(str(values.pop("source", "synthetic")), values, key)

    def to_dict(self) -> Dict[str, Any]:
        """Flat, JSON-able: what prepare.json records and a re-run compares."""
        flat = {"source": self.source, **dataclasses.asdict(self.options), **dataclasses.asdict(self.common)}
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in flat.items()}


#: what a corpus or split name may hold: it becomes a folder and file names
_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
