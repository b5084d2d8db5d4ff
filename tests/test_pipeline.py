"""`speechbudget run`: every stage in order, skipped once done, resumable after a kill;
the shipped GPU recipes load and run a few steps of each stage on CPU at tiny scale."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf
from conftest import FSDD, TINY

from speechbudget.cli import main
from speechbudget.data.audio import resample

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def run(capsys, *args, code=0):
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert (e.code or 0) == code, capsys.readouterr().err[-3000:]
    return capsys.readouterr()


def test_quickstart_recipe_runs_every_stage_and_skips_done_ones(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path / "cache"))
    exp = tmp_path / "qs"
    plan = [
        "plan.budget=2e10",
        "plan.unit=flops",
        "plan.presets=[zipformer-nano,zipformer-tiny]",
        "plan.use_recommendation=true",
    ]
    out = run(capsys, "run", RECIPES / "quickstart.yaml", f"exp_dir={exp}", *TINY, *plan, "--json")
    results = json.loads(out.out)
    assert list(results) == [
        "prepare",
        "plan",
        "kmeans",
        "pretrain",
        "finetune",
        "scratch",
        "decode",
        "report",
    ]
    chosen = results["plan"]["recommended"]["preset"]
    assert chosen in ("zipformer-nano", "zipformer-tiny")
    card = json.loads((exp / "pretrain" / "run_card.json").read_text())
    assert card["config"]["encoder"] == chosen  # the plan drove pretraining
    for stage in results:
        assert (exp / ".stages" / f"{stage}.json").is_file()
    # the scratch baseline got the pretrained model's total compute
    spent = results["pretrain"]["flops"] + results["finetune"]["flops"]
    assert abs(results["scratch"]["flops_limit"] - spent) < 1e-6 * spent
    rows = {r["name"]: r for r in results["report"]["rows"]}
    assert {"finetune", "scratch"} <= set(rows)
    assert (exp / "report" / "report.md").is_file()
    assert (exp / "finetune" / "decode-lexicon" / "errs-test-lexicon-beam8.txt").is_file()
    # again: nothing is redone
    again = run(capsys, "run", RECIPES / "quickstart.yaml", f"exp_dir={exp}", *TINY, *plan)
    assert again.out.count("done already") == 8
    # --stage redoes that stage (and what follows up to --stop-stage) only
    redo = run(
        capsys,
        "run",
        RECIPES / "quickstart.yaml",
        f"exp_dir={exp}",
        *TINY,
        *plan,
        "--stage",
        "decode",
        "--stop-stage",
        "decode",
        "--json",
    )
    assert list(json.loads(redo.out)) == ["decode"]
    # a finished stage whose recipe values changed stops the run, naming the change and the way on
    changed = run(
        capsys,
        "run",
        RECIPES / "quickstart.yaml",
        f"exp_dir={exp}",
        *TINY,
        *plan,
        "kmeans.num_clusters=7",
        code=2,
    )
    err = changed.err.strip()
    assert "stage kmeans finished with other recipe values" in err and "kmeans.num_clusters:" in err
    assert "-> 7" in err and "--stage kmeans" in err and len(err.splitlines()) == 1
    # the same value written otherwise is the same value (YAML reads 1.0e+3 as a number, 1.0e3 as text)
    same = run(
        capsys,
        "run",
        RECIPES / "quickstart.yaml",
        f"exp_dir={exp}",
        *TINY,
        *plan,
        "finetune.max_duration=8.0e0",
    )
    assert same.out.count("done already") == 8
    # and a value that only a later stage reads is caught before any stage runs again
    changed = run(
        capsys,
        "run",
        RECIPES / "quickstart.yaml",
        f"exp_dir={exp}",
        *TINY,
        *plan,
        "decode.beam_size=4",
        code=2,
    )
    assert "stage decode finished with other recipe values" in changed.err and "done already" in changed.out
    # a stage made again leaves no finished later stage that was made from its old result
    stale = run(
        capsys,
        "run",
        RECIPES / "quickstart.yaml",
        f"exp_dir={exp}",
        *TINY,
        *plan,
        "--stage",
        "kmeans",
        code=2,
    )
    assert "stage pretrain finished on the kmeans stage's earlier result" in stale.err
    assert "[kmeans] running" in stale.out and "[pretrain] running" not in stale.out
    # `pretrain RECIPE` / `finetune RECIPE` of a run recipe train (here: find done) what its stages do
    from speechbudget.run_recipe import load_run_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        json.dumps(load_run_recipe(RECIPES / "quickstart.yaml", [f"exp_dir={exp}", *TINY, *plan]))
    )
    for stage in ("pretrain", "finetune"):
        got = json.loads(run(capsys, stage, recipe, "--json").out)
        assert got["exp_dir"] == str(exp / stage) and got["already_done"], got


def test_killed_run_resumes_and_finishes(tmp_path):
    exp = tmp_path / "qs"
    args = [
        sys.executable,
        "-m",
        "speechbudget.cli",
        "run",
        str(RECIPES / "quickstart.yaml"),
        f"exp_dir={exp}",
        *[a.replace("pretrain.budget.steps=2", "pretrain.budget.steps=6") for a in TINY],
        "pretrain.checkpoint_every=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not list((exp / "pretrain" / "checkpoints").glob("checkpoint-*.pt")):
        assert p.poll() is None, "the run ended before its first pretraining checkpoint"
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (exp / ".stages" / "pretrain.json").exists()
    done = subprocess.run(args + ["--json"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert results["pretrain"]["resumed_from"] is not None and results["pretrain"]["steps"] == 6
    assert (exp / ".stages" / "report.json").is_file()


def tiny_librispeech(root: Path) -> Path:
    """A LibriSpeech-shaped folder (train-clean-100, test-clean) made of real FSDD recordings."""
    words = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]
    for part, speaker, spk_id in (
        ("train-clean-100", "george", "19"),
        ("train-clean-100", "jackson", "26"),
        ("test-clean", "theo", "1089"),
    ):
        chapter = root / part / spk_id / "100"
        chapter.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(6):
            digit = i % 10
            audio, sr = sf.read(FSDD / f"{digit}_{speaker}_{i}.wav", dtype="float32")
            utt = f"{spk_id}-100-{i:04d}"
            sf.write(str(chapter / f"{utt}.flac"), resample(audio, sr), 16000)
            lines.append(f"{utt} {words[digit]}")
        (chapter / f"{spk_id}-100.trans.txt").write_text("\n".join(lines) + "\n")
    return root


GPU_TO_CPU = [
    "device=cpu",
    "pretrain.amp=off",
    "finetune.amp=off",
    "pretrain.num_workers=0",
    "finetune.num_workers=0",
    "pretrain.max_duration=8",
    "finetune.max_duration=8",
    "pretrain.grad_accum=1",
    "pretrain.budget.gpu_hours=null",
    "pretrain.budget.steps=1",
    "finetune.budget.gpu_hours=null",
    "finetune.budget.steps=1",
    "finetune.train_hours=null",
    "finetune.ctc.vocab_size=20",
    "kmeans.num_clusters=8",
    "kmeans.max_frames=5000",
    "kmeans2.num_clusters=8",
    "kmeans2.max_frames=5000",
    "prepare.num_jobs=1",
    "decode.beam_size=2",
]


def test_librispeech_zipformer_base_recipe_runs_tiny_on_cpu(tmp_path, capsys):
    corpus = tiny_librispeech(tmp_path / "LibriSpeech")
    exp = tmp_path / "ls"
    out = run(
        capsys,
        "run",
        RECIPES / "librispeech-100h-zipformer-base.yaml",
        f"exp_dir={exp}",
        f"prepare.path={corpus}",
        "prepare.parts=train-clean-100,test-clean",
        *GPU_TO_CPU,
        "--json",
    )
    results = json.loads(out.out)
    assert list(results) == [
        "prepare",
        "kmeans",
        "pretrain",
        "kmeans2",
        "pretrain2",
        "finetune",
        "decode",
        "report",
    ]
    card = json.loads((exp / "pretrain" / "run_card.json").read_text())
    assert card["config"]["encoder"] == "zipformer-base" and card["config"]["hubert"]["mask_prob"] == 0.8
    assert card["config"]["schedule"]["lr_batches"] == 7500
    assert results["kmeans2"]["kind"] == "layer" if "kind" in results["kmeans2"] else True
    assert results["decode"]["finetune/test"]["method"] == "beam"


def test_librilight_zipformer_large_recipe_runs_tiny_on_cpu(tmp_path, capsys):
    """The Large encoder is swapped for zipformer-tiny here: 301M parameters and their optimizer
    state are more than a 2-core CI box should build four times; everything else is the recipe's."""
    corpus = tiny_librispeech(tmp_path / "LibriSpeech")
    run(capsys, "prepare", "librispeech", corpus, "--out", tmp_path / "labeled", "--json")
    unlabeled = tmp_path / "librilight"
    shutil.copytree(corpus / "train-clean-100", unlabeled)
    for t in unlabeled.rglob("*.trans.txt"):
        t.unlink()
    exp = tmp_path / "ll"
    labeled = tmp_path / "labeled" / "librispeech"
    out = run(
        capsys,
        "run",
        RECIPES / "librilight-zipformer-large.yaml",
        f"exp_dir={exp}",
        f"prepare.path={unlabeled}",
        "pretrain.encoder=zipformer-tiny",
        f"finetune.train_cuts={labeled / 'cuts_train.jsonl.gz'}",
        f"decode.cuts=[{labeled / 'cuts_test.jsonl.gz'}]",
        "kmeans2.layer=9",
        *GPU_TO_CPU,
        "--json",
    )
    results = json.loads(out.out)
    assert "pretrain2" in results and "report" in results
    assert results["finetune"]["steps"] == 1


