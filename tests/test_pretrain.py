"""Pretraining: HuBERT on k-means targets, budgets, exact resume after SIGKILL, NaN handling, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from speechbudget.cli import main
from speechbudget.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


def write_recipe(tmp: Path, corpus: Path, **pretrain) -> Path:
    section = {
        "encoder": "zipformer-tiny",
        "train_cuts": str(corpus / "km" / "cuts_train.jsonl.gz"),
        "max_duration": 8.0,
        "num_buckets": 2,
        "log_every": 1,
        "checkpoint_every": 2,
        "schedule": {"name": "eden", "lr_batches": 100, "lr_epochs": 5, "warmup_batches": 5},
        "budget": {"steps": 6},
    }
    for k, v in pretrain.items():
        if isinstance(v, dict) and isinstance(section.get(k), dict):
            section[k] = {**section[k], **v}
        else:
            section[k] = v
    recipe = {"exp_dir": str(tmp / "exp"), "pretrain": section}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_cli(*args) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def cli_subprocess(*args, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "speechbudget.cli", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def metrics(exp: Path) -> list:
    return [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_writes_checkpoints_logs_and_run_card(tmp_path, synthetic_corpus, capsys):
    recipe = write_recipe(tmp_path, synthetic_corpus, average_last=2, keep_last=2)
    assert run_cli("pretrain", recipe, "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    exp = tmp_path / "exp"
    assert summary["steps"] == 6 and summary["binding_limit"] == "steps"
    rows = metrics(exp)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "masked_acc", "lr", "grad_norm", "flops", "audio_hours", "throughput_audio_s_per_s"):
        assert key in rows[-1]
    assert rows[-1]["flops"] > rows[0]["flops"] > 0
    ckpts = sorted(p.name for p in (exp / "checkpoints").glob("checkpoint-*.pt"))
    assert ckpts == ["checkpoint-00000004.pt", "checkpoint-00000006.pt"]  # keep_last=2
    assert (exp / "averaged.pt").is_file()
    # the run folder stands for its averaged model: fine-tuning and k-means read it like a checkpoint
    spec, weights, path = ckpt.encoder_state(exp)
    assert path == exp / "averaged.pt" and spec == "zipformer-tiny"
    four, six = (ckpt.load(exp / "checkpoints" / n)["model"] for n in ckpts)
    key = next(k for k, v in six.items() if k.startswith("encoder.") and v.is_floating_point())
    assert torch.allclose(weights[key[len("encoder.") :]], (four[key] + six[key]) / 2)
    card = json.loads((exp / "run_card.json").read_text())
    assert card["config"]["encoder"] == "zipformer-tiny" and card["versions"]["torch"]
    assert list((exp / "tensorboard").glob("events.*"))
    # running the same command again: budget already spent, nothing trained, nothing lost
    assert run_cli("pretrain", recipe, "--json") == 0
    again = json.loads(capsys.readouterr().out)
    assert again["already_done"] and again["steps"] == 6
    assert json.loads((exp / "summary.json").read_text())["final"] == summary["final"] != {}


def test_rerunning_a_finished_run_keeps_its_validation_results(tmp_path, synthetic_corpus, capsys):
    dev = str(synthetic_corpus / "km" / "cuts_dev.jsonl.gz")
    recipe = write_recipe(tmp_path, synthetic_corpus, dev_cuts=dev, budget={"steps": 2})
    assert run_cli("pretrain", recipe, "--json") == 0
    first = json.loads(capsys.readouterr().out)
    path = tmp_path / "exp" / "summary.json"
    stored, card = path.read_bytes(), (tmp_path / "exp" / "run_card.json").read_bytes()
    assert first["valid"]["valid_masked_loss"] > 0
    assert run_cli("pretrain", recipe, "--json") == 0  # what a re-run sweep or pipeline does
    again = json.loads(capsys.readouterr().out)
    assert again["already_done"] and again["valid"] == first["valid"]
    assert path.read_bytes() == stored and (tmp_path / "exp" / "run_card.json").read_bytes() == card
    # a summary emptied by an older version: the results come back from metrics.jsonl
    emptied = {**json.loads(stored), "valid": {}}
    path.write_text(json.dumps(emptied))
    assert run_cli("pretrain", recipe, "--json") == 0
    back = json.loads(capsys.readouterr().out)
    assert back["valid"] == first["valid"] and json.loads(path.read_text())["valid"] == first["valid"]


def test_flop_budget_stops_within_one_step(tmp_path, synthetic_corpus, capsys):
    recipe = write_recipe(tmp_path, synthetic_corpus, budget={"steps": None, "flops": 3.0e10})
    assert run_cli("pretrain", recipe, "--json") == 0
    s = json.loads(capsys.readouterr().out)
    rows = metrics(tmp_path / "exp")
    assert s["binding_limit"] == "flops"
    assert s["flops"] >= 3.0e10
    per_step = max(b["flops"] - a["flops"] for a, b in zip([{"flops": 0}] + rows, rows))
    assert s["flops"] - 3.0e10 < per_step  # never more than one step over
    assert rows[-2]["flops"] < 3.0e10


def test_killed_run_resumes_to_the_same_final_loss(tmp_path, synthetic_corpus):
    """SIGKILL in the middle, re-run the same command: same final loss as an uninterrupted run."""
    (tmp_path / "a").mkdir()
    straight = write_recipe(tmp_path / "a", synthetic_corpus, budget={"steps": 8}, checkpoint_every=1)
    p = cli_subprocess("pretrain", straight, "--json")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    want = json.loads(out)["final"]["loss"]

    (tmp_path / "b").mkdir()
    killed = write_recipe(tmp_path / "b", synthetic_corpus, budget={"steps": 8}, checkpoint_every=1)
    p = cli_subprocess("pretrain", killed, "--json")
    ckdir = tmp_path / "b" / "exp" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and not (ckdir / "checkpoint-00000003.pt").exists():
        assert p.poll() is None, p.stderr.read()[-2000:]
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = sorted(ckdir.glob("checkpoint-*.pt"))
    assert done and len(done) < 8, "the run should have been killed part-way"
    with open(tmp_path / "b" / "exp" / "metrics.jsonl", "a") as f:  # a kill in the middle of a log line
        f.write('{"step": 99, "loss": 4.')
    p = cli_subprocess("pretrain", killed, "--json")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    resumed = json.loads(out)
    assert resumed["resumed_from"] is not None and resumed["steps"] == 8
    assert abs(resumed["final"]["loss"] - want) <= 1e-6
    a = [r["loss"] for r in metrics(tmp_path / "a" / "exp")]
    b = [r["loss"] for r in metrics(tmp_path / "b" / "exp")]
    assert len(b) == 8 and max(abs(x - y) for x, y in zip(a, b)) <= 1e-6


def test_non_finite_losses_are_skipped_then_stop_with_a_checkpoint(tmp_path, synthetic_corpus, capsys):
    # a temperature of 1e-40 overflows the cosine logits to inf: every loss is NaN (0 is refused)
    recipe = write_recipe(tmp_path, synthetic_corpus, hubert={"temperature": 1e-40}, max_bad_steps=3)
    assert run_cli("pretrain", recipe) == 2
    err = capsys.readouterr().err
    assert "3 non-finite losses in a row" in err and "checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    assert list((tmp_path / "exp" / "checkpoints").glob("checkpoint-*.pt"))


def test_cuts_without_kmeans_labels_name_the_command(tmp_path, synthetic_corpus, capsys):
    recipe = write_recipe(
        tmp_path, synthetic_corpus, train_cuts=str(synthetic_corpus / "synthetic" / "cuts_train.jsonl.gz")
    )
    assert run_cli("pretrain", recipe) == 2
    assert "speechbudget kmeans" in capsys.readouterr().err


def test_bad_config_lists_valid_keys(tmp_path, synthetic_corpus, capsys):
    recipe = write_recipe(tmp_path, synthetic_corpus)
    assert run_cli("pretrain", recipe, "optim.lrr=0.1") == 2
    err = capsys.readouterr().err
    assert "unknown config key 'pretrain.optim.lrr'" in err and "weight_decay" in err
    assert run_cli("pretrain", recipe, "budget.steps=-3") == 2
    assert "'pretrain.budget.steps' must be positive (got -3)" in capsys.readouterr().err
    assert run_cli("pretrain", tmp_path / "missing.yaml") == 2


def test_adamw_cosine_and_grad_accumulation(tmp_path, synthetic_corpus, capsys):
    recipe = write_recipe(
        tmp_path,
        synthetic_corpus,
        optim={"name": "adamw", "lr": 1e-3},
        schedule={"name": "cosine", "warmup_batches": 1},
        grad_accum=2,
        budget={"steps": 3},
    )
    assert run_cli("pretrain", recipe, "--json") == 0
    rows = metrics(tmp_path / "exp")
    assert len(rows) == 3 and all(r["loss"] == r["loss"] for r in rows)


def test_ddp_two_cpu_processes(tmp_path, synthetic_corpus):
    recipe = write_recipe(tmp_path, synthetic_corpus, budget={"steps": 3})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "speechbudget.cli",
            "pretrain",
            str(recipe),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    rows = metrics(tmp_path / "exp")
    assert [r["step"] for r in rows] == [1, 2, 3]
    card = json.loads((tmp_path / "exp" / "run_card.json").read_text())
    assert card["device"]["world_size"] == 2
