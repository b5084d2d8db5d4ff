"""Folds in turn vs ``--fold-jobs 2``: the wall time of a leave-one-speaker-out protocol on this CPU.

Both arms fine-tune and decode the same folds on the same pretraining (an exp_dir whose ``prepare``,
``kmeans`` and ``pretrain`` stages are done, taken by each arm with ``run --reuse``): in turn with every core in one process (what ``run --folds speakers`` does
without the flag), and two folds at a time, each process with half the cores. Wall time per arm, and
each fold's dev WER (the two arms differ only in the threads per run; at one thread per run a fold's
model is the same bit for bit, tests/test_folds.py).

    python bench/fold_jobs.py --base EXP --recipe recipes/fsdd.yaml --flops 2e12 --threads 2

Results: bench/results/fold_jobs.json and the table on stdout. Needs an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, RESULTS_DIR, machine_info

from speechbudget import atomic


def run_arm(args, arm: Path, jobs: int) -> dict:
    cmd = ["speechbudget", "run", str(args.recipe), f"exp_dir={arm}", "--folds", "speakers"]
    cmd += ["--stop-stage", "folds", "scratch_baseline=false", f"finetune.budget.flops={args.flops}"]
    cmd += ["finetune.checkpoint_every=20", "--fold-jobs", str(jobs), "--reuse", str(args.base), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    folds = json.loads(done.stdout)["folds"]["folds"]
    return {
        "fold_jobs": jobs,
        "wall_s": round(wall, 1),
        "wer": {f["dev_speaker"]: f["wer"]["finetune"] for f in folds},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="exp_dir whose pretraining both arms share")
    ap.add_argument("--recipe", type=Path, default=REPO_ROOT / "recipes" / "fsdd.yaml")
    ap.add_argument("--flops", type=float, default=2e12, help="fine-tuning FLOPs per fold")
    ap.add_argument("--threads", type=int, default=2, help="threads of the run (OMP_NUM_THREADS)")
    args = ap.parse_args()
    args.base = args.base.resolve()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fold-jobs-") as tmp:
        for jobs in (1, 2):
            rows.append(run_arm(args, Path(tmp) / f"jobs{jobs}", jobs))
            print(rows[-1], flush=True)
    speedup = rows[0]["wall_s"] / rows[1]["wall_s"]
    result = {"machine": machine_info(), "threads": args.threads, "flops": args.flops, "rows": rows}
    result["speedup"] = round(speedup, 2)
    atomic.write_json(RESULTS_DIR / "fold_jobs.json", result)
    print("| arm | wall s | dev WER % |\n|---|---|---|")
    for r in rows:
        how = "in turn" if r["fold_jobs"] == 1 else f"--fold-jobs {r['fold_jobs']}"
        print(f"| {how} | {r['wall_s']} | {' / '.join(f'{k} {v}' for k, v in r['wer'].items())} |")
    print(f"speed-up {speedup:.2f}x")


if __name__ == "__main__":
    main()
