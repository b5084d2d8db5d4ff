"""Checkpoints: atomic writes, keep the last k, find the newest, average the last n.

A checkpoint holds everything a resumed run needs to continue as if never stopped: model,
optimizer, scheduler, sampler position, RNG states and the budget counters.
"""

from __future__ import annotations

import json
import pickle
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..atomic import atomic_output
from ..errors import SpeechBudgetError

PATTERN = re.compile(r"checkpoint-(\d+)\.pt$")
AVERAGED = "averaged.pt"  # a run's mean of its last ``average_last`` checkpoints


def atomic_save(obj: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def list_checkpoints(ckpt_dir: Path) -> List[Path]:
    found = [
        (int(m.group(1)), p) for p in Path(ckpt_dir).glob("checkpoint-*.pt") if (m := PATTERN.search(p.name))
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1] if ckpts else None


def final_model(run: Path) -> Optional[Path]:
    """What a run folder trained: its averaged.pt when the run averaged its last checkpoints and saved
    none since (or finished with it and had its checkpoints deleted to save disk), else its newest
    checkpoint; None before its first checkpoint."""
    found = latest_checkpoint(Path(run) / "checkpoints")
    averaged = Path(run) / AVERAGED
    if not averaged.is_file():
        return found
    if found is None:
        return averaged if _finished_with(Path(run), averaged) else None
    # memory-mapped: only the list of averaged files is read, not the weights
    if [Path(a).name for a in load(averaged, mmap=True).get("averaged", [])][-1:] == [found.name]:
        return averaged
    return found


def _finished_with(run: Path, averaged: Path) -> bool:
    """Whether the run's summary.json (written when training ends) names ``averaged`` as its model."""
    try:
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and Path(str(summary.get("averaged", ""))).name == averaged.name


def resolve(path: Path) -> Path:
    """A checkpoint file, or what a run folder (or its checkpoints/ folder) trained (:func:`final_model`)."""
    p = Path(path)
    if not p.is_dir():
        return p
    found = final_model(p.parent if p.name == "checkpoints" else p)
    if found is None:
        runs = sorted(d.name for d in p.iterdir() if d.is_dir() and next(d.rglob("checkpoint-*.pt"), None))
        if runs:  # a parent of runs (train-multi's schedules, a run's stages): say which to pick
            raise SpeechBudgetError(f"{p} holds several runs, not one; pick one of: {', '.join(runs)}")
        raise SpeechBudgetError(f"no checkpoint-*.pt in {p}; has the training stage run?")
    return found


def encoder_state(path: Path, expect_task: Optional[str] = None) -> Tuple[Any, Dict[str, torch.Tensor], Path]:
    """(encoder spec, encoder weights, checkpoint file) of a training checkpoint or run folder;
    ``expect_task="ctc"``: refuse a classifier's."""
    p = resolve(path)
    state = load(p)
    spec = (state.get("config") or {}).get("encoder")
    if spec is None:
        raise SpeechBudgetError(f"{p} is not a speechbudget training checkpoint (no encoder config)")
    if expect_task is not None and (state.get("config") or {}).get("task", "ctc") != expect_task:
        raise SpeechBudgetError(
            f"{p} is a classifier; start CTC from a pretraining or CTC checkpoint (a classifier's "
            "encoder was trained on its own features)"
        )
    weights = {k[len("encoder.") :]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    return spec, weights, p


def prune(ckpt_dir: Path, keep_last: int) -> None:
    for p in list_checkpoints(ckpt_dir)[:-keep_last] if keep_last > 0 else []:
        p.unlink(missing_ok=True)


def rng_state() -> Dict[str, Any]:
    """Every generator's state as tensors and plain values, so a checkpoint loads with weights_only."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    keys = keys.numpy() if torch.is_tensor(keys) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), *rest))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


#: the only non-plain types a checkpoint may hold: numpy's RNG state as older versions stored it
#: (array reconstruction only; any other class or function is refused)
NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, np.dtype(np.uint32).__class__]
try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct
NUMPY_ARRAY_GLOBALS.append(_reconstruct)


def load(path: Path, map_location: str = "cpu", mmap: bool = False) -> Dict[str, Any]:
    """A checkpoint's tensors and plain values, never its code: checkpoints come from other people
    (decode, ``ctc.init_checkpoint``, ``kmeans --checkpoint``), and unpickling arbitrary objects runs
    whatever they carry. A file that holds anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise SpeechBudgetError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(NUMPY_ARRAY_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            unsafe = []
        if not unsafe:
            raise SpeechBudgetError(
                f"checkpoint {path} is unreadable or holds more than tensors and plain values{_way_on(path)}"
            ) from None
        raise SpeechBudgetError(
            f"checkpoint {path} holds code or objects, not only tensors ({', '.join(unsafe[:3])}); refusing "
            "to load it: use a checkpoint written by speechbudget"
        ) from None
    except Exception as e:
        raise SpeechBudgetError(
            f"checkpoint {path} is unreadable ({type(e).__name__}){_way_on(path)}"
        ) from None


def _way_on(path: Path) -> str:
    """What to do about an unreadable checkpoint: a run's own can be deleted (the run resumes from the
    one before); one named on the command line must be replaced."""
    if path.parent.name == "checkpoints":
        return "; delete it and re-run to resume from the previous one"
    return "; a truncated or partly copied file? copy it again"


def save_average(paths: List[Path], out: Path) -> None:
    """``out``: the mean of the weights of ``paths``, with the newest one's config, stage and counters,
    so decode, ``init_checkpoint`` and ``kmeans --checkpoint`` read it like any checkpoint."""
    last = load(paths[-1])
    meta = {k: last[k] for k in ("config", "stage", "cost", "counters") if k in last}
    atomic_save({**meta, "model": average_models(paths), "averaged": [str(p) for p in paths]}, out)


def average_models(paths: List[Path]) -> Dict[str, torch.Tensor]:
    """Element-wise mean of the model weights of ``paths`` (integer buffers taken from the last)."""
    avg: Dict[str, torch.Tensor] = {}
    for i, p in enumerate(paths):
        state = load(p)["model"]
        for k, v in state.items():
            if not v.is_floating_point():
                avg[k] = v.clone()
            elif i == 0:
                avg[k] = v.clone().double()
            else:
                avg[k] += v.double()
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in avg.items()}
