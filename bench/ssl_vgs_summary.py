"""Markdown tables of bench/ssl_vgs.sh's results: retrieval, ABX, SSL held-out loss per schedule and seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCHEDULES = ("sequential", "simultaneous", "vgs-only")


def _r(x, d=3):
    return "-" if x is None else f"{x:.{d}f}"


def main(work: Path, prefix: str = "exp-s") -> None:
    seeds = sorted(work.glob(prefix + "*"), key=lambda p: p.name)
    seeds = [p for p in seeds if p.is_dir()]
    print(
        "| schedule | seed | steps | FLOPs | S->I r@10 [95% CI] | I->S r@10 [95% CI] | S->I r@1 | best ABX layer | SSL held-out loss per phase | VGS held-out |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for sch in SCHEDULES:
        for exp in seeds:
            d = exp / sch
            s = json.loads((d / "summary.json").read_text())
            r = json.loads((d / "retrieval.json").read_text())
            a = json.loads((d / "abx.json").read_text())
            si, is_ = r["speech_to_image"], r["image_to_speech"]
            best = a["best_layer"]
            ssl = " -> ".join(_r(x) for x in s["ssl_heldout_loss"])
            vgs = _r(s["phases"][-1]["valid"].get("valid_vgs_loss"))
            print(
                f"| {sch} | {exp.name[-1]} | {'+'.join(str(p['steps']) for p in s['phases'])} | {s['flops']:.2e} "
                f"| {_r(si['r@10'])} [{_r(si['r@10_ci'][0], 2)}, {_r(si['r@10_ci'][1], 2)}] "
                f"| {_r(is_['r@10'])} [{_r(is_['r@10_ci'][0], 2)}, {_r(is_['r@10_ci'][1], 2)}] "
                f"| {_r(si['r@1'])} | {best} {_r(a['layers'][best]['error'])} | {ssl} | {vgs} |"
            )
    print()
    names = list(json.loads((seeds[0] / SCHEDULES[0] / "abx.json").read_text())["layers"])
    print("| schedule | seed | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for sch in SCHEDULES:
        for exp in seeds:
            a = json.loads((exp / sch / "abx.json").read_text())["layers"]
            print(f"| {sch} | {exp.name[-1]} | " + " | ".join(_r(a[n]["error"]) for n in names) + " |")
    r = json.loads((seeds[0] / SCHEDULES[0] / "retrieval.json").read_text())
    print(f"\n{r['captions']} captions of {r['images']} images; chance r@10: S->I {10 / r['images']:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ssl-vgs"), *sys.argv[2:3])
