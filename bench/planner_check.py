"""Does the planner's fitted law predict a run it has not seen? (issue: the compute-budget planner)

Every step is an ordinary ``speechbudget`` command, so a killed run resumes where it stopped:

1. ``prepare synthetic`` (connected digits, many voices) and ``kmeans`` (MFCC, 100 clusters);
2. ``sweep``: pilot pretrainings, presets x budgets (recipe ``bench/planner.yaml``);
3. ``plan fit``: the law L(N, D) on the pilots' held-out masked loss, with bootstrap intervals;
4. ``plan --law``: the planner's recommendation and predicted loss at a larger budget;
5. ``pretrain`` every preset at that budget (``--seeds`` times), and compare.

Results: ``bench/results/planner_check.{json,md}``. Measures nothing itself beyond what the runs
wrote (summary.json, run_card.json, the plan's JSON).

    python bench/planner_check.py                   # ~20 min on 2 CPU cores
    python bench/planner_check.py --seeds 0,1       # the check runs twice: seed spread
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO_ROOT, SHARED_DATA, machine_info, markdown_table, run_cli as sb, save_results  # noqa: E402

RECIPE = Path(__file__).parent / "planner.yaml"


def read(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", type=Path, default=Path("exp/planner"), help="must match the paths in bench/planner.yaml")
    ap.add_argument("--presets", default="zipformer-nano,zipformer-tiny,zipformer-xs")
    ap.add_argument("--budgets", default="5e11,1e12,2e12,4e12", help="pilot FLOP budgets")
    ap.add_argument("--target", type=float, default=8e12, help="the larger budget the law is checked at")
    ap.add_argument("--seeds", default="0", help="seeds of the check runs at the target budget")
    ap.add_argument("--hours", type=float, default=1.5)
    ap.add_argument("--speakers", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "planner_check.json")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))
    E = args.exp
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    t_start = time.time()

    noise = SHARED_DATA / "noise"
    sb("prepare", "synthetic", "--grammar", "digits", "--hours", str(args.hours), "--speakers", str(args.speakers),
       "--seed", "1", "--out", str(E / "data"), "-j", "2",
       *(["--noise-dir", str(noise), "--snr", "20"] if noise.is_dir() else []))
    if not (REPO_ROOT / E / "km" / "cuts_train.jsonl.gz").is_file():
        sb("kmeans", str(E / "data" / "synthetic"), "--out", str(E / "km"), "--num-clusters", "100",
           "--max-frames", "200000")
    sweep = sb("sweep", "--recipe", str(RECIPE), "--presets", ",".join(presets), "--budgets", args.budgets,
               "--out", str(E / "sweep"))
    fit = sb("plan", "fit", str(E / "sweep"), "--out", str(E / "law.json"))
    unique_h = sweep["runs"][0]["unique_hours"]
    target = f"{args.target:g}"
    plan = sb("plan", "--law", str(E / "law.json"), "--budget", target, "--unit", "flops", "--device", "cpu",
              "--data-hours", f"{unique_h:.4f}", "--presets", ",".join(presets), "--max-duration", "20",
              "--num-clusters", "100", "--out", str(E / f"plan-{target}.yaml"), out=E / f"plan-{target}.json")
    runs: List[Dict[str, Any]] = []
    for seed in seeds:
        for preset in presets:
            exp_dir = E / "check" / f"{preset}-{target}-seed{seed}"
            s = sb("pretrain", str(RECIPE), f"exp_dir={exp_dir}", f"encoder={preset}", f"budget.flops={target}",
                   f"seed={seed}")
            runs.append({"preset": preset, "seed": seed, "exp_dir": str(exp_dir), "flops": s["flops"],
                         "audio_hours": s["audio_hours"], "steps": s["steps"], "epochs": s["epochs"],
                         "measured_loss": s["valid"]["valid_masked_loss"], "wall_s": s["wall_seconds"]})

    from speechbudget.budget.scaling import ScalingLaw

    law = ScalingLaw.from_json(REPO_ROOT / E / "law.json")
    planned = {c["name"]: c for c in plan["candidates"]}
    rows = []
    for preset in presets:
        mine = [r for r in runs if r["preset"] == preset]
        measured = statistics.fmean(r["measured_loss"] for r in mine)
        hours = statistics.fmean(r["audio_hours"] for r in mine)
        c = planned[preset]
        at_actual = float(law.predict(c["params"], hours, unique_h))
        rows.append({"preset": preset, "params": c["params"], "planned_hours": c["audio_hours"], "actual_hours": hours,
                     "predicted_loss": c["predicted_loss"], "predicted_at_actual_hours": at_actual,
                     "measured_loss": measured, "seed_losses": [r["measured_loss"] for r in mine],
                     "error_pct": 100 * (c["predicted_loss"] - measured) / measured,
                     "error_at_actual_pct": 100 * (at_actual - measured) / measured})
    ranked = [r["preset"] for r in sorted(rows, key=lambda r: r["measured_loss"])]
    rec = plan["recommended"]["name"]
    result = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()},
              "unique_hours": unique_h, "pilots": sweep["runs"], "law": read(REPO_ROOT / E / "law.json"),
              "fit_mean_relative_error": fit.get("mean_relative_error"), "plan": plan, "check_runs": runs,
              "rows": rows, "recommended": rec, "measured_ranking": ranked,
              "recommended_rank": ranked.index(rec) + 1, "wall_seconds": time.time() - t_start}

    law_j = result["law"]
    ci = law_j.get("ci") or {}
    md = [f"Pilots ({len(sweep['runs'])}): {', '.join(presets)} x {args.budgets} training FLOPs on "
          f"{unique_h:.3f} h of unique audio; loss = held-out masked-prediction loss of the dev voices.",
          markdown_table(["pilot", "params M", "FLOPs", "steps", "audio h", "epochs", "held-out loss", "law's fit"],
                         [[Path(p["exp_dir"]).name, f"{p['params'] / 1e6:.2f}", f"{p['flops']:.2e}", p["steps"],
                           f"{p['audio_hours']:.3f}", f"{p['audio_hours'] / p['unique_hours']:.2f}", f"{p['final_loss']:.3f}",
                           f"{p['predicted_loss']:.3f}"]
                          for p in sorted(law_j["fitted_on"], key=lambda p: (p["params"], p["flops"]))]),
          "Fitted law (95% bootstrap intervals): " + ", ".join(
              f"{k} = {law_j[k]:.4g}" + (f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if k in ci else "")
              for k in ("E", "A", "alpha", "B", "beta")) + f", R* = {law_j['r_star']:g} (fixed); "
          f"mean relative error on the pilots {100 * result['fit_mean_relative_error']:.2f}%.",
          f"Check at {target} training FLOPs ({args.target / max(float(b) for b in args.budgets.split(',')):.0f}x the "
          f"largest pilot), seeds {args.seeds}:",
          markdown_table(["encoder", "params M", "planned h", "actual h", "predicted loss (plan)", "measured loss",
                          "error %", "predicted at actual h", "error %"],
                         [[r["preset"], f"{r['params'] / 1e6:.2f}", f"{r['planned_hours']:.3f}", f"{r['actual_hours']:.3f}",
                           f"{r['predicted_loss']:.3f}", " / ".join(f"{x:.3f}" for x in r["seed_losses"]),
                           f"{r['error_pct']:+.1f}", f"{r['predicted_at_actual_hours']:.3f}", f"{r['error_at_actual_pct']:+.1f}"]
                          for r in rows]),
          f"Planner's recommendation at {target} FLOPs: **{rec}**; measured ranking: {', '.join(ranked)} "
          f"(recommended = rank {result['recommended_rank']}). Whole script: {result['wall_seconds'] / 60:.0f} min."]
    save_results(args.out, result, "\n\n".join(md) + "\n")
    print("\n\n".join(md))


if __name__ == "__main__":
    main()
