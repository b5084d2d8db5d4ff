"""Selective scan alone: ours (compiled) vs today's chunked scan vs a plain time loop vs mambapy.

Each case (implementation x length x forward / forward+backward) runs in a fresh subprocess, one
thread, B=1, D=384 (bimamba-tiny's inner width), N=16, fp32, and reports the median wall time
and the peak memory above the process's RSS after building the inputs (``VmHWM`` in
/proc/self/status; torch's allocations are invisible to tracemalloc). Implementations:

* ``ours``: :func:`speechbudget.models.selective_scan.selective_scan` (dispatches to the C++ kernel);
* ``rows``: ours with one time block per row (``scan_cpu.TIME_BLOCK`` = the length): the kernel's
  schedule before time blocks, each row scanned whole before the next;
* ``baseline``: today's chunked PyTorch scan, frozen in ``bench/scan_baseline.py``;
* ``loop``: ``selective_scan_reference`` (plain time loop, autograd through it);
* ``mambapy``: ``mambapy.pscan`` (Blelloch parallel scan over all (B, L, D, N) states, autograd).
* ``numba``: a numba kernel written the same way as ours (candidate, kept here for the record).

It also measures the elementwise peak of this machine (``torch.addcmul`` = one multiply-add per
element, one thread; in cache and streaming) and the scan's achieved elementwise throughput, by
``scan_flops`` (forward: 7N+1 per (b, d, t)) and by the kernel's own count for forward+backward.

``--time-major`` (ours and rows only): u, delta (B, L, D) and B, C (B, L, N), BiMamba's layout,
where a row's frames are D floats apart.

Run: ``python bench/scan_speed.py [--lengths 512 4096 16384]`` -> bench/results/scan_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import default_out, loadavg, machine_info, machine_markdown, markdown_table, median, save_results

RESULT_TAG = "RESULT "
IMPLS = ["ours", "rows", "baseline", "loop", "mambapy", "numba"]
# ops per (b, d, t) per state of our kernel: forward 7 (scan_flops); backward recomputes the
# forward (7) and runs the adjoint (17): 31 for an autograd forward+backward step
FWD_OPS, TRAIN_OPS = 7, 31


# ---------------------------------------------------------------------------------------------
# implementations, all (u, delta, A, B, C, D) -> y in our (B, D, L) layout


def _mambapy(u, delta, A, B, C, D):
    from mambapy.pscan import pscan

    x, dl = u.transpose(1, 2), delta.transpose(1, 2)  # (B, L, D)
    da = torch.exp(dl.unsqueeze(-1) * A)
    bx = (dl * x).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2)
    hs = pscan(da, bx)  # (B, L, D, N)
    y = (hs @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1)
    return (y + D * x).transpose(1, 2)


def implementation(name: str, time_major: bool = False):
    if name in ("ours", "rows"):
        from speechbudget.models.selective_scan import selective_scan

        return lambda u, dl, A, B, C, D: selective_scan(u, dl, A, B, C, D=D, time_major=time_major)
    if name == "baseline":
        from scan_baseline import selective_scan as baseline

        return lambda u, dl, A, B, C, D: baseline(u, dl, A, B, C, D=D)
    if name == "loop":
        from speechbudget.models.selective_scan import selective_scan_reference

        return lambda u, dl, A, B, C, D: selective_scan_reference(u, dl, A, B, C, D=D)
    if name == "mambapy":
        return _mambapy
    if name == "numba":
        from scan_numba import selective_scan_numba

        return selective_scan_numba
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------
# child


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def make_inputs(batch: int, dim: int, state: int, length: int, train: bool, time_major: bool = False):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, dim, length, generator=g)
    delta = F.softplus(torch.randn(batch, dim, length, generator=g) - 2.0)  # ~ Mamba's dt range
    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1)
    B, C = torch.randn(batch, state, length, generator=g), torch.randn(batch, state, length, generator=g)
    D = torch.ones(dim)
    if time_major:
        u, delta, B, C = (t.transpose(1, 2).contiguous() for t in (u, delta, B, C))
    xs = [u, delta, A, B, C, D]
    return [t.requires_grad_() for t in xs] if train else xs


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    tm = job.get("time_major", False)
    if job["impl"] == "rows" or job.get("time_block"):
        from speechbudget.models import scan_cpu

        scan_cpu.TIME_BLOCK = job["length"] if job["impl"] == "rows" else job["time_block"]
    fn = implementation(job["impl"], tm)
    train = job["mode"] == "train"
    xs = make_inputs(job["batch"], job["dim"], job["state"], job["length"], train, tm)
    gy = torch.randn_like(xs[0])

    def once():
        if train:
            y = fn(*xs)
            y.backward(gy)
            for t in xs:
                t.grad = None
        else:
            with torch.no_grad():
                fn(*xs)

    # warm up (compiles / JITs) on a short input, so the full-size peak is the case's own
    short = make_inputs(job["batch"], job["dim"], job["state"], 64, train, tm)
    y = fn(*short)
    if train:
        y.sum().backward()
    del short, y
    baseline = rss_mb()
    times = []
    while len(times) < job["reps"] and sum(times) < job["budget_s"]:
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return {
        "wall_s": median(times),
        "times": times,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
    }


def spawn(job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load_before = loadavg()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"job": job, "error": f"killed: ran past {timeout_s:.0f} s", "load_before": load_before}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
    result = {"job": job, "load_before": load_before, "load_after": loadavg()}
    if proc.returncode != 0 or not lines:
        result["error"] = f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"
        return result
    result.update(json.loads(lines[-1][len(RESULT_TAG) :]))
    return result


# ---------------------------------------------------------------------------------------------
# elementwise peak


def elementwise_peak(seconds: float = 1.0) -> dict[str, float]:
    """Best FLOP/s of ``torch.addcmul`` (2 FLOPs per element), one thread, over array sizes."""
    torch.set_num_threads(1)
    out = {}
    for n in (16_384, 262_144, 6_291_456):  # 64 KB (L1/L2), 1 MB (L2), 24 MB (streaming)
        a, b, c = (torch.rand(n) for _ in range(3))
        o = torch.empty(n)
        best, deadline = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            reps = max(1, 2_000_000 // n)
            t0 = time.perf_counter()
            for _ in range(reps):
                torch.addcmul(a, b, c, out=o)
            best = max(best, 2 * n * reps / (time.perf_counter() - t0))
        out[f"addcmul_{n}"] = best
    return out


# ---------------------------------------------------------------------------------------------
# parent


def render(data: dict[str, Any]) -> str:
    peak = data["elementwise_peak_flops"]
    lines = [
        machine_markdown(data["machine"]),
        "",
        "Elementwise peak, one thread, `torch.addcmul` (2 FLOPs/element): "
        + ", ".join(
            f"{k.split('_')[1]} elements {v / 1e9:.2f} GFLOP/s" for k, v in data["elementwise"].items()
        )
        + f"; the best ({peak / 1e9:.2f}) is the floor's rate below.",
        "",
    ]
    rows = []
    for r in data["rows"]:
        j = r["job"]
        if "error" in r:
            rows.append([j["impl"], j["length"], j["mode"], r["error"], "", "", "", ""])
            continue
        ops_per = FWD_OPS * j["state"] + 1 if j["mode"] == "forward" else TRAIN_OPS * j["state"]
        ops = j["batch"] * j["dim"] * j["length"] * ops_per
        base = data["ours"].get(f"{j['length']}-{j['mode']}")
        rows.append(
            [
                j["impl"],
                j["length"],
                j["mode"],
                f"{r['wall_s'] * 1e3:.1f}",
                f"x{r['wall_s'] / base:.1f}" if base else "",
                f"{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f}",
                f"{ops / r['wall_s'] / 1e9:.2f}" if j["impl"] == "ours" else "",
                f"{peak / (ops / r['wall_s']):.1f}x" if j["impl"] == "ours" else "",
            ]
        )
    lines.append(
        markdown_table(
            [
                "impl",
                "L",
                "mode",
                "ms (median)",
                "time vs ours",
                "peak - baseline MB",
                "ours: GFLOP/s (elementwise)",
                "ours: time / floor",
            ],
            rows,
        )
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 4096, 16384])
    p.add_argument("--impls", nargs="+", default=IMPLS, choices=IMPLS)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--time-major", action="store_true", help="BiMamba's (B, L, D) layout (ours, rows only)")
    p.add_argument(
        "--time-block", type=int, default=None, help="ours: steps per time block (default: the library's)"
    )
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--budget", type=float, default=10.0, help="stop timing a case after this many s")
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--out", type=Path, default=default_out("scan_speed"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(RESULT_TAG + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    if args.time_major and set(args.impls) - {"ours", "rows"}:
        p.error("--time-major runs ours and rows only")
    torch.set_num_threads(1)  # as in every child, so the machine record says 1 thread
    started = time.perf_counter()
    info = machine_info()
    elementwise = elementwise_peak()
    rows, ours = [], {}
    for length in args.lengths:
        for mode in ("forward", "train"):
            for impl in args.impls:  # side by side: the cases of one length and mode back to back
                job = vars(args) | {"impl": impl, "length": length, "mode": mode}
                keys = ("impl", "length", "mode", "batch", "dim", "state", "reps", "time_major", "time_block")
                job = {k: job[k] for k in keys}
                job["budget_s"] = args.budget
                r = spawn(job, args.timeout)
                print(
                    f"[scan] {impl:9s} L={length:6d} {mode:8s} {r.get('wall_s', r.get('error'))}", flush=True
                )
                if impl == "ours" and "wall_s" in r:
                    ours[f"{length}-{mode}"] = r["wall_s"]
                rows.append(r)
    elementwise_end = elementwise_peak()
    both = {k: max(v, elementwise_end[k]) for k, v in elementwise.items()}
    data = {
        "benchmark": "scan_speed",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info,
        "elementwise": both,
        "elementwise_peak_flops": max(both.values()),
        "ours": ours,
        "rows": rows,
        "total_wall_s": time.perf_counter() - started,
    }
    markdown = render(data)
    save_results(args.out, data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
