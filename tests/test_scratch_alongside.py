"""The scratch baseline trained in a second process beside kmeans -> pretrain -> finetune (sidecar):
it ends on exactly the compute the pretrained model spent, and a run topped up to a larger budget is
the run trained to that budget straight away."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli_result

from speechbudget.pipeline import STAGES, Pipeline
from speechbudget.run_recipe import load_run_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
FLOPS = [  # TINY with FLOP budgets: the only budgets whose spend is known before the runs end
    *(a for a in TINY if "budget" not in a),
    "pretrain.budget.flops=1.2e10",
    "finetune.budget.flops=1e10",
]


def test_scratch_runs_alongside_and_ends_on_the_exact_total(tmp_path, capsys, two_threads):
    exp = tmp_path / "qs"
    code, out, err = cli_result(
        capsys, "run", RECIPES / "quickstart.yaml", f"exp_dir={exp}", *FLOPS, "--json"
    )
    assert code == 0, err
    assert "[scratch] training alongside (1 of 2 threads" in err + out
    results = json.loads(out)
    spent = results["pretrain"]["flops"] + results["finetune"]["flops"]
    scratch = results["scratch"]
    assert scratch["flops_limit"] == pytest.approx(spent, rel=1e-12)  # the top-up made it exact
    assert spent <= scratch["flops"] and scratch["resumed_from"] is not None
    assert (exp / "scratch" / "alongside.log").is_file()
    assert {"finetune/test", "scratch/test"} <= set(results["decode"])
    assert torch.get_num_threads() == 2  # this process has its threads back


def _final_weights(exp: Path) -> dict:
    ck = sorted((exp / "checkpoints").glob("checkpoint-*.pt"))[-1]
    return torch.load(ck, map_location="cpu", weights_only=False)["model"]


def test_a_run_topped_up_to_a_larger_budget_is_the_run_to_that_budget(tmp_path, capsys, synthetic_corpus):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = [
            "finetune",
            RECIPES / "quickstart.yaml",
            f"train_cuts={synthetic_corpus / 'synthetic' / 'cuts_train.jsonl.gz'}",
            "encoder=zipformer-tiny",
            "max_duration=8",
            "train_hours=null",
            "train_speakers=null",
            "budget.flops=null",
            "--json",
        ]
        for exp, budgets in (("topped", ["1.1e10", "2.5e10"]), ("straight", ["2.5e10"])):
            for b in budgets:
                code, _, err = cli_result(capsys, *common, f"exp_dir={tmp_path / exp}", f"budget.flops={b}")
                assert code == 0, err
    finally:
        torch.set_num_threads(before)
    topped, straight = _final_weights(tmp_path / "topped"), _final_weights(tmp_path / "straight")
    assert topped.keys() == straight.keys()
    for k in topped:
        assert torch.equal(topped[k], straight[k]), k


def _recipe(tmp_path: Path, *overrides: str) -> Pipeline:
    data = load_run_recipe(RECIPES / "quickstart.yaml", [f"exp_dir={tmp_path}", *overrides])
    return Pipeline(data, log=lambda _: None)


def test_scratch_waits_its_turn_unless_its_budget_is_known_and_there_are_cores(tmp_path, two_threads):
    assert _recipe(tmp_path, "device=cpu")._scratch_alongside_budget(STAGES) == pytest.approx(1.5e13 + 8e12)
    for waits in (
        ["device=cpu", "scratch_alongside=false"],
        ["device=cpu", "finetune.budget.flops=null", "finetune.budget.steps=100"],  # spend unknown ahead
        ["device=cpu", "folds=speakers"],
        ["device=cpu", "scratch_baseline=false"],
    ):
        assert _recipe(tmp_path, *waits)._scratch_alongside_budget(STAGES) is None, waits
    torch.set_num_threads(1)
    assert (
        _recipe(tmp_path, "device=cpu")._scratch_alongside_budget(STAGES) is None
    )  # one core: nothing to share
    assert (
        _recipe(tmp_path, "device=cpu", "scratch_alongside=true")._scratch_alongside_budget(STAGES)
        is not None
    )
