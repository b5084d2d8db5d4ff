"""Does SSL pretraining buy WER at equal total compute? (issue: CTC fine-tuning, claim (a))

Runs ``recipes/quickstart.yaml`` (1.7 h unlabeled from 52 voices, 10 transcribed minutes from 5 of
them, 6 unseen test voices) once per seed: HuBERT pretraining + CTC fine-tuning against the same
encoder trained with CTC from scratch on the same 10 minutes with the same total FLOPs. Then, on
seed 0's pretraining:

* ``all-voices``: the 10 minutes drawn from all 52 training voices instead of 5;
* ``scratch-lr``: the from-scratch model at other learning rates, so that a stuck baseline is not
  blamed on one unlucky setting.

and, for every seed, the same pretrained model fine-tuned with other budgets (``--finetune-flops``),
each against a scratch model given the matching total: how to split one budget between pretraining
and fine-tuning is part of the comparison.

Every step is an ordinary ``speechbudget`` command (resumable). Results:
``bench/results/pretrain_vs_scratch.{json,md}``.

    python bench/pretrain_vs_scratch.py                       # ~60 min on 2 CPU cores
    python bench/pretrain_vs_scratch.py --seeds 0 --no-variants
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
from common import REPO_ROOT, machine_info, markdown_table, run_cli, save_results  # noqa: E402

RECIPE = "recipes/quickstart.yaml"


def read(path: Path) -> Dict[str, Any]:
    return json.loads((REPO_ROOT / path).read_text())


def decoded(exp: Path) -> Dict[str, Any]:
    """WER/CER of a fine-tuning run's test decode, plus its FLOPs and dev CTC loss."""
    d = read(next((REPO_ROOT / exp).glob("decode-greedy/decode-summary-*.json")).relative_to(REPO_ROOT))
    s = read(exp / "summary.json")
    return {
        "wer": d["wer"],
        "ci95": d["ci95"],
        "cer": d["cer"],
        "ref_words": d["ref_words"],
        "flops": s["flops"],
        "steps": s["steps"],
        "valid_ctc_loss": (s.get("valid") or {}).get("valid_loss"),
    }


def finetune_and_decode(exp: Path, test: Path, *overrides: str) -> Dict[str, Any]:
    if not (REPO_ROOT / exp / "summary.json").is_file():
        run_cli("finetune", RECIPE, f"exp_dir={exp}", *overrides)
    if not list((REPO_ROOT / exp).glob("decode-greedy/decode-summary-*.json")):
        run_cli("decode", str(exp), str(test))
    return decoded(exp)


