"""bimamba-tiny training step now vs before issue 15, and vs transformer-tiny over length
(10 / 40 / 160 s): where Mamba becomes cheaper, how memory grows.

Reuses ``bench/encoders.py``'s child runner (fresh process per case, one thread, one warm-up step
on a short input, median of up to ``--reps`` timed fwd+bwd steps, ``VmHWM`` peak memory). The
baseline is the model as it was before issue 15: the block of ``bench/bimamba_before.py``
(transposed copies, Conv1d, ``flip_valid``) with ``SPEECHBUDGET_SCAN=torch`` (the library's
PyTorch path, the chunked scan, identical code to ``bench/scan_baseline.py``). In between: that old
block with the compiled scan (the first step of issue 15). Cases of one length run back to back
so the shared machine's load affects all alike.

Run: ``python bench/mamba_step.py`` -> bench/results/mamba_step.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from statistics import median
from typing import Any

import torch
from common import default_out, fmt_load, machine_info, machine_markdown, markdown_table, save_results
from encoders import forward_flops, report_progress, spawn

# (label, spec, scan, old block) per length; batch per length below
CASES = [
    ("bimamba-tiny (now)", "bimamba-tiny", "auto", False),
    ("bimamba-tiny (old block, compiled scan)", "bimamba-tiny", "auto", True),
    ("bimamba-tiny (before issue 15: old block, PyTorch scan)", "bimamba-tiny", "torch", True),
    ("transformer-tiny", "transformer-tiny", "auto", False),
]


def run_case(
    spec: str, scan: str, batch: int, seconds: float, args, block_before: bool = False
) -> dict[str, Any]:
    job = {
        "block_before": block_before,
        "spec": spec,
        "mode": "train",
        "batch": batch,
        "frames": round(seconds * 100),
        "warmup": 1,
        "warmup_frames": 100,
        "reps": args.reps,
        "budget_s": args.step_budget,
    }
    old = os.environ.get("SPEECHBUDGET_SCAN")
    os.environ["SPEECHBUDGET_SCAN"] = scan
    try:
        return spawn(job, args.timeout, args.max_memory_gb)
    finally:
        if old is None:
            os.environ.pop("SPEECHBUDGET_SCAN")
        else:
            os.environ["SPEECHBUDGET_SCAN"] = old


BASELINE = CASES[2][0]


def merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's children over ``--rounds``: median wall and CPU seconds of the rounds' medians,
    the highest peak memory; every round kept under ``rounds``."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    row = dict(ok[-1])
    row["wall_s"] = median([r["wall_s"] for r in ok])
    row["cpu_s"] = median([r["cpu_s"] for r in ok])
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    row["baseline_rss_mb"] = min(r["baseline_rss_mb"] for r in ok)
    row["load_before"], row["load_after"] = ok[0]["load_before"], ok[-1]["load_after"]
    row["rounds"] = runs
    return row


def speedup(r: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """``wall x / cpu x`` against the before-issue-15 row of the same length, if there is one."""
    base = [b for b in rows if b["label"] == BASELINE and b["seconds"] == r["seconds"] and "error" not in b]
    if not base:
        return ""
    return f"{base[0]['wall_s'] / r['wall_s']:.1f} / {base[0]['cpu_s'] / r['cpu_s']:.1f}"


def render(data: dict[str, Any]) -> str:
    rows = []
    for r in data["rows"]:
        if "error" in r:
            rows.append([r["label"], r["seconds"], r["batch"], r["error"], "", "", "", "", "", ""])
            continue
        rows.append(
            [
                r["label"],
                r["seconds"],
                r["batch"],
                f"{r['wall_s']:.2f}",
                f"{r['cpu_s']:.2f}",
                f"{r['cpu_s'] / r['wall_s']:.2f}",
                speedup(r, data["rows"]),
                f"{r['peak_rss_mb']:.0f}",
                f"{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f}",
                fmt_load(r["load_before"], r["load_after"]),
            ]
        )
    head = [
        "model",
        "audio s",
        "batch",
        "fwd+bwd s (median)",
        "cpu s",
        "cpu/wall",
        "x faster than before issue 15 (wall / cpu)",
        "peak RSS MB",
        "peak - baseline MB",
    ]
    return machine_markdown(data["machine"]) + "\n\n" + markdown_table(head + ["load 1m"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=float, nargs="+", default=[10.0, 40.0, 160.0], help="seconds of audio")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 1, 1], help="batch per length")
    p.add_argument(
        "--baseline-up-to", type=float, default=10.0, help="run the old block (both scans) up to this length"
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--rounds", type=int, default=1, help="run the cases of a length this many times, interleaved"
    )
    p.add_argument("--step-budget", type=float, default=40.0)
    p.add_argument("--timeout", type=float, default=400.0)
    p.add_argument("--max-memory-gb", type=float, default=8.0)
    p.add_argument("--out", type=Path, default=default_out("mamba_step"))
    args = p.parse_args()
    torch.set_num_threads(1)  # as in every child, so the machine record says 1 thread
    started = time.perf_counter()
    info = machine_info()
    rows = []
    for seconds, batch in zip(args.lengths, args.batches):
        cases = [c for c in CASES if not (c[3] and seconds > args.baseline_up_to)]
        runs: dict[str, list] = {c[0]: [] for c in cases}
        for round_ in range(args.rounds):  # case A, B, C, D, then A, B, C, D again: load hits all alike
            for label, spec, scan, block_before in cases:
                print(f"[mamba_step] round {round_ + 1}: {label}: {batch} x {seconds:g} s", flush=True)
                r = run_case(spec, scan, batch, seconds, args, block_before)
                report_progress(r)
                runs[label].append(r)
        for label, spec, scan, block_before in cases:
            r = merge_rounds(runs[label])
            r.update(label=label, seconds=seconds, batch=batch, scan=scan, block_before=block_before)
            r["forward_flops_per_utt"] = forward_flops(spec, seconds)
            rows.append(r)
    data = {
        "benchmark": "mamba_step",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info,
        "rows": rows,
        "total_wall_s": time.perf_counter() - started,
    }
    markdown = render(data)
    save_results(args.out, data, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
