"""Training-step time, peak memory and FLOP utilisation of the encoder presets on this CPU.

Two experiments, each measurement in a fresh subprocess (single thread):

1. ``presets``: one forward+backward step of each preset on 10 s of fbank (batch 4 x 1000 x 80),
   after one warm-up step; the median over up to ``--reps`` timed steps (fewer when a step is slow,
   see ``--step-budget``). Utilisation = 3 x forward FLOPs (``encoder_cost``, FLOPs = 2 x MACs)
   x batch / step time / fp32 matmul peak (``measure_cpu_peak``, measured in this run at the same
   thread count).
2. ``scaling``: a BiMamba preset against a Transformer of about the same parameter count at
   1k, 4k and 16k input frames (10, 40, 160 s; batch 1). Forward (inference, ``no_grad``) is
   measured at every length; forward+backward too unless its predicted time (the previous length's
   fwd+bwd time x the growth of the forward time) exceeds ``--max-seconds`` or its predicted
   memory exceeds ``--max-memory-gb``.

Peak memory: ``tracemalloc`` does not see torch's allocations, so each measurement runs in its own
process and reports the kernel's RSS high-water mark of that process, ``VmHWM`` in
/proc/self/status, and its RSS after building model and input (the baseline; the difference is
activations, gradients and workspace). Not ``getrusage().ru_maxrss``: on Linux it keeps the
parent's high-water mark across fork + exec, so every child would report at least the parent's RSS
(it is recorded as ``ru_maxrss_mb`` anyway). The parent also samples the child's RSS with psutil
every 50 ms, as a cross-check and to kill a child that exceeds ``--max-memory-gb``.

Run: ``python bench/encoders.py [--quick] [--presets NAME ...]``; results go to
bench/results/encoders.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from common import (
    default_out,
    fmt_load,
    loadavg,
    machine_info,
    machine_markdown,
    markdown_table,
    measure_fp32_peak,
    median,
    save_results,
)

from speechbudget.errors import SpeechBudgetError
from speechbudget.models.catalog import encoder_cost
from speechbudget.models.presets import build_encoder, resolve

DEFAULT_PRESETS = [
    "zipformer-tiny",
    "zipformer-tiny-slim",
    "zipformer-tiny-wide",
    "zipformer-xs",
    "zipformer-small",
    "transformer-tiny",
    "transformer-tiny-slim",
    "transformer-tiny-wide",
    "transformer-small",
    "transformer-slim",
    "bimamba-xs",
    "bimamba-tiny",
]
QUICK_PRESETS = ["zipformer-tiny", "transformer-tiny", "bimamba-xs"]
RESULT_TAG = "RESULT "
MB = 2**20

# ---------------------------------------------------------------------------------------------
# child: one measurement in a fresh process


def maxrss_mb() -> float:
    """``getrusage`` peak RSS. On Linux it includes the *parent's* RSS at fork (the high-water
    mark survives fork + exec), so it is recorded but not used as the peak."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    """Peak RSS of this process's own address space: VmHWM from /proc/self/status (Linux),
    which starts afresh at exec; ``maxrss_mb`` elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return maxrss_mb()


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def make_step(encoder: torch.nn.Module, mode: str):
    """A closure running one forward (``no_grad``, eval) or forward+backward (train) step."""
    if mode == "forward":
        encoder.eval()

        def step(x, lengths):
            with torch.no_grad():
                encoder(x, lengths)

        return step
    encoder.train()

    def step(x, lengths):
        out = encoder(x, lengths)
        out.hidden.float().square().mean().backward()
        encoder.zero_grad(set_to_none=True)

    return step


def make_input(encoder, batch: int, frames: int):
    x = torch.randn(batch, frames, int(encoder.input_dim))
    return x, torch.full((batch,), frames, dtype=torch.int64)


