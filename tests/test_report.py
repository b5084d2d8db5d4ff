"""``speechbudget report`` over real experiment folders made by the CLI on a tiny synthetic corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from matplotlib.image import imread
from rich.console import Console

from speechbudget.cli import main
from speechbudget.data.manifests import load_cuts
from speechbudget.errors import SpeechBudgetError
from speechbudget.report import build_report, render_table


def run_cli(*args) -> None:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert not e.code, f"`speechbudget {' '.join(map(str, args))}` failed with exit code {e.code}"


def lines(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def exps(synthetic_corpus, tmp_path_factory):
    """pretrain (2 steps) -> finetune from its step-1 checkpoint, and from scratch; decode the first."""
    root = tmp_path_factory.mktemp("exps")
    common = {
        "encoder": "zipformer-tiny",
        "max_duration": 8.0,
        "num_buckets": 2,
        "log_every": 1,
        "schedule": {"name": "eden", "lr_batches": 100, "lr_epochs": 5, "warmup_batches": 5},
    }
    pt_ckpt = root / "pt" / "checkpoints" / "checkpoint-00000001.pt"
    recipe = {
        "exp_dir": str(root / "pt"),
        "pretrain": {
            **common,
            "train_cuts": str(synthetic_corpus / "km" / "cuts_train.jsonl.gz"),
            "checkpoint_every": 1,
            "budget": {"steps": 2},
        },
        "finetune": {
            **common,
            "exp_dir": str(root / "ft"),
            "checkpoint_every": 100,
            "train_cuts": str(synthetic_corpus / "synthetic" / "cuts_train.jsonl.gz"),
            "budget": {"steps": 2, "flops": 1.0e12},
            "ctc": {"tokenizer": "char", "init_checkpoint": str(pt_ckpt)},
        },
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_cli("pretrain", path, "--json")
    run_cli("finetune", path, "--json")
    run_cli("finetune", path, "--json", "ctc.init_checkpoint=null", f"exp_dir={root / 'scratch'}")
    run_cli("decode", root / "ft", synthetic_corpus / "synthetic" / "cuts_test.jsonl.gz", "--json")
    return root


@pytest.fixture(scope="module")
def report(exps, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report([exps / "ft", exps / "scratch"], out), out


def rows_by_name(rep) -> dict:
    return {r["name"]: r for r in rep["rows"]}


def test_finetune_row_adds_the_pretraining_compute_of_its_checkpoint(exps, report):
    rep, _ = report
    rows = rows_by_name(rep)
    assert set(rows) == {"ft", "scratch", "pt"}  # the linked pretraining run joins as its own row
    ft, pt_metrics = rows["ft"], lines(exps / "pt" / "metrics.jsonl")
    ft_summary = json.loads((exps / "ft" / "summary.json").read_text())
    pt_summary = json.loads((exps / "pt" / "summary.json").read_text())
    # fine-tuning started at pretraining step 1 of 2: only that step's compute counts
    assert ft["pretrain_flops"] == pt_metrics[0]["flops"] < pt_summary["flops"]
    assert ft["pretrain_audio_hours"] == pt_metrics[0]["audio_hours"] > 0
    assert ft["init"]["source"] == "metrics step 1"
    assert ft["finetune_flops"] == ft_summary["flops"] > 0
    assert ft["total_flops"] == pytest.approx(ft["pretrain_flops"] + ft["finetune_flops"])
    assert ft["encoder"] == "zipformer-tiny" and ft["params"] > 1e6 and ft["stage"] == "finetune"
    b = ft["budget"]
    assert b["flops_limit"] == 1.0e12 and b["flops_fraction"] == pytest.approx(ft_summary["flops"] / 1e12)
    assert b["binding_limit"] == "steps" and b["budget_used"] == 1.0


def test_labeled_hours_come_from_the_training_manifest(synthetic_corpus, report):
    rep, _ = report
    cuts = load_cuts(synthetic_corpus / "synthetic" / "cuts_train.jsonl.gz")
    want = sum(c.duration for c in cuts) / 3600
    for name in ("ft", "scratch"):
        row = rows_by_name(rep)[name]
        assert row["labeled_hours"] == pytest.approx(want)
        assert row["labeled_hours_source"] == "run_card"  # the fine-tuning stage records what it trained on
    # the same number follows from summary.json (audio processed / epochs)
    s = json.loads((Path(rows_by_name(rep)["ft"]["exp_dir"]) / "summary.json").read_text())
    assert s["audio_hours"] / s["epochs"] == pytest.approx(want, rel=1e-6)


def test_wer_with_ci_and_missing_decodes(exps, report):
    rep, _ = report
    rows = rows_by_name(rep)
    decoded = json.loads((exps / "ft" / "decode-greedy" / "decode-summary-test-greedy.json").read_text())
    assert rep["wer_keys"] == ["test/greedy"]
    w = rows["ft"]["wer"]["test/greedy"]
    assert w["wer"] == decoded["wer"] and w["ci95"] == decoded["ci95"] and w["utterances"] > 0
    scratch = rows["scratch"]
    assert scratch["wer"] == {} and scratch["pretrain_flops"] == 0 and scratch["init"] is None
    assert scratch["total_flops"] == scratch["finetune_flops"]
    assert any("no decode results" in n for n in scratch["notes"])
    pt = rows["pt"]
    assert pt["wer"] == {} and pt["finetune_flops"] is None and pt["labeled_hours"] is None
    assert pt["final_masked_acc"] is not None and pt["budget"]["flops_limit"] is None


def test_markdown_json_and_plots_are_written(report):
    rep, out = report
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.png",
        "report.json",
        "report.md",
        "wer_vs_compute.png",
    ]
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(rep, default=str))
    md = (out / "report.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3 and "WER test/greedy [95% CI]" in table[0]
    ft_line = next(line for line in table if line.startswith("| ft |"))
    w = rows_by_name(rep)["ft"]["wer"]["test/greedy"]
    assert f"{w['wer']:.2f} [{w['ci95'][0]:.2f}, {w['ci95'][1]:.2f}]" in ft_line
    scratch_line = next(line for line in table if line.startswith("| scratch |"))
    assert "| - |" in scratch_line
    assert "scratch: no decode results" in md
    for name in ("curves.png", "wer_vs_compute.png"):
        img = imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        assert img[..., :3].std() > 0.01  # something was drawn
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_render_table(report):
    rep, _ = report
    table = render_table(rep)
    assert table.row_count == 3
    console = Console(record=True, width=300)
    console.print(table)
    text = console.export_text()
    assert "WER test/greedy" in text and "scratch" in text and "no decode results" in text


def test_parent_folder_is_searched_and_duplicates_dropped(exps, tmp_path):
    rep = build_report([exps, exps / "ft"], tmp_path / "r")
    assert sorted(r["name"] for r in rep["rows"]) == ["ft", "pt", "scratch"]
    assert [r["stage"] for r in rep["rows"]] == ["finetune", "finetune", "pretrain"]


def test_without_out_the_report_goes_beside_the_runs_not_into_the_current_folder(exps, tmp_path, monkeypatch):
    runs = tmp_path / "exp"
    shutil.copytree(exps, runs)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_cli("report", runs / "ft", runs / "scratch", "--json")
    assert (runs / "report" / "report.md").is_file() and not any(elsewhere.iterdir())
    run_cli("report", runs / "ft", "--json")  # one run: inside it
    assert (runs / "ft" / "report" / "report.json").is_file()


def test_unfinished_run_uses_its_last_metrics_line(exps, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("run_card.json", "metrics.jsonl"):
        shutil.copy(exps / "scratch" / name, partial / name)
    with open(partial / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss"')  # torn last line of a killed run
    rep = build_report([partial], tmp_path / "r")
    (row,) = rep["rows"]
    assert row["finetune_flops"] == lines(exps / "scratch" / "metrics.jsonl")[-1]["flops"]
    assert any("no summary.json" in n for n in row["notes"])


def test_not_an_experiment_folder_is_named(tmp_path):
    stray = tmp_path / "not-an-exp"
    (stray / "sub").mkdir(parents=True)
    (stray / "sub" / "notes.txt").write_text("hello")
    with pytest.raises(SpeechBudgetError, match="not-an-exp is not an experiment folder: no run_card.json"):
        build_report([stray], tmp_path / "r")
    with pytest.raises(SpeechBudgetError, match="missing does not exist"):
        build_report([tmp_path / "missing"], tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_pretraining_compute_when_the_step_was_not_logged(exps, tmp_path):
    """Counters come from the checkpoint file; if it was pruned, from the whole run (with a note)."""
    pt, ft = tmp_path / "pt", tmp_path / "ft"
    pt.mkdir()
    ft.mkdir()
    for name in ("run_card.json", "summary.json"):
        shutil.copy(exps / "pt" / name, pt / name)
        shutil.copy(exps / "ft" / name, ft / name)
    logged = lines(exps / "pt" / "metrics.jsonl")
    (pt / "metrics.jsonl").write_text(json.dumps(logged[-1]) + "\n")  # step 1 not logged
    (pt / "checkpoints").symlink_to(exps / "pt" / "checkpoints")
    card = json.loads((ft / "run_card.json").read_text())
    card["init"]["checkpoint"] = str(pt / "checkpoints" / "checkpoint-00000001.pt")
    (ft / "run_card.json").write_text(json.dumps(card))

    (row, _) = build_report([ft], tmp_path / "r1")["rows"]
    assert row["init"]["source"] == "checkpoint step 1" and row["pretrain_flops"] == logged[0]["flops"]

    (pt / "checkpoints").unlink()
    (row, _) = build_report([ft], tmp_path / "r2")["rows"]
    assert row["init"]["source"] == "summary" and row["pretrain_flops"] == logged[-1]["flops"]
    assert any("upper bound" in n for n in row["notes"])

    shutil.rmtree(pt)
    (row,) = build_report([ft], tmp_path / "r3")["rows"]
    assert row["pretrain_flops"] is None and row["total_flops"] is None
    assert any("pretraining run of" in n and "not found" in n for n in row["notes"])
    assert "| ft |" in (tmp_path / "r3" / "report.md").read_text()


def test_paths_a_run_recorded_relative_to_where_it_trained_are_found_from_elsewhere(
    exps, tmp_path, monkeypatch
):
    """`run` records exp_dir exp/NAME/finetune and its init checkpoint exp/NAME/pretrain/...: relative to
    where training ran. A report made from another folder found no pretraining ("total compute unknown")."""
    work = tmp_path / "work"
    for name in ("pt", "ft"):
        (work / "exp" / name).mkdir(parents=True)
        for f in ("run_card.json", "summary.json", "metrics.jsonl"):
            shutil.copy(exps / name / f, work / "exp" / name / f)
    (work / "exp" / "pt" / "checkpoints").symlink_to(exps / "pt" / "checkpoints")
    card = json.loads((work / "exp" / "ft" / "run_card.json").read_text())
    card["config"]["exp_dir"] = "exp/ft"
    card["init"]["checkpoint"] = "exp/pt/checkpoints/checkpoint-00000001.pt"
    (work / "exp" / "ft" / "run_card.json").write_text(json.dumps(card))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rows = rows_by_name(build_report([work / "exp" / "ft"], tmp_path / "r"))
    assert rows["ft"]["init"]["pretrain_exp"] == str((work / "exp" / "pt").resolve())
    assert rows["ft"]["pretrain_flops"] == lines(exps / "pt" / "metrics.jsonl")[0]["flops"]
    assert not any("not found" in n for n in rows["ft"]["notes"])


def test_grounding_results_are_plotted_per_run(exps, tmp_path):
    """`evaluate-retrieval` / `probe abx` outputs below a report's folders become grounding.png."""
    import numpy as np

    from speechbudget import atomic
    from speechbudget.evaluation.retrieval import retrieval_report

    root = tmp_path / "multi"
    shutil.copytree(exps / "ft", root / "sequential")
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 8))
    caption_image = [i // 2 for i in range(12)]
    speech = images[caption_image] + 0.5 * rng.normal(size=(12, 8))
    atomic.write_json(
        root / "sequential" / "retrieval.json", retrieval_report(speech, images, caption_image, bootstrap=50)
    )
    atomic.write_json(
        root / "sequential" / "abx.json", {"layers": {"input": {"error": 0.3}, "layer1": {"error": 0.2}}}
    )
    rep = build_report([root], tmp_path / "r")
    assert set(rep["grounding"]) == {"sequential"} and rep["grounding"]["sequential"]["abx"]["layers"]
    png = tmp_path / "r" / "grounding.png"
    assert (
        png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        and "grounding.png" in (tmp_path / "r" / "report.md").read_text()
    )
    assert "grounding" not in build_report([exps / "ft"], tmp_path / "r2")["files"]


def test_runs_of_two_experiments_with_one_folder_name_get_distinct_names(exps, tmp_path):
    """Two `run`s each have EXP/finetune: the report names them apart and plots each on its own tick."""
    for exp in ("exp1", "exp2"):
        shutil.copytree(exps / "scratch", tmp_path / exp / "finetune")
    rep = build_report([tmp_path / "exp1" / "finetune", tmp_path / "exp2" / "finetune"], tmp_path / "r")
    assert sorted(r["name"] for r in rep["rows"]) == ["exp1/finetune", "exp2/finetune"]


def test_plots_of_many_runs_at_one_budget_stay_readable(exps, tmp_path):
    """Nine fold runs at one budget: the run names under the WER plot are turned until they clear each
    other, short names stay level; the loss panels share one legend below them instead of nine entries
    over the curves, and a loss falling 30 -> 0.1 gets a log axis."""
    from speechbudget.report import Run, plot_curves, plot_wer_vs_compute

    def rows(names):
        return [
            {
                "name": n,
                "total_flops": 2e13,
                "wer": {"dev/lexicon": {"wer": 20.0 + i, "ci95": [18.0 + i, 22.0 + i]}},
            }
            for i, n in enumerate(names)
        ]

    long = [f"{s}-seed+{k}/finetune" for s in ("george", "jackson", "nicolas") for k in (1, 2, 3)]
    fig = plot_wer_vs_compute(rows(long), ["dev/lexicon"], tmp_path / "w.png")
    (ax,) = fig.axes
    labels = ax.get_xticklabels()
    assert [t.get_text() for t in labels] == sorted(long) and {t.get_rotation() for t in labels} != {0.0}
    centres = [t.get_window_extent().x0 + t.get_window_extent().width / 2 for t in labels]
    height = labels[0].get_size() * fig.dpi / 72  # one line of the label's font, in pixels
    angle = labels[0].get_rotation()
    spacing = min(b - a for a, b in zip(centres, centres[1:]))
    assert spacing > 0 and (angle == 90 or spacing * 0.5 >= height)  # turned text lines clear each other
    fig = plot_wer_vs_compute(rows(["ft", "scratch"]), ["dev/lexicon"], tmp_path / "w2.png")
    assert {t.get_rotation() for t in fig.axes[0].get_xticklabels()} == {0.0}
    runs = []
    for i in range(8):
        shutil.copytree(exps / "scratch", tmp_path / f"fold{i}" / "finetune")
        runs.append(Run(tmp_path / f"fold{i}" / "finetune"))
    fig = plot_curves(runs, tmp_path / "c.png")
    ax_step, ax_flops, _ = fig.axes
    assert len(fig.legends) == 1 and ax_step.get_legend() is None and ax_flops.get_legend() is None
    assert len(fig.legends[0].get_texts()) == 8
    losses = [y for line in ax_step.lines for y in line.get_ydata()]
    assert (ax_step.get_yscale() == "log") == (max(losses) > 20 * min(losses))


def test_a_run_has_one_colour_and_name_in_every_panel(exps, tmp_path):
    """The accuracy panel drew the pretraining run in the colour the loss panels gave fine-tuning."""
    from speechbudget.report import Run, plot_curves

    fig = plot_curves([Run(exps / name) for name in ("ft", "pt", "scratch")], tmp_path / "c.png")
    panels = [{line.get_label(): line.get_color() for line in ax.lines} for ax in fig.axes[:3]]
    assert set(panels[0]) == set(panels[1]) and len(set(panels[0].values())) == 3
    assert panels[2] and all(panels[0][name] == colour for name, colour in panels[2].items())
