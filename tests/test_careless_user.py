"""Mistakes found by trying the CLI as a careless user (sixteenth session): each ends in one line that
says what to change, early, before any compute is spent on it."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import FSDD, cli_result
from test_issue21 import one_line_error

from speechbudget.errors import SpeechBudgetError
from speechbudget.plan.scaling import fit_law

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def test_a_manifest_that_is_not_cuts_empty_or_truncated_is_named(synthetic_corpus, tmp_path, capsys):
    corpus = synthetic_corpus / "synthetic"
    code, _, err = cli_result(capsys, "data", "describe", corpus / "recordings_train.jsonl.gz")
    one_line_error(code, err, "is a RecordingSet manifest, not cuts")
    empty = tmp_path / "empty.jsonl.gz"
    empty.write_bytes(b"")
    code, _, err = cli_result(capsys, "data", "describe", empty)
    one_line_error(code, err, "empty.jsonl.gz is empty")
    whole = (corpus / "cuts_train.jsonl.gz").read_bytes()
    assert len(gzip.decompress(whole)) > 0
    cut_short = tmp_path / "cuts_train.jsonl.gz"  # a copy cut short, as a full disk leaves it
    cut_short.write_bytes(whole[: len(whole) // 2])
    for args in (["data", "describe", cut_short], ["kmeans", cut_short, "--out", tmp_path / "km"]):
        code, _, err = cli_result(capsys, *args)
        one_line_error(code, err, "a compressed file ended early")


def test_a_corpus_whose_audio_was_moved_names_the_missing_file(synthetic_corpus, tmp_path, capsys):
    from speechbudget.data.manifests import repoint

    copy = tmp_path / "copy"
    shutil.copytree(synthetic_corpus, copy)
    # the copy's manifests name a folder that is gone (as after deleting the exp_dir they were prepared in)
    assert repoint(copy, [synthetic_corpus], tmp_path / "gone") > 0
    for args in (
        ["data", "describe", copy / "synthetic"],
        ["kmeans", copy / "synthetic", "--out", tmp_path / "km"],
    ):
        code, _, err = cli_result(capsys, *args)
        one_line_error(code, err, "which no longer exists")
        assert str(tmp_path / "gone") in " ".join(err.split()).replace(" ", "")
    # re-pointed at the copy itself, it reads again
    repoint(copy, [tmp_path / "gone"], copy)
    code, _, err = cli_result(capsys, "data", "describe", copy / "synthetic")
    assert code == 0, err


@pytest.mark.parametrize(
    "overrides, expect",
    [
        (["finetune.budget.steps=-5"], "'finetune.budget.steps' must be positive (got -5)"),
        (["pretrain.budget.utilisation=5"], "'pretrain.budget.utilisation' must be in (0, 1]"),
        (["kmeans.num_clusters=1"], "recipe kmeans.num_clusters"),
        (["kmeans.features=foo"], "unknown k-means features 'foo'"),
        (["pretrain.encoder=zipformer-tinyy"], "pretrain.encoder: unknown encoder preset 'zipformer-tinyy'"),
        (["finetune.keep_last=2", "finetune.average_last=5"], "'finetune.average_last' must be between 0"),
        (["pretrain.hubert.temperature=0"], "'pretrain.hubert.temperature' must be positive"),
    ],
)
def test_run_refuses_a_bad_later_section_before_its_first_stage(tmp_path, capsys, overrides, expect):
    exp = tmp_path / "exp"
    code, out, err = cli_result(capsys, "run", QUICKSTART, f"exp_dir={exp}", *overrides)
    one_line_error(code, err, expect)
    assert "[prepare] running" not in out and not (exp / "data").exists()


def test_run_refuses_an_empty_stage_range(tmp_path, capsys):
    exp = tmp_path / "exp"
    code, _, err = cli_result(
        capsys, "run", QUICKSTART, f"exp_dir={exp}", "--stage", "decode", "--stop-stage", "pretrain"
    )
    one_line_error(code, err, "--stage decode comes after --stop-stage pretrain")
    code, _, err = cli_result(capsys, "run", QUICKSTART, f"exp_dir={exp}", "--stage", "teacher")
    one_line_error(code, err, "this recipe has no teacher stage; its stages: prepare, kmeans")
    assert not (exp / "data").exists()


@pytest.mark.parametrize(
    "stage, missing",
    [("finetune", "prepare"), ("decode", "finetune"), ("report", "decode"), ("scratch", "prepare")],
)
def test_a_stage_started_before_what_it_reads_exists_says_which_stage_to_run(
    tmp_path, capsys, stage, missing
):
    """`run --stage finetune` on a fresh exp_dir started the scratch baseline beside it and then failed
    with "no pretraining checkpoint"; `--stage decode` blamed decode.sets. Now: which stage to run first,
    before anything is made."""
    exp = tmp_path / "exp"
    code, _, err = cli_result(capsys, "run", QUICKSTART, f"exp_dir={exp}", "--stage", stage)
    one_line_error(code, err, f"reads what stage {missing} makes, which has not finished in {exp}")
    assert not exp.exists()


def test_pretraining_dev_cuts_without_targets_stop_before_the_first_step(synthetic_corpus, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    exp = tmp_path / "pt"
    recipe.write_text(
        yaml.safe_dump(
            {
                "exp_dir": str(exp),
                "pretrain": {
                    "encoder": "zipformer-nano",
                    "train_cuts": str(synthetic_corpus / "km" / "cuts_train.jsonl.gz"),
                    "dev_cuts": str(
                        synthetic_corpus / "synthetic" / "cuts_dev.jsonl.gz"
                    ),  # no k-means labels
                    "max_duration": 8.0,
                    "budget": {"steps": 3},
                },
            }
        )
    )
    code, _, err = cli_result(capsys, "pretrain", recipe)
    one_line_error(code, err, "dev_cuts")
    assert "has no k-means labels" in err
    assert not exp.exists()  # not one step trained, and no empty run folder left behind
    # the prepared corpus named as train_cuts (not what `kmeans` wrote): the same, before any folder
    data = yaml.safe_load(recipe.read_text())
    data["pretrain"].update(train_cuts=data["pretrain"].pop("dev_cuts"))
    recipe.write_text(yaml.safe_dump(data))
    code, _, err = cli_result(capsys, "pretrain", recipe)
    one_line_error(code, err, "has no k-means labels (custom['kmeans']); make them with `speechbudget kmeans")
    assert not exp.exists()


def test_a_law_is_not_fitted_on_pilots_that_cannot_identify_it():
    one_size = [(4.7e6, h, h, 3.0 / h**0.2) for h in (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)]
    with pytest.raises(SpeechBudgetError, match="every pilot has 4.7e\\+06 parameters"):
        fit_law(one_size, bootstrap=0)
    one_data = [(n, 0.5, 0.5, 3.0 / (n / 1e6) ** 0.1) for n in (1e6, 2e6, 4e6, 8e6, 16e6, 32e6)]
    with pytest.raises(SpeechBudgetError, match="every pilot saw 0.5 hours"):
        fit_law(one_data, bootstrap=0)


def test_bad_device_options_are_one_line(tmp_path, capsys):
    cuts = tmp_path / "cuts.jsonl.gz"
    for command in (
        ["evaluate", tmp_path, cuts],
        ["distill-targets", tmp_path, cuts],
        ["decode", tmp_path, cuts],
    ):
        code, _, err = cli_result(capsys, *command, "--device", "tpu")
        one_line_error(code, err, "--device must be cpu or cuda, got 'tpu'")
    code, _, err = cli_result(capsys, "predict", tmp_path, tmp_path / "a.wav", "--device", "cuda:x")
    one_line_error(code, err, "--device must be cpu, cuda or cuda:N")


def test_output_files_that_are_folders_or_under_files_are_refused(tmp_path, capsys, private_cache_dir):
    folder, afile = tmp_path / "folder", tmp_path / "afile"
    folder.mkdir()
    afile.write_text("a file")
    plan = ["plan", "--budget", "200", "--data-hours", "960", "--presets", "zipformer-nano,zipformer-tiny"]
    cases = [
        ([*plan, "--out", folder], f"recipe file {folder} is a folder"),
        ([*plan, "--out", afile / "plan.yaml"], f"{afile} is a file"),
        (["recipes", "copy", "quickstart", afile / "q.yaml"], f"{afile} is a file"),
        (["calibrate", "--presets", "zipformer-nano", "--steps", "1", "--out", folder], "is a folder"),
    ]
    for args, expect in cases:
        code, _, err = cli_result(capsys, *args)
        one_line_error(code, err, expect)
    code, out, err = cli_result(
        capsys, *plan, "--out", tmp_path / "p.yaml", "--plot", tmp_path / "iso", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["plot"] == str(tmp_path / "iso.png") and (tmp_path / "iso.png").is_file()


@pytest.mark.parametrize(
    "override, expect",
    [
        ("vgs.temperature=0", "vgs.temperature' must be positive"),
        ("vgs.image_size=0", "vgs.image_size' must be"),
    ],
)
def test_vgs_options_out_of_range_are_named(override, expect):
    from speechbudget.train.multi_config import load_multi_recipe

    with pytest.raises(SpeechBudgetError, match=expect):
        load_multi_recipe(ROOT / "recipes" / "scenes-ssl-vgs.yaml", [override])


def test_names_that_are_paths_and_absurd_job_counts_are_refused(tmp_path, capsys):
    from conftest import copy_fsdd

    src = copy_fsdd(tmp_path / "in", per_speaker=1)
    out = tmp_path / "o"
    cases = [
        (["fsdd", src, "--out", out, "--name", "../escape"], "--name '../escape' names a folder or file"),
        (["dir", src, "--out", out, "--split", "../x"], "--split '../x' names a folder or file"),
        (["fsdd", src, "--out", out, "--num-jobs", "999999999999"], "--num-jobs must be between 1 and 1024"),
        (["synthetic", "--hours", "1e6", "--out", out], "hours must be positive and at most 1000"),
    ]
    for args, expect in cases:
        code, _, err = cli_result(capsys, "prepare", *args)
        one_line_error(code, err, expect)
    assert not (tmp_path / "escape").exists() and not list(out.glob("*/cuts_*"))


def test_text_files_a_user_names_missing_folders_or_not_utf8(tmp_path, capsys):
    from conftest import copy_fsdd

    src = copy_fsdd(tmp_path / "in", per_speaker=1)
    utf16 = tmp_path / "t16.tsv"
    utf16.write_text("0_george_0.wav\tzero\n", encoding="utf-16")
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"\xff\xfe bad")
    cases = [
        (
            ["prepare", "dir", src, "--transcripts", tmp_path / "none.tsv", "--out", tmp_path / "o"],
            "does not exist",
        ),
        (
            ["prepare", "dir", src, "--transcripts", src, "--out", tmp_path / "o"],
            f"transcripts file {src} is a folder",
        ),
        (["prepare", "dir", src, "--transcripts", utf16, "--out", tmp_path / "o"], "is not UTF-8 text"),
        (["run", recipe], f"recipe {recipe} is not UTF-8 text"),
    ]
    for args, expect in cases:
        code, _, err = cli_result(capsys, *args)
        one_line_error(code, err, expect)


def test_kmeans_into_a_folder_another_kmeans_writes_is_refused(synthetic_corpus, tmp_path, capsys):
    import os
    import subprocess
    import sys

    out = tmp_path / "km"
    hold = "import sys, time; from speechbudget.locks import lock_corpus; l = lock_corpus(sys.argv[1]); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli_result(
            capsys, "kmeans", synthetic_corpus / "synthetic", "--out", out, "--num-clusters", "4"
        )
        one_line_error(code, err, f"is in use by pid {holder.pid}")
        assert not list(out.glob("cuts_*"))
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(
    "seconds, expect", [("0.001", "too short for this encoder"), ("inf", "(0, 600]"), ("1e9", "(0, 600]")]
)
def test_models_show_refuses_lengths_it_cannot_count(capsys, seconds, expect):
    code, _, err = cli_result(capsys, "models", "show", "zipformer-tiny", "--seconds", seconds)
    one_line_error(code, err, expect)


def _pretrain_recipe(tmp_path: Path, synthetic_corpus: Path, **extra) -> Path:
    recipe = tmp_path / "r.yaml"
    section = {
        "encoder": "zipformer-nano",
        "train_cuts": str(synthetic_corpus / "km" / "cuts_train.jsonl.gz"),
        "max_duration": 8.0,
        "num_buckets": 2,
        **extra,
    }
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "pt"), "pretrain": section}))
    return recipe


def test_a_flop_budget_below_a_tenth_of_one_step_is_a_typo(synthetic_corpus, tmp_path, capsys):
    recipe = _pretrain_recipe(tmp_path, synthetic_corpus, budget={"flops": 1e6})
    code, _, err = cli_result(capsys, "pretrain", recipe)
    one_line_error(code, err, "the budget allows 1e+06 FLOPs, less than a tenth of one step")
    assert not list((tmp_path / "pt").glob("checkpoints/*.pt"))
    # one real step, then the checkpoint is handed to the wrong commands
    recipe = _pretrain_recipe(tmp_path, synthetic_corpus, budget={"steps": 1})
    assert cli_result(capsys, "pretrain", recipe)[0] == 0
    cuts = synthetic_corpus / "synthetic" / "cuts_test.jsonl.gz"
    code, _, err = cli_result(capsys, "evaluate", tmp_path / "pt", cuts)
    one_line_error(code, err, "is a pretraining checkpoint; fine-tune a classifier from it first")
    code, _, err = cli_result(capsys, "decode", tmp_path / "pt", cuts)
    one_line_error(code, err, "is a pretrain checkpoint; decode a fine-tuned (CTC) one")
    whole = next((tmp_path / "pt" / "checkpoints").glob("checkpoint-*.pt")).read_bytes()
    cut_short = tmp_path / "copied.pt"
    cut_short.write_bytes(whole[: len(whole) // 3])
    code, _, err = cli_result(capsys, "decode", cut_short, cuts)
    one_line_error(code, err, "a truncated or partly copied file? copy it again")
    code, _, err = cli_result(capsys, "evaluate", tmp_path, cuts)  # the parent of the run
    one_line_error(code, err, f"{tmp_path} holds several runs, not one; pick one of: pt")


def test_keys_of_the_other_task_are_refused_not_ignored():
    from speechbudget.config import TrainConfig, check_ranges, from_dict

    cfg = from_dict(TrainConfig, {"task": "classify", "ctc": {"init_checkpoint": "exp/pt"}})
    with pytest.raises(SpeechBudgetError, match="'finetune.ctc.init_checkpoint' is for CTC"):
        check_ranges(cfg, "finetune")
    cfg = from_dict(TrainConfig, {"task": "ctc", "distill": {"targets": "exp/teacher"}})
    with pytest.raises(SpeechBudgetError, match="'finetune.distill' is for task: classify"):
        check_ranges(cfg, "finetune")


def test_overrides_train_multi_would_ignore_are_refused():
    from speechbudget.train.multi_config import load_multi_recipe

    recipe = ROOT / "recipes" / "scenes-ssl-vgs.yaml"
    with pytest.raises(SpeechBudgetError, match="every phase of this recipe sets its own budget"):
        load_multi_recipe(recipe, ["budget.steps=2"])
    with pytest.raises(SpeechBudgetError, match="cannot be set on the command line"):
        load_multi_recipe(recipe, ["schedules.vgs-only.budget.flops=1e10"])


def test_a_sweep_budget_listed_twice_is_refused():
    from speechbudget.plan.sweep import parse_budgets

    with pytest.raises(SpeechBudgetError, match="listed twice"):
        parse_budgets("2e10,4e10,2e10")
    assert parse_budgets("2e10,4e10") == [2e10, 4e10]


def test_a_recipe_key_written_twice_is_an_error_at_its_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("exp_dir: a\nfinetune: {budget: {steps: 2}}\nexp_dir: b\n")
    code, _, err = cli_result(capsys, "run", recipe)
    one_line_error(code, err, "at line 3: key 'exp_dir' appears twice")


def test_a_link_to_a_missing_file_is_reported_not_dropped(tmp_path, capsys):
    from conftest import copy_fsdd

    src = copy_fsdd(tmp_path / "in", per_speaker=1, speakers=("george",))
    (src / "dangling.wav").symlink_to(tmp_path / "nowhere.wav")
    code, out, err = cli_result(capsys, "prepare", "dir", src, "--out", tmp_path / "o", "--json")
    assert code == 0, err
    (split,) = json.loads(out)["splits"]
    assert (split["kept"], split["rejected"]) == (1, 1)
    assert split["reasons"] == {"a link to a file that does not exist": 1}


def test_a_named_calibration_file_must_exist(tmp_path, capsys):
    code, _, err = cli_result(
        capsys, "plan", "--budget", "200", "--data-hours", "960", "--calibration", tmp_path / "none.json"
    )
    one_line_error(code, err, "calibration file")
    assert "does not exist" in err


def test_validation_counts_are_totals_and_unspellable_dev_text_is_reported(
    synthetic_corpus, tmp_path, capsys, caplog
):
    from speechbudget.data.manifests import load_cuts

    cuts = load_cuts(synthetic_corpus / "synthetic" / "cuts_dev.jsonl.gz").to_eager()
    dev = tmp_path / "cuts_dev.jsonl.gz"  # two of its transcripts in a script the training text never had
    odd = {c.id for c in list(cuts)[:2]}
    for c in cuts:
        if c.id in odd:
            c.supervisions[0].text = "žluťoučký " + c.supervisions[0].text
    cuts.to_file(dev)
    section = {
        "encoder": "zipformer-nano",
        "train_cuts": str(synthetic_corpus / "synthetic" / "cuts_train.jsonl.gz"),
        "dev_cuts": str(dev),
        "max_duration": 4.0,
        "budget": {"steps": 1},
        "ctc": {"tokenizer": "char", "vocab_size": 30},
    }
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "ft"), "device": "cpu", "finetune": section}))
    with caplog.at_level("WARNING"):
        code, out, err = cli_result(capsys, "finetune", recipe, "--json")
    assert code == 0, err[-2000:]
    assert f"2 of {len(cuts)} dev utterances have characters the tokenizer cannot spell" in caplog.text
    valid = json.loads(out)["valid"]
    # every dev utterance is either scored or counted as too short for its tokens: whole numbers
    assert valid["valid_utterances"] + valid["valid_ctc_infeasible"] == len(cuts)
    assert valid["valid_loss"] > 0


def test_a_refused_prepare_leaves_no_empty_out_folders(tmp_path, capsys):
    out = tmp_path / "new" / "data"
    code, _, err = cli_result(capsys, "prepare", "synthetic", "--hours", "5000", "--out", out)
    one_line_error(code, err, "hours must be positive and at most 1000")
    assert list(tmp_path.iterdir()) == []  # neither data/ nor new/ were there before
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("a user's file")
    code, _, err = cli_result(capsys, "prepare", "synthetic", "--hours", "0", "--out", tmp_path / "keep")
    assert code != 0 and (tmp_path / "keep" / "mine.txt").read_text() == "a user's file"


def test_the_training_bar_shows_the_budget_as_a_percentage_not_per_mille(monkeypatch):
    from rich.console import Console

    from speechbudget import progress

    monkeypatch.setattr(progress, "_enabled", True)
    monkeypatch.setattr(progress, "console", Console(record=True, width=100, force_terminal=False))
    with progress.make_progress(percent=True) as bar:  # what the trainer draws: 1000 parts of the budget
        bar.update(bar.add_task("finetune", total=1000, info=""), completed=456)
    shown = progress.console.export_text()
    assert "46%" in shown and "456/1000" not in shown


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate", "exp", "cuts.jsonl.gz", "--bootstrap", "-1"],
        ["evaluate-retrieval", "exp", "cuts.jsonl.gz", "--bootstrap", "-1"],
        ["plan", "fit", "exp", "--bootstrap", "-1"],
    ],
)
def test_a_negative_bootstrap_count_is_refused(capsys, args):
    code, _, err = cli_result(capsys, *args)
    one_line_error(code, err, "Invalid value for '--bootstrap'")


def test_a_max_duration_below_the_cuts_is_said_once_in_our_words(synthetic_corpus, caplog):
    from speechbudget.data.dataset import make_sampler
    from speechbudget.data.manifests import load_cuts

    cuts = load_cuts(synthetic_corpus / "synthetic" / "cuts_train.jsonl.gz").to_eager()
    with caplog.at_level("WARNING"):
        make_sampler(cuts, 0.1, num_buckets=2, seed=0)
    assert f"max_duration 0.1 s is shorter than {len(cuts)} of {len(cuts)} cuts" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        make_sampler(cuts, 1000.0, num_buckets=2, seed=0)
    assert "max_duration" not in caplog.text


def test_a_speaker_in_both_dev_and_test_is_refused(tmp_path, capsys):
    code, _, err = cli_result(
        capsys, "prepare", "fsdd", FSDD, "--dev-speakers", "jackson", "--test-speakers", "jackson,theo",
        "--out", tmp_path / "data",
    )  # fmt: skip
    one_line_error(code, err, "jackson named in both --test-speakers and --dev-speakers")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--folds", "speakers", "--fold-seeds", "0"], "fold_seeds (--fold-seeds) must be 1 or more, got 0"),
        (
            ["--fold-seeds", "3"],
            "fold_seeds 3 (--fold-seeds) repeats the folds' fine-tuning: add --folds speakers",
        ),
    ],
)
def test_fold_seeds_without_folds_or_below_one_say_what_to_add(tmp_path, capsys, args, expect):
    code, _, err = cli_result(
        capsys, "run", ROOT / "recipes" / "fsdd.yaml", f"exp_dir={tmp_path / 'e'}", *args
    )
    one_line_error(code, err, expect)


@pytest.mark.parametrize(
    "args, expect",
    [
        (["fsdd", FSDD, "--num-jobs", "0"], "error: --num-jobs must be between 1 and 1024 (got 0)"),
        (["dir", FSDD, "--name", "a/b"], "error: --name 'a/b' names a folder or file"),
        (
            ["synthetic", "--hours", "0.01", "--speakers", "2"],
            "raise the number of speakers (--speakers, at least 3)",
        ),
    ],
)
def test_prepare_errors_name_the_flags_the_user_typed(tmp_path, capsys, args, expect):
    code, _, err = cli_result(capsys, "prepare", *args, "--out", tmp_path / "data")
    one_line_error(code, err, expect)
    assert "prepare-options" not in err and "dev_fraction" not in err


@pytest.mark.parametrize("section, task", [("pretrain", None), ("finetune", None), ("finetune", "classify")])
def test_training_cuts_that_do_not_exist_leave_no_run_folder(tmp_path, capsys, section, task):
    """A typo in train_cuts stops before the run's folder is made (it left an empty folder with a
    lock file and checkpoints/ that looked like a started run)."""
    exp = tmp_path / "new" / "run"
    recipe = tmp_path / "r.yaml"
    sec = {
        "encoder": "zipformer-nano",
        "train_cuts": str(tmp_path / "cust_train.jsonl.gz"),
        "budget": {"steps": 3},
    }
    recipe.write_text(
        yaml.safe_dump({"exp_dir": str(exp), section: {**sec, **({"task": task} if task else {})}})
    )
    code, _, err = cli_result(capsys, section, recipe)
    one_line_error(code, err, "cust_train.jsonl.gz does not exist")
    assert not (tmp_path / "new").exists()


def test_ctc_with_an_encoder_too_slow_for_the_transcripts_says_so(synthetic_corpus, tmp_path, capsys):
    """mn-tiny (a clip classifier, 3.125 frames a second) cannot align connected digits: the error
    names the frame rate and what to change, not only the filter's counts."""
    recipe = tmp_path / "r.yaml"
    sec = {
        "encoder": "mn-tiny",
        "train_cuts": str(synthetic_corpus / "synthetic" / "cuts_train.jsonl.gz"),
        "ctc": {"tokenizer": "char"},
        "budget": {"steps": 3},
    }
    recipe.write_text(yaml.safe_dump({"exp_dir": str(tmp_path / "ft"), "finetune": sec}))
    code, _, err = cli_result(capsys, "finetune", recipe)
    one_line_error(code, err, "the encoder emits 3.125 frames a second")
    assert "'ctc_infeasible'" in err and "models list" in err