def timed_step(step, x, lengths) -> dict[str, float]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    step(x, lengths)
    return {"wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0}


def run_child(job: dict[str, Any]) -> dict[str, Any]:
    """Build, warm up on a short input, then time full-size steps.

    The first full-size step is itself discarded as a warm-up when ``reps + 1`` such steps fit in
    ``budget_s``; a slow model is timed on its first full-size step instead (``full_warmup``
    false). Timing stops at ``reps`` steps or when the next would exceed ``budget_s`` (at least one).
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = build_encoder(job["spec"])
    if job.get("block_before"):  # bench/mamba_step.py: the BiMamba block before issue 15's speed-up
        from bimamba_before import use_before

        use_before(encoder)
    step = make_step(encoder, job["mode"])
    x, lengths = make_input(encoder, job["batch"], job["frames"])
    baseline = current_rss_mb()
    warm_x, warm_len = make_input(encoder, job["batch"], min(job["warmup_frames"], job["frames"]))
    warmup = [timed_step(step, warm_x, warm_len) for _ in range(job["warmup"])]
    del warm_x, warm_len
    steps: list[dict[str, float]] = []
    full_warmup = False
    while len(steps) < job["reps"]:
        if steps and sum(s["wall_s"] for s in steps) + steps[-1]["wall_s"] > job["budget_s"]:
            break
        steps.append(timed_step(step, x, lengths))
        if not full_warmup and len(steps) == 1 and steps[0]["wall_s"] * (job["reps"] + 1) <= job["budget_s"]:
            warmup.append(steps.pop())
            full_warmup = True
    return {
        "params": sum(p.numel() for p in encoder.parameters()),
        "warmup": warmup,
        "full_warmup": full_warmup,
        "steps": steps,
        "wall_s": median([s["wall_s"] for s in steps]),
        "cpu_s": median([s["cpu_s"] for s in steps]),
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
        "ru_maxrss_mb": maxrss_mb(),
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------
# parent: spawn, watch memory, collect


def watch(proc: subprocess.Popen, timeout_s: float, max_memory_gb: float) -> tuple:
    """Sample ``proc``'s RSS until it exits; kill it past the limits. -> (peak MB, why killed or None)."""
    handle = psutil.Process(proc.pid)
    sampled_peak, start = 0.0, time.perf_counter()
    while proc.poll() is None:
        try:
            sampled_peak = max(sampled_peak, handle.memory_info().rss / MB)
        except psutil.NoSuchProcess:
            break
        killed = None
        if sampled_peak > max_memory_gb * 1024:
            killed = f"killed: RSS above --max-memory-gb {max_memory_gb:g}"
        elif time.perf_counter() - start > timeout_s:
            killed = f"killed: ran past {timeout_s:.0f} s"
        if killed:
            proc.kill()
            return sampled_peak, killed
        time.sleep(0.05)
    return sampled_peak, None


def spawn(job: dict[str, Any], timeout_s: float, max_memory_gb: float) -> dict[str, Any]:
    """Run ``job`` in a fresh interpreter and collect its result, or why there is none."""
    load_before = loadavg()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with tempfile.TemporaryFile(mode="w+") as errors:  # a file, not a pipe: a chatty child cannot block
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        sampled_peak, killed = watch(proc, timeout_s, max_memory_gb)
        stdout, _ = proc.communicate()
        errors.seek(0)
        stderr_tail = errors.read()[-800:]
    result: dict[str, Any] = {
        "job": job,
        "load_before": load_before,
        "load_after": loadavg(),
        "sampled_peak_rss_mb": sampled_peak,
    }
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_TAG)]
    if killed or proc.returncode != 0 or not lines:
        result["error"] = killed or f"child exited with code {proc.returncode}"
        result["stderr_tail"] = stderr_tail
        return result
    result.update(json.loads(lines[-1][len(RESULT_TAG) :]))
    return result


def report_progress(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"    {r['error']}: {r.get('stderr_tail', '').strip()[-300:]}", flush=True)
    else:
        print(
            f"    {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s cpu, peak {r['peak_rss_mb']:.0f} MB, "
            f"load {fmt_load(r['load_before'], r['load_after'])}",
            flush=True,
        )


