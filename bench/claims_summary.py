"""Summarise the runs of bench/claims.sh (claims b, c, d) into bench/results/claims.{json,md}.

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
    rows = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r["masked_loss"] for r in rows if "masked_loss" in r][-3:]
    v = s.get("valid") or {}
    return {
        "run": str(exp),
        "encoder": enc if isinstance(enc, str) else json.dumps(enc),
        "params": cost.get("params"),
        "flops": s["flops"],
        "audio_hours": s["audio_hours"],
        "unique_hours": card.get("unique_hours"),
        "epochs": s["epochs"],
        "steps": s["steps"],
        "wall_s": s["wall_seconds"],
        "train_masked_loss": sum(train) / len(train) if train else None,
        "valid_masked_loss": v.get("valid_masked_loss"),
        "valid_masked_acc": v.get("valid_masked_acc"),
        "chance_acc": v.get("valid_chance_acc"),
    }


def decode_row(exp: Path) -> Dict[str, Any]:
    found = sorted(exp.glob("decode-*/decode-summary-*.json"))
    d = _json(found[0]) if found else {}
    s = _json(exp / "summary.json")
    return {
        "run": str(exp),
        "wer": d.get("wer"),
        "ci95": d.get("ci95"),
        "cer": d.get("cer"),
        "finetune_flops": s.get("flops"),
        "valid_ctc_loss": (s.get("valid") or {}).get("valid_loss"),
    }


def fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def pt_table(rows: List[Dict[str, Any]]) -> str:
    return markdown_table(
        [
            "run",
            "encoder",
            "params M",
            "FLOPs",
            "steps",
            "audio h",
            "epochs",
            "train masked loss",
            "valid masked loss",
            "valid masked acc",
        ],
        [
            [
                Path(r["run"]).parent.name if Path(r["run"]).name == "pt" else Path(r["run"]).name,
                r["encoder"],
                fmt(r["params"] / 1e6 if r["params"] else None, ".2f"),
                fmt(r["flops"], ".2e"),
                r["steps"],
                fmt(r["audio_hours"], ".3f"),
                fmt(r["epochs"], ".2f"),
                fmt(r["train_masked_loss"]),
                fmt(r["valid_masked_loss"]),
                fmt(r["valid_masked_acc"]),
            ]
            for r in rows
        ],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--claims", type=Path, default=Path("exp/claims"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "claims.json")
    args = ap.parse_args()
    E, out, md = args.claims, {"machine": machine_info()}, []

    b = [pretrain_row(E / n / "pt") for n in ("b-zipformer", "b-transformer")]
    if all(b):
        dec = [decode_row(E / n / "ft") for n in ("b-zipformer", "b-transformer")]
        out["b"] = {"pretrain": b, "finetune": dec}
        md += [
            "### (b) Zipformer vs Transformer, same pretraining FLOPs, same fine-tuning",
            pt_table(b),
            markdown_table(
                ["run", "fine-tuning FLOPs", "WER %", "CER %", "dev CTC loss (BPE)"],
                [
                    [
                        Path(d["run"]).parent.name,
                        fmt(d["finetune_flops"], ".2e"),
                        fmt(d["wer"], ".2f"),
                        fmt(d["cer"], ".2f"),
                        fmt(d["valid_ctc_loss"]),
                    ]
                    for d in dec
                ],
            ),
        ]
    c = [
        r
        for r in (
            pretrain_row(E / n / "pt")
            for n in (
                "c-zipformer-tiny-slim",
                "b-zipformer",
                "c-zipformer-tiny-wide",
                "c-transformer-tiny-slim",
                "c-transformer-tiny-wide",
            )
        )
        if r
    ]
    if c:
        out["c"] = c
        md += [
            "### (c) slim (deep, narrow) vs usual vs wide (shallow), ~equal parameters, same FLOPs",
            pt_table(c),
        ]
    d = [r for r in (pretrain_row(E / n / "pt") for n in ("b-zipformer", "d-eighth")) if r]
    if len(d) == 2:
        out["d"] = d
        md += ["### (d) the same budget on all the data vs looping over an eighth of it", pt_table(d)]

    save_results(args.out, out, "\n\n".join(md) + "\n")
    print("\n\n".join(md))


if __name__ == "__main__":
    main()