def test_more_clusters_than_the_frames_can_fit_are_refused_at_once(synthetic_corpus, tmp_path, capsys):
    """--num-clusters 100000 (a typo for 100) ran k-means++ for hours without a word."""
    code, _, err = cli_result(
        capsys, "kmeans", synthetic_corpus / "synthetic", "--out", tmp_path / "km", "--num-clusters", "100000"
    )
    one_line_error(code, err, "100000 clusters need at least 1000000 sampled frames")
    assert not (tmp_path / "km").exists()
    code, _, err = cli_result(
        capsys, "run", QUICKSTART, f"exp_dir={tmp_path / 'exp'}", "kmeans.num_clusters=50000"
    )
    one_line_error(code, err, "kmeans.num_clusters and kmeans.max_frames")
    assert not (tmp_path / "exp").exists()
    code, _, err = cli_result(
        capsys, "kmeans", synthetic_corpus / "synthetic", "--out", tmp_path / "km", "--num-clusters", "2000"
    )
    one_line_error(code, err, "frames to fit 2000 clusters (at least 10 a cluster)")  # 0.04 h: ~14k frames


@pytest.mark.parametrize(
    "command", [["data", "describe"], ["kmeans", "--out", "km"], ["tokenizer", "train", "--out", "tok"]]
)
def test_the_folder_above_the_corpora_names_them(synthetic_corpus, tmp_path, capsys, command):
    """`prepare --out data/` writes data/<corpus>/; a user who passes data/ is told which to pass, and
    nothing is written."""
    words = 1 if command[0] == "kmeans" else 2  # the command's words, then its options
    options = [tmp_path / o if i % 2 else o for i, o in enumerate(command[words:])]
    code, _, err = cli_result(capsys, *command[:words], synthetic_corpus, *options)
    one_line_error(code, err, f"{synthetic_corpus} holds corpus folders, not cuts: pass one of them (")
    assert "synthetic" in err and list(tmp_path.iterdir()) == []