def spec_label(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    extra = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "preset")
    return f"{spec['preset']} ({extra})"


# ---------------------------------------------------------------------------------------------
# experiment 1: every preset at 10 s, batch 4


def forward_flops(spec: Any, seconds: float) -> float:
    """Forward FLOPs of one utterance of ``seconds`` (FLOPs = 2 x MACs)."""
    cost = encoder_cost(spec, seconds=seconds)
    return 2.0 * cost["macs_per_audio_second"] * seconds


def bench_presets(args) -> list[dict[str, Any]]:
    frames = round(args.seconds * 100)
    rows = []
    for name in args.presets:
        job = {
            "spec": name,
            "mode": "train",
            "batch": args.batch,
            "frames": frames,
            "warmup": args.warmup,
            "warmup_frames": args.warmup_frames,
            "reps": args.reps,
            "budget_s": args.step_budget,
        }
        print(f"[encoders] {name}: fwd+bwd {args.batch} x {frames} frames", flush=True)
        r = spawn(job, args.timeout, args.max_memory_gb)
        report_progress(r)
        r["preset"] = name
        r["forward_flops_per_utt"] = forward_flops(name, args.seconds)
        rows.append(r)
    return rows


def add_utilisation(rows: list[dict[str, Any]], batch: int, peak_flops: float) -> None:
    """Training FLOPs (3 x forward) per second of step, as a fraction of the matmul peak."""
    for r in rows:
        if "error" in r:
            continue
        train_flops = 3.0 * r["forward_flops_per_utt"] * batch
        r["achieved_gflops"] = train_flops / r["wall_s"] / 1e9
        r["utilisation"] = train_flops / r["wall_s"] / peak_flops
        r["utilisation_cpu_time"] = train_flops / r["cpu_s"] / peak_flops


# ---------------------------------------------------------------------------------------------
# experiment 2: Mamba vs attention over sequence length


def params_of(spec: Any) -> int:
    return sum(p.numel() for p in build_encoder(spec).parameters())


def matched_transformer(mamba: str, base: str = "transformer-tiny") -> dict[str, Any]:
    """``base`` with its layer count set so its parameters come closest to ``mamba``'s."""
    target = params_of(mamba)
    p1, p2 = params_of({"preset": base, "layers": 1}), params_of({"preset": base, "layers": 2})
    layers = max(1, round(1 + (target - p1) / (p2 - p1)))
    return {"preset": base, "layers": layers}


def growth_exponent(points: list[tuple]) -> float | None:
    """log-log slope between the last two (length, value) points."""
    if len(points) < 2:
        return None
    (l0, v0), (l1, v1) = points[-2], points[-1]
    return math.log(v1 / v0) / math.log(l1 / l0) if v0 > 0 and v1 > 0 else None


def scaling_model(spec: Any, args) -> list[dict[str, Any]]:
    """Forward, then (if predicted affordable) fwd+bwd, at each length for one model."""
    rows: list[dict[str, Any]] = []
    fwd_pts, train_pts, train_mem_pts = [], [], []
    for frames in args.scaling_frames:
        base = {
            "spec": spec,
            "batch": 1,
            "frames": frames,
            "warmup": 1,
            "warmup_frames": args.scaling_warmup_frames,
            "reps": args.scaling_reps,
            "budget_s": args.scaling_budget,
        }
        for mode in ("forward", "train"):
            label = spec_label(spec)
            skip = scaling_skip_reason(mode, frames, fwd_pts, train_pts, train_mem_pts, args)
            row = {"model": label, "frames": frames, "mode": mode}
            if skip:
                print(f"[scaling] {label} {mode} {frames}: skipped ({skip})", flush=True)
                rows.append(row | {"skipped": skip})
                continue
            print(f"[scaling] {label} {mode} {frames} frames", flush=True)
            r = spawn(base | {"mode": mode}, args.timeout, args.max_memory_gb)
            report_progress(r)
            rows.append(row | r)
            if "error" in r:
                continue
            activations = max(r["peak_rss_mb"] - r["baseline_rss_mb"], 1.0)
            if mode == "forward":
                fwd_pts.append((frames, r["wall_s"]))
            else:
                train_pts.append((frames, r["wall_s"]))
                train_mem_pts.append((frames, activations))
    return rows


