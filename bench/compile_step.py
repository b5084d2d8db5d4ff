"""Does ``torch.compile`` pay for the quickstart's training steps on this CPU? (issue 14 item 2)

One process, one thread by default: the quickstart's HuBERT pretraining step (zipformer-tiny, 100
clusters, ~40 s batches of 1.0-3.6 s utterances, as ``bench/cpu_bf16.py`` builds them) eager and
with the model under ``torch.compile`` (inductor, the optimizer left eager), same initial weights.
Compiling is timed on the first step of each new padded shape (the trainer's bucketing sampler gives
many), then both variants run interleaved rounds on shapes they have seen; CPU seconds per step, median.

``--dynamic`` asks for one shape-generic graph instead of one per shape (torch 2.13 fails to lower it
for this model; the script reports the error). Inductor's cache is a fresh temporary folder unless
``--warm-cache``, so the first compile is what a new user pays.

Run: ``python bench/compile_step.py [--shapes 2] [--rounds 3] [--threads 1] [--dynamic]``;
results go to bench/results/compile_step.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import default_out, loadavg, machine_info, machine_markdown, markdown_table, median, save_results  # noqa: E402
from cpu_bf16 import Step, build, make_batch  # noqa: E402


def cpu_seconds(step: Step, batch) -> float:
    t = time.process_time()
    step(batch)
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="zipformer-tiny")
    ap.add_argument("--shapes", type=int, default=2, help="distinct padded batch shapes to compile for")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--dynamic", action="store_true")
    ap.add_argument("--warm-cache", action="store_true")
    ap.add_argument("--out", type=Path, default=default_out("compile_step"))
    args = ap.parse_args()
    if not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    import torch

    torch.set_num_threads(args.threads)
    load_before = loadavg()
    base = build(args.encoder, "hubert", 100, 40)
    eager = Step(copy.deepcopy(base), "fp32", 1e-4)
    compiled = Step(copy.deepcopy(base), "fp32", 1e-4)
    compiled.model = torch.compile(compiled.model, dynamic=args.dynamic)
    batches = [make_batch(args.seconds, s, 100, 40) for s in range(args.shapes)]
    result: dict = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}}
    first = []
    try:
        for b in batches:
            t = time.perf_counter()
            compiled(b)
            first.append(time.perf_counter() - t)
            eager(b)  # eager's warm-up on the same shape
            print(f"compiled first step on {tuple(b['features'].shape)}: {first[-1]:.1f} s wall", flush=True)
    except Exception as exc:  # a lowering failure is a result here, not a crash
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        print("torch.compile failed:", result["error"], flush=True)
    samples: dict = {"eager": [], "compiled": []}
    if "error" not in result:
        for r in range(args.rounds):
            for b in batches:
                pair = [("eager", eager), ("compiled", compiled)]
                for name, step in pair if r % 2 == 0 else pair[::-1]:
                    samples[name].append(cpu_seconds(step, b))
            print(f"round {r + 1}/{args.rounds}: load {loadavg()[0]}", flush=True)
    eager_s, comp_s = median(samples["eager"] or [0]), median(samples["compiled"] or [0])
    saved = eager_s - comp_s
    result.update(
        first_step_wall_s=first,
        samples=samples,
        eager_cpu_s=eager_s,
        compiled_cpu_s=comp_s,
        speedup=eager_s / comp_s if comp_s else None,
        break_even_steps=(first[0] / saved) if first and saved > 0 else None,
        load=[load_before, loadavg()],
    )
    rows = [
        [
            args.encoder,
            args.threads,
            "dynamic" if args.dynamic else "per shape",
            ", ".join(f"{x:.0f}" for x in first) or "-",
            f"{eager_s:.3f}",
            f"{comp_s:.3f}" if comp_s else "-",
            f"{eager_s / comp_s:.2f}" if comp_s else "-",
            f"{result['break_even_steps']:.0f}" if result["break_even_steps"] else "never",
        ]
    ]
    md = markdown_table(
        [
            "encoder",
            "threads",
            "graphs",
            "first step per shape, wall s",
            "eager cpu s/step",
            "compiled cpu s/step",
            "speed-up",
            "steps to repay compile",
        ],
        rows,
    )
    if "error" in result:
        md += f"\n\ntorch.compile failed: `{result['error']}`"
    md += "\n\n" + machine_markdown(result["machine"]) + f"\n\nload (1-min) before/after: {result['load']}"
    print(md)
    save_results(args.out, result, md)


if __name__ == "__main__":
    main()
