"""Does bf16 autocast make training faster on this CPU? (issue 14 item 2)

The trainer runs ``torch.autocast("cpu", dtype=torch.bfloat16)`` around the forward pass when a
recipe says ``amp: bf16`` (``amp: auto`` is bf16 on CUDA only). This script times whole training
steps -- forward under autocast or not, backward, ScaledAdam step, exactly what ``Trainer.train_step``
does -- for fp32 and bf16 autocast at 1 and 2 torch threads, in one process, in interleaved rounds
(every configuration once per round, the order rotated each round) so that the load of the shared
machine falls on all configurations alike. Medians over rounds of CPU time (this process, all its
threads) and wall time; the bf16/fp32 ratios are computed per round and their median reported.

With ``--vary`` every round draws a new batch (other lengths, so another padded shape), as the
trainer's bucketing sampler does; without it every step sees the same batch.

Steps:
- ``hubert``: the quickstart's pretraining step, ``HubertModel`` on 100 k-means clusters;
- ``ctc``: the quickstart's fine-tuning step, ``CtcModel`` (40 tokens, SpecAugment on), tokens of
  8 characters per second.
Batches: the quickstart's ``max_duration: 40``, i.e. about 40 s of 80-dim fbank per batch, split
into utterances of 1.0-3.6 s (the synthetic connected-digit corpus; lengths drawn with a fixed seed,
zero-padded to the longest as the collater does). Feature values are random: the step's cost
depends on shapes, not on values.

For reference, matmul peak FLOP/s (``measure_cpu_peak``, best of repeated square matmuls) for fp32
and bf16 at each thread count, also interleaved.

Run: ``python bench/cpu_bf16.py [--rounds 5] [--encoders zipformer-tiny transformer-tiny]``;
results go to bench/results/cpu_bf16.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import random
import time
from typing import Any

import torch
from common import (
    default_out,
    loadavg,
    machine_info,
    machine_markdown,
    markdown_table,
    median,
    save_results,
)

from speechbudget.cost.devices import measure_cpu_peak
from speechbudget.models.presets import build_encoder
from speechbudget.objectives.ctc import CtcModel
from speechbudget.objectives.hubert import HubertModel
from speechbudget.train.optim import build_optimizer

MODES = ("fp32", "bf16")


def make_batch(
    seconds: float, seed: int, num_clusters: int, vocab: int, utt: tuple[float, float] = (1.0, 3.6)
) -> dict[str, Any]:
    """About ``seconds`` of fbank in utterances of ``utt`` seconds (uniform), padded to the longest
    (100 frames/s). The default 1.0-3.6 s is the range of the quickstart corpus (mean 2.0 s)."""
    rng = random.Random(seed)
    lens: list[int] = []
    while sum(lens) < seconds * 100:
        lens.append(rng.randint(int(utt[0] * 100), int(utt[1] * 100)))
    t = max(lens)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lens), t, 80, generator=g)
    lengths = torch.tensor(lens)
    for i, n in enumerate(lens):
        feats[i, n:] = 0
    kmeans = torch.randint(0, num_clusters, (len(lens), (t + 1) // 2), generator=g)
    for i, n in enumerate(lens):
        kmeans[i, (n + 1) // 2 :] = -1
    tok_len = torch.tensor([max(1, n * 8 // 100) for n in lens])
    tokens = torch.randint(1, vocab, (len(lens), int(tok_len.max())), generator=g)
    return {
        "features": feats,
        "lengths": lengths,
        "kmeans": kmeans,
        "tokens": tokens,
        "token_lengths": tok_len,
        "seconds": float(sum(lens)) / 100,
    }


def build(encoder: str, objective: str, num_clusters: int, vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    enc = build_encoder(encoder)
    if objective == "hubert":
        return HubertModel(enc, num_clusters)
    return CtcModel(enc, vocab)


class Step:
    """One configuration: its own model and optimizer (same initial weights for fp32 and bf16)."""

    def __init__(self, model: torch.nn.Module, mode: str, lr: float):
        self.model = model
        self.mode = mode
        self.optimizer = build_optimizer("scaled_adam", model, lr=lr)
        self.losses: list[float] = []

    def __call__(self, batch: dict[str, Any]) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.mode == "bf16" else contextlib.nullcontext()
        torch.manual_seed(1)  # same masks / SpecAugment in both modes
        with ctx:
            loss, _ = self.model(batch)
        loss.backward()
        self.optimizer.step()
        self.losses.append(float(loss.detach()))


def timed(fn, *args) -> tuple[float, float]:
    c0, w0 = time.process_time(), time.perf_counter()
    fn(*args)
    return time.process_time() - c0, time.perf_counter() - w0


def bench_steps(args) -> list[dict[str, Any]]:
    batch = make_batch(args.seconds, 0, args.clusters, args.vocab, tuple(args.utt))
    print(
        f"batch: {batch['features'].shape[0]} utterances, {batch['seconds']:.1f} s of audio, "
        f"padded to {batch['features'].shape[1]} frames",
        flush=True,
    )
    configs = []
    for enc in args.encoders:
        for obj in args.objectives:
            base = build(enc, obj, args.clusters, args.vocab)
            for mode in MODES:
                configs.append(((enc, obj, mode), Step(copy.deepcopy(base), mode, args.lr)))
    samples: dict[tuple, list[tuple[float, float, list[float]]]] = {}
    for threads in args.threads:  # warm-up: allocator, kernel selection, ScaledAdam state
        torch.set_num_threads(threads)
        for _, step in configs:
            step(batch)
    for r in range(args.rounds):
        if args.vary:  # a new batch shape each round, as the bucketing sampler gives the trainer
            batch = make_batch(args.seconds, r + 1, args.clusters, args.vocab, tuple(args.utt))
        order = list(args.threads) if r % 2 == 0 else list(reversed(args.threads))
        for threads in order:
            torch.set_num_threads(threads)
            rot = r % len(configs)
            for key, step in configs[rot:] + configs[:rot]:
                load = loadavg()[0]
                cpu, wall = timed(step, batch)
                samples.setdefault((*key, threads), []).append((cpu, wall, [load]))
        print(f"round {r + 1}/{args.rounds} done, load {loadavg()[0]}", flush=True)
    rows = []
    for (enc, obj, mode, threads), vals in samples.items():
        rows.append(
            {
                "encoder": enc,
                "objective": obj,
                "mode": mode,
                "threads": threads,
                "cpu_s": [v[0] for v in vals],
                "wall_s": [v[1] for v in vals],
                "load": [v[2][0] for v in vals],
                "cpu_median_s": median([v[0] for v in vals]),
                "wall_median_s": median([v[1] for v in vals]),
            }
        )
    for enc, obj in {(r["encoder"], r["objective"]) for r in rows}:
        losses = {m: s.losses for (k, s) in configs for m in [k[2]] if k[:2] == (enc, obj)}
        for r in rows:
            if (r["encoder"], r["objective"]) == (enc, obj):
                r["losses"] = losses[r["mode"]]
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (encoder, objective, threads): bf16/fp32 time ratio per round, median (< 1 = bf16 faster)."""
    out = []
    index = {(r["encoder"], r["objective"], r["mode"], r["threads"]): r for r in rows}
    for (enc, obj, mode, threads), fp in index.items():
        if mode != "fp32":
            continue
        bf = index[(enc, obj, "bf16", threads)]
        out.append(
            {
                "encoder": enc,
                "objective": obj,
                "threads": threads,
                "fp32_cpu_s": fp["cpu_median_s"],
                "bf16_cpu_s": bf["cpu_median_s"],
                "fp32_wall_s": fp["wall_median_s"],
                "bf16_wall_s": bf["wall_median_s"],
                "cpu_ratio": median([b / f for b, f in zip(bf["cpu_s"], fp["cpu_s"])]),
                "wall_ratio": median([b / f for b, f in zip(bf["wall_s"], fp["wall_s"])]),
                "load": [min(fp["load"] + bf["load"]), max(fp["load"] + bf["load"])],
            }
        )
    return sorted(out, key=lambda r: (r["encoder"], r["objective"], r["threads"]))


