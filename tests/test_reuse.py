"""`run --reuse BASE`: a comparison arm starts from another exp_dir's finished stages, as far as they
ran with the recipe values the arm gives them, and writes nothing into BASE."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY, cli_result, copy_fsdd

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_an_arm_takes_the_stages_its_recipe_leaves_unchanged_and_nothing_else(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path / "cache"))
    fsdd = copy_fsdd(tmp_path / "fsdd" / "recordings", per_speaker=3, speakers=("george", "jackson", "theo"))
    args = ["run", RECIPES / "fsdd.yaml", f"labeled.path={fsdd.parent}", "labeled.num_jobs=1", *TINY]
    args += ["scratch_baseline=false", "tts=null", "--json"]
    base = tmp_path / "base"
    code, _, err = cli_result(capsys, *args, f"exp_dir={base}", "--stop-stage", "pretrain")
    assert code == 0, err[-3000:]
    # what the base's own final fine-tuning spoke (``tts:``) is that run's, not its prepare stage's
    (base / "data" / "finetune-tts").mkdir()
    (base / "data" / "finetune-tts" / "prepare.json").write_text("{}")
    before = _files(base)

    # another fine-tuning: prepare, kmeans and pretrain are taken, fine-tuning and decoding are the arm's
    arm = tmp_path / "arm"
    code, out, err = cli_result(capsys, *args, f"exp_dir={arm}", "finetune.ctc.tempo=0", "--reuse", base)
    assert code == 0, err[-3000:]
    said = " ".join(err.split())
    assert f"[reuse] prepare, kmeans, pretrain from {base}" in said
    assert "[pretrain] done already" in said and "[finetune] running" in said
    assert json.loads(out)["decode"]["finetune/test"]["utterances"] == 3
    for stage in ("prepare", "kmeans", "pretrain"):
        assert (arm / ".stages" / f"{stage}.json").read_bytes() == (
            base / ".stages" / f"{stage}.json"
        ).read_bytes()
    ckpt = next((base / "pretrain" / "checkpoints").glob("*.pt"))
    assert (arm / ckpt.relative_to(base)).samefile(ckpt)  # linked, not copied
    assert _files(base) == before  # the arm wrote nothing into BASE
    assert (arm / "data" / "fsdd").is_dir() and not (arm / "data" / "finetune-tts").exists()
    # the same command again (a resumed arm) takes nothing twice and trains nothing again
    code, _, err = cli_result(capsys, *args, f"exp_dir={arm}", "finetune.ctc.tempo=0", "--reuse", base)
    assert code == 0 and "[finetune] done already" in err

    # another pretraining: only prepare and kmeans are taken, the arm pretrains on its own
    other = tmp_path / "other"
    code, _, err = cli_result(capsys, *args, f"exp_dir={other}", "pretrain.optim.lr=0.03", "--reuse", base)
    assert code == 0, err[-3000:]
    said = " ".join(err.split())
    assert f"[reuse] prepare, kmeans from {base}" in said and "[pretrain] running" in said
    assert not (other / "pretrain").samefile(base / "pretrain") and _files(base) == before

    # mistakes are one line each; an exp_dir that prepared its own data is not overwritten
    own = tmp_path / "own"
    code, _, err = cli_result(capsys, *args, f"exp_dir={own}", "--stop-stage", "prepare")
    assert code == 0, err[-3000:]
    for exp_dir, reuse, message in (
        (arm, arm, "is this run's own exp_dir"),
        (tmp_path / "new", tmp_path / "nowhere", "no finished prepare stage there"),
        (own, base, "has a prepare stage of its own; give the arm a new exp_dir"),
    ):
        code, _, err = cli_result(capsys, *args, f"exp_dir={exp_dir}", "--reuse", reuse)
        assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err, err

    # the arm's manifests name its own links, not BASE's files: BASE may go, and the arm still decodes
    base.rename(tmp_path / "gone")
    code, out, err = cli_result(capsys, *args, f"exp_dir={arm}", "finetune.ctc.tempo=0", "--stage", "decode")
    assert code == 0, err[-3000:]
    assert json.loads(out)["decode"]["finetune/test"]["utterances"] == 3
