"""Accelerator peak throughputs, and the conversion between device-hours and FLOPs.

Budgets are counted in FLOPs (the unit a scaling law speaks), but people think in GPU-hours.
The bridge is ``flops = hours * 3600 * peak * utilisation``: ``peak`` comes from the vendor
datasheet (dense, i.e. without the 2:4 structured-sparsity doubling, which training never uses)
and ``utilisation`` is the model-FLOPs utilisation (MFU) a real training run reaches.

The CPU has no datasheet number worth trusting, so its peak is measured on this machine by timing
large matmuls (and cached, because a measurement costs seconds).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from speechbudget import atomic
from speechbudget.errors import SpeechBudgetError
from speechbudget.native import cache_dir  # noqa: F401  (one cache folder: kernels, costs, calibrations)

TERA = 1e12


def default_dtype(kind: str) -> str:
    """What the trainer computes in on a device kind: bf16 autocast on CUDA, plain fp32 on the CPU."""
    return "bf16" if kind == "gpu" else "fp32"


# Model-FLOPs utilisation assumed when the caller gives none: cost/utilisation.py derives it from
# published speech SSL runs (0.06-0.12 on GPUs, not the 0.35-0.5 of tuned LLM training).

_DTYPE_ALIASES = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "tf32": "tf32",
    "tensorfloat32": "tf32",
}


def normalise_dtype(dtype: str) -> str:
    """Map the many spellings of a dtype ("bfloat16", "torch.bfloat16", "BF16") to one key."""
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise SpeechBudgetError(f"unknown dtype {dtype!r}: use one of bf16, fp16, fp32, tf32")
    return _DTYPE_ALIASES[key]


@dataclass(frozen=True)
class Device:
    """One accelerator: dense peak TFLOP/s per dtype (from its datasheet), or measured (cpu)."""

    name: str
    kind: str  # "gpu" or "cpu"
    peak_tflops: dict[str, float] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    source: str = ""

    def peak_flops(self, dtype: str = "bf16", cache_path: str | Path | None = None) -> float:
        """Peak FLOP/s for ``dtype``; the cpu measures it (cached in ``cache_path`` if given)."""
        key = normalise_dtype(dtype)
        if self.kind == "cpu":
            return measure_cpu_peak(key, cache_path=cache_path)
        if key not in self.peak_tflops:
            supported = ", ".join(sorted(self.peak_tflops))
            raise SpeechBudgetError(
                f"{self.name} has no {key} peak (no hardware support): use one of {supported}"
            )
        return self.peak_tflops[key] * TERA

    @property
    def default_utilisation(self) -> float:
        return self.default_utilisation_source[0]

    @property
    def default_utilisation_source(self) -> tuple[float, str]:
        """``(utilisation, where it comes from)`` before ``calibrate`` measured this device: the
        published runs on this device class (cost/utilisation.py), or our own CPU measurement."""
        from .utilisation import default_utilisation

        return default_utilisation(self.name, self.kind, lambda dev, dtype: DEVICES[dev].peak_flops(dtype))


# Dense peaks in TFLOP/s from the NVIDIA datasheets. The datasheets print tensor-core numbers
# "with sparsity"; those are halved here. fp32 is the plain (CUDA-core) rate; tf32 is the
# tensor-core rate PyTorch uses for fp32 matmuls when allow_tf32 is on.
DEVICES: dict[str, Device] = {
    d.name: d
    for d in [
        Device(
            "v100",
            "gpu",
            {"fp16": 125.0, "fp32": 15.7},  # Volta has no bf16/tf32 tensor cores
            aliases=("v100-sxm2", "v100-sxm2-32gb", "v100-32gb", "tesla-v100"),
            source="NVIDIA Tesla V100 datasheet (SXM2)",
        ),
        Device(
            "a100",
            "gpu",
            {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
            aliases=("a100-80gb", "a100-sxm", "a100-sxm4-80gb", "a100-sxm-80gb"),
            source="NVIDIA A100 datasheet (SXM 80GB)",
        ),
        Device(
            "l4",
            "gpu",
            {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
            aliases=("nvidia-l4", "l4-24gb"),
            source="NVIDIA L4 datasheet (242/120 TFLOPS with sparsity, halved)",
        ),
        Device(
            "h100",
            "gpu",
            {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},
            aliases=("h100-sxm", "h100-sxm5", "h100-80gb", "h100-sxm-80gb"),
            source="NVIDIA H100 datasheet (SXM; 1979/989 TFLOPS with sparsity, halved)",
        ),
        Device(
            "h200",
            "gpu",
            {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0},
            aliases=("h200-sxm", "h200-141gb"),
            source="NVIDIA H200 datasheet (SXM; same compute as H100 SXM, more/faster memory)",
        ),
        Device("cpu", "cpu", aliases=("host", "local"), source="measured matmul peak"),
    ]
}

_BY_ALIAS = {alias: d for d in DEVICES.values() for alias in (d.name, *d.aliases)}


def get_device(name: str | Device) -> Device:
    """Look a device up by name or alias, case-insensitively ("A100-80GB" -> a100)."""
    if isinstance(name, Device):
        return name
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    if key.startswith("nvidia-") and key not in _BY_ALIAS:
        key = key.removeprefix("nvidia-")
    if key not in _BY_ALIAS:
        raise SpeechBudgetError(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    return _BY_ALIAS[key]


def _resolve_utilisation(device: Device, utilisation: float | None) -> float:
    util = device.default_utilisation if utilisation is None else float(utilisation)
    if not 0.0 < util <= 1.0:
        raise SpeechBudgetError(f"utilisation must be in (0, 1], got {utilisation}")
    return util


def gpu_hours_to_flops(
    hours: float,
    device: str | Device,
    dtype: str = "bf16",
    utilisation: float | None = None,
    cache_path: str | Path | None = None,
) -> float:
    """FLOPs of useful model compute that ``hours`` device-hours buy at the given utilisation."""
    if hours < 0:
        raise SpeechBudgetError(f"hours must be >= 0, got {hours}")
    dev = get_device(device)
    util = _resolve_utilisation(dev, utilisation)
    return hours * 3600.0 * dev.peak_flops(dtype, cache_path=cache_path) * util


def flops_to_gpu_hours(
    flops: float,
    device: str | Device,
    dtype: str = "bf16",
    utilisation: float | None = None,
    cache_path: str | Path | None = None,
) -> float:
    """Device-hours needed for ``flops`` of model compute: the inverse of gpu_hours_to_flops."""
    if flops < 0:
        raise SpeechBudgetError(f"flops must be >= 0, got {flops}")
    dev = get_device(device)
    util = _resolve_utilisation(dev, utilisation)
    return flops / (3600.0 * dev.peak_flops(dtype, cache_path=cache_path) * util)


# ---------------------------------------------------------------------------------------------
# CPU peak measurement

_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "tf32": "float32"}


def _pick_matmul_size(torch_dtype, seconds: float, max_n: int = 2048) -> int:
    """Largest power-of-two size (<= max_n) whose matmul takes under 1/20 of the time budget.

    Big enough to be compute-bound, small enough that slow dtypes (fp16 on most CPUs runs at
    well under 1 GFLOP/s) still fit several timed repetitions into ``seconds``.
    """
    import torch

    n = 128
    while n < max_n:
        a = torch.randn(2 * n, 2 * n, dtype=torch_dtype)
        start = time.perf_counter()
        a @ a
        if time.perf_counter() - start > seconds / 20:
            break
        n *= 2
    return n


def _time_matmuls(torch_dtype, n: int, seconds: float) -> float:
    """Best observed FLOP/s over repeated n x n matmuls for ``seconds`` (best, since the
    machine is shared and interference only ever makes a run slower)."""
    import torch

    a = torch.randn(n, n, dtype=torch_dtype)
    b = torch.randn(n, n, dtype=torch_dtype)
    a @ b  # warm-up: allocations, kernel selection
    flops_per_mm = 2.0 * n**3
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        a @ b
        elapsed = time.perf_counter() - start
        best = max(best, flops_per_mm / max(elapsed, 1e-9))
        if time.perf_counter() >= deadline:
            return best


def _cache_key(dtype: str) -> str:
    import torch

    return f"{dtype}@{torch.get_num_threads()}threads"


def _read_cache(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SpeechBudgetError(f"cannot read cpu peak cache {path}: {exc}; delete it") from exc
    return data if isinstance(data, dict) else {}


def measure_cpu_peak(
    dtype: str = "fp32", seconds: float = 1.0, cache_path: str | Path | None = None, refresh: bool = False
) -> float:
    """Peak matmul FLOP/s of this CPU for ``dtype`` with torch's current thread count.

    With ``cache_path`` the result is stored in (and later read from) that JSON file, keyed by
    dtype and thread count, because the peak depends on both. ``refresh`` measures again and keeps
    the better of the two: a peak is the best the CPU did, and a measurement taken while other jobs
    held the cores is low (an explicit ``calibrate`` refreshes; planning reads what is stored).
    """
    import torch

    key = normalise_dtype(dtype)
    if seconds <= 0:
        raise SpeechBudgetError(f"seconds must be > 0, got {seconds}")
    cache = Path(cache_path) if cache_path is not None else None
    entry = _cache_key(key)
    cached = _read_cache(cache).get(entry) if cache is not None else None
    if cached is not None and not refresh:
        return float(cached)
    torch_dtype = getattr(torch, _TORCH_DTYPES[key])
    n = _pick_matmul_size(torch_dtype, seconds)
    peak = max(_time_matmuls(torch_dtype, n, seconds), float(cached or 0.0))
    if cache is not None:
        data = _read_cache(cache)  # again: another process may have stored a key while this one timed
        data[entry] = peak
        atomic.write_json(cache, data, sort_keys=True)
    return peak
