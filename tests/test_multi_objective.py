"""HuBERT + VGS on one encoder: the weighted sum, phases with exact resume after SIGKILL in phase 2,
FLOPs with the image encoder, and the retrieval / ABX commands' files and JSON."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import copy_fsdd
from test_pretrain import cli_subprocess, run_cli

from speechbudget.cost.flops import training_flops
from speechbudget.errors import SpeechBudgetError
from speechbudget.train import distributed
from speechbudget.train.multi import build_multi_model, make_dataset, phase_cost
from speechbudget.train.multi_config import load_multi_recipe
from speechbudget.train.setup import encoder_cost_cached, load_train_cuts, make_data


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """A small scenes corpus with MFCC k-means labels at zipformer-nano's frame rate."""
    root = tmp_path_factory.mktemp("scenes")
    args = ["--scenes", 24, "--captions-per-scene", 2, "--voices", 10, "--image-size", 32, "--seed", 2]
    assert run_cli("prepare", "synthetic-scenes", *args, "--out", root / "data", "--json") == 0
    corpus = root / "data" / "synthetic-scenes"
    km = ["--num-clusters", 16, "--encoder", "zipformer-nano", "--json"]
    assert run_cli("kmeans", corpus, "--out", root / "km", *km) == 0
    return root / "km"


def recipe(tmp: Path, km: Path, multi: dict, **section) -> Path:
    body = {
        "encoder": "zipformer-nano",
        "train_cuts": str(km / "cuts_train.jsonl.gz"),
        "dev_cuts": str(km / "cuts_dev.jsonl.gz"),
        "max_duration": 12.0,
        "num_buckets": 2,
        "log_every": 1,
        "checkpoint_every": 1,
        "device": "cpu",
        "optim": {"name": "adamw", "lr": 1e-3},
        "schedule": {"name": "cosine", "warmup_batches": 1},
        "vgs": {"dim": 16, "image_size": 32, "image_channels": [8, 16]},
        "budget": {"steps": 2},
        **multi,
        **section,
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({"exp_dir": str(tmp / "exp"), "ssl_vgs": body}))
    return path


def first_batch(parsed, model):
    cuts = load_train_cuts(parsed.train.train_cuts)
    sampler, loader = make_data(parsed.train, cuts, make_dataset(model, parsed.vgs), distributed.setup("cpu"))
    sampler.set_epoch(0)
    return next(iter(loader))


def test_simultaneous_loss_is_the_weighted_sum_of_the_objectives(tmp_path, scenes):
    parsed, _ = load_multi_recipe(recipe(tmp_path, scenes, {"objectives": {"hubert": 0.3, "vgs": 0.7}}))
    model = build_multi_model(parsed.train, parsed.vgs, 16)
    model.set_weights(parsed.schedules[""][0].objectives)
    batch = first_batch(parsed, model)
    assert "kmeans" in batch and batch["images"].shape[1:] == (3, 32, 32)  # one batch feeds both
    torch.manual_seed(5)
    loss, stats = model(batch)
    torch.manual_seed(5)
    hubert, hs = model.heads["hubert"](batch)
    vgs, vs = model.heads["vgs"](batch)
    assert loss.item() == pytest.approx(0.3 * hubert.item() + 0.7 * vgs.item(), abs=1e-6)
    assert stats["hubert_loss"] == pytest.approx(hs["loss"]) and stats["vgs_loss"] == pytest.approx(
        vs["loss"]
    )
    assert stats["vgs_s2i_loss"] == pytest.approx(vs["s2i_loss"])
    loss.backward()  # one graph: both heads and the shared encoder get gradients
    assert model.heads["vgs"].image_proj.weight.grad is not None
    assert model.heads["hubert"].proj.weight.grad is not None
    # a zero weight skips the objective in training, but evaluation still measures it (forgetting)
    model.zero_grad()
    model.set_weights({"vgs": 1.0})
    _, stats = model(batch)
    assert "hubert_loss" not in stats and stats["loss"] == pytest.approx(stats["vgs_loss"])
    model.eval()
    _, stats = model(batch)
    assert "hubert_loss" in stats and stats["loss"] == pytest.approx(stats["vgs_loss"])


