"""Zipformer training steps with and without the compiled CPU loops, and the matmul ceiling.

Issue 14 item 3 asks to double the training FLOP/s of zipformer-tiny and -small steps with the same
math. This bench measures, in one process and interleaved rounds (so both arms see the same machine):

1. the fp32 matmul peak of this machine at the thread count used;
2. a forward + backward + SGD step (4 x 1000 fbank frames, as ``zipformer_vs_official.py
   --presets``) with the compiled loops of ``speechbudget.models.zipformer_cpu`` (attention weights,
   Swoosh, depthwise convolution) and with the PyTorch ops they replace (the module's ``supports``
   answering False, which is what ``SPEECHBUDGET_ZIPFORMER=torch`` does);
3. from a ``torch.profiler`` trace of the compiled step, the share of time in matmuls (``mm``,
   ``addmm``, ``bmm``, ``baddbmm``): the rest is what any further fusion could remove, so
   step / matmul time is the most a same-math CPU step could still gain.

Run: ``python bench/zipformer_cpu.py --rounds 3 --steps 5`` (results in bench/results/zipformer_cpu.*).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    default_out,
    loadavg,
    machine_info,
    machine_markdown,
    markdown_table,
    measure_fp32_peak,
    save_results,
)

from speechbudget.models import zipformer_cpu  # noqa: E402
from speechbudget.models.catalog import encoder_cost  # noqa: E402
from speechbudget.models.presets import build_encoder  # noqa: E402

MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
LENGTHS = [1000, 960, 900, 998]


def make_step(preset: str):
    torch.manual_seed(0)
    model = build_encoder(preset).train()
    x = torch.randn(len(LENGTHS), max(LENGTHS), 80)
    lengths = torch.tensor(LENGTHS)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        model(x, lengths).hidden.square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed_steps(step, steps: int) -> list:
    step()  # warm-up (first-touch allocations, kernel build)
    out = []
    for _ in range(steps):
        t0 = time.process_time()
        step()
        out.append(time.process_time() - t0)
    return out


def matmul_share(step) -> dict:
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        step()
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    mm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMULS)
    return {"matmul_share": mm / total, "ceiling": total / mm}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="*", default=["zipformer-tiny", "zipformer-small"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if zipformer_cpu.load() is None:
        sys.exit("the compiled Zipformer loops cannot be built here (no g++?)")
    real_supports = zipformer_cpu.supports
    modes = {"compiled": real_supports, "pytorch": lambda *tensors: False}
    info = machine_info()
    peak = measure_fp32_peak()
    results = {}
    for preset in args.presets:
        step = make_step(preset)
        runs = {mode: [] for mode in modes}
        for r in range(args.rounds):
            order = list(modes) if r % 2 == 0 else list(reversed(modes))
            for mode in order:
                zipformer_cpu.supports = modes[mode]
                load0 = loadavg()
                runs[mode] += timed_steps(step, args.steps)
                print(
                    f"{preset} {mode} round {r + 1}: {statistics.median(runs[mode][-args.steps :]):.3f} s cpu (load {load0[0]:.1f})",
                    flush=True,
                )
        zipformer_cpu.supports = real_supports
        share = matmul_share(step)
        flops = 3 * 2 * encoder_cost(preset)["macs_per_audio_second"] * sum(LENGTHS) / 100.0
        results[preset] = {
            "train_flops_per_step": flops,
            "cpu_s": runs,
            **share,
            **{f"{mode}_min_s": min(v) for mode, v in runs.items()},
            **{f"{mode}_median_s": statistics.median(v) for mode, v in runs.items()},
        }
    data = {
        "command": "python bench/zipformer_cpu.py " + " ".join(sys.argv[1:]),
        "machine": info,
        "threads": args.threads,
        "fp32_peak": peak,
        "results": results,
    }
    peak_gflops = peak["gflops"]
    rows = []
    for preset, r in results.items():
        f = r["train_flops_per_step"] / 1e9
        rows.append(
            [
                preset,
                f"{f:.1f}",
                f"{r['pytorch_median_s']:.3f} / {r['pytorch_min_s']:.3f}",
                f"{r['compiled_median_s']:.3f} / {r['compiled_min_s']:.3f}",
                f"{r['pytorch_median_s'] / r['compiled_median_s']:.2f}x",
                f"{f / r['pytorch_median_s']:.1f} -> {f / r['compiled_median_s']:.1f}",
                f"{100 * f / r['compiled_median_s'] / peak_gflops:.0f}%",
                f"{100 * r['matmul_share']:.0f}%",
                f"{r['ceiling']:.2f}x",
            ]
        )
    md = "\n\n".join(
        [
            f"Command: `{data['command']}`",
            machine_markdown(info),
            f"fp32 matmul peak, {args.threads} thread(s), measured in this run: {peak_gflops:.1f} GFLOP/s.",
            markdown_table(
                [
                    "preset",
                    "training GFLOP / step",
                    "PyTorch ops: cpu s median / min",
                    "compiled loops: cpu s median / min",
                    "speed-up (median)",
                    "GFLOP/s (median)",
                    "compiled, of the matmul peak",
                    "matmul share of the compiled step",
                    "ceiling (step / matmul time)",
                ],
                rows,
            ),
        ]
    )
    out = args.out or default_out("zipformer_cpu")
    print(save_results(out, data, md).read_text())


if __name__ == "__main__":
    main()
