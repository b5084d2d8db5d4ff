"""What an hour of audio costs each candidate encoder in training: counted once, cached.

Shared by the planner (which candidates a budget affords) and calibration (the FLOPs of the
steps it times), so both predict with exactly the accounting the trainer charges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..config import HubertConfig
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
    cfgs: Sequence[Dict[str, Any]], num_clusters: int = DEFAULT_CLUSTERS, progress=None
) -> List[Dict[str, float]]:
    """Counted costs of resolved configs (a few seconds each the first time on a machine, then from
    the count cache: :func:`speechbudget.models.catalog.encoder_cost`)."""
    track = progress or (lambda items, total=None: items)
    return [_count_encoder(cfg, num_clusters) for cfg in track(list(cfgs), total=len(cfgs))]


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


def count_cost(spec, num_clusters: int = DEFAULT_CLUSTERS) -> CandidateCost:
    """Cost of one preset or config dict."""
    from ..models.presets import resolve

    cfg = jsonable_config(resolve(spec))
    [counted] = count_configs([cfg], num_clusters)
    return make_candidate(spec, cfg, counted, "preset" if isinstance(spec, str) else "config")


def jsonable_config(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Tuples to lists: recipes are YAML, and YAML's safe dumper knows no tuples."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
