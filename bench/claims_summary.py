"""Summarise the runs of bench/claims.sh (and the quickstart) into bench/results/claims.{json,md}.

Reads only what the runs wrote (summary.json, run_card.json, cost.json, metrics.jsonl,
decode-*/decode-summary-*.json, law.json); measures nothing itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, markdown_table, save_results  # noqa: E402


def _json(p: Path) -> Dict[str, Any]:
    return json.loads(p.read_text()) if p.is_file() else {}


def pretrain_row(exp: Path) -> Optional[Dict[str, Any]]:
    s, card, cost = _json(exp / "summary.json"), _json(exp / "run_card.json"), _json(exp / "cost.json")
    if not s:
        return None
    enc = card.get("config", {}).get("encoder")
    rows = [json.loads(l) for l in (exp / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = [r["masked_loss"] for r in rows if "masked_loss" in r][-3:]
    v = s.get("valid") or {}
    return {"run": str(exp), "encoder": enc if isinstance(enc, str) else json.dumps(enc), "params": cost.get("params"),
            "flops": s["flops"], "audio_hours": s["audio_hours"], "unique_hours": card.get("unique_hours"),
            "epochs": s["epochs"], "steps": s["steps"], "wall_s": s["wall_seconds"],
            "train_masked_loss": sum(train) / len(train) if train else None,
            "valid_masked_loss": v.get("valid_masked_loss"), "valid_masked_acc": v.get("valid_masked_acc"),
            "chance_acc": v.get("valid_chance_acc")}


def decode_row(exp: Path) -> Dict[str, Any]:
    found = sorted(exp.glob("decode-*/decode-summary-*.json"))
    d = _json(found[0]) if found else {}
    s = _json(exp / "summary.json")
    return {"run": str(exp), "wer": d.get("wer"), "ci95": d.get("ci95"), "cer": d.get("cer"),
            "finetune_flops": s.get("flops"), "valid_ctc_loss": (s.get("valid") or {}).get("valid_loss")}


def fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def ci(v: Any) -> str:
    return f"{v[0]:.1f}-{v[1]:.1f}" if v else "-"


def pt_table(rows: List[Dict[str, Any]]) -> str:
    return markdown_table(
        ["run", "encoder", "params M", "FLOPs", "steps", "audio h", "epochs", "train masked loss", "valid masked loss", "valid masked acc"],
        [[Path(r["run"]).parent.name if Path(r["run"]).name == "pt" else Path(r["run"]).name, r["encoder"],
          fmt(r["params"] / 1e6 if r["params"] else None, ".2f"), fmt(r["flops"], ".2e"), r["steps"], fmt(r["audio_hours"], ".3f"),
          fmt(r["epochs"], ".2f"), fmt(r["train_masked_loss"]), fmt(r["valid_masked_loss"]), fmt(r["valid_masked_acc"])]
         for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--claims", type=Path, default=Path("exp/claims"))
    ap.add_argument("--quickstart", type=Path, default=Path("exp/quickstart"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "claims.json")
    args = ap.parse_args()
    E, out, md = args.claims, {"machine": machine_info()}, []

    rows = []
    for label, root in (("char CTC (recipe as shipped)", args.quickstart), ("BPE word pieces", Path(str(args.quickstart) + "-bpe"))):
        qs = _json(root / "report" / "report.json")
        if not qs:
            continue
        out.setdefault("a_quickstart", {})[label] = {n: decode_row(root / n) for n in ("finetune", "scratch")}
        for name in ("finetune", "scratch"):
            d = out["a_quickstart"][label][name]
            rep = next((r for r in qs["rows"] if r.get("name") == name), {})
            rows.append([label, "pretrained + CTC" if name == "finetune" else "CTC from scratch", fmt(rep.get("total_flops"), ".2e"),
                         fmt(rep.get("pretrain_flops"), ".2e"), fmt(rep.get("labeled_hours"), ".3f"), fmt(d["wer"], ".2f"),
                         ci(d["ci95"]), fmt(d["cer"], ".2f"), fmt(d["valid_ctc_loss"])])
    if rows:
        md += ["### (a) SSL pretraining + CTC vs CTC from scratch, equal total compute, 10 labeled minutes",
               markdown_table(["tokens", "model", "total FLOPs", "pretraining FLOPs", "labeled h", "WER %", "95% CI",
                               "CER %", "dev CTC loss"], rows)]

    b = [pretrain_row(E / n / "pt") for n in ("b-zipformer", "b-transformer")]
    if all(b):
        dec = [decode_row(E / n / "ft") for n in ("b-zipformer", "b-transformer")]
        out["b"] = {"pretrain": b, "finetune": dec}
        md += ["### (b) Zipformer vs Transformer, same pretraining FLOPs, same fine-tuning", pt_table(b),
               markdown_table(["run", "fine-tuning FLOPs", "WER %", "CER %", "dev CTC loss (BPE)"],
                              [[Path(d["run"]).parent.name, fmt(d["finetune_flops"], ".2e"), fmt(d["wer"], ".2f"),
                                fmt(d["cer"], ".2f"), fmt(d["valid_ctc_loss"])] for d in dec])]
    c = [r for r in (pretrain_row(E / n / "pt") for n in ("c-zipformer-tiny-slim", "b-zipformer", "c-zipformer-tiny-wide",
                                                          "c-transformer-tiny-slim", "c-transformer-tiny-wide")) if r]
    if c:
        out["c"] = c
        md += ["### (c) slim (deep, narrow) vs usual vs wide (shallow), ~equal parameters, same FLOPs", pt_table(c)]
    d = [r for r in (pretrain_row(E / n / "pt") for n in ("b-zipformer", "d-eighth")) if r]
    if len(d) == 2:
        out["d"] = d
        md += ["### (d) the same budget on all the data vs looping over an eighth of it", pt_table(d)]

    law = _json(E / "law.json")
    big = [r for r in (pretrain_row(p) for p in sorted((E / "big").glob("*"))) if r]
    if law and big:
        sys.path.insert(0, str(Path(__file__).parents[1]))
        from speechbudget.budget.scaling import ScalingLaw

        L = ScalingLaw.from_json(E / "law.json")
        for r in big:
            r["predicted_loss"] = float(L.predict(r["params"], r["audio_hours"], r["unique_hours"]))
            measured = r["valid_masked_loss"] if r["valid_masked_loss"] is not None else r["train_masked_loss"]
            r["measured_loss"] = measured
            r["error_pct"] = 100 * (r["predicted_loss"] - measured) / measured
        best = min(big, key=lambda r: r["measured_loss"])
        plan = _json(E / "plan-1.2e12.json")
        rec = (plan.get("recommended") or {}).get("name")
        ranked = [r["encoder"] for r in sorted(big, key=lambda r: r["measured_loss"])]
        out["e"] = {"law": law, "big_runs": big, "best_measured": best["encoder"], "recommended": rec,
                    "recommended_rank": ranked.index(rec) + 1 if rec in ranked else None}
        md += ["### (e) scaling law fitted on the pilot sweep, checked at a larger budget",
               "Fitted law: " + ", ".join(f"{k}={fmt(law.get(k), '.4g')}" for k in ("E", "A", "alpha", "B", "beta", "r_star")),
               markdown_table(["encoder", "params M", "FLOPs", "audio h", "predicted loss", "measured loss", "error %"],
                              [[r["encoder"], fmt(r["params"] / 1e6, ".2f"), fmt(r["flops"], ".2e"), fmt(r["audio_hours"], ".3f"),
                                fmt(r["predicted_loss"]), fmt(r["measured_loss"]), fmt(r["error_pct"], "+.1f")] for r in big]),
               f"Planner recommendation at 1.2e12 FLOPs with this law: {rec}; measured ranking: {', '.join(ranked)}."]
    save_results(args.out, out, "\n\n".join(md) + "\n")
    print("\n\n".join(md))


if __name__ == "__main__":
    main()
