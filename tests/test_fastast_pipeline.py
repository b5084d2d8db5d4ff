"""FastAST end to end at tiny scale: `run recipes/fsdd-keywords-fastast.yaml` (prepare -> teacher ->
distill -> finetune with token merging + CMKD -> decode -> report), then `distill-targets` by hand,
a partial teacher table (masked, counted) and a teacher of another class vocabulary (a clear error)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_result, copy_fsdd

from speechbudget.objectives.teacher_logits import load_teacher_logits, save_teacher_logits

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE = RECIPES / "fsdd-keywords-fastast.yaml"
TINY = [
    "finetune.encoder.dim=32",
    "finetune.encoder.layers=2",
    "finetune.encoder.heads=2",
    "finetune.max_duration=8",
    "teacher.max_duration=8",
    "teacher.budget.steps=12",
    "finetune.budget.steps=12",
]


@pytest.fixture(scope="module")
def fastast_run(tmp_path_factory):
    from speechbudget.cli import main

    root = tmp_path_factory.mktemp("fastast")
    fsdd = copy_fsdd(root / "fsdd", per_speaker=10)
    exp = root / "exp"
    try:
        main(
            [
                "run",
                str(RECIPE),
                f"exp_dir={exp}",
                f"prepare.path={fsdd}",
                "prepare.num_jobs=1",
                *TINY,
                "--json",
            ]
        )
    except SystemExit as e:
        assert not e.code, "the fsdd-keywords-fastast run failed"
    return exp


def test_run_trains_teacher_stores_logits_and_distils_a_merged_student(fastast_run):
    exp = fastast_run
    stages = {p.stem for p in (exp / ".stages").glob("*.json")}
    assert {"prepare", "teacher", "distill", "finetune", "decode", "report"} <= stages
    table = load_teacher_logits(exp / "teacher" / "logits-train")
    assert len(table) == 20 and table.teacher["encoder"]["family"] == "mobilenet"
    card = json.loads((exp / "finetune" / "run_card.json").read_text())
    d = card["distill"]
    assert d["lambda"] == 0.1 and d["train_clips"] == 20 and d["train_clips_without_teacher"] == 0
    assert card["config"]["encoder"]["tome"]["r"] == 4
    decode = json.loads((exp / ".stages" / "decode.json").read_text())
    assert {"teacher/dev", "teacher/test", "finetune/dev", "finetune/test"} <= set(decode)
    # the student's checkpoint is a plain classifier checkpoint: evaluate read it above
    assert 0.0 <= decode["finetune/test"]["accuracy"] <= 1.0


def test_distill_targets_command_and_a_partial_table(fastast_run, tmp_path, capsys):
    exp = fastast_run
    cuts = exp / "data" / "fsdd" / "cuts_train.jsonl.gz"
    code, out, err = cli_result(
        capsys, "distill-targets", exp / "teacher", cuts, "--out", tmp_path / "t", "--json"
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["clips"] == 20 and res["classes"] == 10
    full = load_teacher_logits(tmp_path / "t")
    again = load_teacher_logits(exp / "teacher" / "logits-train")
    order = [again.row[i] for i in full.ids]
    np.testing.assert_allclose(full.logits, again.logits[order], atol=1e-5)  # same teacher, same logits
    # half the clips lack logits: they train on labels alone, and the run card counts them
    half = {i: full.logits[full.row[i]] for i in full.ids[:10]}
    save_teacher_logits(tmp_path / "half", half, full.classes, full.teacher)
    code, out, err = cli_result(
        capsys,
        "finetune",
        RECIPE,
        f"exp_dir={tmp_path / 'student'}",
        f"train_cuts={cuts}",
        f"distill.targets={tmp_path / 'half'}",
        "budget.steps=3",
        "encoder.dim=32",
        "encoder.layers=1",
        "encoder.heads=2",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["distill"]["train_clips_without_teacher"] == 10


def test_a_teacher_of_other_classes_is_a_clear_error(fastast_run, tmp_path, capsys):
    exp = fastast_run
    full = load_teacher_logits(exp / "teacher" / "logits-train")
    other = [f"word{i}" for i in range(len(full.classes))]
    save_teacher_logits(tmp_path / "other", dict(zip(full.ids, full.logits)), other, full.teacher)
    code, _, err = cli_result(
        capsys,
        "finetune",
        RECIPE,
        f"exp_dir={tmp_path / 'student'}",
        f"train_cuts={exp / 'data' / 'fsdd' / 'cuts_train.jsonl.gz'}",
        f"distill.targets={tmp_path / 'other'}",
        "budget.steps=2",
        "--json",
    )
    assert code == 2 and "another class vocabulary" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli_result(capsys, "finetune", RECIPE, f"exp_dir={tmp_path / 's2'}", "distill.lambda=2")
    assert code == 2 and "lambda" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli_result(
        capsys, "distill-targets", tmp_path / "nothing", exp / "data" / "fsdd" / "cuts_train.jsonl.gz"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_plan_offers_token_merging_variants_with_their_saving(capsys, private_cache_dir):
    code, out, err = cli_result(
        capsys,
        "plan",
        "--budget",
        "1e17",
        "--unit",
        "flops",
        "--data-hours",
        "100",
        "--presets",
        "transformer-tiny-slim,zipformer-nano",
        "--tome",
        "8",
        "--json",
    )
    assert code == 0, err
    res = json.loads(out)
    rows = {r["name"]: r for r in res["candidates"]}
    assert set(rows) == {"transformer-tiny-slim", "transformer-tiny-slim+tome8", "zipformer-nano"}
    merged, plain = rows["transformer-tiny-slim+tome8"], rows["transformer-tiny-slim"]
    assert merged["params"] == plain["params"] and merged["flops_per_hour"] < 0.95 * plain["flops_per_hour"]
    assert any("transformer-tiny-slim+tome8" in n and "%" in n for n in res["explanation"])
    code, _, err = cli_result(
        capsys, "plan", "--budget", "1e17", "--unit", "flops", "--data-hours", "1", "--tome", "x"
    )
    assert code == 2 and "--tome" in err


def test_run_prints_accuracy_and_where_the_time_went(fastast_run, capsys):
    """A classification run ends in an accuracy table (not WER dashes) and a time-per-stage table,
    whose times were recorded by the run that did the work (here: an earlier one, resumed)."""
    times = json.loads((fastast_run / ".stages" / "stage_seconds.json").read_text())
    assert {"prepare", "teacher", "distill", "finetune", "decode"} <= set(times)
    assert all(v >= 0 for v in times.values()) and times["teacher"] > 0
    fsdd = fastast_run.parent / "fsdd"  # the run's own recipe values: a finished stage keeps its result
    code, out, err = cli_result(
        capsys, "run", RECIPE, f"exp_dir={fastast_run}", f"prepare.path={fsdd}", *TINY
    )
    assert code == 0, err
    assert "accuracy" in out and "WER %" not in out
    assert "time per stage" in out and "teacher" in out