def bench_matmul(args) -> list[dict[str, Any]]:
    samples: dict[tuple, list[float]] = {}
    for _ in range(args.matmul_rounds):
        for threads in args.threads:
            torch.set_num_threads(threads)
            for dtype in MODES:
                samples.setdefault((dtype, threads), []).append(
                    measure_cpu_peak(dtype, seconds=args.matmul_seconds)
                )
    rows = []
    for threads in args.threads:
        fp, bf = samples[("fp32", threads)], samples[("bf16", threads)]
        rows.append(
            {
                "threads": threads,
                "fp32_gflops": round(max(fp) / 1e9, 1),
                "bf16_gflops": round(max(bf) / 1e9, 1),
                "ratio": round(max(bf) / max(fp), 2),
                "fp32_all": fp,
                "bf16_all": bf,
            }
        )
    return rows


def render(data: dict[str, Any]) -> str:
    a = data["args"]
    speed = markdown_table(
        [
            "encoder",
            "step",
            "threads",
            "fp32 cpu s",
            "bf16 cpu s",
            "bf16/fp32 cpu",
            "fp32 wall s",
            "bf16 wall s",
            "bf16/fp32 wall",
            "load (1-min)",
        ],
        [
            [
                r["encoder"],
                r["objective"],
                r["threads"],
                f"{r['fp32_cpu_s']:.2f}",
                f"{r['bf16_cpu_s']:.2f}",
                f"**{r['cpu_ratio']:.2f}**",
                f"{r['fp32_wall_s']:.2f}",
                f"{r['bf16_wall_s']:.2f}",
                f"{r['wall_ratio']:.2f}",
                f"{r['load'][0]:.1f}-{r['load'][1]:.1f}",
            ]
            for r in data["ratios"]
        ],
    )
    mm = markdown_table(
        ["threads", "fp32 GFLOP/s", "bf16 GFLOP/s", "bf16/fp32"],
        [[r["threads"], r["fp32_gflops"], r["bf16_gflops"], r["ratio"]] for r in data["matmul"]],
    )
    return "\n".join(
        [
            "### bf16 autocast on this CPU: training-step time (issue 14 item 2)",
            "",
            f"`python bench/cpu_bf16.py` -- {a['rounds']} interleaved rounds in one process, medians; "
            f"batch {data['batch']}"
            + (
                "; a new batch shape each round (`--vary`)"
                if a.get("vary")
                else "; the same batch every step"
            )
            + "; ScaledAdam step included. Ratio < 1 means bf16 is faster.",
            "",
            speed,
            "",
            f"Matmul peak (best of {a['matmul_rounds']} interleaved {a['matmul_seconds']} s measurements):",
            "",
            mm,
            "",
            f"CPU: torch reports capability {data['cpu_capability']}, "
            f"avx512_bf16 {data['avx512_bf16']}, AMX {data['amx']}.",
            "",
            machine_markdown(data["machine"]),
        ]
    )


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoders", nargs="+", default=["zipformer-tiny", "transformer-tiny"])
    p.add_argument("--objectives", nargs="+", default=["hubert", "ctc"], choices=["hubert", "ctc"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=40.0, help="audio per batch (max_duration)")
    p.add_argument(
        "--utt",
        nargs=2,
        type=float,
        default=[1.0, 3.6],
        metavar=("MIN_S", "MAX_S"),
        help="utterance lengths (the quickstart corpus: 1.0-3.6 s)",
    )
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--vocab", type=int, default=40)
    p.add_argument("--lr", type=float, default=0.045)
    p.add_argument(
        "--vary",
        action="store_true",
        help="a new batch (other utterance lengths, other padded shape) each round instead of one fixed batch",
    )
    p.add_argument("--matmul-rounds", type=int, default=3)
    p.add_argument("--matmul-seconds", type=float, default=1.0)
    p.add_argument("--out", default=str(default_out("cpu_bf16")))
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    info = machine_info()
    t0 = time.perf_counter()
    matmul = bench_matmul(args)
    print("matmul:", [(r["threads"], r["fp32_gflops"], r["bf16_gflops"]) for r in matmul], flush=True)
    batch = make_batch(args.seconds, 0, args.clusters, args.vocab, tuple(args.utt))
    rows = bench_steps(args)
    rat = ratios(rows)
    data = {
        "args": vars(args),
        "machine": info,
        "loadavg_at_end": loadavg(),
        "elapsed_s": time.perf_counter() - t0,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
        "amx": torch.cpu._is_amx_tile_supported(),
        "batch": (
            f"{batch['features'].shape[0]} utterances of {args.utt[0]:g}-{args.utt[1]:g} s, {batch['seconds']:.1f} s of audio, "
            f"padded to {batch['features'].shape[1]} frames x 80"
        ),
        "matmul": matmul,
        "steps": rows,
        "ratios": rat,
    }
    md = save_results(args.out, data, render(data))
    print(md.read_text())


if __name__ == "__main__":
    main()
