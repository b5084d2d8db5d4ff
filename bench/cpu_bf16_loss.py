"""Does bf16 autocast change what the quickstart's pretraining learns? (issue 14 item 2)

Three runs of the quickstart's ``pretrain`` stage on the quickstart's corpus and k-means labels,
the same number of steps each, started together so that they share the machine's load alike:

- ``fp32``: ``amp=off``, seed 0 (what the quickstart does on a CPU today);
- ``bf16``: ``amp=bf16``, seed 0 (same initial weights, masks and batches);
- ``fp32-seed1``: ``amp=off``, seed 1 -- the noise reference: how far two fp32 runs that differ only
  in their seed end apart. bf16 "matches within noise" when its distance to ``fp32`` is no larger.

Each run uses ``--threads`` torch threads (default 1: three runs on a 2-core machine). Held-out
(dev voices) masked-prediction loss and accuracy every ``--valid-every`` steps, training loss as
logged, and each run's wall time and throughput.

Run (after ``speechbudget run recipes/quickstart.yaml exp_dir=WORK/qs --stop-stage kmeans``):
``python bench/cpu_bf16_loss.py --work WORK [--steps 100]``; a finished run is not redone (delete
its folder to redo it). Results go to bench/results/cpu_bf16_loss.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from common import (
    REPO_ROOT,
    default_out,
    loadavg,
    machine_info,
    machine_markdown,
    markdown_table,
    save_results,
)

RUNS = {"fp32": ("off", 0), "bf16": ("bf16", 0), "fp32-seed1": ("off", 1)}


def command(args, name: str) -> list[str]:
    amp, seed = RUNS[name]
    labels = Path(args.work) / "qs" / "kmeans"
    return [
        "speechbudget",
        "pretrain",
        "recipes/quickstart.yaml",
        f"exp_dir={Path(args.work) / name}",
        f"train_cuts={labels / 'cuts_train.jsonl.gz'}",
        f"dev_cuts={labels / 'cuts_dev.jsonl.gz'}",
        f"amp={amp}",
        f"seed={seed}",
        "budget.flops=null",
        f"budget.steps={args.steps}",
        f"valid_every={args.valid_every}",
        "checkpoint_every=1000",
        "--json",
    ]


def launch(args) -> dict[str, dict[str, Any]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    procs = {}
    for name in RUNS:
        if (Path(args.work) / name / "summary.json").is_file():
            continue
        cmd = command(args, name)
        print("+", " ".join(cmd), flush=True)
        out = open(Path(args.work) / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=out), out, loadavg())
    runs = {}
    for name, (proc, out, load0) in procs.items():
        rc = proc.wait()
        out.close()
        if rc != 0:
            raise SystemExit(f"{name} failed ({rc}); see {Path(args.work) / f'{name}.log'}")
        runs[name] = {"load_before": load0, "load_after": loadavg()}
    return runs


def read_run(work: Path, name: str) -> dict[str, Any]:
    d = work / name
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((d / "summary.json").read_text())
    train = {r["step"]: r for r in rows if "loss" in r}
    valid = {r["step"]: r for r in rows if "valid_loss" in r}
    return {
        "command": " ".join(command(argparse.Namespace(**_ARGS), name)),
        "wall_seconds": summary["wall_seconds"],
        "steps": summary["steps"],
        "audio_hours": summary["audio_hours"],
        "train": {s: {"loss": r["loss"], "masked_acc": r["masked_acc"]} for s, r in train.items()},
        "valid": {
            s: {"loss": r["valid_loss"], "masked_acc": r["valid_masked_acc"]} for s, r in valid.items()
        },
    }


_ARGS: dict[str, Any] = {}


def render(data: dict[str, Any]) -> str:
    runs = data["runs"]
    steps = sorted(runs["fp32"]["valid"], key=int)
    rows = []
    for s in steps:
        v = {n: runs[n]["valid"].get(s) for n in RUNS}
        rows.append(
            [s]
            + [f"{v[n]['loss']:.3f} / {100 * v[n]['masked_acc']:.1f}%" if v[n] else "-" for n in RUNS]
            + [
                f"{abs(v['bf16']['loss'] - v['fp32']['loss']):.3f}" if v["bf16"] else "-",
                f"{abs(v['fp32-seed1']['loss'] - v['fp32']['loss']):.3f}" if v["fp32-seed1"] else "-",
            ]
        )
    valid = markdown_table(
        ["step", "fp32 (seed 0)", "bf16 (seed 0)", "fp32 (seed 1)", "abs(bf16 - fp32)", "abs(seed1 - seed0)"],
        rows,
    )
    tsteps = sorted(runs["fp32"]["train"], key=int)
    tail = [s for s in tsteps if int(s) > int(tsteps[-1]) // 2]

    def mean_loss(name: str) -> float:
        t = runs[name]["train"]
        return sum(t[s]["loss"] for s in tail if s in t) / max(1, sum(s in t for s in tail))

    speed = markdown_table(
        ["run", "steps", "wall s", "audio s per wall s", f"mean train loss, steps {tail[0]}-{tail[-1]}"],
        [
            [
                n,
                runs[n]["steps"],
                f"{runs[n]['wall_seconds']:.0f}",
                f"{3600 * runs[n]['audio_hours'] / runs[n]['wall_seconds']:.2f}",
                f"{mean_loss(n):.3f}",
            ]
            for n in RUNS
        ],
    )
    a = data["args"]
    return "\n".join(
        [
            "### bf16 autocast on this CPU: the quickstart's pretraining loss (issue 14 item 2)",
            "",
            f"`python bench/cpu_bf16_loss.py --work {a['work']} --steps {a['steps']}` -- three quickstart "
            f"pretraining runs started together, {a['threads']} thread(s) each, {a['steps']} steps; held-out "
            "(dev voices) masked loss / masked accuracy (chance 1%):",
            "",
            valid,
            "",
            speed,
            "",
            "Run command (bf16): `" + runs["bf16"]["command"] + "`",
            "",
            machine_markdown(data["machine"]),
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/bf16")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--valid-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(default_out("cpu_bf16_loss")))
    args = p.parse_args()
    _ARGS.update(vars(args))
    info = machine_info()
    t0 = time.perf_counter()
    loads = launch(args)
    work = Path(args.work)
    data = {
        "args": vars(args),
        "machine": info,
        "elapsed_s": time.perf_counter() - t0,
        "loads": loads,
        "runs": {n: read_run(work, n) for n in RUNS},
    }
    md = save_results(Path(args.out), data, render(data))
    print(md.read_text())


if __name__ == "__main__":
    main()
