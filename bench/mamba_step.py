"""bimamba-tiny training step with the compiled scan vs today's chunked PyTorch scan, and vs
transformer-tiny over length (10 / 40 / 160 s): where Mamba becomes cheaper, how memory grows.

Reuses ``bench/encoders.py``'s child runner (fresh process per case, one thread, one warm-up step
on a short input, median of up to ``--reps`` timed fwd+bwd steps, ``VmHWM`` peak memory). The
baseline is the same model with ``SPEECHBUDGET_SCAN=torch``: the library's PyTorch path, the
chunked scan of today (identical code to ``bench/scan_baseline.py``). Cases of one length run back
to back so the shared machine's load affects both sides alike.

Run: ``python bench/mamba_step.py`` -> bench/results/mamba_step.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from common import default_out, fmt_load, machine_info, machine_markdown, markdown_table, save_results
from encoders import forward_flops, report_progress, spawn

# (label, spec, scan) per length; batch per length below
CASES = [
    ("bimamba-tiny (compiled scan)", "bimamba-tiny", "auto"),
    ("bimamba-tiny (today's scan)", "bimamba-tiny", "torch"),
    ("transformer-tiny", "transformer-tiny", "auto"),
]


def run_case(spec: str, scan: str, batch: int, seconds: float, args) -> dict[str, Any]:
    job = {
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


def render(data: dict[str, Any]) -> str:
    rows = []
    for r in data["rows"]:
        if "error" in r:
            rows.append([r["label"], r["seconds"], r["batch"], r["error"], "", "", "", ""])
            continue
        rows.append(
            [
                r["label"],
                r["seconds"],
                r["batch"],
                f"{r['wall_s']:.2f}",
                f"{r['cpu_s'] / r['wall_s']:.2f}",
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
        "cpu/wall",
        "peak RSS MB",
        "peak - baseline MB",
    ]
    return machine_markdown(data["machine"]) + "\n\n" + markdown_table(head + ["load 1m"], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=float, nargs="+", default=[10.0, 40.0, 160.0], help="seconds of audio")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 1, 1], help="batch per length")
    p.add_argument("--baseline-up-to", type=float, default=10.0, help="run today's scan up to this length")
    p.add_argument("--reps", type=int, default=3)
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
        for label, spec, scan in CASES:
            if scan == "torch" and seconds > args.baseline_up_to:
                continue
            print(f"[mamba_step] {label}: {batch} x {seconds:g} s", flush=True)
            r = run_case(spec, scan, batch, seconds, args)
            report_progress(r)
            r.update(label=label, seconds=seconds, batch=batch, scan=scan)
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
