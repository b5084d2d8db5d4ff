"""What an hour of audio costs each candidate encoder in training: counted once, cached.

Shared by the planner (which candidates a budget affords) and calibration (the FLOPs of the
steps it times), so both predict with exactly the accounting the trainer charges.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .. import atomic
from ..config import HubertConfig
from ..cost.devices import cache_dir
from ..cost.flops import training_flops
from ..objectives.hubert import head_macs

DEFAULT_CLUSTERS = 500  # k2SSL's targets; the head cost depends on it
#: the length train.setup counts a run's cost at: counting the same way makes the planned hours
#: the hours the run will really process. (Tracing costs the same at 4 s or 10 s: it is per-op
#: overhead, so there is nothing to gain from a shorter count and scaling.)
COUNT_SECONDS = 10.0
FINAL_DIM = HubertConfig().final_dim  # the HuBERT head the recipe will build


# ------------------------------------------------------------------------------- counting costs
@dataclass(frozen=True)
class CandidateCost:
    """One candidate encoder and what an hour of audio costs it in training."""

    name: str
    family: str
    spec: Union[str, Dict[str, Any]]  # preset name, or config dict with lists (a recipe's encoder)
    kind: str  # "preset" or "grid"
    params: int  # encoder parameters: the N of the scaling law
    macs_per_audio_second: float  # encoder forward
    head_macs_per_frame: float  # HuBERT projection + cosine logits
    frame_rate_hz: float
    layers: int
    width: int

    @property
    def flops_per_hour(self) -> float:
        return training_flops(
            3600.0, self.macs_per_audio_second, self.head_macs_per_frame, self.frame_rate_hz
        )


def _shape(cfg: Dict[str, Any]) -> Tuple[int, int]:
    """(layers, width) of a resolved config: how deep and how wide, for tables and grids."""
    if cfg["family"] == "zipformer":
        layers, dims = cfg.get("num_layers", 1), cfg.get("dims", 0)
        stacks = len(cfg.get("downsampling", ()))
        layers = sum(layers) if isinstance(layers, (list, tuple)) else stacks * layers
        return layers, max(dims) if isinstance(dims, (list, tuple)) else dims
    return int(cfg.get("layers", 0)), int(cfg.get("dim", 0))


_FINGERPRINT: Optional[str] = None


def _code_fingerprint() -> str:
    """Hash of the code a count depends on: the cache must not outlive a model change."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        root = Path(__file__).resolve().parents[1]
        files = sorted((root / "models").glob("*.py")) + [
            root / "cost" / "flops.py",
            root / "objectives" / "hubert.py",
        ]
        h = hashlib.sha1(torch.__version__.encode())
        for f in files:
            h.update(f.read_bytes())
        _FINGERPRINT = h.hexdigest()
    return _FINGERPRINT


class CostCache:
    """Counted costs on disk, so that only the first plan on a machine pays for tracing."""

    def __init__(self, path: Optional[Path]):
        self.path = path
        self.entries: Dict[str, Dict[str, float]] = {}
        if path is not None and path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                self.entries = {}  # a cache is disposable: recount

    @staticmethod
    def key(cfg: Dict[str, Any], num_clusters: int) -> str:
        blob = json.dumps(
            {
                "cfg": cfg,
                "seconds": COUNT_SECONDS,
                "clusters": num_clusters,
                "final_dim": FINAL_DIM,
                "code": _code_fingerprint(),
            },
            sort_keys=True,
            default=list,
        )
        return hashlib.sha1(blob.encode()).hexdigest()

    def get(self, key: str) -> Optional[Dict[str, float]]:
        return self.entries.get(key)

    def update(self, new: Dict[str, Dict[str, float]]) -> None:
        if not new:
            return
        if self.path is not None and self.path.is_file():  # keep what another process added meanwhile
            self.entries = {**CostCache(self.path).entries, **self.entries}
        self.entries.update(new)
        if self.path is not None:
            try:
                atomic.write_json(self.path, self.entries, sort_keys=True)
            except OSError:
                pass  # read-only home: counting still works, just uncached


def _count_encoder(spec, num_clusters: int) -> Dict[str, float]:
    from ..models.catalog import encoder_cost

    cost = encoder_cost(spec, seconds=COUNT_SECONDS)
    return {
        "params": int(cost["params"]),
        "macs_per_audio_second": float(cost["macs_per_audio_second"]),
        "head_macs_per_frame": float(head_macs(cost["output_dim"], FINAL_DIM, num_clusters)),
        "frame_rate_hz": float(cost["frame_rate_hz"]),
    }


def count_configs(
    cfgs: Sequence[Dict[str, Any]],
    num_clusters: int = DEFAULT_CLUSTERS,
    cache: Optional[CostCache] = None,
    progress=None,
) -> List[Dict[str, float]]:
    """Counted costs of resolved configs: from the disk cache, or counted now (a few seconds each
    the first time in a process: :func:`speechbudget.models.catalog.encoder_cost`)."""
    cache = cache if cache is not None else default_cache()
    keys = [CostCache.key(c, num_clusters) for c in cfgs]
    known = {k: cache.get(k) for k in keys if cache.get(k) is not None}
    missing = {k: cfg for k, cfg in zip(keys, cfgs) if k not in known}
    track = progress or (lambda items, total=None: items)
    counted = {}
    try:
        for key in track(list(missing), total=len(missing)):
            counted[key] = _count_encoder(missing[key], num_clusters)
    finally:  # an interrupted first plan keeps what it counted
        cache.update(counted)
    known.update(counted)
    return [known[k] for k in keys]


def default_cache() -> CostCache:
    return CostCache(cache_dir() / "encoder_costs.json")


def make_candidate(
    spec, cfg: Dict[str, Any], counted: Dict[str, float], kind: str, name: Optional[str] = None
) -> CandidateCost:
    layers, width = _shape(cfg)
    label = name or (spec if isinstance(spec, str) else f"{cfg['family']}-w{width}-l{layers}")
    return CandidateCost(
        name=label,
        family=cfg["family"],
        spec=spec if isinstance(spec, str) else cfg,
        kind=kind,
        layers=layers,
        width=width,
        **counted,
    )


def count_cost(
    spec, num_clusters: int = DEFAULT_CLUSTERS, cache: Optional[CostCache] = None
) -> CandidateCost:
    """Cost of one preset or config dict (cached per config, in memory and on disk)."""
    from ..models.presets import resolve

    cfg = jsonable_config(resolve(spec))
    [counted] = count_configs([cfg], num_clusters, cache)
    return make_candidate(spec, cfg, counted, "preset" if isinstance(spec, str) else "config")


def jsonable_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Tuples to lists: recipes are YAML, and YAML's safe dumper knows no tuples."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