def test_flops_charged_include_both_encoder_passes_and_the_image_encoder(tmp_path, scenes, capsys):
    multi = {"objectives": {"hubert": 0.5, "vgs": 0.5}}
    path = recipe(tmp_path, scenes, multi, dev_cuts=None)
    assert run_cli("train-multi", path, "--json") == 0
    assert json.loads(capsys.readouterr().out)["schedules"]["run"]["phases"][0]["steps"] == 2
    rows = (tmp_path / "exp" / "phase-1-hubert+vgs" / "metrics.jsonl").read_text().splitlines()
    charged = json.loads(rows[0])["flops"]  # the first step: the sampler's first batch
    parsed, _ = load_multi_recipe(path)
    model = build_multi_model(parsed.train, parsed.vgs, 16)
    model.set_weights(multi["objectives"])
    batch = first_batch(parsed, model)
    base = encoder_cost_cached(model.encoder, tmp_path / "exp", 0)
    cost = phase_cost(base, model)
    assert cost["encoder_passes"] == 2 and cost["macs_per_input_second"] == 2 * base["macs_per_input_second"]
    b, t = batch["features"].shape[:2]
    per_second = training_flops(
        b * t / cost["input_rate_hz"],
        cost["macs_per_input_second"],
        cost["head_macs_per_frame"],
        cost["frame_rate_hz"],
    )
    image = model.heads["vgs"].image_encoder.macs_per_image(32)
    assert image > 0 and model.batch_extra_flops(batch) >= 6 * b * image
    assert charged == pytest.approx(per_second + model.batch_extra_flops(batch), rel=1e-9)
    model.set_weights({"hubert": 1.0})  # no VGS, no per-pair charge
    assert model.batch_extra_flops(batch) == 0.0 and phase_cost(base, model)["encoder_passes"] == 1


SEQUENTIAL = {
    "phases": [
        {"objectives": {"hubert": 1.0}, "budget": {"steps": 3}},
        {"objectives": {"vgs": 0.5, "hubert": 0.5}, "budget": {"steps": 6}, "optimizer": "carry"},
    ]
}


def _losses(exp: Path) -> list:
    return [json.loads(x)["loss"] for x in (exp / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_killed_in_phase_two_resumes_in_phase_two_to_the_same_loss(tmp_path, scenes, capsys):
    straight = recipe(tmp_path / "a", scenes, SEQUENTIAL, dev_cuts=None)
    p = cli_subprocess("train-multi", straight, "--json")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    want = json.loads(out)["schedules"]["run"]
    # the HuBERT-only first phase has an untrained retrieval head: said, not scored; the schedule is
    test_cuts = scenes / "cuts_test.jsonl.gz"
    capsys.readouterr()
    assert run_cli("evaluate-retrieval", tmp_path / "a" / "exp" / "phase-1-hubert", test_cuts) == 2
    assert "trained no VGS objective (its phases so far: phase-1-hubert)" in capsys.readouterr().err
    assert run_cli("evaluate-retrieval", tmp_path / "a" / "exp", test_cuts, "--bootstrap", 0) == 0

    killed = recipe(tmp_path / "b", scenes, SEQUENTIAL, dev_cuts=None)
    phase2 = tmp_path / "b" / "exp" / "phase-2-hubert+vgs"
    p = cli_subprocess("train-multi", killed, "--json")
    deadline = time.time() + 600
    while time.time() < deadline and not (phase2 / "checkpoints" / "checkpoint-00000002.pt").exists():
        assert p.poll() is None, p.stderr.read()[-3000:]
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert len(list((phase2 / "checkpoints").glob("*.pt"))) < 6, "killed part-way through phase 2"
    p = cli_subprocess("train-multi", killed, "--json")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    got = json.loads(out)["schedules"]["run"]
    first, second = got["phases"]
    assert first["already_done"] and not second["already_done"] and second["steps"] == 6
    assert json.loads((phase2 / "summary.json").read_text())["resumed_from"] is not None
    assert abs(got["final"]["loss"] - want["final"]["loss"]) <= 1e-6
    assert abs(got["final"]["vgs_loss"] - want["final"]["vgs_loss"]) <= 1e-6
    a, b = _losses(tmp_path / "a" / "exp" / "phase-2-hubert+vgs"), _losses(phase2)
    assert len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b)) <= 1e-6
    assert got["flops"] == pytest.approx(want["flops"], rel=1e-12)


