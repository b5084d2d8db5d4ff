"""Leave-one-speaker-out folds: speaker-disjoint on real FSDD manifests, and `run --folds speakers`
end to end (shared pretraining, one fine-tune + decode per fold, summary, resume, report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, cli_result, copy_fsdd

from speechbudget import folds as folds_module
from speechbudget.data.manifests import cut_speaker, load_cuts
from speechbudget.errors import SpeechBudgetError
from speechbudget.folds import (
    compare,
    seed_spread,
    speaker_folds,
    spread,
    summarize,
    summary_lines,
    write_fold,
    write_summary,
)
from speechbudget.pipeline import Pipeline
from speechbudget.report import fold_cells
from speechbudget.run_recipe import load_run_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _speakers(path: Path) -> set:
    return {cut_speaker(c) for c in load_cuts(path)}


def test_folds_never_share_a_speaker_between_train_dev_and_test(tmp_path, capsys):
    fsdd = copy_fsdd(tmp_path / "fsdd", per_speaker=3)
    code, _, err = cli_result(
        capsys,
        "prepare",
        "fsdd",
        fsdd,
        "--test-speakers",
        "theo",
        "--no-features",
        "--out",
        tmp_path,
        "--json",
    )
    assert code == 0, err
    corpus = tmp_path / "fsdd"
    train = load_cuts(corpus / "cuts_train.jsonl.gz").to_eager()
    test_speakers = _speakers(corpus / "cuts_test.jsonl.gz")
    folds = speaker_folds(train)
    assert [f.dev_speaker for f in folds] == ["george", "jackson", "nicolas"]
    for fold in folds:
        train_path, dev_path = write_fold(train, fold, tmp_path / "folds" / fold.name)
        tr, dev = _speakers(train_path), _speakers(dev_path)
        assert dev == {fold.dev_speaker} and tr == set(fold.train_speakers)
        assert not tr & dev and not (tr | dev) & test_speakers
        assert len(load_cuts(train_path)) + len(load_cuts(dev_path)) == len(train)  # nothing lost


def test_spread_is_mean_sample_std_and_range():
    s = spread([10.0, 20.0, 30.0])
    assert (s["mean"], s["std"], s["min"], s["max"], s["n"]) == (20.0, 10.0, 10.0, 30.0, 3)
    assert spread([7.5])["std"] == 0.0


def test_a_fold_is_the_mean_of_its_seeds_and_the_seed_noise_is_pooled_within_folds():
    rows = [
        {"dev_speaker": s, "train_speakers": [], "seed": k, "wer": {"finetune": w}}
        for k, s, w in ((0, "george", 20.0), (0, "jackson", 40.0), (1, "george", 30.0), (1, "jackson", 50.0))
    ]
    summary = summarize(rows)
    assert summary["mean"]["finetune"] == spread([25.0, 45.0])  # over speakers, each the mean of its seeds
    assert summary["seeds"]["finetune"] == {"runs": 4, "std": round(50**0.5, 2)}  # (5^2 * 4) / 2 dof
    one_seed = [{k: v for k, v in r.items() if k != "seed"} for r in rows[:2]]
    assert "seeds" not in summarize(one_seed) and summarize(one_seed)["mean"]["finetune"] == spread(
        [20.0, 40.0]
    )
    assert seed_spread([[10.0], [20.0]]) == {"runs": 2, "std": None}  # one seed per fold: no estimate


def _rows(wers):
    return [
        {"dev_speaker": s, "train_speakers": [], "seed": k, "wer": {"finetune": w}}
        for (s, k), w in wers.items()
    ]


def test_compare_pairs_two_recipes_runs_by_fold_and_seed(tmp_path, capsys):
    base = {("george", 0): 20.0, ("jackson", 0): 10.0, ("george", 1): 22.0, ("jackson", 1): 14.0}
    arm = {("george", 0): 18.0, ("jackson", 0): 11.0, ("george", 1): 21.0, ("jackson", 1): 12.0}
    arm[("nicolas", 0)] = 30.0  # a fold the base never ran: listed, not paired
    write_summary(tmp_path / "base", summarize(_rows(base)))
    write_summary(tmp_path / "arm", summarize(_rows(arm)))
    r = compare(summarize(_rows(base)), summarize(_rows(arm)))
    assert [(f["dev_speaker"], f["seeds"], f["change"]) for f in r["folds"]] == [
        ("george", [0, 1], -1.5),
        ("jackson", [0, 1], -0.5),
    ]
    # the runs' changes -2, -1, +1, -2: mean -1, sample std sqrt(2), s.e. sqrt(2) / 2
    assert (r["change"], r["change_se"], r["runs"], r["runs_lower"]) == (-1.0, 0.71, 4, 3)
    assert (r["base_fold_mean"], r["arm_fold_mean"], r["folds_lower"], r["no_fold_worse"]) == (
        16.5,
        15.5,
        2,
        True,
    )
    assert r["unpaired"] == {"base": [], "arm": [["nicolas", 0]]}
    code, out, err = cli_result(capsys, "compare", tmp_path / "base", tmp_path / "arm", "--json")
    assert code == 0, err
    assert json.loads(out) == r
    code, out, _ = cli_result(capsys, "compare", tmp_path / "base", tmp_path / "arm")
    out = " ".join(out.split())  # the table's caption wraps at the console's width
    assert code == 0 and "-1.00 +- 0.71" in out and "lower on 2 of 2 folds" in out and "nicolas" in out
    code, _, err = cli_result(capsys, "compare", tmp_path / "base", tmp_path / "arm", "--model", "scratch")
    assert code == 2 and "no fold results for the model 'scratch'" in err
    code, _, err = cli_result(capsys, "compare", tmp_path / "base", tmp_path)
    assert code == 2 and "--folds speakers" in err and "Traceback" not in err
    code, _, err = cli_result(capsys, "compare", tmp_path / "base", tmp_path / "typo")
    assert code == 2 and f"{tmp_path / 'typo'} does not exist" in err
    (tmp_path / "arm" / "folds" / "folds.json").write_text("{not json")
    code, _, err = cli_result(capsys, "compare", tmp_path / "base", tmp_path / "arm")
    assert code == 2 and "not a folds summary" in err
    # runs trained on other thread counts than their pair: said, since their sums run in another order
    assert r["other_threads"] == []  # summaries without thread counts (older runs): nothing to say
    threaded = {"base": summarize(_rows(base)), "arm": summarize(_rows(arm))}
    for side, threads in (("base", 1), ("arm", 1)):
        for row in threaded[side]["folds"]:
            row["threads"] = {
                "finetune": 2 if (side, row["dev_speaker"], row["seed"]) == ("arm", "jackson", 1) else threads
            }
        write_summary(tmp_path / side, threaded[side])
    assert compare(threaded["base"], threaded["arm"])["other_threads"] == [["jackson", 1, 1, 2]]
    code, out, _ = cli_result(capsys, "compare", tmp_path / "base", tmp_path / "arm")
    out = " ".join(out.split())
    assert code == 0 and "1 paired run trained on other thread counts" in out and "jackson 1: 1 vs 2" in out
    # a side whose run is still going (or was stopped) says how many of its runs are not in it yet
    partial = summarize(_rows(arm))
    partial["pending"] = 2
    write_summary(tmp_path / "arm", partial)
    assert compare(summarize(_rows(base)), partial)["unfinished"] == {"base": 0, "arm": 2}
    code, out, _ = cli_result(capsys, "compare", tmp_path / "base", tmp_path / "arm")
    assert code == 0 and "not finished yet: 2 arm runs" in " ".join(out.split())
    assert fold_cells(partial)[1][-1][:2] == ["not finished", "2 more runs"]
    other = {("george", 2): 19.0}  # no seed in common
    write_summary(tmp_path / "other", summarize(_rows(other)))
    code, _, err = cli_result(capsys, "compare", tmp_path / "base", tmp_path / "other")
    assert code == 2 and "no fold and seed was run by both" in err


def test_run_with_two_speaker_folds_then_the_final_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path / "cache"))
    fsdd = copy_fsdd(tmp_path / "fsdd" / "recordings", per_speaker=4, speakers=("george", "jackson", "theo"))
    exp = tmp_path / "loso"
    args = ["run", RECIPES / "fsdd.yaml", f"exp_dir={exp}", f"labeled.path={fsdd.parent}"]
    args += ["labeled.num_jobs=1", *TINY, "scratch_baseline=false", "tts=null"]  # tts: tests/test_tts.py
    # the synthetic corpus's transcripts join each fold's fine-tuning; folds decode with the lexicon
    args += ["finetune.extra_train_cuts=prepare", "decode.method=lexicon"]
    code, out, err = cli_result(capsys, *args, "--folds", "speakers", "--json")
    assert code == 0, err[-3000:]
    results = json.loads(out)
    folds = results["folds"]
    assert [f["dev_speaker"] for f in folds["folds"]] == ["george", "jackson"]
    assert folds["test_speakers_excluded"] == ["theo"]
    wers = [f["wer"]["finetune"] for f in folds["folds"]]
    assert folds["mean"]["finetune"]["mean"] == round(sum(wers) / 2, 2)
    assert json.loads((exp / "folds" / "folds.json").read_text()) == folds  # the summary on disk
    assert all(f["threads"]["finetune"] == torch.get_num_threads() for f in folds["folds"])
    for f in folds["folds"]:
        fold_dir = exp / "folds" / f["dev_speaker"]
        card = json.loads((fold_dir / "finetune" / "run_card.json").read_text())
        assert _speakers(Path(card["config"]["train_cuts"])) == set(f["train_speakers"])
        extra = Path(card["config"]["extra_train_cuts"])
        assert extra == exp / "data" / "synthetic" / "cuts_train.jsonl.gz"
        assert not _speakers(extra) & {"george", "jackson", "theo"}
        assert card["recorded_labeled_hours"] > sum(c.duration for c in load_cuts(extra)) / 3600
        (dev_summary,) = (fold_dir / "finetune").glob("decode-lexicon/decode-summary-dev-*.json")  # dev only
        # fsdd.yaml's speaker_cmn: the dev speaker decoded with his own mean moved onto the training mean
        assert (fold_dir / "finetune" / "speaker_cmn.json").is_file()
        assert json.loads(dev_summary.read_text())["speaker_cmn_speakers"] == 1
        assert not list((fold_dir / "finetune").glob("decode-*/*test*"))
    # pretraining ran once; the final run trains on both speakers and alone decodes theo
    assert not list((exp / "folds").glob("*/pretrain"))
    assert results["decode"]["finetune/test"]["utterances"] == 4
    assert "Leave-one-speaker-out folds" in (exp / "report" / "report.md").read_text()
    # resume: a finished fold is not re-run, even when the folds stage itself is redone
    (exp / ".stages" / "folds.json").unlink()
    code, out, err = cli_result(capsys, *args, "--folds", "speakers")
    assert code == 0, err[-3000:]
    assert "[fold george: finetune] done already" in out and "fold jackson: decode] done already" in out
    assert "mean dev WER" in out and "leave-one-speaker-out folds" in out
    code, out, err = cli_result(capsys, *args, "--folds", "words", "--stop-stage", "prepare")
    assert code == 2 and "folds must be speakers" in err
    # each fold with two seeds: the finished runs are kept, only seed 1 trains, in its own folders
    code, out, err = cli_result(capsys, *args, "--folds", "speakers", "--fold-seeds", "2", "--json")
    assert code == 0, err[-3000:]
    assert "[fold george: finetune] done already" in err and "[fold george-seed+1: finetune] running" in err
    seeded = json.loads(out)["folds"]
    runs = [(f["dev_speaker"], f["seed"], f["wer"]["finetune"]) for f in seeded["folds"]]
    assert [r[:2] for r in runs] == [("george", 0), ("jackson", 0), ("george", 1), ("jackson", 1)]
    assert [r[2] for r in runs[:2]] == wers
    for speaker in ("george", "jackson"):
        card = json.loads((exp / "folds" / f"{speaker}-seed+1" / "finetune" / "run_card.json").read_text())
        assert card["config"]["seed"] == 1
        assert _speakers(Path(card["config"]["train_cuts"])) == {"george", "jackson"} - {speaker}
    per_speaker = [round((runs[i][2] + runs[i + 2][2]) / 2, 2) for i in (0, 1)]
    assert seeded["mean"]["finetune"]["mean"] == round(sum(per_speaker) / 2, 2)
    assert seeded["seeds"]["finetune"]["runs"] == 4
    # a scratch baseline asked for after the folds ran: every fold trains and decodes it, the rest is kept
    late = ["scratch_baseline=true", "scratch_alongside=false", "--folds", "speakers", "--fold-seeds", "2"]
    code, out, err = cli_result(capsys, *args, *late, "--json")
    assert code == 0, err[-3000:]
    assert "[fold george: finetune] done already" in err and "[fold george: scratch] running" in err
    assert "[fold george: decode] running" in err
    with_scratch = json.loads(out)
    assert [f["wer"]["finetune"] for f in with_scratch["folds"]["folds"]] == [r[2] for r in runs]
    assert all(isinstance(f["wer"]["scratch"], float) for f in with_scratch["folds"]["folds"])
    assert "scratch/test" in with_scratch["decode"] and "finetune/test" in with_scratch["decode"]
    assert {r["name"] for r in with_scratch["report"]["rows"]} >= {"finetune", "scratch"}
    # pretrained vs scratch on these folds, paired by fold and seed
    code, out, err = cli_result(capsys, "compare", exp, exp, "--base-model", "scratch", "--json")
    assert code == 0, err
    paired = json.loads(out)
    rows = with_scratch["folds"]["folds"]
    assert paired["runs"] == 4 and [f["seeds"] for f in paired["folds"]] == [[0, 1], [0, 1]]
    changes = [r["wer"]["finetune"] - r["wer"]["scratch"] for r in rows]
    assert paired["change"] == pytest.approx(sum(changes) / 4, abs=0.006)
    for bad in ("--folds speakers --fold-seeds 0", "--folds speakers fold_seeds=0"):
        code, _, err = cli_result(capsys, *args, *bad.split(), "--stop-stage", "prepare")
        assert code == 2 and "fold_seeds" in err and "Traceback" not in err
    code, _, err = cli_result(capsys, *args, "--fold-seeds", "2", "--stop-stage", "prepare")
    assert code == 2 and "folds: speakers" in err
    # a manifest with scored cuts (the test speaker, or a fold's dev speaker) cannot join fine-tuning
    recipe = load_run_recipe(RECIPES / "fsdd.yaml", [str(a) for a in args[2:]])
    first_fold = speaker_folds(load_cuts(exp / "data" / "fsdd" / "cuts_train.jsonl.gz"))[0]
    for fold, scored in ((None, exp / "data" / "fsdd" / "cuts_test.jsonl.gz"), (first_fold, None)):
        pipe = Pipeline(recipe, log=lambda _: None, fold=fold)
        scored = scored or pipe.runs_dir / "cuts_dev.jsonl.gz"
        with pytest.raises(SpeechBudgetError, match="scored"):
            pipe._extra_train_cuts(["prepare", str(scored)])
    assert Pipeline(recipe)._extra_train_cuts("prepare") == str(
        exp / "data" / "synthetic" / "cuts_train.jsonl.gz"
    )


def test_folds_refuse_a_classification_recipe_before_any_stage(tmp_path, capsys):
    keywords = RECIPES / "fsdd-keywords.yaml"
    code, _, err = cli_result(capsys, "run", keywords, f"exp_dir={tmp_path / 'kw'}", "--folds", "speakers")
    assert code == 2 and "drop it for finetune.task: classify" in err
    assert not (tmp_path / "kw").exists()


def test_folds_run_two_at_a_time_give_the_numbers_of_folds_run_in_turn(
    tmp_path, capsys, two_threads, monkeypatch
):
    """``--fold-jobs 2`` on two threads: each fold in a process of its own with one thread, and each
    fold's model and WER exactly those of the fold run in this process with one thread."""
    import torch

    fsdd = copy_fsdd(tmp_path / "fsdd" / "recordings", per_speaker=4, speakers=("george", "jackson", "theo"))
    shared = [
        f"labeled.path={fsdd.parent}",
        "labeled.num_jobs=1",
        *TINY,
        "scratch_baseline=false",
        "tts=null",
    ]
    shared += ["--folds", "speakers", "--stop-stage", "folds", "--json"]
    exp = tmp_path / "jobs"
    code, out, err = cli_result(
        capsys, "run", RECIPES / "fsdd.yaml", f"exp_dir={exp}", *shared, "--fold-jobs", "2"
    )
    assert code == 0, err[-3000:]
    parallel = json.loads(out)["folds"]
    said = " ".join(err.split())  # rich wraps long lines
    assert (
        said.count("started in a process of its own (1 thread;") == 2 and "fold jackson (dev jackson" in said
    )
    assert said.count("done after") == 2
    assert (exp / "folds" / "george" / "fold.log").is_file()
    # in turn, one thread, on the same pretraining (`--reuse`, as a second arm of an experiment)
    turn, fallback = tmp_path / "turn", tmp_path / "fb"
    torch.set_num_threads(1)
    code, out, err = cli_result(
        capsys, "run", RECIPES / "fsdd.yaml", f"exp_dir={turn}", *shared, "--reuse", exp
    )
    assert code == 0, err[-3000:]
    assert "in a process of its own" not in err
    in_turn = json.loads(out)["folds"]
    assert [f["wer"] for f in in_turn["folds"]] == [f["wer"] for f in parallel["folds"]]
    for speaker in ("george", "jackson"):
        a, b = (
            torch.load(e / "folds" / speaker / "finetune" / "averaged.pt", weights_only=False)
            for e in (exp, turn)
        )
        assert a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # a fold whose process fails (here: its log cannot be opened) is run in this process after the others;
    # folds.json holds every finished run as soon as it ends, with the count still to come
    (fallback / "folds" / "jackson" / "fold.log").mkdir(parents=True)
    written = []
    real_write = folds_module.write_summary
    monkeypatch.setattr(
        folds_module,
        "write_summary",
        lambda exp_dir, s: written.append(json.loads(json.dumps(s))) or real_write(exp_dir, s),
    )
    code, out, err = cli_result(
        capsys,
        "run",
        RECIPES / "fsdd.yaml",
        f"exp_dir={fallback}",
        *shared,
        "--fold-jobs",
        "2",
        "--reuse",
        exp,
    )
    assert code == 0, err[-3000:]
    said = " ".join(err.split())
    assert "fold george (dev george, seed 0): done after" in said
    assert "fold jackson (dev jackson, seed 0): stopped (exit 1; see" in said
    assert (
        "[folds] fold jackson: dev jackson, train george" in said
        and "[fold jackson: finetune] running" in said
    )
    assert [f["wer"] for f in json.loads(out)["folds"]["folds"]] == [f["wer"] for f in parallel["folds"]]
    first = next(s for s in written if s["folds"])  # when george's process ended (jackson's had failed)
    assert [f["dev_speaker"] for f in first["folds"]] == ["george"] and first["pending"] == 1
    assert first["folds"][0]["wer"] == parallel["folds"][0]["wer"]
    assert "1 more fold runs not finished" in " ".join(summary_lines(first))
    assert [len(s["folds"]) for s in written][-1] == 2 and "pending" not in written[-1]
    assert "pending" not in json.loads((fallback / "folds" / "folds.json").read_text())
    # done folds are not started again; a bad count is one line
    code, out, err = cli_result(
        capsys, "run", RECIPES / "fsdd.yaml", f"exp_dir={exp}", *shared, "--fold-jobs", "2"
    )
    assert code == 0 and "in a process of its own" not in err
    code, _, err = cli_result(
        capsys, "run", RECIPES / "fsdd.yaml", f"exp_dir={exp}", *shared, "--fold-jobs", "0"
    )
    assert code == 2 and "fold_jobs (--fold-jobs) must be 1 or more" in err