def scaling_skip_reason(mode, frames, fwd_pts, train_pts, train_mem_pts, args) -> str | None:
    """Why a measurement would be too slow or too big, predicted from the shorter lengths."""
    if mode == "forward":
        if not fwd_pts:
            return None
        exponent = growth_exponent(fwd_pts) or 1.0
        predicted = fwd_pts[-1][1] * (frames / fwd_pts[-1][0]) ** exponent
    else:
        if not fwd_pts or fwd_pts[-1][0] != frames:
            return "forward at this length was not measured"
        if not train_pts:
            return None
        prev_fwd = dict(fwd_pts)[train_pts[-1][0]]
        predicted = train_pts[-1][1] * fwd_pts[-1][1] / prev_fwd
        mem_exp = growth_exponent(train_mem_pts) or 2.0  # unknown: assume attention-like growth
        mem = train_mem_pts[-1][1] * (frames / train_mem_pts[-1][0]) ** mem_exp
        if mem > args.max_memory_gb * 1024:
            return f"predicted {mem / 1024:.1f} GB > --max-memory-gb {args.max_memory_gb:g}"
    if predicted > args.max_seconds:
        return f"predicted {predicted:.0f} s > --max-seconds {args.max_seconds:g}"
    return None


def bench_scaling(args) -> dict[str, Any]:
    attention = matched_transformer(args.mamba) if args.attention == "auto" else args.attention
    models = {"mamba": args.mamba, "attention": attention}
    params = {k: params_of(v) for k, v in models.items()}
    rows = [r for spec in models.values() for r in scaling_model(spec, args)]
    return {"models": {k: spec_label(v) for k, v in models.items()}, "params": params, "rows": rows}


# ---------------------------------------------------------------------------------------------
# report


def activation_mb(r: dict[str, Any]) -> float:
    return r["peak_rss_mb"] - r["baseline_rss_mb"]


def presets_table(rows: list[dict[str, Any]], seconds: float) -> str:
    headers = [
        "preset",
        "params M",
        f"fwd GFLOP / {seconds:g} s utt",
        "fwd+bwd s (wall, median)",
        "cpu s",
        "timed steps",
        "full-size warm-up",
        "peak RSS MB",
        "peak - baseline MB",
        "achieved GFLOP/s",
        "util (wall)",
        "util (cpu time)",
        "load 1m",
    ]
    out = []
    for r in rows:
        load = fmt_load(r["load_before"], r["load_after"])
        if "error" in r:
            out.append(
                [r["preset"], "", f"{r['forward_flops_per_utt'] / 1e9:.1f}", r["error"]] + [""] * 8 + [load]
            )
            continue
        out.append(
            [
                r["preset"],
                f"{r['params'] / 1e6:.2f}",
                f"{r['forward_flops_per_utt'] / 1e9:.1f}",
                f"{r['wall_s']:.2f}",
                f"{r['cpu_s']:.2f}",
                len(r["steps"]),
                "yes" if r["full_warmup"] else "no",
                f"{r['peak_rss_mb']:.0f}",
                f"{activation_mb(r):.0f}",
                f"{r['achieved_gflops']:.1f}",
                f"{r['utilisation']:.1%}",
                f"{r['utilisation_cpu_time']:.1%}",
                load,
            ]
        )
    return markdown_table(headers, out)