def test_a_recipe_is_found_by_its_file_name_too(tmp_path, capsys):
    """`recipes copy fsdd.yaml` (or `recipes/fsdd.yaml`, as the docs write recipes) named no recipe."""
    for name in ("fsdd.yaml", "recipes/fsdd.yaml"):
        code, out, err = cli_result(capsys, "recipes", "copy", name, tmp_path / name.replace("/", "-"))
        assert code == 0, err
    assert (tmp_path / "fsdd.yaml").read_text() == (ROOT / "recipes" / "fsdd.yaml").read_text()
    code, _, err = cli_result(capsys, "recipes", "copy", "nosuch.yaml", tmp_path / "x")
    one_line_error(code, err, "no recipe named 'nosuch'")


def test_a_run_that_stops_before_writing_leaves_no_folder_but_keeps_one_it_did_not_make(tmp_path):
    """A training command refused after it locked its exp_dir left the folder, its lock and an empty
    checkpoints/ behind, which looks like a run; a folder that was there before is never removed."""
    from speechbudget.locks import lock_experiment

    fresh = tmp_path / "fresh"
    lock = lock_experiment(fresh)
    (fresh / "checkpoints").mkdir()
    lock.release()
    assert not fresh.exists()
    wrote = tmp_path / "wrote"
    lock = lock_experiment(wrote)
    (wrote / "checkpoints").mkdir()
    (wrote / "cost.json").write_text("{}")
    lock.release()
    assert (wrote / "cost.json").is_file()
    before = tmp_path / "before"
    before.mkdir()
    lock_experiment(before).release()
    assert before.is_dir()
