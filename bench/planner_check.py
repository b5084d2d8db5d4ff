"""Does the planner's fitted law predict a run it has not seen? (issue: the compute-budget planner)

Every step is an ordinary ``speechbudget`` command, so a killed run resumes where it stopped:

1. ``prepare synthetic`` (connected digits, many voices) and ``kmeans`` (MFCC, 100 clusters);
2. ``sweep``: pilot pretrainings, presets x budgets (recipe ``bench/planner.yaml``);
3. ``plan fit``: the law L(N, D) on the pilots' held-out masked loss, with bootstrap intervals;
4. ``plan --law``: the planner's recommendation and predicted loss at larger budgets;
5. ``pretrain`` every preset at those budgets (``--seeds`` times), and compare.

Two laws are fitted: on every pilot, and (the one the plan uses) on pilots with at least
``--min-steps`` optimizer steps; both predictions are shown against each check run.

Results: ``bench/results/planner_check.{json,md}``. Measures nothing itself beyond what the runs
wrote (summary.json, run_card.json, the plan's JSON).

    python bench/planner_check.py                   # ~60 min on 2 CPU cores
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
from common import REPO_ROOT, SHARED_DATA, machine_info, markdown_table, save_results  # noqa: E402
from common import run_cli as sb

RECIPE = Path(__file__).parent / "planner.yaml"


def read(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--exp", type=Path, default=Path("exp/planner"), help="must match the paths in bench/planner.yaml"
    )
    ap.add_argument("--presets", default="zipformer-nano,zipformer-tiny,zipformer-xs")
    ap.add_argument("--budgets", default="5e11,1e12,2e12,4e12", help="pilot FLOP budgets")
    ap.add_argument("--targets", default="8e12,1.6e13", help="larger budgets the law is checked at")
    ap.add_argument("--seeds", default="0", help="seeds of the check runs at the target budgets")
    ap.add_argument(
        "--min-steps", type=int, default=100, help="plan fit --min-steps (pilots shorter are left out)"
    )
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
    sb(
        "prepare",
        "synthetic",
        "--grammar",
        "digits",
        "--hours",
        str(args.hours),
        "--speakers",
        str(args.speakers),
        "--seed",
        "1",
        "--out",
        str(E / "data"),
        "-j",
        "2",
        *(["--noise-dir", str(noise), "--snr", "20"] if noise.is_dir() else []),
    )
    if not (REPO_ROOT / E / "km" / "cuts_train.jsonl.gz").is_file():
        sb(
            "kmeans",
            str(E / "data" / "synthetic"),
            "--out",
            str(E / "km"),
            "--num-clusters",
            "100",
            "--max-frames",
            "200000",
        )
    sweep = sb(
        "sweep",
        "--recipe",
        str(RECIPE),
        "--presets",
        ",".join(presets),
        "--budgets",
        args.budgets,
        "--out",
        str(E / "sweep"),
    )
    # two fits: every pilot, and only pilots past their initial transient (--min-steps); the plan uses
    # the second, the first is shown beside it
    fit_all = sb("plan", "fit", str(E / "sweep"), "--out", str(E / "law-all.json"), "--min-steps", "0")
    fit = sb(
        "plan", "fit", str(E / "sweep"), "--out", str(E / "law.json"), "--min-steps", str(args.min_steps)
    )
    unique_h = sweep["runs"][0]["unique_hours"]
    from speechbudget.plan.scaling import ScalingLaw

    laws = {
        "min": ScalingLaw.from_json(REPO_ROOT / E / "law.json"),
        "all": ScalingLaw.from_json(REPO_ROOT / E / "law-all.json"),
    }
    checks = []
    for target_flops in [float(t) for t in args.targets.split(",")]:
        target = f"{target_flops:g}"
        plan = sb(
            "plan",
            "--law",
            str(E / "law.json"),
            "--budget",
            target,
            "--unit",
            "flops",
            "--device",
            "cpu",
            "--data-hours",
            f"{unique_h:.4f}",
            "--presets",
            ",".join(presets),
            "--max-duration",
            "20",
            "--num-clusters",
            "100",
            "--out",
            str(E / f"plan-{target}.yaml"),
            out=E / f"plan-{target}.json",
        )
        runs: List[Dict[str, Any]] = []
        for seed in seeds:
            for preset in presets:
                exp_dir = E / "check" / f"{preset}-{target}-seed{seed}"
                s = sb(
                    "pretrain",
                    str(RECIPE),
                    f"exp_dir={exp_dir}",
                    f"encoder={preset}",
                    f"budget.flops={target}",
                    f"seed={seed}",
                )
                runs.append(
                    {
                        "preset": preset,
                        "seed": seed,
                        "exp_dir": str(exp_dir),
                        "flops": s["flops"],
                        "audio_hours": s["audio_hours"],
                        "steps": s["steps"],
                        "epochs": s["epochs"],
                        "measured_loss": s["valid"]["valid_masked_loss"],
                        "wall_s": s["wall_seconds"],
                    }
                )
        planned = {c["name"]: c for c in plan["candidates"]}
        rows = []
        for preset in presets:
            mine = [r for r in runs if r["preset"] == preset]
            measured = statistics.fmean(r["measured_loss"] for r in mine)
            hours = statistics.fmean(r["audio_hours"] for r in mine)
            c = planned[preset]
            all_pilots = float(laws["all"].predict(c["params"], c["audio_hours"], unique_h))
            rows.append(
                {
                    "preset": preset,
                    "params": c["params"],
                    "planned_hours": c["audio_hours"],
                    "actual_hours": hours,
                    "steps": statistics.fmean(r["steps"] for r in mine),
                    "epochs": hours / unique_h,
                    "predicted_loss": c["predicted_loss"],
                    "measured_loss": measured,
                    "seed_losses": [r["measured_loss"] for r in mine],
                    "error_pct": 100 * (c["predicted_loss"] - measured) / measured,
                    "predicted_all_pilots": all_pilots,
                    "error_all_pilots_pct": 100 * (all_pilots - measured) / measured,
                }
            )
        ranked = [r["preset"] for r in sorted(rows, key=lambda r: r["measured_loss"])]
        rec = plan["recommended"]["name"]
        checks.append(
            {
                "target": target_flops,
                "plan": plan,
                "runs": runs,
                "rows": rows,
                "recommended": rec,
                "measured_ranking": ranked,
                "recommended_rank": ranked.index(rec) + 1,
            }
        )

    law_j = read(REPO_ROOT / E / "law.json")
    result = {
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "unique_hours": unique_h,
        "pilots": sweep["runs"],
        "law": law_j,
        "law_all_pilots": read(REPO_ROOT / E / "law-all.json"),
        "fit_mean_relative_error": fit.get("mean_relative_error"),
        "fit_all_mean_relative_error": fit_all.get("mean_relative_error"),
        "checks": checks,
        "wall_seconds": time.time() - t_start,
    }

    def law_line(label: str, lj: Dict[str, Any], err: float) -> str:
        ci = lj.get("ci") or {}
        return (
            f"{label}: "
            + ", ".join(
                f"{k} = {lj[k]:.4g}" + (f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if k in ci else "")
                for k in ("E", "A", "alpha", "B", "beta")
            )
            + f", R* = {lj['r_star']:g} (fixed); {len(lj['fitted_on'])} pilots, mean relative error on them {100 * err:.2f}%."
        )

    fitted = {p["exp_dir"]: p for p in result["law_all_pilots"]["fitted_on"]}
    kept = {p["exp_dir"] for p in law_j["fitted_on"]}
    md = [
        f"Pilots ({len(sweep['runs'])}): {', '.join(presets)} x {args.budgets} training FLOPs on "
        f"{unique_h:.3f} h of unique audio; loss = held-out masked-prediction loss of the dev voices "
        f"(chance: ln 100 = 4.605).",
        markdown_table(
            [
                "pilot",
                "params M",
                "FLOPs",
                "steps",
                "audio h",
                "epochs",
                "held-out loss",
                f"in the fit (>= {args.min_steps} steps)",
            ],
            [
                [
                    Path(p["exp_dir"]).name,
                    f"{p['params'] / 1e6:.2f}",
                    f"{p['flops']:.2e}",
                    p["steps"],
                    f"{p['audio_hours']:.3f}",
                    f"{p['audio_hours'] / p['unique_hours']:.2f}",
                    f"{p['final_loss']:.3f}",
                    "yes" if p["exp_dir"] in kept else "no",
                ]
                for p in sorted(fitted.values(), key=lambda p: (p["params"], p["flops"]))
            ],
        ),
        law_line(
            f"Law fitted on pilots with >= {args.min_steps} steps (95% bootstrap intervals)",
            law_j,
            result["fit_mean_relative_error"],
        ),
        law_line(
            "Law fitted on every pilot", result["law_all_pilots"], result["fit_all_mean_relative_error"]
        ),
    ]
    largest = max(float(b) for b in args.budgets.split(","))
    for chk in checks:
        md += [
            f"Check at {chk['target']:g} training FLOPs ({chk['target'] / largest:.0f}x the largest pilot), seeds {args.seeds}:",
            markdown_table(
                [
                    "encoder",
                    "params M",
                    "planned h",
                    "actual h",
                    "epochs",
                    "steps",
                    "predicted loss (plan)",
                    "measured loss",
                    "error %",
                    "every-pilot law",
                    "error %",
                ],
                [
                    [
                        r["preset"],
                        f"{r['params'] / 1e6:.2f}",
                        f"{r['planned_hours']:.3f}",
                        f"{r['actual_hours']:.3f}",
                        f"{r['epochs']:.1f}",
                        f"{r['steps']:.0f}",
                        f"{r['predicted_loss']:.3f}",
                        " / ".join(f"{x:.3f}" for x in r["seed_losses"]),
                        f"{r['error_pct']:+.1f}",
                        f"{r['predicted_all_pilots']:.3f}",
                        f"{r['error_all_pilots_pct']:+.1f}",
                    ]
                    for r in chk["rows"]
                ],
            ),
            f"Planner's recommendation at {chk['target']:g} FLOPs: **{chk['recommended']}**; measured ranking: "
            f"{', '.join(chk['measured_ranking'])} (recommended = rank {chk['recommended_rank']}).",
        ]
    md.append(
        f"Whole script: {result['wall_seconds'] / 60:.0f} min (runs already done are read back, not re-run)."
    )
    save_results(args.out, result, "\n\n".join(md) + "\n")
    print("\n\n".join(md))


if __name__ == "__main__":
    main()