def test_evaluate_retrieval_and_probe_abx_write_files_and_json(tmp_path, scenes, capsys):
    multi = {"schedules": {"vgs-only": {"objectives": {"vgs": 1.0}, "budget": {"steps": 2}}}}
    assert run_cli("train-multi", recipe(tmp_path, scenes, multi), "--json") == 0
    summary = json.loads(capsys.readouterr().out)["schedules"]["vgs-only"]
    assert summary["ssl_heldout_loss"][0] > 0  # measured even though HuBERT did not train
    exp = tmp_path / "exp" / "vgs-only"
    test_cuts = scenes / "cuts_test.jsonl.gz"
    assert run_cli("evaluate-retrieval", exp, test_cuts, "--bootstrap", 50, "--json") == 0
    r = json.loads(capsys.readouterr().out)
    assert json.loads((exp / "retrieval.json").read_text()) == r
    for d in ("speech_to_image", "image_to_speech"):
        for k in (1, 5, 10):
            lo, hi = r[d][f"r@{k}_ci"]
            assert 0 <= lo <= r[d][f"r@{k}"] <= hi <= 1
    assert r["checkpoint"].endswith("checkpoint-00000002.pt") and r["captions"] > r["images"] > 0
    assert run_cli("evaluate-retrieval", exp, test_cuts) == 0  # the table
    assert "image to speech" in capsys.readouterr().out

    # ABX on real digits said by several speakers (scene captions are never said twice)
    fsdd = copy_fsdd(tmp_path / "fsdd", per_speaker=4)
    assert run_cli("prepare", "fsdd", fsdd, "--test-speakers", "theo", "--out", tmp_path / "d", "--json") == 0
    capsys.readouterr()
    cuts = tmp_path / "d" / "fsdd" / "cuts_train.jsonl.gz"
    assert run_cli("probe", "abx", exp, cuts, "--layers", "all", "--json") == 0
    abx = json.loads(capsys.readouterr().out)
    assert json.loads((exp / "abx.json").read_text()) == abx
    assert list(abx["layers"])[:2] == ["input", "layer1"] and abx["best_layer"] in abx["layers"]
    assert all(0 <= v["error"] <= 1 and v["triplets"] > 0 for v in abx["layers"].values())
    assert run_cli("probe", "abx", exp, cuts, "--layers", "input,2", "--json") == 0
    assert list(json.loads(capsys.readouterr().out)["layers"]) == ["input", "layer2"]
    assert run_cli("probe", "abx", exp, cuts, "--layers", "99") == 2
    assert "no layer 'layer99'" in capsys.readouterr().err


def test_recipe_errors_are_one_line(tmp_path, scenes):
    bad = [
        ({"objectives": {"wav2vec": 1.0}}, "unknown objective 'wav2vec'"),
        ({"objectives": {"hubert": 0}}, "needs a positive weight"),
        (
            {"phases": [{"objectives": {"vgs": 1}, "budget": {"steps": 1}, "optimizer": "keep"}]},
            "reset or carry",
        ),
        ({"objectives": {"vgs": 1}, "phases": []}, "exactly one of"),
    ]
    bad.append(({"objectives": {"vgs": 1}, "budget": {"steps": None}}, "needs a budget"))
    for multi, message in bad:
        with pytest.raises(SpeechBudgetError, match=message):
            load_multi_recipe(recipe(tmp_path, scenes, multi))
    parsed, _ = load_multi_recipe(recipe(tmp_path, scenes, SEQUENTIAL), ["vgs.dim=8", "seed=3"])
    assert parsed.vgs.dim == 8 and parsed.train.seed == 3
    assert [p.label for p in parsed.schedules[""]] == ["hubert", "hubert+vgs"]
