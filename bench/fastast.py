"""FastAST on the FSDD keyword task: token merging r = 0/2/4/8 per layer, each without and with CMKD.

One run of ``recipes/fsdd-keywords-fastast.yaml`` up to its ``distill`` stage gives the shared corpus
(george + jackson train, nicolas dev, theo held-out test), the MobileNet teacher and its logits on the
training clips. Then, for every r, the recipe's AST student is fine-tuned twice with the same steps
and seed: on labels alone (``distill=null``) and with CMKD (lambda 0.1, the recipe's). Each student
is evaluated on dev and test (accuracy with a 95% bootstrap interval over clips). Per run:

* training FLOPs per audio second (the trainer's own count: every block at its merged token count);
* training throughput: audio seconds per CPU second of the training process (one thread, so CPU
  time is compute time on this shared machine), and per wall second;
* inference throughput: test clips per CPU second of a forward pass over the test set, batches
  built once (fbank excluded), one thread, median of ``--reps`` passes.

Every command is the CLI a user would type, and each is skipped when its result exists (resume).

Run: ``python bench/fastast.py [--steps 600] [--reps 3]``; results in bench/results/fastast.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # every process this script starts: one thread

import torch  # noqa: E402
from common import (  # noqa: E402
    REPO_ROOT,
    default_out,
    loadavg,
    machine_info,
    machine_markdown,
    markdown_table,
    median,
    run_cli,
    save_results,
)

RECIPE = REPO_ROOT / "recipes" / "fsdd-keywords-fastast.yaml"
RS = (0, 2, 4, 8)


def child_cpu_seconds() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def cached_cli(path: Path, *args: str) -> dict:
    """``run_cli`` once: its JSON is kept at ``path`` and read back on the next run."""
    if path.is_file():
        return json.loads(path.read_text())
    cpu0 = child_cpu_seconds()
    out = run_cli(*args)
    out = out if isinstance(out, dict) else {"results": out}  # evaluate of several sets: a list
    out["_cpu_seconds"] = child_cpu_seconds() - cpu0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


def inference_rates(exps: dict, cuts: Path, reps: int) -> dict:
    """Test clips per CPU second of each model's forward pass, batches built once (fbank excluded),
    one thread; the models take turns in each of ``reps`` rounds so a change in machine load hits
    them alike, and the median round counts."""
    from lhotse.dataset import SimpleCutSampler

    from speechbudget.data.dataset import make_loader
    from speechbudget.data.manifests import load_cuts
    from speechbudget.evaluate import load_classifier
    from speechbudget.train.classify import dataset_for

    torch.set_num_threads(1)
    test = load_cuts(cuts).to_eager()
    models, batches = {}, None
    for name, exp in exps.items():
        models[name], _, _ = load_classifier(exp, torch.device("cpu"))
        if batches is None:  # every student reads the same 128-bin fbank
            loader = make_loader(
                dataset_for(models[name].encoder, None), SimpleCutSampler(test, max_duration=16)
            )
            batches = [(b["features"], b["lengths"]) for b in loader]
    times = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(reps):
            for name, model in models.items():
                t0 = time.process_time()
                for x, lengths in batches:
                    model.logits(x, lengths)
                times[name].append(time.process_time() - t0)
    return {name: len(test) / median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fastast"), help="Experiments go here.")
    ap.add_argument("--fsdd", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "fsdd")
    ap.add_argument("--steps", type=int, default=600, help="Training steps of the teacher and each student.")
    ap.add_argument("--reps", type=int, default=3, help="Timed inference passes per student.")
    ap.add_argument("--out", type=Path, default=default_out("fastast"))
    args = ap.parse_args()
    info = machine_info()
    base = args.work / "base"
    steps = [f"teacher.budget.steps={args.steps}", f"finetune.budget.steps={args.steps}"]
    cached_cli(
        args.work / "base.json",
        "run",
        str(RECIPE),
        f"exp_dir={base}",
        f"prepare.path={args.fsdd}",
        *steps,
        "--stop-stage",
        "distill",
    )
    corpus = base / "data" / "fsdd"
    sets = {s: corpus / f"cuts_{s}.jsonl.gz" for s in ("dev", "test")}
    teacher_eval = cached_cli(
        args.work / "teacher-eval.json", "evaluate", str(base / "teacher"), *map(str, sets.values())
    )
    teacher_run = json.loads((base / ".stages" / "teacher.json").read_text())
    rows, results = [], {"machine": info, "teacher": {"run": teacher_run, "eval": teacher_eval}, "runs": []}
    acc = {e["set"]: e for e in teacher_eval["results"]}
    rows.append(
        [
            "teacher mn-tiny",
            "labels",
            f"{teacher_run['flops'] / (teacher_run['audio_hours'] * 3600) / 1e9:.3f}",
            "-",
            "-",
            "-",
        ]
        + [
            f"{100 * acc[s]['accuracy']:.1f} [{100 * acc[s]['accuracy_ci'][0]:.1f}, {100 * acc[s]['accuracy_ci'][1]:.1f}]"
            for s in ("dev", "test")
        ]
    )
    for r in RS:
        for cmkd in (False, True):
            name = f"r{r}-{'cmkd' if cmkd else 'labels'}"
            exp = args.work / name
            distill = [f"distill.targets={base / 'teacher' / 'logits-train'}"] if cmkd else ["distill=null"]
            load0 = loadavg()
            run = cached_cli(
                args.work / f"{name}.json",
                "finetune",
                str(RECIPE),
                f"exp_dir={exp}",
                f"train_cuts={corpus / 'cuts_train.jsonl.gz'}",
                f"dev_cuts={sets['dev']}",
                f"budget.steps={args.steps}",
                f"encoder.tome.r={r}",
                *distill,
            )
            ev = cached_cli(args.work / f"{name}-eval.json", "evaluate", str(exp), *map(str, sets.values()))
            audio_s = run["audio_hours"] * 3600
            entry = {
                "name": name,
                "r": r,
                "cmkd": cmkd,
                "flops": run["flops"],
                "gflops_per_audio_s": run["flops"] / audio_s / 1e9,
                "train_audio_s_per_cpu_s": audio_s / run["_cpu_seconds"],
                "train_audio_s_per_wall_s": audio_s / run["wall_seconds"],
                "eval": {e["set"]: e for e in ev["results"]},
                "load": [load0, loadavg()],
            }
            results["runs"].append(entry)
    rates = inference_rates(
        {e["name"]: args.work / e["name"] for e in results["runs"]}, sets["test"], args.reps
    )
    for entry in results["runs"]:
        entry["infer_clips_per_cpu_s"] = rates[entry["name"]]
        e = entry["eval"]
        rows.append(
            [
                f"AST r={entry['r']}",
                "CMKD 0.1" if entry["cmkd"] else "labels",
                f"{entry['gflops_per_audio_s']:.3f}",
                f"{entry['train_audio_s_per_cpu_s']:.1f}",
                f"{entry['train_audio_s_per_wall_s']:.1f}",
                f"{entry['infer_clips_per_cpu_s']:.0f}",
            ]
            + [
                f"{100 * e[s]['accuracy']:.1f} [{100 * e[s]['accuracy_ci'][0]:.1f}, {100 * e[s]['accuracy_ci'][1]:.1f}]"
                for s in ("dev", "test")
            ]
        )
    table = markdown_table(
        [
            "model",
            "trained on",
            "train GFLOP/audio s",
            "train audio s/CPU s",
            "train audio s/wall s",
            "infer clips/CPU s",
            "dev acc % [95% CI]",
            "test acc % [95% CI]",
        ],
        rows,
    )
    md = f"Command: `python bench/fastast.py --steps {args.steps} --reps {args.reps}`\n\n{machine_markdown(info)}\n\n{table}\n"
    save_results(args.out, results, md)
    print(md)


if __name__ == "__main__":
    main()
