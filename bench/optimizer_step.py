"""ScaledAdam's compiled CPU passes vs its PyTorch path, alone and inside whole training steps (issue 14).

One process, interleaved rounds (both variants once per round, the order alternating), CPU seconds,
medians. Cases: the optimizer step alone on zipformer-tiny's 532 tensors (4.66M parameters), and
whole training steps (forward, backward, optimizer) as the trainer runs them:
- ``quickstart``: HuBERT pretraining on ~40 s batches of 1.0-3.6 s utterances (the quickstart);
- ``fsdd``: CTC fine-tuning on ~10 s batches of 0.3-0.6 s clips (FSDD's digits; many short steps,
  where the optimizer's fixed cost per step weighs most).

Run: ``python bench/optimizer_step.py [--rounds 5] [--threads 1]``; results go to
bench/results/optimizer_step.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import default_out, loadavg, machine_info, machine_markdown, markdown_table, median, save_results  # noqa: E402
from cpu_bf16 import build, make_batch  # noqa: E402

from speechbudget.train.optim import ScaledAdam  # noqa: E402

CASES = {"quickstart": ("hubert", 40.0, (1.0, 3.6)), "fsdd": ("ctc", 10.0, (0.3, 0.6))}


def cpu_time(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def training_step(model, opt, batch):
    def run():
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        loss, _ = model(batch)
        loss.backward()
        opt.step()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=default_out("optimizer_step"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = loadavg()
    jobs = {}
    enc = build("zipformer-tiny", "hubert", 100, 40).encoder
    for fused in (False, True):
        params = [p for p in copy.deepcopy(enc).parameters()]
        opt = ScaledAdam(params, lr=0.045, fused=fused)
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        jobs[("optimizer alone", fused)] = opt.step
    for case, (objective, seconds, utt) in CASES.items():
        base = build("zipformer-tiny", objective, 100, 40)
        batch = make_batch(seconds, 0, 100, 40, utt)
        for fused in (False, True):
            model = copy.deepcopy(base).train()
            jobs[(case, fused)] = training_step(
                model, ScaledAdam(model.parameters(), lr=0.045, fused=fused), batch
            )
    for fn in jobs.values():  # warm-up: allocator, optimizer state, the kernel's build
        fn()
        fn()
    samples: dict = {key: [] for key in jobs}
    for r in range(args.rounds):
        for key in sorted(jobs, key=lambda k: (k[0], k[1] != (r % 2 == 0))):
            samples[key].append(cpu_time(jobs[key]))
        print(f"round {r + 1}/{args.rounds}: load {loadavg()[0]}", flush=True)
    rows, result = (
        [],
        {"machine": machine_info(), "rounds": args.rounds, "threads": args.threads, "cases": {}},
    )
    for case in ["optimizer alone", *CASES]:
        plain, fused = median(samples[(case, False)]), median(samples[(case, True)])
        per_round = [a / b for a, b in zip(samples[(case, False)], samples[(case, True)])]
        result["cases"][case] = {
            "pytorch_cpu_s": samples[(case, False)],
            "compiled_cpu_s": samples[(case, True)],
        }
        rows.append([case, f"{plain * 1e3:.1f}", f"{fused * 1e3:.1f}", f"{median(per_round):.2f}"])
    result["load"] = [load_before, loadavg()]
    md = markdown_table(
        ["case (zipformer-tiny)", "PyTorch path, cpu ms", "compiled passes, cpu ms", "speed-up"], rows
    )
    md += "\n\n" + machine_markdown(result["machine"]) + f"\n\nload (1-min) before/after: {result['load']}"
    print(md)
    save_results(args.out, result, md)


if __name__ == "__main__":
    main()
