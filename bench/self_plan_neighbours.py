"""The self-planning recipe's choice against its neighbours at the same budget (issue 19, item 4).

After `speechbudget run recipes/quickstart.yaml exp_dir=EXP plan.pilot_fraction=...` (the command is
in BENCHMARKS.md section 5), pretrain the candidates next in size to the chosen one on the budget the
pilots left, exactly as the run's own pretraining (its run card's config, encoder and exp_dir changed),
and print every held-out masked loss. Finished runs are read back, not re-run.

    python bench/self_plan_neighbours.py exp/self-plan [--only zipformer-tiny] [--extra 96x1]

``--extra WxD`` also trains the zipformer grid model of widest stack W and D layers per stack
(k2SSL Base's shape scaled, as ``plan --grid`` builds it): a neighbour outside the candidate list,
for a choice at the list's edge (the smallest preset has no smaller neighbour).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from common import run_cli as sb  # noqa: E402

from speechbudget.plan.planner import GRIDS_BY_FAMILY  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("exp", type=Path)
    ap.add_argument("--only", default="", help="comma-separated neighbours to run (default: both)")
    ap.add_argument("--extra", default="", help="comma-separated WxD zipformer grid models to run too")
    args = ap.parse_args()
    plan = json.loads((args.exp / ".stages" / "plan.json").read_text())
    rows = sorted(plan["candidates"], key=lambda r: r["params"])
    names = [r["name"] for r in rows]
    best = plan["recommended"]["name"]
    i = names.index(best)
    neighbours = [names[j] for j in (i - 1, i + 1) if 0 <= j < len(names)]
    if args.only:
        neighbours = [n for n in neighbours if n in args.only.split(",")]
    config = json.loads((args.exp / "pretrain" / "run_card.json").read_text())["config"]
    encoders: dict = {name: name for name in neighbours}
    for wd in filter(None, args.extra.split(",")):
        width, depth = (int(x) for x in wd.lower().split("x"))
        encoders[f"zipformer-w{width}-l{depth}"] = GRIDS_BY_FAMILY["zipformer"].make(width, depth)
    out = {}
    for name, encoder in encoders.items():
        exp_dir = args.exp / "neighbours" / name
        recipe = exp_dir.parent / f"{name}.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(
            yaml.safe_dump({"pretrain": {**config, "encoder": encoder, "exp_dir": str(exp_dir)}})
        )
        sb("pretrain", str(recipe))
    neighbours = list(encoders)
    for name in [best, *neighbours]:
        run = args.exp / "pretrain" if name == best else args.exp / "neighbours" / name
        summary_path = run / "summary.json"
        if not summary_path.is_file():
            continue
        s = json.loads(summary_path.read_text())
        out[name] = {
            "flops": s["flops"],
            "steps": s["steps"],
            "valid_masked_loss": s["valid"]["valid_masked_loss"],
        }
        print(
            f"{name}{' (chosen)' if name == best else ''}: {s['flops']:.3g} FLOPs, {s['steps']} steps, "
            f"held-out loss {out[name]['valid_masked_loss']:.3f}"
        )
    (args.exp / "neighbours.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
