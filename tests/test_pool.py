"""A recipe's `pool:`: more unlabeled corpora (real FSDD and Common Voice audio) beside the synthetic
pretraining corpus - the union k-means and pretraining read, never a test speaker's audio."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import COMMONVOICE, TINY, cli_result, copy_fsdd

from speechbudget.data.manifests import cut_speaker, load_cuts
from speechbudget.data.pool import CORPUS_KEY

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _run(capsys, exp: Path, fsdd: Path, pool: str, *extra):
    args = ["run", RECIPES / "fsdd.yaml", f"exp_dir={exp}", f"labeled.path={fsdd}", "labeled.num_jobs=1"]
    return cli_result(capsys, *args, *TINY, f"pool={pool}", "scratch_baseline=false", *extra)


def _train(corpus: Path) -> list:
    return list(load_cuts(corpus / "cuts_train.jsonl.gz"))


def test_pool_is_the_union_of_each_corpus_train_cuts_without_test_speakers(tmp_path, capsys):
    fsdd = copy_fsdd(tmp_path / "fsdd" / "recordings", per_speaker=4).parent
    exp = tmp_path / "exp"
    pool = (
        f"[{{source: fsdd, path: {fsdd}, name: fsdd-unlabeled, num_jobs: 1}},"
        f" {{source: commonvoice, path: {COMMONVOICE}, test_fraction: 0, max_hours: 0.02}}]"
    )
    code, _, err = _run(capsys, exp, fsdd, pool, "--stop-stage", "prepare")
    assert code == 0, err
    data, pooled = exp / "data", list(load_cuts(exp / "pool" / "cuts_train.jsonl.gz"))
    summary = json.loads((exp / "pool" / "pool.json").read_text())["corpora"]
    assert list(summary) == ["synthetic", "fsdd-unlabeled", "commonvoice"]
    by_corpus = {name: [c for c in pooled if c.custom[CORPUS_KEY] == name] for name in summary}
    assert sum(map(len, by_corpus.values())) == len(pooled) == len({c.id for c in pooled})  # ids unique
    for name in ("synthetic", "fsdd-unlabeled"):  # every training cut of these, nothing else
        assert {c.id for c in by_corpus[name]} == {c.id for c in _train(data / name)}
    cv_all = _train(data / "commonvoice")
    assert {c.id for c in by_corpus["commonvoice"]} < {c.id for c in cv_all}  # a seeded 0.02 h subset
    for name, cuts in by_corpus.items():
        hours = sum(c.duration for c in cuts) / 3600
        assert summary[name]["cuts"] == len(cuts) and summary[name]["hours"] == pytest.approx(hours, abs=1e-4)
    assert 0.02 <= summary["commonvoice"]["hours"] < 0.02 + max(c.duration for c in cv_all) / 3600
    test_speakers = {cut_speaker(c) for c in load_cuts(data / "fsdd" / "cuts_test.jsonl.gz")}
    assert test_speakers == {"theo"} and (data / "fsdd-unlabeled" / "cuts_test.jsonl.gz").is_file()
    assert {cut_speaker(c) for c in by_corpus["fsdd-unlabeled"]} == {"george", "jackson", "nicolas"}
    dev = list(load_cuts(exp / "pool" / "cuts_dev.jsonl.gz"))  # the held-out loss: synthetic dev voices
    assert dev and {c.id for c in dev} == {c.id for c in load_cuts(data / "synthetic" / "cuts_dev.jsonl.gz")}


def test_run_pretrains_on_synthetic_and_real_speech_together(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path / "cache"))
    fsdd = copy_fsdd(tmp_path / "fsdd" / "recordings", per_speaker=4).parent
    exp = tmp_path / "exp"
    code, out, err = _run(
        capsys, exp, fsdd, f"[{{source: fsdd, path: {fsdd}, name: fsdd-unlabeled}}]", "--json"
    )
    assert code == 0, err
    results = json.loads(out)
    labelled = list(load_cuts(exp / "kmeans" / "cuts_train.jsonl.gz"))  # k-means fit and labels: the union
    assert {c.custom[CORPUS_KEY] for c in labelled} == {"synthetic", "fsdd-unlabeled"}
    assert all(c.custom.get("kmeans") for c in labelled) and "theo" not in {cut_speaker(c) for c in labelled}
    card = json.loads((exp / "pretrain" / "run_card.json").read_text())
    assert card["config"]["train_cuts"] == str(exp / "kmeans" / "cuts_train.jsonl.gz")
    hours = {k: v["hours"] for k, v in results["prepare"]["pool"]["corpora"].items()}
    assert card["pool_hours"] == pytest.approx(hours, abs=1e-4) and hours["fsdd-unlabeled"] > 0
    assert card["unique_hours"] == pytest.approx(sum(hours.values()), abs=1e-3)
    assert results["pretrain"]["steps"] == 2 and results["decode"]["finetune/test"]["utterances"] == 4
    assert "pretraining pool: synthetic" in (exp / "report" / "report.md").read_text()


@pytest.mark.parametrize(
    "entry, message",
    [
        ("{source: fsdd, path: FSDD, bogus: 1}", "unknown key 'pool[0].bogus' for source fsdd"),
        ("{source: fsdd}", "pool[0].path is required"),
        ("{source: fsdd, path: FSDD, name: x, splits: [train, test]}", "pool[0].splits may not include test"),
        ("{source: fsdd, path: FSDD, name: x, max_hours: -1}", "pool[0].max_hours must be a positive"),
        ("{path: FSDD}", "config key 'pool[0]' must be a mapping with source:"),
        ("{source: fsdd, path: FSDD}", "pool[0] and labeled name the same corpus folder 'fsdd'"),
    ],
)
def test_a_bad_pool_entry_is_a_one_line_error_naming_the_key(tmp_path, capsys, entry, message):
    fsdd = copy_fsdd(tmp_path / "fsdd", per_speaker=1)
    code, _, err = _run(capsys, tmp_path / "exp", fsdd, f"[{entry.replace('FSDD', str(fsdd))}]")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "exp").exists()  # refused when the recipe is read, before any stage


def test_test_speakers_and_clashing_ids_never_enter_the_pool(tmp_path, capsys):
    fsdd = copy_fsdd(tmp_path / "fsdd", per_speaker=2)
    nested = tmp_path / "nested"
    shutil.copytree(fsdd, nested / "again")  # the same speakers under another layout: other cut ids
    cases = [
        (
            f"{{source: fsdd, path: {fsdd}, name: f2, test_speakers: []}}",
            "holds the scored test cut fsdd-theo-",
        ),
        (f"{{source: fsdd, path: {nested}, name: f3, test_speakers: []}}", "audio of test speaker 'theo'"),
        (
            f"{{source: dir, path: {fsdd}, name: a}}, {{source: dir, path: {fsdd}, name: b}}",
            "cut id 'dir-0_george_0.wav' is in pool corpora a and b",
        ),
    ]
    exp = tmp_path / "exp"  # one folder: the corpora prepared by a refused run are reused by the next
    for entries, message in cases:
        code, _, err = _run(capsys, exp, fsdd, f"[{entries}]", "--stop-stage", "prepare")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert (exp / "data" / "f2" / "cuts_train.jsonl.gz").is_file()  # it was prepared, then refused
    assert (
        not (exp / "pool" / "cuts_train.jsonl.gz").exists()
        and not (exp / ".stages" / "prepare.json").exists()
    )


def test_the_realpool_recipe_is_fsdd_with_a_pool_and_nothing_else():
    """The evidence compares the two recipes: they must differ only in what pretraining hears."""
    from speechbudget.run_recipe import load_run_recipe

    base = load_run_recipe(RECIPES / "fsdd.yaml", [])
    pooled = load_run_recipe(RECIPES / "fsdd-realpool.yaml", [])
    differ = {k for k in base.keys() | pooled.keys() if base.get(k) != pooled.get(k)}
    assert differ == {"name", "description", "exp_dir", "pool"}
    assert [(e["source"], e.get("splits", ["train"])) for e in pooled["pool"]] == [
        ("fsdd", ["train"]),
        ("commonvoice", ["train"]),
    ]
    assert pooled["pool"][0]["test_speakers"] == pooled["labeled"]["test_speakers"] == "theo"