def pair(
    label: str, pt: Dict[str, Any], sc: Dict[str, Any], pretrain_flops: float, note: str = ""
) -> Dict[str, Any]:
    return {"run": label, "pretrain_flops": pretrain_flops, "pretrained": pt, "scratch": sc, "note": note}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", type=Path, default=Path("exp/pvs"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--scratch-lrs", default="0.02,0.09", help="other learning rates for the scratch model (seed 0)"
    )
    ap.add_argument("--no-variants", action="store_true", help="no all-voices or scratch learning-rate runs")
    ap.add_argument(
        "--finetune-flops",
        default="4e12",
        help="other fine-tuning budgets for each seed's pretrained model (scratch gets the matching total)",
    )
    ap.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "pretrain_vs_scratch.json"
    )
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))
    t0 = time.time()
    rows: List[Dict[str, Any]] = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        E = args.exp / f"seed{seed}"
        # greedy, as every row of this table since it began (the recipe itself decodes with the lexicon)
        run_cli("run", RECIPE, f"exp_dir={E}", f"seed={seed}", "decode.method=greedy")
        rows.append(
            pair(
                f"seed {seed}",
                decoded(E / "finetune"),
                decoded(E / "scratch"),
                read(E / "pretrain" / "summary.json")["flops"],
            )
        )

    splits: Dict[str, List[Dict[str, Any]]] = {}
    for ft_flops in [x for x in args.finetune_flops.split(",") if x]:  # the same total split differently
        for seed in [int(s) for s in args.seeds.split(",")]:
            E, X = args.exp / f"seed{seed}", args.exp / f"ft{ft_flops}" / f"seed{seed}"
            corpus = E / "data" / "synthetic"
            data = [
                f"train_cuts={corpus / 'cuts_train.jsonl.gz'}",
                f"dev_cuts={corpus / 'cuts_dev.jsonl.gz'}",
                f"seed={seed}",
            ]
            pt_flops = read(E / "pretrain" / "summary.json")["flops"]
            pt = finetune_and_decode(
                X / "finetune",
                corpus / "cuts_test.jsonl.gz",
                *data,
                f"ctc.init_checkpoint={E / 'pretrain'}",
                f"budget.flops={ft_flops}",
            )
            sc = finetune_and_decode(
                X / "scratch",
                corpus / "cuts_test.jsonl.gz",
                *data,
                "ctc.freeze_encoder_steps=0",
                f"budget.flops={pt_flops + pt['flops']:.6g}",
            )
            splits.setdefault(ft_flops, []).append(pair(f"seed {seed}", pt, sc, pt_flops))

    variants: List[Dict[str, Any]] = []
    if not args.no_variants:
        E = args.exp / f"seed{args.seeds.split(',')[0]}"
        corpus, pretrain = E / "data" / "synthetic", E / "pretrain"
        test = corpus / "cuts_test.jsonl.gz"
        data = [f"train_cuts={corpus / 'cuts_train.jsonl.gz'}", f"dev_cuts={corpus / 'cuts_dev.jsonl.gz'}"]
        pt_flops = read(pretrain / "summary.json")["flops"]
        A = args.exp / "all-voices"
        pt = finetune_and_decode(
            A / "finetune", test, *data, "train_speakers=null", f"ctc.init_checkpoint={pretrain}"
        )
        sc = finetune_and_decode(
            A / "scratch",
            test,
            *data,
            "train_speakers=null",
            "ctc.freeze_encoder_steps=0",
            f"budget.flops={pt_flops + pt['flops']:.6g}",
        )
        variants.append(
            pair("all 52 voices labeled", pt, sc, pt_flops, "10 min drawn from every training voice")
        )
        seed0 = rows[0]
        total = seed0["pretrain_flops"] + seed0["pretrained"]["flops"]
        for lr in [x for x in args.scratch_lrs.split(",") if x]:
            sc = finetune_and_decode(
                args.exp / f"scratch-lr{lr}",
                test,
                *data,
                f"optim.lr={lr}",
                "ctc.freeze_encoder_steps=0",
                f"budget.flops={total:.6g}",
            )
            variants.append(
                pair(
                    f"scratch at lr {lr}",
                    seed0["pretrained"],
                    sc,
                    seed0["pretrain_flops"],
                    "same 5 voices as seed 0; pretrained column repeats seed 0",
                )
            )

    def cells(r: Dict[str, Any]) -> List[str]:
        p, s = r["pretrained"], r["scratch"]
        ci = lambda d: f"{d['ci95'][0]:.1f}-{d['ci95'][1]:.1f}"  # noqa: E731
        return [
            r["run"],
            f"{r['pretrain_flops']:.2e}",
            f"{p['flops']:.2e}",
            f"{s['flops']:.2e}",
            f"**{p['wer']:.1f}** [{ci(p)}]",
            f"{p['cer']:.1f}",
            f"**{s['wer']:.1f}** [{ci(s)}]",
            f"{s['cer']:.1f}",
            f"{p['valid_ctc_loss']:.3f} / {s['valid_ctc_loss']:.3f}",
        ]

    headers = [
        "run",
        "pretraining FLOPs",
        "fine-tuning FLOPs",
        "scratch FLOPs",
        "pretrained WER % [95% CI]",
        "CER %",
        "scratch WER % [95% CI]",
        "CER %",
        "dev CTC loss (pt / scratch)",
    ]
    mean = lambda k, w: statistics.fmean(r[k]["wer"] for r in w)  # noqa: E731
    wins = lambda w: sum(r["pretrained"]["wer"] < r["scratch"]["ci95"][0] for r in w)  # noqa: E731

    def headline(label: str, w: List[Dict[str, Any]]) -> str:
        return (
            f"{label} ({len(w)} seeds): mean WER pretrained {mean('pretrained', w):.1f}% vs scratch "
            f"{mean('scratch', w):.1f}%; the pretrained WER lies below the scratch model's 95% interval in "
            f"{wins(w)} of {len(w)} seeds."
        )

    summary = {
        "mean_wer_pretrained": mean("pretrained", rows),
        "mean_wer_scratch": mean("scratch", rows),
        "seeds_pretrained_wins": wins(rows),
        "splits": {
            k: {
                "mean_wer_pretrained": mean("pretrained", w),
                "mean_wer_scratch": mean("scratch", w),
                "seeds_pretrained_wins": wins(w),
            }
            for k, w in splits.items()
        },
    }
    md = [
        headline(f"Recipe as shipped ({rows[0]['pretrained']['flops']:.2g} fine-tuning FLOPs)", rows),
        markdown_table(headers, [cells(r) for r in rows]),
    ]
    for k, w in splits.items():
        md += [
            headline(
                f"The same pretraining fine-tuned with {float(k):.2g} FLOPs, scratch at the new total", w
            ),
            markdown_table(headers, [cells(r) for r in w]),
        ]
    if variants:
        md += [
            "Variants on seed 0's pretraining:",
            markdown_table(headers + ["note"], [cells(r) + [r["note"]] for r in variants]),
        ]
    md.append(
        f"Whole script: {(time.time() - t0) / 60:.0f} min (runs already done are read back, not re-run)."
    )
    save_results(
        args.out,
        {
            "machine": machine_info(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "seeds": rows,
            "splits": splits,
            "variants": variants,
            "summary": summary,
        },
        "\n\n".join(md) + "\n",
    )
    print("\n\n".join(md))


if __name__ == "__main__":
    main()
