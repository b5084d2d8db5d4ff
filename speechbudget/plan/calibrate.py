"""Measured model-FLOPs utilisation: how much of the device's peak a real training step reaches.

GPU-hours become FLOPs through ``hours x peak x utilisation``. The default utilisation is a guess
(cost/utilisation.py, from published runs); this module replaces it with a measurement: it times a few real
HuBERT training steps (forward, backward, optimizer) of each preset on a fixed random batch and
divides the FLOPs the trainer would account for that batch by the time and by the peak (measured
matmul rate on the CPU, datasheet on a GPU). Results live in one JSON file per machine, keyed by
device name and preset, so ``speechbudget plan`` can read them.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from .. import atomic
from ..cost.devices import (
    DEVICES,
    cache_dir,
    default_dtype,
    get_device,
    measure_cpu_peak,
    normalise_dtype,
)
from ..errors import SpeechBudgetError
from .costs import DEFAULT_CLUSTERS, count_cost

DEFAULT_BATCH = (4, 10.0)  # utterances x seconds: a small batch every preset fits on a CPU


def default_calibration_path() -> Path:
    return cache_dir() / "calibration.json"


def cpu_peak_cache() -> Path:
    return cache_dir() / "cpu_peak.json"


# ------------------------------------------------------------------------------------- reading
def load_calibration(path: Optional[Path] = None) -> Dict[str, Any]:
    """The calibration file as a dict (``{"devices": {}}`` when there is none yet)."""
    path = Path(path) if path is not None else default_calibration_path()
    if not path.is_file():
        return {"devices": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SpeechBudgetError(
            f"cannot read calibration {path}: {exc}; delete it and re-run calibrate"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
        raise SpeechBudgetError(
            f"{path} is not a speechbudget calibration file; delete it and re-run calibrate"
        )
    return data


def device_record(
    device: str, dtype: str, path: Optional[Path] = None, data: Optional[Dict[str, Any]] = None
) -> Optional[Dict[str, Any]]:
    """The calibration of ``device`` if it was measured in ``dtype``; a peak in another dtype
    would make the stored utilisations meaningless."""
    data = data if data is not None else load_calibration(path)
    record = data["devices"].get(_device_key(device))
    if record is None or record.get("dtype") != normalise_dtype(dtype):
        return None
    return record


def calibrated_utilisation(
    device: str,
    dtype: str,
    preset: Optional[str] = None,
    path: Optional[Path] = None,
    data: Optional[Dict[str, Any]] = None,
):
    """``(utilisation, source)`` for ``preset`` on ``device``, or ``(None, None)``.

    A preset that was not calibrated itself gets the median over the device's calibrated presets:
    utilisation depends on the machine much more than on the model shape.
    """
    record = device_record(device, dtype, path, data)
    if not record or not record.get("presets"):
        return None, None
    presets = record["presets"]
    if preset in presets:
        return float(presets[preset]["utilisation"]), "calibrated"
    values = [float(p["utilisation"]) for p in presets.values()]
    return statistics.median(values), f"calibrated (median of {len(values)} presets)"


def predict_step_seconds(
    preset: str,
    device: str,
    dtype: Optional[str] = None,
    batch_size: int = DEFAULT_BATCH[0],
    seconds: float = DEFAULT_BATCH[1],
    num_clusters: int = DEFAULT_CLUSTERS,
    path: Optional[Path] = None,
) -> float:
    """Step time the calibration predicts: accounted FLOPs / (peak x utilisation)."""
    dtype = dtype or default_dtype(get_device(device).kind)
    data = load_calibration(path)
    util, _ = calibrated_utilisation(device, dtype, preset, data=data)
    if util is None:
        raise SpeechBudgetError(
            f"{device} has no {dtype} calibration: run `speechbudget calibrate --presets {preset}`"
        )
    peak = device_record(device, dtype, data=data)["peak_flops"]
    return step_flops(preset, batch_size, seconds, num_clusters) / (peak * util)


# ------------------------------------------------------------------------------------ measuring
def step_flops(preset: Any, batch_size: int, seconds: float, num_clusters: int = DEFAULT_CLUSTERS) -> float:
    """Training FLOPs the trainer accounts for a full batch of ``batch_size`` x ``seconds``."""
    return count_cost(preset, num_clusters).flops_per_hour / 3600.0 * batch_size * seconds


def _random_batch(
    encoder, batch_size: int, seconds: float, num_clusters: int, device: torch.device
) -> Dict[str, Any]:
    frames = round(seconds * encoder.input_rate_hz)
    out_frames = int(frames * encoder.frame_rate_hz / encoder.input_rate_hz)
    return {
        "features": torch.randn(batch_size, frames, encoder.input_dim, device=device),
        "lengths": torch.full((batch_size,), frames, dtype=torch.int64, device=device),
        "kmeans": torch.randint(0, num_clusters, (batch_size, out_frames), device=device),
    }


def time_training_steps(
    preset: Any,
    steps: int = 3,
    batch_size: int = DEFAULT_BATCH[0],
    seconds: float = DEFAULT_BATCH[1],
    device: str = "cpu",
    dtype: Optional[str] = None,
    num_clusters: int = DEFAULT_CLUSTERS,
    warmup: int = 1,
) -> Dict[str, Any]:
    """Median wall time of ``steps`` full training steps after ``warmup`` untimed ones.

    The median, because on a shared machine a neighbour's burst slows single steps; the caller's
    random-number streams are left untouched.
    """
    from ..models.presets import build_encoder
    from ..objectives.hubert import HubertModel
    from ..train.optim import build_optimizer

    if steps < 1 or batch_size < 1 or not seconds > 0:
        raise SpeechBudgetError("calibration needs steps >= 1, batch size >= 1 and seconds > 0")
    dev = torch.device(device)
    dtype = normalise_dtype(dtype or default_dtype("gpu" if dev.type == "cuda" else "cpu"))
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(0)
        model = HubertModel(build_encoder(preset), num_clusters).to(dev).train()
        optimizer = build_optimizer("scaled_adam", model, lr=1e-4)  # tiny lr: only the time matters
        batch = _random_batch(model.encoder, batch_size, seconds, num_clusters, dev)

        def step() -> float:
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss, _ = model(batch)
            loss.backward()
            optimizer.step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            return time.perf_counter() - start

        for _ in range(warmup):
            step()
        times = [step() for _ in range(steps)]
    return {"step_seconds": statistics.median(times), "times": times, "dtype": dtype}


def _device_key(name: str) -> str:
    return get_device(name).name


def _detect_device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return device_from_gpu_name(torch.cuda.get_device_name(device))


def device_from_gpu_name(gpu: str) -> str:
    """Table name of a GPU as CUDA reports it ("NVIDIA H100 80GB HBM3" -> h100)."""
    try:
        return get_device(gpu).name
    except SpeechBudgetError:
        pass
    tokens = re.split(r"[\s_-]+", gpu.lower())
    for name, dev in DEVICES.items():
        if dev.kind == "gpu" and name in tokens:
            return name
    raise SpeechBudgetError(
        f"GPU {gpu!r} is not in the device table: pass --device-name with the closest known "
        f"device ({', '.join(n for n, d in DEVICES.items() if d.kind == 'gpu')}); its datasheet "
        "peak is the denominator"
    )


def _peak(name: str, dtype: str) -> float:
    dev = get_device(name)
    if dev.kind == "cpu":
        return measure_cpu_peak(dtype, cache_path=cpu_peak_cache(), refresh=True)
    return dev.peak_flops(dtype)


def calibrate(
    presets: Iterable[str],
    device_name: Optional[str] = None,
    device: str = "auto",
    steps: int = 3,
    batch_size: int = DEFAULT_BATCH[0],
    seconds: float = DEFAULT_BATCH[1],
    dtype: Optional[str] = None,
    num_clusters: int = DEFAULT_CLUSTERS,
    path: Optional[Path] = None,
    progress=None,
    announce: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Time each preset, store its utilisation under ``device_name`` in ``path``; returns the record.

    ``announce`` hears, before any timing starts, what will run and which files will be written:
    a bare ``speechbudget calibrate`` takes minutes and writes to the user's cache.
    """
    from ..models.presets import resolve

    presets = list(presets)
    if not presets:
        raise SpeechBudgetError("no presets to calibrate: pass --presets (e.g. zipformer-tiny,zipformer-xs)")
    for p in presets:
        resolve(p)  # an unknown name fails now, not after minutes of timing others
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise SpeechBudgetError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpeechBudgetError("--device cuda but no CUDA GPU is visible")
    dev = torch.device(device)
    name = _device_key(device_name) if device_name else _detect_device_name(dev)
    dtype = normalise_dtype(dtype or default_dtype(get_device(name).kind))
    path = Path(path) if path is not None else default_calibration_path()
    from ..atomic import check_output_file

    check_output_file(path, "calibration file")
    if announce:
        peak_note = (
            f" and the CPU peak ({cpu_peak_cache()}, measured again, the best kept)"
            if get_device(name).kind == "cpu"
            else ""
        )
        announce(
            f"calibrate: timing {steps} training steps (after 1 warm-up) of {', '.join(presets)} on {device} "
            f"({batch_size} x {seconds:g} s batches); writes {path}{peak_note}. "
            "--presets, --steps and --out change this"
        )
    peak = _peak(name, dtype)

    results = {}
    for preset in progress(presets) if progress else presets:
        timing = time_training_steps(preset, steps, batch_size, seconds, device, dtype, num_clusters)
        flops = step_flops(preset, batch_size, seconds, num_clusters)
        results[preset] = {
            "utilisation": flops / timing["step_seconds"] / peak,
            "step_seconds": timing["step_seconds"],
            "times": timing["times"],
            "flops_per_step": flops,
            "batch": [batch_size, seconds],
            "num_clusters": num_clusters,
            "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    data = load_calibration(path)
    old = data["devices"].get(name) or {}
    keep = old.get("presets", {}) if old.get("dtype") == dtype else {}  # another dtype's numbers are stale
    record = {
        "kind": get_device(name).kind,
        "dtype": dtype,
        "peak_flops": peak,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.node(),
        "presets": {**keep, **results},
    }
    data["devices"][name] = record
    atomic.write_json(path, data, sort_keys=True)
    return {"device": name, "path": str(path), **record, "measured": list(results)}


def presets_for(family: str, device_kind: str, max_cpu_params: float = 25e6) -> List[str]:
    """Default presets to calibrate: the family's presets; on a CPU only the small ones, since a
    training step of a 300M-parameter model on a few cores takes minutes."""
    from ..models.presets import all_presets

    names = [n for n, cfg in all_presets().items() if cfg["family"] == family]
    if not names:
        raise SpeechBudgetError(f"no presets in family {family!r}")
    if device_kind == "cpu":
        names = [n for n in names if _param_count(n) <= max_cpu_params] or names[:1]
    return names


def _param_count(preset: str) -> int:
    from ..models.presets import build_encoder

    with torch.device("meta"):
        return sum(p.numel() for p in build_encoder(preset).parameters())
