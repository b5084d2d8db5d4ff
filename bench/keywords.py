"""FSDD keyword accuracy: AuM vs AST from scratch vs an SSL-pretrained Zipformer at equal FLOPs (issue 16).

The ten FSDD digits as ten keywords (``recipes/fsdd-keywords.yaml``: george + jackson train, nicolas is
dev, theo is the held-out test speaker). Three classifiers, each fine-tuned with the same training-FLOP
budget (``budget.flops``, not steps) and the recipe's optimiser, schedule, augmentation and mean pooling:

* ``aum``: an AuM-style patch Mamba (Fo-Bi, 16 x 16 patches, stride 16), 6 layers x 96, from scratch;
* ``ast``: the recipe's AST-style patch Transformer (4 layers x 96, stride 16), from scratch;
* ``zipformer``: the ``fsdd`` recipe's zipformer-tiny after its HuBERT pretraining on synthetic digits
  (``classify.init_checkpoint``); its pretraining FLOPs are reported in their own column.

The two patch models are sized to about the same parameter count (0.5M); the Zipformer is the size
the ``fsdd`` recipe pretrains (4.7M). Every step is an ordinary ``speechbudget`` command, resumable:
one ``prepare`` shared by all runs, one pretraining (``speechbudget run recipes/fsdd.yaml --stop-stage
pretrain``, or ``--pretrained`` a checkpoint or run folder) shared by the Zipformer runs; finished
fine-tuning runs and evaluations are read back, not re-run. Each run is evaluated (its final
checkpoint, nothing chosen on test) on dev and test: accuracy with a 95% bootstrap interval; per
model the mean over seeds with a t interval over seeds, and a clip-bootstrap interval of that mean.

    python bench/keywords.py                               # 3 models x 3 seeds, ~60-90 min on 2 cores
    python bench/keywords.py --seeds 0,1 --models aum,ast  # what fits
    python bench/keywords.py --pretrained exp/fsdd/pretrain

Results: ``bench/results/keywords.{json,md}``; the runs themselves under ``--exp`` (default /tmp/keywords).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import yaml
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    REPO_ROOT,
    loadavg,
    machine_info,
    machine_markdown,
    markdown_table,
    run_cli,
    save_results,
    timed,
)

from speechbudget import atomic  # noqa: E402
from speechbudget.data.manifests import load_cuts  # noqa: E402
from speechbudget.models.catalog import encoder_cost  # noqa: E402
from speechbudget.train import checkpoint as ckpt  # noqa: E402

KEYWORDS = "recipes/fsdd-keywords.yaml"
PRETRAIN = "recipes/fsdd.yaml"
SETS = ("dev", "test")
TIMING_FILE = "bench-timing.json"  # the fine-tuning command's wall/CPU time and load, beside its run

#: model key -> label and encoder; None = the recipe's own encoder; "pretrained" = the fsdd pretraining
MODELS: Dict[str, Dict[str, Any]] = {
    "aum": {
        "label": "AuM patch Mamba 6x96 (Fo-Bi), scratch",
        "encoder": {"preset": "aum-tiny", "dim": 96, "layers": 6},
    },
    "ast": {"label": "AST patch Transformer 4x96, scratch", "encoder": None},
    "zipformer": {"label": "zipformer-tiny, HuBERT-pretrained", "encoder": "pretrained"},
}


def read_json(path: Path) -> Dict[str, Any]:
    return json.loads(Path(path).read_text())


def prepare(exp: Path) -> Path:
    """The keyword corpus (the recipe's own prepare stage), once for every run."""
    run_dir = exp / "prepare"
    run_cli("run", "--stop-stage", "prepare", KEYWORDS, f"exp_dir={run_dir}")
    corpus = run_dir / "data" / "fsdd"
    for s in ("train", *SETS):
        if not (corpus / f"cuts_{s}.jsonl.gz").is_file():
            sys.exit(f"prepare did not write {corpus}/cuts_{s}.jsonl.gz")
    return corpus


def pretraining(exp: Path, given: Optional[Path]) -> Dict[str, Any]:
    """The fsdd recipe's HuBERT pretraining (run here unless ``given``): checkpoint and its FLOPs."""
    if given is None:
        run_dir = exp / "fsdd-pretrain"
        run_cli("run", "--stop-stage", "pretrain", PRETRAIN, f"exp_dir={run_dir}")
        given = run_dir / "pretrain"
    path = ckpt.resolve(given)
    counters = ckpt.load(path).get("counters") or {}
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    summary = read_json(run / "summary.json") if (run / "summary.json").is_file() else {}
    return {
        "checkpoint": str(path),
        "flops": float(counters.get("flops", summary.get("flops", float("nan")))),
        "steps": counters.get("step"),
        "audio_hours": counters.get("audio_seconds", 0.0) / 3600,
        "wall_seconds": summary.get("wall_seconds", counters.get("wall_seconds")),
    }


def model_recipe(exp: Path, key: str) -> Path:
    """The keyword recipe with this model's encoder: the file each run's ``finetune`` reads."""
    recipe = yaml.safe_load((REPO_ROOT / KEYWORDS).read_text())
    encoder = MODELS[key]["encoder"]
    if encoder == "pretrained":  # classify.init_checkpoint brings the encoder and its config
        recipe["finetune"]["encoder"] = "zipformer-tiny"
    elif encoder is not None:
        recipe["finetune"]["encoder"] = encoder
    recipe["name"] = f"fsdd-keywords-{key}"
    path = exp / "recipes" / f"{key}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def encoder_spec(recipe: Path, init: Optional[str]) -> Any:
    """The encoder a run trains: the pretrained checkpoint's, else its recipe's."""
    if init:
        return ckpt.encoder_state(Path(init))[0]
    return yaml.safe_load(recipe.read_text())["finetune"]["encoder"]


def clip_factor(spec: Any, mean_seconds: float) -> float:
    """Forward FLOPs per second as the trainer charges them (``cost.flops.macs_rate`` on the cost
    ``train/setup.encoder_cost_cached`` stores: the 10-s rate, or for Transformers a curve over
    lengths) over the same counted at the corpus's mean clip length. Attention grows with length, so
    the 10-s rate over-charges e.g. a Zipformer on 0.5 s clips; a Mamba barely changes."""
    import tempfile

    from speechbudget.cost.flops import macs_rate
    from speechbudget.models.presets import build_encoder
    from speechbudget.train.setup import encoder_cost_cached

    with tempfile.TemporaryDirectory() as tmp:
        charged = macs_rate(encoder_cost_cached(build_encoder(spec), Path(tmp), 0), mean_seconds)
    return charged / encoder_cost(spec, seconds=mean_seconds)["macs_per_audio_second"]


def correct_by_clip(metrics_dir: Path, set_name: str) -> Dict[str, int]:
    """clip id -> 1 if the top class is the true class (``predictions-<set>.tsv``)."""
    lines = (metrics_dir / f"predictions-{set_name}.tsv").read_text().splitlines()[1:]
    out = {}
    for line in lines:
        cid, true, predicted, _ = line.split("\t")
        out[cid] = int(predicted in true.split(";"))
    return out


def run_one(
    key: str,
    seed: int,
    exp: Path,
    corpus: Path,
    recipe: Path,
    flops: float,
    factor: float,
    at_clip: bool,
    init: Optional[str],
    bootstrap: int,
) -> Dict[str, Any]:
    """One fine-tuning run, then evaluation on dev and test. Its budget is ``flops`` counted at the
    mean clip length (``at_clip``: the trainer is given ``flops`` x ``factor``, see :func:`clip_factor`)
    or as the trainer counts them."""
    tag = f"{key}-{flops:.3g}" + ("-clip" if at_clip else "")
    d = exp / "runs" / f"{tag}-seed{seed}"  # another budget is another run
    timing = None
    if not (d / "summary.json").is_file():
        overrides = [
            f"exp_dir={d}",
            f"train_cuts={corpus / 'cuts_train.jsonl.gz'}",
            f"dev_cuts={corpus / 'cuts_dev.jsonl.gz'}",
            f"seed={seed}",
            "budget.steps=null",
            f"budget.flops={flops * factor if at_clip else flops:.6g}",
        ]
        if init:
            overrides.append(f"classify.init_checkpoint={init}")
        _, timing = timed(lambda: run_cli("finetune", str(recipe), *overrides))
        atomic.write_json(d / TIMING_FILE, timing.to_dict())  # read back when the script is re-run
    summary, card = read_json(d / "summary.json"), read_json(d / "run_card.json")
    started_from = (card.get("init") or {}).get("checkpoint")
    if started_from != init:  # a finished run is read back only if it started where this one would
        sys.exit(f"{d} was fine-tuned from {started_from}, not {init}; use another --exp")
    row: Dict[str, Any] = {
        "model": key,
        "seed": seed,
        "exp_dir": str(d),
        "steps": summary["steps"],
        "epochs": summary["epochs"],
        "flops": summary["flops"],  # as the trainer charged them
        "flops_at_clip": summary["flops"] / factor,
        "charge_factor": factor,
        "train_wall_seconds": summary["wall_seconds"],
        "params": card["params"],
        "encoder": card["config"]["encoder"],
        "cost": card["cost"],
        "timing": read_json(d / TIMING_FILE) if (d / TIMING_FILE).is_file() else None,
        "trained_now": timing is not None,
    }
    for s in SETS:
        out = d / f"evaluate-{s}"
        metrics = out / f"metrics-{s}.json"
        if not metrics.is_file() or read_json(metrics).get("checkpoint") != summary["checkpoint"]:
            run_cli("evaluate", "--bootstrap", str(bootstrap), str(d), str(corpus / f"cuts_{s}.jsonl.gz"))
        m = read_json(metrics)
        row[s] = {
            "clips": m["clips"],
            "accuracy": m["accuracy"],
            "accuracy_ci": m["accuracy_ci"],
            "macro_f1": m["macro_f1"],
            "correct": correct_by_clip(out, s),
        }
    return row


def t_interval(values: Sequence[float]) -> List[float]:
    """95% t interval of the mean over seeds (NaN with one seed)."""
    n = len(values)
    if n < 2:
        return [float("nan"), float("nan")]
    m, sd = statistics.fmean(values), statistics.stdev(values)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return [m - half, m + half]


def clip_matrix(rows: List[Dict[str, Any]], set_name: str, ids: List[str]) -> np.ndarray:
    """(seeds, clips) 0/1 correctness, clips in ``ids`` order."""
    return np.array([[r[set_name]["correct"][i] for i in ids] for r in rows], dtype=float)


def clip_bootstrap(
    mats: Sequence[np.ndarray], weights: Sequence[float], reps: int, seed: int = 0
) -> List[float]:
    """95% interval of sum_k weight_k x (mean over seeds and clips of mats[k]) when the test clips are
    resampled (the same clips for every seed and model: paired). Seeds are held fixed."""
    rng = np.random.default_rng(seed)
    n = mats[0].shape[1]
    per_clip = sum(w * m.mean(axis=0) for w, m in zip(weights, mats))  # (clips,)
    draws = per_clip[rng.integers(0, n, size=(reps, n))].mean(axis=1)
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def summarise(rows: List[Dict[str, Any]], models: List[str], reps: int) -> Dict[str, Any]:
    by_model = {k: [r for r in rows if r["model"] == k] for k in models}
    by_model = {k: v for k, v in by_model.items() if v}
    out: Dict[str, Any] = {"models": {}, "differences": []}
    ids = {s: sorted(rows[0][s]["correct"]) for s in SETS}
    for k, rs in by_model.items():
        entry: Dict[str, Any] = {
            "seeds": [r["seed"] for r in rs],
            "params": rs[0]["params"],
            "flops_mean": statistics.fmean(r["flops"] for r in rs),
            "flops_at_clip_mean": statistics.fmean(r["flops_at_clip"] for r in rs),
            "charge_factor": rs[0]["charge_factor"],
            "steps": [r["steps"] for r in rs],
            "train_wall_seconds": [r["train_wall_seconds"] for r in rs],
        }
        for s in SETS:
            acc = [r[s]["accuracy"] for r in rs]
            entry[s] = {
                "per_seed": acc,
                "mean": statistics.fmean(acc),
                "sd": statistics.stdev(acc) if len(acc) > 1 else float("nan"),
                "t_ci": t_interval(acc),
                "clip_ci": clip_bootstrap([clip_matrix(rs, s, ids[s])], [1.0], reps),
            }
        out["models"][k] = entry
    for a, b in combinations(by_model, 2):
        diff: Dict[str, Any] = {"a": a, "b": b}
        for s in SETS:
            xa = [r[s]["accuracy"] for r in by_model[a]]
            xb = [r[s]["accuracy"] for r in by_model[b]]
            welch = (
                list(stats.ttest_ind(xa, xb, equal_var=False).confidence_interval(0.95))
                if min(len(xa), len(xb)) > 1
                else [float("nan")] * 2
            )
            mats = [clip_matrix(by_model[a], s, ids[s]), clip_matrix(by_model[b], s, ids[s])]
            diff[s] = {
                "mean_diff": statistics.fmean(xa) - statistics.fmean(xb),
                "welch_ci": [float(x) for x in welch],
                "clip_ci": clip_bootstrap(mats, [1.0, -1.0], reps),
            }
        out["differences"].append(diff)
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def ci(c: Sequence[float]) -> str:
    return "n/a" if any(math.isnan(x) for x in c) else f"[{pct(c[0])}, {pct(c[1])}]"


def markdown(res: Dict[str, Any]) -> str:
    summ, rows, pt = res["summary"], res["runs"], res["pretraining"]
    md = [
        f"Fine-tuning budget {float(res['args']['flops']):.3g} training FLOPs per run ("
        + (
            "counted at the mean clip length"
            if res["args"]["count_at"] == "clip"
            else "as the trainer counts them"
        )
        + f"); {len(rows)} runs. Accuracy of each run's final checkpoint; chance 10%.",
    ]
    head = [
        "model",
        "params",
        "fine-tune FLOPs at clip length (charged)",
        "steps",
        "pretraining FLOPs",
        "dev (nicolas) acc % mean [t CI] {clip CI}",
        "test (theo) acc % mean [t CI] {clip CI}",
        "dev per seed",
        "test per seed",
        "train wall s per run",
    ]
    body = []
    for k, e in summ["models"].items():
        body.append(
            [
                MODELS[k]["label"],
                f"{e['params'] / 1e6:.2f}M",
                f"{e['flops_at_clip_mean']:.3g} ({e['flops_mean']:.3g})",
                "/".join(str(x) for x in e["steps"]),
                f"{pt['flops']:.3g}" if MODELS[k]["encoder"] == "pretrained" else "0",
                *[
                    f"**{pct(e[s]['mean'])}** {ci(e[s]['t_ci'])} {{{pct(e[s]['clip_ci'][0])}-{pct(e[s]['clip_ci'][1])}}}"
                    for s in SETS
                ],
                *[" / ".join(pct(x) for x in e[s]["per_seed"]) for s in SETS],
                " / ".join(f"{x:.0f}" for x in e["train_wall_seconds"]),
            ]
        )
    md.append(markdown_table(head, body))
    md.append(
        "t CI: 95% t interval over seeds (seed-to-seed spread); clip CI: 95% bootstrap over the 500 clips "
        "of the seed-mean accuracy (test-sample spread, seeds fixed)."
    )
    drows = [
        [
            f"{d['a']} - {d['b']}",
            *[
                f"{100 * d[s]['mean_diff']:+.1f} {ci(d[s]['welch_ci'])} {{{pct(d[s]['clip_ci'][0])}, {pct(d[s]['clip_ci'][1])}}}"
                for s in SETS
            ],
        ]
        for d in summ["differences"]
    ]
    if drows:
        md.append(
            markdown_table(
                [
                    "difference",
                    "dev points [Welch CI over seeds] {paired clip CI}",
                    "test points [...] {...}",
                ],
                drows,
            )
        )
    run_rows = [
        [
            r["model"],
            r["seed"],
            r["steps"],
            f"{r['epochs']:.1f}",
            f"{r['flops_at_clip']:.3g} ({r['flops']:.3g})",
            *[f"{pct(r[s]['accuracy'])} {ci(r[s]['accuracy_ci'])} / {r[s]['macro_f1']:.3f}" for s in SETS],
            f"{r['train_wall_seconds']:.0f}",
            "-"
            if r["timing"] is None
            else f"{r['timing']['load_before'][0]:.1f}->{r['timing']['load_after'][0]:.1f}",
        ]
        for r in rows
    ]
    md.append(
        markdown_table(
            [
                "model",
                "seed",
                "steps",
                "epochs",
                "FLOPs at clip (charged)",
                "dev acc % [95% CI] / macro-F1",
                "test acc % [95% CI] / macro-F1",
                "train wall s",
                "load 1-min",
            ],
            run_rows,
        )
    )
    md.append(
        "FLOPs: the trainer charges every padded input second at the encoder's forward cost counted "
        f"on 10 s of input; at the mean clip length ({res['mean_clip_seconds']:.2f} s) the encoders cost "
        + ", ".join(f"{k} {1 / e['charge_factor']:.2f}x" for k, e in summ["models"].items())
        + " of that per second. "
        + (
            "Budgets are equal counted at the mean clip length (each trainer is given the budget x "
            "that factor's inverse); the table shows both counts."
            if res["args"]["count_at"] == "clip"
            else "Budgets are equal as the trainer counts them; the table shows both counts."
        )
    )
    md.append(
        f"Pretraining (shared by the Zipformer runs): {pt['checkpoint']}, {pt['flops']:.3g} training FLOPs, "
        f"{pt['steps']} steps, {pt['audio_hours']:.2f} h of audio seen, "
        f"{pt.get('wall_seconds') or float('nan'):.0f} s of training wall time."
    )
    md.append(machine_markdown(res["machine"]) + f" Load at end {res['loadavg_at_end']}.")
    trained = sum(r["trained_now"] for r in rows)
    md.append(
        f"This invocation: {res['wall_minutes']:.0f} min, {trained} of {len(rows)} runs trained in it "
        "(finished runs are read back, not re-run)."
    )
    return "\n\n".join(md) + "\n"


def compact(res: Dict[str, Any]) -> Dict[str, Any]:
    """The per-clip results as one 0/1 string per run and set, clips in the order of ``clip_ids``."""
    ids = {s: sorted(res["runs"][0][s]["correct"]) for s in SETS}
    runs = [
        {
            **r,
            **{
                s: {
                    **{k: v for k, v in r[s].items() if k != "correct"},
                    "correct_bits": "".join(str(r[s]["correct"][i]) for i in ids[s]),
                }
                for s in SETS
            },
        }
        for r in res["runs"]
    ]
    return {**res, "runs": runs, "clip_ids": ids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exp", type=Path, default=Path("/tmp/keywords"), help="where the runs go")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--models", default=",".join(MODELS), help=f"some of {', '.join(MODELS)}")
    ap.add_argument("--flops", type=float, default=1.5e12, help="fine-tuning training FLOPs of every run")
    ap.add_argument(
        "--count-at",
        choices=("clip", "10s"),
        default="clip",
        help="count the budget at the mean clip length (equal real compute) or as the trainer does (10 s)",
    )
    ap.add_argument(
        "--pretrained", type=Path, help="a pretraining checkpoint or run folder (else run fsdd's)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP threads of each process (on a busy 2-core machine 2 threads ran ~10x slower than 1)",
    )
    ap.add_argument("--jobs", type=int, default=2, help="runs (and the pretraining) side by side")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "keywords.json")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)  # this process traces models for the FLOP counts
    exp = args.exp.resolve()
    t0 = time.time()
    info = machine_info()

    corpus = prepare(exp)
    mean_seconds = statistics.fmean(c.duration for c in load_cuts(corpus / "cuts_train.jsonl.gz"))
    recipes = {key: model_recipe(exp, key) for key in models}
    at_clip, counting = args.count_at == "clip", threading.Lock()
    uses_pretraining = any(MODELS[m]["encoder"] == "pretrained" for m in models)
    no_pretraining = {"checkpoint": None, "flops": 0.0, "steps": 0, "audio_hours": 0.0}
    # seed-major, the pretrained model last in each seed: a stopped script leaves every model with the
    # same seeds done, and the scratch runs go on while the pretraining runs beside them
    tasks = [
        (seed, key)
        for seed in seeds
        for key in sorted(models, key=lambda k: MODELS[k]["encoder"] == "pretrained")
    ]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        given = args.pretrained.resolve() if args.pretrained else None
        pt_future = pool.submit(pretraining, exp, given) if uses_pretraining else None

        def task(seed: int, key: str) -> Dict[str, Any]:
            init = pt_future.result()["checkpoint"] if MODELS[key]["encoder"] == "pretrained" else None
            with counting:  # one model trace at a time
                factor = clip_factor(encoder_spec(recipes[key], init), mean_seconds)
            return run_one(
                key, seed, exp, corpus, recipes[key], args.flops, factor, at_clip, init, args.bootstrap
            )

        futures = [pool.submit(task, seed, key) for seed, key in tasks]
        rows = [f.result() for f in futures]
        pt = pt_future.result() if pt_future else no_pretraining
    res = {
        "machine": info,
        "args": {k: str(v) for k, v in vars(args).items()},
        "models": {k: MODELS[k] for k in models},
        "pretraining": pt,
        "runs": rows,
        "summary": summarise(rows, models, args.bootstrap),
        "mean_clip_seconds": mean_seconds,
        "loadavg_at_end": loadavg(),
        "wall_minutes": (time.time() - t0) / 60,
    }
    md = markdown(res)
    save_results(args.out, compact(res), md)
    print(md)


if __name__ == "__main__":
    main()
