"""Issue 21, "nothing lost, nothing hangs, nothing mixed": user mistakes end in one line, early."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, cli_result

from speechbudget import cli
from speechbudget.config import TrainConfig, from_dict
from speechbudget.errors import SpeechBudgetError
from speechbudget.run_recipe import RunRecipe


def one_line_error(code: int, err: str, expect: str) -> None:
    """Exit code 2 and an ``error:`` line saying what to change; never a traceback or "internal error"."""
    assert code == 2, err
    assert "internal error" not in err and "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert expect in lines[-1], err
    assert sum(line.startswith("error: ") for line in lines) == 1, err


def section(corpus: Path, cuts: str, **kw) -> dict:
    return {
        "encoder": "zipformer-tiny",
        "train_cuts": str(corpus / cuts),
        "max_duration": 8.0,
        "num_buckets": 2,
        "log_every": 1,
        "checkpoint_every": 2,
        "schedule": {"name": "eden", "lr_batches": 100, "lr_epochs": 5, "warmup_batches": 2},
        **kw,
    }


@pytest.fixture(scope="module")
def exps(synthetic_corpus, tmp_path_factory):
    """A 2-step pretraining run and a 3-step fine-tuning run from it, plus their recipe."""
    root = tmp_path_factory.mktemp("issue21")
    recipe = root / "recipe.yaml"
    data = {
        "exp_dir": str(root / "ft"),
        "pretrain": section(
            synthetic_corpus, "km/cuts_train.jsonl.gz", budget={"steps": 2}, exp_dir=str(root / "pt")
        ),
        "finetune": section(
            synthetic_corpus,
            "synthetic/cuts_train.jsonl.gz",
            budget={"steps": 3},
            ctc={"tokenizer": "char", "vocab_size": 40, "init_checkpoint": str(root / "pt")},
        ),
    }
    recipe.write_text(yaml.safe_dump(data))
    for stage in ("pretrain", "finetune"):
        try:
            cli.main([stage, str(recipe), "--json"])
        except SystemExit as e:
            assert not e.code, f"{stage} failed"
    return root, recipe


# ------------------------------------------------------------------------- 2: finite numbers
@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf"])
def test_non_finite_numbers_are_refused_in_every_section(value):
    raw = yaml.safe_load(f"v: {value}")["v"]
    with pytest.raises(SpeechBudgetError, match=r"'pretrain.budget.flops' must be a finite number"):
        from_dict(TrainConfig, {"budget": {"flops": raw}}, prefix="pretrain.")
    with pytest.raises(SpeechBudgetError, match=r"'optim.lr' must be a finite number"):
        from_dict(TrainConfig, {"optim": {"lr": raw}})
    with pytest.raises(SpeechBudgetError, match=r"'plan.budget' must be a finite number"):
        from_dict(RunRecipe, {"plan": {"budget": raw}})
    assert from_dict(TrainConfig, {"budget": {"flops": "1e18"}}).budget.flops == 1e18
    assert math.isfinite(from_dict(TrainConfig, {"optim": {"lr": 0.01}}).optim.lr)


def test_nan_budget_stops_before_training(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "exp"), "pretrain": {"train_cuts": "x"}}))
    code, _, err = cli_result(capsys, "pretrain", recipe, "budget.flops=nan")
    one_line_error(code, err, "pretrain.budget.flops' must be a finite number")


# ------------------------------------------------------------ 5: the whole recipe up front
def test_run_reports_a_finetune_typo_before_the_first_stage(tmp_path, capsys):
    exp = tmp_path / "exp"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "exp_dir": str(exp),
                "prepare": {"source": "dir", "path": str(tmp_path / "no-audio")},
                "finetune": {"ctc": {"tokenizer": "chr"}},
            }
        )
    )
    code, _, err = cli_result(capsys, "run", recipe)
    one_line_error(code, err, "finetune.ctc.tokenizer' must be bpe, unigram, char or phone")
    assert not (exp / "data").exists()  # no stage ran
    code, _, err = cli_result(capsys, "run", recipe, "finetune.ctc.tokenizer=char", "pretrain.optim.lr=.nan")
    one_line_error(code, err, "pretrain.optim.lr' must be a finite number")
    code, _, err = cli_result(capsys, "run", recipe, "finetune.ctc.tokenizer=char", "decode.method=lexicn")
    one_line_error(code, err, "decode.method is 'lexicn'; choose greedy, beam, lexicon")
    assert not (exp / "data").exists()


# ------------------------------------------------------------------------- 6: one writer
HOLD = (
    "import sys, time; from speechbudget.locks import lock_experiment; "
    "lock = lock_experiment(sys.argv[1]); print('held', flush=True); time.sleep(120)"
)


def hold_lock(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_into_one_exp_dir_says_who_holds_it(tmp_path, capsys, exps):
    _, recipe = exps
    exp = tmp_path / "busy"
    holder = hold_lock(exp)
    try:
        code, _, err = cli_result(capsys, "pretrain", recipe, f"exp_dir={exp}")
        one_line_error(code, err, f"is in use by pid {holder.pid}")
        run_recipe = tmp_path / "run.yaml"
        run_recipe.write_text(yaml.safe_dump({"exp_dir": str(exp)}))
        code, _, err = cli_result(capsys, "run", run_recipe)
        one_line_error(code, err, f"is in use by pid {holder.pid}")
        assert not (exp / "checkpoints").exists() or not any((exp / "checkpoints").iterdir())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the kernel dropped the dead holder's lock: the folder is free again, nothing to clean up
    from speechbudget.locks import lock_experiment

    with lock_experiment(exp):
        assert str(os.getpid()) in (exp / ".lock").read_text()


def test_preparing_a_corpus_someone_else_prepares_is_refused(tmp_path, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD.replace("lock_experiment", "lock_corpus"), str(tmp_path / "synthetic")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli_result(capsys, "prepare", "synthetic", "--hours", "0.01", "--out", tmp_path)
        one_line_error(code, err, "is in use by pid")
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------ 7: writable output at start
def test_unwritable_checkpoint_folder_is_found_before_training(tmp_path, capsys, exps):
    _, recipe = exps
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "checkpoints").write_text("a file where the folder goes")
    t0 = time.time()
    code, _, err = cli_result(capsys, "pretrain", recipe, f"exp_dir={exp}")
    one_line_error(code, err, f"checkpoint folder {exp / 'checkpoints'} is a file")
    assert not (exp / "metrics.jsonl").exists() and time.time() - t0 < 60


# ------------------------------------------------------------------ 8: user mistakes, one line
def test_user_mistakes_are_one_line_errors_with_exit_code_2(tmp_path, capsys, exps, synthetic_corpus):
    root, recipe = exps
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    test_cuts = synthetic_corpus / "synthetic" / "cuts_test.jsonl.gz"
    corpus = synthetic_corpus / "synthetic"
    cases = [
        (["decode", root / "ft", test_cuts, "--method", "beam", "--beam-size", "0"], "--beam-size must be"),
        (["decode", root / "ft", test_cuts, "--out", afile / "out"], f"is under the file {afile}"),
        (["decode", root / "ft", tmp_path / "missing.jsonl.gz"], "missing.jsonl.gz does not exist"),
        (["decode", tmp_path / "no-exp", test_cuts], "no-exp does not exist"),
        (["kmeans", corpus, "--out", afile / "km"], f"is under the file {afile}"),
        (["kmeans", tmp_path / "no-corpus", "--out", tmp_path / "km"], "no-corpus does not exist"),
        (["report", root / "ft", "--out", afile / "rep"], f"is under the file {afile}"),
        # not even root can create a folder in /proc: stands in for a read-only --out
        (["report", root / "ft", "--out", "/proc/speechbudget/rep"], "cannot write to report output folder"),
        (["tokenizer", "train", test_cuts, "--out", afile / "tok", "--type", "char"], "is under the file"),
        (["tokenizer", "train", tmp_path / "none.jsonl.gz", "--out", tmp_path / "tok"], "does not exist"),
        (
            ["pretrain", recipe, "encoder=zipformer-nano"],
            f"{root / 'pt'} was trained with encoder zipformer-tiny; this run asks for zipformer-nano: "
            "use another exp_dir or the same encoder",
        ),
        (
            ["pretrain", recipe, f"train_cuts={synthetic_corpus / 'km' / 'cuts_dev.jsonl.gz'}"],
            "use another exp_dir or the same train_cuts",
        ),
        (  # resuming with another learning rate would go on with the checkpoint's: refused, key named
            ["pretrain", recipe, "optim.lr=0.0001", "budget.steps=1000"],
            f"{root / 'pt'} was trained with optim.lr ",
        ),
        (["pretrain", recipe, "max_duration=7.5"], "(this run asks for 7.5)"),
        (
            ["finetune", recipe, "encoder=zipformer-nano", f"exp_dir={tmp_path / 'ft-nano'}"],
            "holds a zipformer-tiny encoder",
        ),
    ]
    if not torch.cuda.is_available():
        cases += [
            (["decode", root / "ft", test_cuts, "--device", "cuda"], "no CUDA device is visible"),
            (["pretrain", recipe, "device=cuda", f"exp_dir={tmp_path / 'c'}"], "no CUDA device is visible"),
        ]
    for args, expect in cases:
        code, _, err = cli_result(capsys, *args)
        one_line_error(code, err, expect)


# --------------------------------------------------------------------- 10: no half-made state
def test_a_failed_finetune_leaves_no_tokenizer_or_filter_record(tmp_path, capsys, exps):
    _, recipe = exps
    exp = tmp_path / "ft"
    code, _, err = cli_result(
        capsys, "finetune", recipe, f"exp_dir={exp}", f"ctc.init_checkpoint={tmp_path / 'none.pt'}"
    )
    one_line_error(code, err, "none.pt does not exist")
    assert not (exp / "tokenizer").exists() and not (exp / "filtered_train.json").exists()
    assert not exp.exists()  # nothing was written: not even the folder (with its lock) is left


def test_plan_errors_inside_run_name_the_recipe_key(tmp_path, capsys, synthetic_corpus, private_cache_dir):
    exp = tmp_path / "exp"
    (exp / "data").mkdir(parents=True)
    (exp / "data" / "synthetic").symlink_to(synthetic_corpus / "synthetic")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"exp_dir": str(exp), "plan": {"budget": 0, "unit": "flops", "presets": ["zipformer-nano"]}}
        )
    )
    code, _, err = cli_result(capsys, "run", recipe, "--stage", "plan", "--stop-stage", "plan")
    one_line_error(code, err, "plan.budget must be a positive number")
    assert "--budget" not in err


def test_plan_warns_when_the_budget_buys_more_audio_than_exists(capsys, private_cache_dir):
    code, out, err = cli_result(
        capsys, "plan", "--budget", "1e40", "--unit", "flops", "--device", "cpu", "--data-hours", "960",
        "--presets", "zipformer-tiny",
    )  # fmt: skip
    assert code == 0, err
    assert "beyond any speech collection" in " ".join((out + err).split())
    assert "…" not in out  # the plan table at 80 columns (capsys is no terminal: rich uses 80)


def test_calibrate_says_what_it_runs_and_writes_before_it_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path / "cache"))
    args = ["calibrate", "--presets", "zipformer-nano", "--steps", "1", "--batch-size", "1", "--seconds", "1"]
    code, _, err = cli_result(capsys, *args)
    assert code == 0, err
    said = " ".join(err.split())
    assert "timing 1 training steps" in said and f"writes {tmp_path / 'cache' / 'calibration.json'}" in said


# ------------------------------------------------------------------------ 11: 80 columns
def test_every_table_is_readable_at_80_columns(tmp_path, capsys, monkeypatch, exps, synthetic_corpus):
    root, recipe = exps
    monkeypatch.setattr(cli.out, "width", 80)
    test_cuts = synthetic_corpus / "synthetic" / "cuts_test.jsonl.gz"
    commands = [
        ["prepare", "synthetic", "--hours", "0.04", "--seed", "3", "--out", synthetic_corpus],  # skips
        ["data", "describe", synthetic_corpus / "synthetic"],
        # one family: the same columns as all 28 presets (the longest name among them), not minutes of fvcore
        ["models", "list", "--flops", "--family", "transformer"],
        ["models", "show", "zipformer-nano"],
        ["decode", root / "ft", test_cuts, "--out", tmp_path / "dec"],
        ["pretrain", recipe],  # already done: prints the stored summary
        ["report", root / "ft", "--out", tmp_path / "rep"],
    ]
    for args in commands:
        code, out, err = cli_result(capsys, *args)
        assert code == 0, err
        assert "…" not in out and "..." not in out, f"{args[:2]}:\n{out}"
        assert max(len(line) for line in out.splitlines()) <= 80, out


# ------------------------------------------------------------------ 12: checkpoints are data
class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_carries_code_is_refused_without_running_it(
    tmp_path, capsys, exps, synthetic_corpus
):
    root, recipe = exps
    marker = tmp_path / "pwned"
    good = sorted((root / "ft" / "checkpoints").glob("*.pt"))[-1]
    state = torch.load(good, weights_only=False)  # our own file: trusted
    state["counters"]["payload"] = Exploit(marker)
    evil_dir = tmp_path / "evil"
    (evil_dir / "checkpoints").mkdir(parents=True)
    (evil_dir / "tokenizer").symlink_to(root / "ft" / "tokenizer")
    evil = evil_dir / "checkpoints" / "checkpoint-00000003.pt"
    torch.save(state, evil)
    test_cuts = root.parent / "none.jsonl.gz"
    for args in (
        ["decode", evil_dir, test_cuts],
        ["finetune", recipe, f"ctc.init_checkpoint={evil}", f"exp_dir={tmp_path / 'ft'}"],
        [
            "kmeans",
            synthetic_corpus / "synthetic",  # real cuts: kmeans checks its inputs before the checkpoint
            "--out",
            tmp_path / "km",
            "--features",
            "layer",
            "--checkpoint",
            evil,
            "--layer",
            "1",
        ],
    ):
        code, _, err = cli_result(capsys, *args)
        one_line_error(code, err, "refusing to load it")
        assert not marker.exists(), "unpickling ran the checkpoint's code"


def test_checkpoints_of_older_versions_still_load_and_resume_the_numpy_generator(tmp_path):
    """Older checkpoints hold numpy's RNG state as an ndarray: exactly that stays allowed."""
    import numpy as np

    from speechbudget.train import checkpoint as ckpt

    np.random.seed(7)
    old = {
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": (3, (1,) * 625, None),
        }
    }
    ckpt.atomic_save(old, tmp_path / "old.pt")
    expected = np.random.rand()
    np.random.set_state(ckpt.load(tmp_path / "old.pt")["rng"]["numpy"])
    assert np.random.rand() == expected
    np.random.seed(7)
    ckpt.atomic_save({"rng": ckpt.rng_state()}, tmp_path / "new.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "new.pt") == []
    expected = np.random.rand()
    np.random.seed(0)
    state = ckpt.load(tmp_path / "new.pt")["rng"]
    np.random.set_state((state["numpy"][0], state["numpy"][1].numpy().astype(np.uint32), *state["numpy"][2:]))
    assert np.random.rand() == expected


def test_a_full_disk_is_named_with_what_to_do_not_reported_as_a_bug(monkeypatch):
    """A checkpoint written onto a full disk fails inside torch.save with "unexpected pos" (seen in a
    quickstart run): that, and any ENOSPC, is the user's full disk, not an internal error."""
    import errno
    from collections import namedtuple

    enospc = OSError(errno.ENOSPC, "No space left on device")
    assert "the disk is full" in cli.disk_full_message(enospc)
    torch_save = RuntimeError(
        "[enforce fail at inline_container.cc:664] . unexpected pos 42422656 vs 42422544"
    )
    assert cli.disk_full_message(torch_save) is None  # with space left, a failure is a bug to report
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cli.shutil, "disk_usage", lambda path: usage(2**40, 2**40 - 2**20, 2**20))
    message = cli.disk_full_message(torch_save)
    assert message.startswith("the disk is full (1 MiB free") and "re-run the same command" in message
    monkeypatch.setattr(cli.shutil, "disk_usage", lambda path: (_ for _ in ()).throw(FileNotFoundError(path)))
    assert cli.disk_full_message(torch_save) is None  # no answer about the space: not claimed full


def test_a_full_disk_under_the_exp_dir_is_found_where_the_write_failed(tmp_path, monkeypatch):
    """The exp_dir may sit on another disk than the folder the command runs in: the failed write's folder
    is checked too (atomic_output names it on the exception)."""
    from collections import namedtuple

    from speechbudget.atomic import atomic_output

    full_disk = tmp_path / "exp"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        cli.shutil,
        "disk_usage",
        lambda path: usage(2**40, 0, 2**20 if Path(path) == full_disk else 2**40),
    )
    failure = RuntimeError("unexpected pos 42422656 vs 42422544")
    with pytest.raises(RuntimeError) as caught:
        with atomic_output(full_disk / "checkpoint-00000100.pt"):
            raise failure
    assert caught.value.speechbudget_folder == full_disk
    assert cli.disk_full_message(caught.value).startswith("the disk is full (1 MiB free")
    assert cli.disk_full_message(RuntimeError("unexpected pos")) is None  # the cwd's disk has room
    assert not list(full_disk.iterdir())  # and nothing half-written is left
