"""Classification end to end: `run recipes/fsdd-keywords.yaml` at tiny scale (prepare -> finetune
task=classify -> evaluate -> report), then `evaluate`, `predict` and an exact resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import FSDD, NOISE, cli_result, copy_fsdd
from matplotlib.image import imread
from test_issue21 import one_line_error

from speechbudget.train.metrics_log import read_metrics

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY = [
    "finetune.encoder={preset: ast-tiny, dim: 32, layers: 1, heads: 2, stride: 16}",
    "finetune.max_duration=8",
    "finetune.log_every=1",
    "finetune.checkpoint_every=100",
]


@pytest.fixture(scope="module")
def keywords_run(tmp_path_factory):
    """fsdd-keywords on 10 clips per speaker, 40 steps: the run every test here reads."""
    from speechbudget.cli import main

    root = tmp_path_factory.mktemp("kws")
    fsdd = copy_fsdd(root / "fsdd", per_speaker=10)
    exp = root / "exp"
    args = [
        "run",
        str(RECIPES / "fsdd-keywords.yaml"),
        f"exp_dir={exp}",
        f"prepare.path={fsdd}",
        "prepare.num_jobs=1",
        "finetune.budget.steps=40",
        *TINY,
        "--json",
    ]
    try:
        main(args)
    except SystemExit as e:
        assert not e.code, "the fsdd-keywords run failed"
    return exp


def test_run_trains_evaluates_and_reports(keywords_run):
    exp = keywords_run
    losses = [r["loss"] for r in read_metrics(exp / "finetune") if "loss" in r]
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.1, losses  # it learns the training clips
    card = json.loads((exp / "finetune" / "run_card.json").read_text())
    assert card["task"] == "classify" and card["classes"] == [str(d) for d in range(10)]
    cost = json.loads((exp / "finetune" / "cost.json").read_text())
    assert "head_macs_per_frame" in cost
    assert not (exp / "pretrain").exists() and not (exp / "kmeans").exists()  # no SSL stage needed
    for split in ("dev", "test"):
        folder = exp / "finetune" / f"evaluate-{split}"
        names = {p.name for p in folder.iterdir()}
        assert {f"metrics-{split}.json", f"per-class-{split}.txt", f"predictions-{split}.tsv"} <= names
        assert (folder / f"confusion-{split}.png").read_bytes()[:4] == b"\x89PNG"
        m = json.loads((folder / f"metrics-{split}.json").read_text())
        assert m["clips"] == 10 and 0 <= m["accuracy"] <= 1 and len(m["accuracy_ci"]) == 2
        assert len((folder / f"predictions-{split}.tsv").read_text().splitlines()) == 11
    report = json.loads((exp / "report" / "report.json").read_text())
    row = next(r for r in report["rows"] if r["name"] == "finetune")
    assert (
        set(row["accuracy"]) == {"dev", "test"}
        and "acc % test [95% CI]" in (exp / "report" / "report.md").read_text()
    )
    # a classifier's score against compute is its accuracy: no empty "WER vs compute" plot beside it
    assert not (exp / "report" / "wer_vs_compute.png").exists()
    assert "![accuracy vs compute](accuracy_vs_compute.png)" in (exp / "report" / "report.md").read_text()
    img = imread(exp / "report" / "accuracy_vs_compute.png")
    assert img.shape[0] > 200 and img[..., :3].std() > 0.01


def test_flops_include_the_head(keywords_run):
    """The budget counts the per-clip linear head on top of encoder and pooling."""
    from speechbudget.train.trainer import Trainer

    cost = json.loads((keywords_run / "finetune" / "cost.json").read_text())
    fake = type("T", (), {"cost": {**cost, "head_macs_per_clip": 32 * 10}, "extra_flops": None})()
    import torch

    batch = {"features": torch.zeros(4, 100, 128)}
    with_head = Trainer.batch_flops(fake, batch)
    fake.cost["head_macs_per_clip"] = 0.0
    assert with_head - Trainer.batch_flops(fake, batch) == pytest.approx(6 * 4 * 320)


def test_evaluate_and_predict_commands(keywords_run, capsys, tmp_path):
    exp = keywords_run / "finetune"
    cuts = keywords_run / "data" / "fsdd" / "cuts_dev.jsonl.gz"
    code, out, err = cli_result(
        capsys, "evaluate", exp, cuts, "--out", tmp_path / "ev", "--bootstrap", "50", "--json"
    )
    assert code == 0, err
    res = json.loads(out)
    assert res["set"] == "dev" and res["clips"] == 10 and (tmp_path / "ev" / "metrics-dev.json").is_file()
    code, out, err = cli_result(  # a corpus folder: each split scored on its own
        capsys, "evaluate", exp, cuts.parent, "--out", tmp_path / "ev", "--bootstrap", "0", "--json"
    )
    assert code == 0, err
    assert [r["set"] for r in json.loads(out)] == ["dev", "test", "train"]
    code, out, err = cli_result(
        capsys, "predict", exp, FSDD / "3_theo_5.wav", NOISE / "pink_noise.wav", "--top", "3", "--json"
    )
    assert code == 0, err
    preds = json.loads(out)
    assert [len(p["top"]) for p in preds] == [3, 3] and preds[1]["windows"] >= 1
    probs = [c["probability"] for c in preds[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    code, _, err = cli_result(capsys, "predict", exp, tmp_path / "missing.wav")
    assert code == 2 and "cannot read audio" in err and len(err.strip().splitlines()) == 1
    # a folder is every audio file below it; an unreadable file is skipped and said, the rest scored
    folder = tmp_path / "clips"
    (folder / "sub").mkdir(parents=True)
    for name in ("3_theo_5.wav", "7_george_2.wav"):
        shutil.copy(FSDD / name, folder / "sub" / name)
    (folder / "notes.txt").write_text("not audio")
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    code, out, err = cli_result(capsys, "predict", exp, folder, tmp_path / "broken.wav", "--json")
    assert code == 0, err
    preds = json.loads(out)
    assert [Path(p["audio"]).name for p in preds] == ["3_theo_5.wav", "7_george_2.wav", "broken.wav"]
    assert [len(p.get("top", [])) for p in preds] == [5, 5, 0] and "cannot read audio" in preds[2]["error"]
    code, _, err = cli_result(capsys, "predict", exp, tmp_path / "broken.wav", tmp_path / "missing.wav")
    one_line_error(code, err, "none of the 2 files read: cannot read audio")
    code, _, err = cli_result(capsys, "predict", exp, tmp_path / "ev")  # a folder with no audio
    one_line_error(code, err, "no audio files")
    code, _, _ = cli_result(capsys, "evaluate", "--help")
    assert code == 0


def test_classify_resume_is_exact(keywords_run, tmp_path, capsys):
    """4 steps, then 4 more (a resumed run) ends where 8 straight steps end."""
    corpus = keywords_run / "data" / "fsdd"
    common = [
        "task=classify",
        f"train_cuts={corpus / 'cuts_train.jsonl.gz'}",
        *[t.replace("finetune.", "") for t in TINY],
        "checkpoint_every=4",
    ]
    recipe = RECIPES / "fsdd-keywords.yaml"
    finals = {}
    for name, budgets in (("straight", [8]), ("resumed", [4, 8])):
        for steps in budgets:
            code, out, err = cli_result(
                capsys,
                "finetune",
                recipe,
                f"exp_dir={tmp_path / name}",
                f"budget.steps={steps}",
                *common,
                "--json",
            )
            assert code == 0, err
        finals[name] = json.loads(out)["final"]["loss"]
    assert finals["resumed"] == pytest.approx(finals["straight"], abs=1e-6)


def test_init_checkpoint_loads_the_encoder(keywords_run, tmp_path):
    """classify.init_checkpoint (an SSL or classifier run) gives the new classifier that encoder."""
    import torch

    from speechbudget.config import load_train_config
    from speechbudget.data.manifests import load_cuts
    from speechbudget.train import checkpoint as ckpt
    from speechbudget.train.classify import build_model, vocabulary_for

    src = keywords_run / "finetune"
    corpus = keywords_run / "data" / "fsdd"
    cfg = load_train_config(
        {
            "exp_dir": str(tmp_path / "x"),
            "finetune": {"task": "classify", "train_cuts": str(corpus / "cuts_train.jsonl.gz")},
        },
        "finetune",
        [f"classify.init_checkpoint={src}"],
    )
    cuts = load_cuts(cfg.train_cuts).to_eager()
    model, init, stats = build_model(cfg, vocabulary_for(cfg, cuts), cuts, True)
    _, weights, path = ckpt.encoder_state(src)
    assert init["checkpoint"] == str(path) and stats is None
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, weights[k]), k


@pytest.mark.parametrize("encoder", ["zipformer-nano"])
def test_speech_encoders_classify_from_stored_fbank_with_noise(keywords_run, tmp_path, capsys, encoder):
    """A HuBERT-style encoder (80-bin stored fbank, mean pooling) trains too, with noise mixing."""
    corpus = keywords_run / "data" / "fsdd"
    code, out, err = cli_result(
        capsys,
        "finetune",
        RECIPES / "fsdd-keywords.yaml",
        f"exp_dir={tmp_path / 'z'}",
        f"train_cuts={corpus / 'cuts_train.jsonl.gz'}",
        f"encoder={encoder}",
        "budget.steps=2",
        "max_duration=4",
        f"classify.noise_dir={NOISE}",
        "classify.noise_prob=1.0",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["steps"] == 2 and summary["task"] == "classify"
    card = json.loads((tmp_path / "z" / "run_card.json").read_text())
    assert card["feature_stats"] is None  # only patch encoders normalise with dataset statistics


def test_profile_steps_write_a_trace_and_the_top_operators(keywords_run, tmp_path, capsys):
    """`profile_steps: N` records N ordinary training steps with torch.profiler into EXP/profile/."""
    corpus = keywords_run / "data" / "fsdd"
    exp = tmp_path / "prof"
    common = ["task=classify", f"train_cuts={corpus / 'cuts_train.jsonl.gz'}"]
    tiny = [t.replace("finetune.", "") for t in TINY]
    code, _, err = cli_result(
        capsys,
        "finetune",
        RECIPES / "fsdd-keywords.yaml",
        f"exp_dir={exp}",
        *common,
        *tiny,
        "budget.steps=4",
        "profile_steps=2",
        "--json",
    )
    assert code == 0, err
    trace = json.loads((exp / "profile" / "trace.json").read_text())
    assert trace["traceEvents"], "an empty trace"
    top = (exp / "profile" / "top_ops.txt").read_text()
    assert "aten::" in top and "Self CPU" in top
    code, _, err = cli_result(
        capsys,
        "finetune",
        RECIPES / "fsdd-keywords.yaml",
        f"exp_dir={tmp_path / 'x'}",
        *common,
        "profile_steps=-1",
    )
    assert code == 2 and "profile_steps" in err


def test_long_clips_are_scored_in_windows_by_evaluate_predict_and_distill_targets(
    keywords_run, capsys, tmp_path
):
    """A minute of noise is ~6x the AST's learned positions: every scoring command windows it as
    ``predict`` does, and the windows' mean is what each reports."""
    import shutil

    import numpy as np
    import torch

    from speechbudget.evaluate import load_classifier
    from speechbudget.objectives.teacher_logits import load_teacher_logits

    model, _, _ = load_classifier(keywords_run / "finetune", torch.device("cpu"))
    limit = model.max_input_frames
    assert limit is not None
    torch.manual_seed(0)
    long, short = torch.randn(1, 3 * limit + 7, 128), torch.randn(1, limit // 2, 128)
    windows = long[0].split(limit)
    expect = torch.stack([model.logits(w[None], torch.tensor([w.size(0)]))[0] for w in windows]).mean(0)
    batch = torch.nn.utils.rnn.pad_sequence([long[0], short[0]], batch_first=True)
    got = model.logits(batch, torch.tensor([long.size(1), short.size(1)]))
    assert torch.allclose(got[0], expect, atol=1e-5)
    assert torch.allclose(got[1], model.logits(short, torch.tensor([short.size(1)]))[0], atol=1e-5)
    noise = tmp_path / "noise"
    noise.mkdir()
    for name in ("pink_noise.wav", "white_noise.wav"):
        shutil.copy(NOISE / name, noise / name)
    code, _, err = cli_result(capsys, "prepare", "dir", noise, "--out", tmp_path / "data", "--name", "noise")
    assert code == 0, err
    cuts = tmp_path / "data" / "noise" / "cuts_train.jsonl.gz"
    code, out, err = cli_result(capsys, "distill-targets", keywords_run / "finetune", cuts, "--json")
    assert code == 0, err
    table = load_teacher_logits(Path(json.loads(out)["targets"]))
    assert len(table) == 2 and np.isfinite(table.logits).all()


def test_training_clips_longer_than_learned_positions_stop_before_the_first_step(
    keywords_run, capsys, tmp_path
):
    from test_issue21 import one_line_error

    exp = tmp_path / "short-positions"
    code, _, err = cli_result(
        capsys,
        "finetune",
        RECIPES / "fsdd-keywords.yaml",
        f"exp_dir={exp}",
        f"train_cuts={keywords_run / 'data' / 'fsdd' / 'cuts_train.jsonl.gz'}",
        "encoder={preset: ast-tiny, dim: 32, layers: 1, heads: 2, stride: 16, max_frames: 32}",
    )
    one_line_error(code, err, "the encoder's learned positions reach; raise the encoder's max_frames")
    assert "train_cuts: clip" in err
    assert not [p for p in exp.rglob("*") if p.is_file() and p.name != ".lock"]  # nothing written first


def test_the_runs_last_table_of_a_multi_label_classifier_shows_map_not_wer(capsys):
    """`run` of a multi-label recipe (audioset-fastast) ended on a WER table of dashes."""
    from speechbudget.cli import _render_wer_summary

    results = {
        "decode": {"finetune/eval": {"set": "eval", "mAP": 0.262, "mAP_ci": [0.246, 0.433], "clips": 20}},
        "report": {"rows": [{"name": "finetune", "total_flops": 1.13e10}]},
    }
    _render_wer_summary(results)
    out = capsys.readouterr().out
    assert "mAP %" in out and "26.2" in out and "24.6-43.3" in out and "WER" not in out
