"""Helpers shared by the benchmark scripts: what machine ran them, how busy it was, how fast it can go.

Numbers from a shared 2-core machine are only meaningful next to the load it was under, so every
measurement carries the load average before and after, and wall time next to CPU time (a process
that waited for a core shows ``cpu / wall < 1``).
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from speechbudget import atomic
from speechbudget.cost.devices import measure_cpu_peak

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

SHARED_MACHINE_NOTE = (
    "Measured on a shared machine: other jobs may have run at the same time. Compare load "
    "averages (1-min) before/after each row with the core count; cpu/wall well below 1 means waiting."
)


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS tells us)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_total_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def machine_info() -> dict[str, Any]:
    """Everything needed to tell whether two result files are comparable."""
    import lhotse
    import numpy

    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gb": memory_total_gb(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "numpy": numpy.__version__,
        "lhotse": lhotse.__version__,
        "loadavg_at_start": loadavg(),
        "note": SHARED_MACHINE_NOTE,
    }


def loadavg() -> list[float]:
    """1, 5 and 15-minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Timing:
    wall_s: float
    cpu_s: float
    load_before: list[float]
    load_after: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed(fn: Callable[[], Any]) -> tuple:
    """Run ``fn`` once; return (its result, Timing with wall and this process's CPU seconds)."""
    load_before = loadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fn()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return result, Timing(wall, cpu, load_before, loadavg())


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def measure_fp32_peak(seconds: float = 2.0) -> dict[str, Any]:
    """Best observed fp32 matmul FLOP/s at torch's current thread count (not cached: the load
    on a shared machine changes, so each run measures its own)."""
    load_before = loadavg()
    flops = measure_cpu_peak("fp32", seconds=seconds)
    return {
        "dtype": "fp32",
        "flops": flops,
        "gflops": round(flops / 1e9, 2),
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "load_before": load_before,
        "load_after": loadavg(),
    }


def default_out(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def save_results(json_path: Path, data: dict[str, Any], markdown: str) -> Path:
    """Write the JSON and, next to it, the Markdown section (same name, ``.md``)."""
    json_path = Path(json_path)
    atomic.write_json(json_path, data, sort_keys=True)
    md_path = json_path.with_suffix(".md")
    md_path.write_text(markdown.rstrip() + "\n")
    return md_path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_markdown(info: dict[str, Any]) -> str:
    return (
        f"Machine: {info['cpu_model']}, {info['usable_cores']} usable cores, {info['memory_gb']} GB RAM; "
        f"torch {info['torch']} with {info['torch_threads']} thread(s); lhotse {info['lhotse']}; "
        f"load average at start {info['loadavg_at_start']}. {info['note']}"
    )


def fmt_load(before: Sequence[float], after: Sequence[float]) -> str:
    """1-minute load average before -> after."""
    return f"{before[0]:.1f}->{after[0]:.1f}"


def run_cli(*args: str, out: Path | None = None) -> dict[str, Any]:
    """Run one ``speechbudget ... --json`` command from the repository root and return its JSON.

    Evidence scripts drive the CLI exactly as a user would (every step resumable); a failing
    command stops the script with the command and the end of its stderr.
    """
    import json
    import subprocess

    cmd = ["speechbudget", *args, "--json"]
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}")
    print(f"  done in {time.time() - t0:.0f} s", flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(proc.stdout)
    return json.loads(proc.stdout) if proc.stdout.strip() else {}