def scaling_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "model",
        "frames (s)",
        "mode",
        "wall s",
        "cpu/wall",
        "peak RSS MB",
        "peak - baseline MB",
        "time growth vs previous",
        "memory growth vs previous",
        "load 1m",
    ]
    out, prev = [], {}
    for r in rows:
        key = (r["model"], r["mode"])
        head = [
            r["model"],
            f"{r['frames']} ({r['frames'] / 100:g})",
            "fwd+bwd" if r["mode"] == "train" else "fwd (no_grad)",
        ]
        if "skipped" in r or "error" in r:
            out.append(head + [r.get("skipped") or r["error"], "", "", "", "", "", ""])
            continue
        act = activation_mb(r)
        growth_t = growth_m = ""
        if key in prev:
            p = prev[key]
            ratio = r["frames"] / p["frames"]
            growth_t = f"x{r['wall_s'] / p['wall_s']:.1f} (len x{ratio:g})"
            growth_m = f"x{act / max(activation_mb(p), 1.0):.1f}"
        prev[key] = r
        out.append(
            head
            + [
                f"{r['wall_s']:.2f}",
                f"{r['cpu_s'] / r['wall_s']:.2f}",
                f"{r['peak_rss_mb']:.0f}",
                f"{act:.0f}",
                growth_t,
                growth_m,
                fmt_load(r["load_before"], r["load_after"]),
            ]
        )
    return markdown_table(headers, out)


