"""AuM vs AST: training-step time and peak memory as clips get longer (1, 4, 16, 60 s), side by side.

The AuM paper's claim is that a state-space model's cost grows linearly with the number of patches
while self-attention's grows quadratically, so Audio Mamba should pull ahead on long inputs. Each
(model, clip length) runs in its own process: a fresh peak-memory counter (CUDA: max allocated;
CPU: the process's peak resident set, reset after the model and batch are built) and no allocator
state carried over. A step is forward + backward + AdamW update of a ClassifierModel; the median of
``--steps`` steps after one warm-up step is reported.

    python3 bench/classify_cost.py                                  # CPU: reduced depth, batch 1
    python3 bench/classify_cost.py --device cuda --layers 0 --batch 8   # full 24/12-layer presets
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, machine_markdown, markdown_table, median, save_results  # noqa: E402


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS
    except OSError:
        pass


def measure(preset: str, seconds: float, args: Dict[str, Any], queue) -> None:
    """One (model, clip length): build, one warm-up step, then ``steps`` timed steps."""
    import torch

    from speechbudget.models.presets import build_encoder
    from speechbudget.objectives.classify import ClassifierModel

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    frames = int(seconds * 100)
    spec: Dict[str, Any] = {"preset": preset, "max_frames": max(frames, 128)}
    if args["layers"]:
        spec["layers"] = args["layers"]
    device = torch.device(args["device"])
    model = ClassifierModel(build_encoder(spec), 35, spec_augment=False, time_roll=False).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = {
        "features": torch.randn(args["batch"], frames, 128, device=device),
        "lengths": torch.full((args["batch"],), frames, device=device),
        "labels": torch.randint(0, 35, (args["batch"],), device=device),
    }
    patches = int(model.encoder.patches.output_lengths(torch.tensor([frames]))[0])

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = model(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    base = torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb()
    step()  # warm-up (allocations, kernel choice)
    times = [step() for _ in range(args["steps"])]
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb()
    queue.put(
        {
            "model": preset,
            "seconds": seconds,
            "patches": patches,
            "params": sum(p.numel() for p in model.parameters()),
            "step_s": median(times),
            "peak_mb": peak,
            "step_mb": peak - base,  # above the model, optimizer and batch already in memory
        }
    )


def run_one(preset: str, seconds: float, args: Dict[str, Any]) -> Dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(preset, seconds, args, queue))
    proc.start()
    proc.join(args["timeout"])
    if proc.is_alive():
        proc.terminate()
        proc.join()
        return {"model": preset, "seconds": seconds, "error": f"over {args['timeout']} s"}
    if proc.exitcode != 0 or queue.empty():
        return {"model": preset, "seconds": seconds, "error": f"exit code {proc.exitcode} (out of memory?)"}
    return queue.get()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="aum-tiny,ast-tiny")
    p.add_argument("--seconds", default="1,4,16,60")
    p.add_argument("--layers", type=int, default=2, help="Override the depth (0: the preset's own).")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--timeout", type=float, default=600.0, help="Seconds per (model, length) before giving up."
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "classify_cost.json")
    a = p.parse_args()
    args = vars(a) | {"out": str(a.out)}
    rows = []
    for seconds in [float(s) for s in a.seconds.split(",")]:
        for preset in a.models.split(","):
            r = run_one(preset, seconds, args)
            print(json.dumps(r), flush=True)
            rows.append(r)
    info = machine_info()
    table = markdown_table(
        ["clip s", "model", "patches", "params", "step s", "peak MB", "step MB"],
        [
            [
                r["seconds"],
                r["model"],
                r.get("patches", "-"),
                f"{r['params'] / 1e6:.2f}M" if "params" in r else "-",
                f"{r['step_s']:.3f}" if "step_s" in r else r.get("error"),
                f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-",
                f"{r['step_mb']:.0f}" if "step_mb" in r else "-",
            ]
            for r in rows
        ],
    )
    depth = f"{a.layers} layers" if a.layers else "preset depth"
    md = (
        f"### AuM vs AST training step ({a.device}, batch {a.batch}, {depth}, median of {a.steps} steps)\n\n"
        f"Command: `python3 bench/classify_cost.py {' '.join(sys.argv[1:])}`\n\n{table}\n\n{machine_markdown(info)}\n"
    )
    save_results(a.out, {"args": args, "machine": info, "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