def test_fsdd_recipe_pretrains_on_one_corpus_and_finetunes_on_another(tmp_path, capsys):
    """The `labeled` section: pretraining reads the synthetic corpus, fine-tuning and decoding FSDD."""
    from conftest import copy_fsdd

    fsdd = copy_fsdd(tmp_path / "fsdd" / "recordings", per_speaker=4).parent
    exp = tmp_path / "fx"
    out = run(
        capsys,
        "run",
        RECIPES / "fsdd.yaml",
        f"exp_dir={exp}",
        f"labeled.path={fsdd}",
        "labeled.num_jobs=1",
        *TINY,
        "scratch_baseline=false",
        "--json",
    )
    results = json.loads(out.out)
    assert results["prepare"]["corpus"] == "synthetic" and results["prepare"]["labeled"]["corpus"] == "fsdd"
    pt = json.loads((exp / "pretrain" / "run_card.json").read_text())
    ft = json.loads((exp / "finetune" / "run_card.json").read_text())
    assert pt["config"]["train_cuts"] == str(exp / "kmeans" / "cuts_train.jsonl.gz")
    assert ft["config"]["train_cuts"] == str(exp / "data" / "fsdd" / "cuts_train.jsonl.gz")
    assert ft["config"]["ctc"]["gain_db"] == 15
    assert results["decode"]["finetune/test"]["utterances"] == 4  # theo's clips
    assert results["decode"]["finetune/test"]["method"] == "lexicon"  # the recipe decodes known words only
    # ...with the mean of its last checkpoints, which the run wrote with its config
    assert results["decode"]["finetune/test"]["checkpoint"] == str(exp / "finetune" / "averaged.pt")
    err = run(
        capsys,
        "run",
        RECIPES / "fsdd.yaml",
        f"exp_dir={tmp_path / 'bad'}",
        "labeled.path=null",
        *TINY,
        "--stop-stage",
        "prepare",
        code=2,
    ).err
    assert "labeled.path is required" in err


def test_training_after_a_parallel_prepare_uses_every_core(tmp_path, capsys, caplog, two_threads):
    """`prepare` with num_jobs 2 used to leave the whole process on one thread for training (and
    lhotse's warning about threads beside jobs, a false alarm with one-thread workers, is not shown)."""
    import torch

    threads = torch.get_num_threads()
    assert threads == 2
    exp = tmp_path / "threads"
    tiny = [t for t in TINY if not t.startswith("prepare.num_jobs")]
    run(
        capsys,
        "run",
        RECIPES / "quickstart.yaml",
        f"exp_dir={exp}",
        *tiny,
        "prepare.num_jobs=2",
        "--stop-stage",
        "pretrain",
    )
    card = json.loads((exp / "pretrain" / "run_card.json").read_text())
    assert card["device"]["cpu_threads"] == threads and torch.get_num_threads() == threads
    assert "number of threads" not in caplog.text