def render_markdown(data: dict[str, Any]) -> str:
    s, peak = data["settings"], data["fp32_peak"]
    parts = ["## Encoder training-step cost on CPU (bench/encoders.py)", machine_markdown(data["machine"])]
    if s["quick"]:
        parts.append("**Quick mode: tiny inputs and few presets; numbers are a smoke check only.**")
    parts.append(
        f"fp32 matmul peak, 1 thread, measured in this run: {peak['start']['gflops']:.1f} GFLOP/s at start, "
        f"{peak['end']['gflops']:.1f} at end; utilisation uses the higher ({data['peak_flops'] / 1e9:.1f})."
    )
    if data.get("presets"):
        parts += [
            f"### Presets: fwd+bwd, batch {s['batch']} x {round(s['seconds'] * 100)} frames ({s['seconds']:g} s fbank)",
            (
                f"Fresh process per preset, 1 thread. {s['warmup']} warm-up step on a {s['warmup_frames']}-frame input, "
                f"then one full-size warm-up step when {s['reps']} + 1 steps fit in {s['step_budget']:g} s, then up to "
                f"{s['reps']} timed steps, stopping early before the timed total would pass {s['step_budget']:g} s "
                "(slow presets: 'full-size warm-up' no and fewer timed steps). Loss = mean of squared hidden states. "
                "Utilisation = 3 x forward FLOPs (`encoder_cost`, 2 x MACs) x batch / step time / fp32 peak, by "
                "wall time and by the process's CPU time (the latter discounts waiting for a core on this shared "
                "machine). Peak RSS = the child's `VmHWM` "
                "(/proc/self/status; `ru_maxrss` would include the parent's RSS, inherited across fork+exec); "
                "baseline = its RSS after building model and input (torch's libraries included)."
            ),
            presets_table(data["presets"], s["seconds"]),
        ]
    sc = data.get("scaling")
    if sc:
        parts += [
            "### Mamba vs attention over length (batch 1)",
            (
                f"{sc['models']['mamba']} ({sc['params']['mamba'] / 1e6:.2f} M params) vs {sc['models']['attention']} "
                f"({sc['params']['attention'] / 1e6:.2f} M params: the Transformer with bimamba's width whose depth "
                f"matches its parameter count). One warm-up step at <= {s['scaling_warmup_frames']} frames; "
                f"then, as above, up to {s['scaling_reps']} timed steps within {s['scaling_budget']:g} s (else one). fwd+bwd is skipped where predicted (from the shorter lengths) to "
                f"exceed --max-seconds {s['max_seconds']:g} or --max-memory-gb {s['max_memory_gb']:g}; forward-only "
                "rows are inference (`no_grad`), so their memory is not training memory."
            ),
            scaling_table(sc["rows"]),
        ]
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, default=default_out("encoders"), help="JSON output (a .md goes next to it)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 3 small presets, batch 1 x 200 frames, scaling bimamba-xs at 200/400 frames",
    )
    p.add_argument(
        "--presets", nargs="+", default=None, help=f"presets to time (default: {' '.join(DEFAULT_PRESETS)})"
    )
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0, help="utterance length for the preset table")
    p.add_argument("--warmup", type=int, default=1, help="untimed short-input steps before timing")
    p.add_argument("--warmup-frames", type=int, default=100, help="input length of those warm-up steps")
    p.add_argument("--reps", type=int, default=3, help="most timed steps per preset (median reported)")
    p.add_argument(
        "--step-budget",
        type=float,
        default=60.0,
        help="seconds of full-size steps per preset: the first full-size step is an extra warm-up "
        "only if reps+1 steps fit, and timing stops before the total would pass this",
    )
    p.add_argument("--mamba", default="bimamba-tiny", help="Mamba model of the scaling experiment")
    p.add_argument(
        "--attention",
        default="auto",
        help="attention model of the scaling experiment; auto = transformer-tiny deepened to match params",
    )
    p.add_argument("--scaling-frames", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--scaling-reps", type=int, default=3, help="most timed steps per scaling measurement")
    p.add_argument(
        "--scaling-budget",
        type=float,
        default=20.0,
        help="like --step-budget, per scaling measurement (slow ones get one timed step)",
    )
    p.add_argument("--scaling-warmup-frames", type=int, default=1000, help="warm-up input length (frames)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=150.0,
        help="skip a scaling measurement predicted to take longer than this (s)",
    )
    p.add_argument(
        "--max-memory-gb",
        type=float,
        default=8.0,
        help="skip (predicted) or kill (sampled) a measurement above this RSS (GB)",
    )
    p.add_argument("--timeout", type=float, default=400.0, help="hard limit per subprocess (s)")
    p.add_argument("--peak-seconds", type=float, default=2.0, help="time spent measuring the matmul peak")
    p.add_argument("--skip-presets", action="store_true", help="run only the scaling experiment")
    p.add_argument("--skip-scaling", action="store_true", help="run only the preset table")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.presets = args.presets or QUICK_PRESETS
        args.batch, args.seconds, args.reps, args.peak_seconds, args.step_budget = 1, 2.0, 1, 0.5, 5.0
        args.mamba, args.scaling_frames, args.scaling_warmup_frames = "bimamba-xs", [200, 400], 100
        args.scaling_reps, args.scaling_budget = 1, 2.0
    args.presets = args.presets or DEFAULT_PRESETS
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        print(RESULT_TAG + json.dumps(run_child(json.loads(args.child))), flush=True)
        return
    torch.set_num_threads(1)
    try:
        for name in args.presets + [args.mamba]:
            resolve(name)
    except SpeechBudgetError as e:
        raise SystemExit(f"error: {e}") from None
    started = time.perf_counter()
    info = machine_info()
    peak_start = measure_fp32_peak(args.peak_seconds)
    presets = [] if args.skip_presets else bench_presets(args)
    scaling = None if args.skip_scaling else bench_scaling(args)
    peak_end = measure_fp32_peak(args.peak_seconds)
    # the higher of the two: load from other jobs only ever lowers a measured peak
    peak = max(peak_start["flops"], peak_end["flops"])
    add_utilisation(presets, args.batch, peak)
    data = {
        "benchmark": "encoders",
        "settings": vars(args) | {"out": str(args.out)},
        "machine": info,
        "loadavg_at_end": loadavg(),
        "total_wall_s": time.perf_counter() - started,
        "fp32_peak": {"start": peak_start, "end": peak_end},
        "peak_flops": peak,
        "memory_method": (
            "VmHWM (/proc/self/status) of a fresh subprocess per measurement, minus its RSS after "
            "building model and input; ru_maxrss recorded but inherits the parent's peak across "
            "fork+exec; psutil RSS sampled every 50 ms by the parent as a cross-check"
        ),
        "presets": presets,
        "scaling": scaling,
    }
    markdown = render_markdown(data)
    md_path = save_results(args.out, data, markdown)
    print(markdown)
    print(f"\nwrote {args.out} and {md_path} in {data['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
