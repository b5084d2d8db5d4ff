"""Token merging on AST-tiny: forward and training-step throughput next to FLOPs, r = 0/2/4/8/16 per layer.

One process, one thread, a fixed batch of random 128-bin fbank (``--batch`` clips of 1 s and of 4 s).
Each (length, r) cell is timed ``--reps`` times, interleaved in rounds (r = 0, 2, 4, 8, 0, 2, ...) so
that a change in machine load hits every r alike; the median is reported, by this process's CPU time
(steady on a shared machine: with one thread it is compute time) and by wall time. Forward: eval mode,
``no_grad``. Training step: a ClassifierModel (CLS pooling, linear head, BCE on 10 classes)
forward + backward + SGD step. FLOPs: ``encoder_cost`` (fvcore, merged token counts and matching
included) per audio second at that clip length, forward only.

Run: ``python bench/tome.py [--reps 5] [--batch 4]``; results in bench/results/tome.{json,md}.
"""

from __future__ import annotations

import argparse

import torch
from common import (
    default_out,
    loadavg,
    machine_info,
    machine_markdown,
    markdown_table,
    median,
    save_results,
    timed,
)

from speechbudget.models.catalog import encoder_cost
from speechbudget.models.presets import build_encoder
from speechbudget.objectives.classify import ClassifierModel

RS = (0, 2, 4, 8, 16)  # 16: where 4 s clips (481 tokens) still have tokens left to merge
SECONDS = (1.0, 4.0)


def build(r: int) -> ClassifierModel:
    torch.manual_seed(0)
    spec = {"preset": "ast-tiny", "tome": {"r": r}}
    return ClassifierModel(
        build_encoder(spec), num_classes=10, loss="bce", spec_augment=False, time_roll=False
    )


def time_forward(model: ClassifierModel, x, lengths) -> tuple:
    """-> (wall s, this process's CPU s): one thread, so CPU time is compute time without the waits."""
    model.eval()
    with torch.no_grad():
        _, t = timed(lambda: model.logits(x, lengths))
    return t.wall_s, t.cpu_s


def train_step(model: ClassifierModel, opt, x, lengths, labels) -> None:
    loss, _ = model({"features": x, "lengths": lengths, "labels": labels})
    opt.zero_grad()
    loss.backward()
    opt.step()


def time_train_step(model: ClassifierModel, opt, x, lengths, labels) -> tuple:
    model.train()
    _, t = timed(lambda: train_step(model, opt, x, lengths, labels))
    return t.wall_s, t.cpu_s


def merged_tokens(model: ClassifierModel, x, lengths) -> int:
    model.eval()
    with torch.no_grad():
        return int(model.encoder(x, lengths).lengths[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", default=str(default_out("tome")))
    args = ap.parse_args()
    torch.set_num_threads(1)
    info = machine_info()
    models = {r: build(r) for r in RS}
    opts = {r: torch.optim.SGD(m.parameters(), lr=1e-4) for r, m in models.items()}
    rows = []
    for seconds in SECONDS:
        frames = int(seconds * 100)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(args.batch, frames, 128, generator=g)
        lengths = torch.full((args.batch,), frames)
        labels = torch.arange(args.batch) % 10
        fwd = {r: [] for r in RS}
        step = {r: [] for r in RS}
        load_before = loadavg()
        for r in RS:  # warm-up
            time_forward(models[r], x, lengths)
            time_train_step(models[r], opts[r], x, lengths, labels)
        for _ in range(args.reps):
            for r in RS:
                fwd[r].append(time_forward(models[r], x, lengths))
                step[r].append(time_train_step(models[r], opts[r], x, lengths, labels))
        load_after = loadavg()
        for r in RS:
            cost = encoder_cost({"preset": "ast-tiny", "tome": {"r": r}}, seconds=seconds)
            rows.append(
                {
                    "seconds": seconds,
                    "r": r,
                    "tokens_in": merged_tokens(models[0], x, lengths),
                    "tokens_out": merged_tokens(models[r], x, lengths),
                    "gflops_per_audio_second": cost["gflops_per_audio_second"],
                    "forward_wall_s": median([w for w, _ in fwd[r]]),
                    "forward_cpu_s": median([c for _, c in fwd[r]]),
                    "train_step_wall_s": median([w for w, _ in step[r]]),
                    "train_step_cpu_s": median([c for _, c in step[r]]),
                    "load_before": load_before,
                    "load_after": load_after,
                }
            )
    for row in rows:
        base = next(b for b in rows if b["seconds"] == row["seconds"] and b["r"] == 0)
        row["flops_vs_r0"] = row["gflops_per_audio_second"] / base["gflops_per_audio_second"]
        for key in ("forward_wall_s", "forward_cpu_s", "train_step_wall_s", "train_step_cpu_s"):
            row[key[:-2] + "_speedup"] = base[key] / row[key]
        row["forward_clips_per_cpu_s"] = args.batch / row["forward_cpu_s"]
        row["train_clips_per_cpu_s"] = args.batch / row["train_step_cpu_s"]
    table = markdown_table(
        ["clip s", "r/layer", "tokens in->out", "fwd GFLOP/audio s", "FLOPs vs r=0", "fwd clips/CPU s",
         "fwd speedup CPU (wall)", "train clips/CPU s", "train speedup CPU (wall)", "load 1m"],
        [
            [r["seconds"], r["r"], f"{r['tokens_in']}->{r['tokens_out']}", f"{r['gflops_per_audio_second']:.3f}",
             f"{r['flops_vs_r0']:.2f}", f"{r['forward_clips_per_cpu_s']:.1f}",
             f"{r['forward_cpu_speedup']:.2f}x ({r['forward_wall_speedup']:.2f}x)",
             f"{r['train_clips_per_cpu_s']:.2f}",
             f"{r['train_step_cpu_speedup']:.2f}x ({r['train_step_wall_speedup']:.2f}x)",
             f"{r['load_before'][0]:.1f}->{r['load_after'][0]:.1f}"]
            for r in rows
        ],
    )  # fmt: skip
    md = (
        f"Command: `python bench/tome.py --reps {args.reps} --batch {args.batch}` (one thread).\n\n"
        f"{machine_markdown(info)}\n\n{table}\n"
    )
    save_results(args.out, {"machine": info, "args": vars(args), "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
