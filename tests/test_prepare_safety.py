"""`prepare` as a careless user runs it: killed re-runs, changed options, colliding names, odd files.

Every test works on copies of ../shared/data in a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import COMMONVOICE, FSDD, cli_result, copy_fsdd

from speechbudget.data.manifests import load_cuts
from speechbudget.data.prepare import prepared_splits

ROOT = Path(__file__).resolve().parents[1]


def _consistent(corpus: Path) -> int:
    """Every split that looks complete really is: each cut's features load. Returns the cut count."""
    n = 0
    for split in prepared_splits(corpus):
        for cut in load_cuts(corpus / f"cuts_{split}.jsonl.gz"):
            assert cut.load_features().shape[0] > 0, (split, cut.id)
            n += 1
    return n


def _kill_when(cmd, env, ready, extra: float) -> bool:
    """Start ``cmd``, SIGKILL it ``extra`` seconds after ``ready()`` first holds. False if it ended first."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and not ready() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(extra)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def test_killed_force_rerun_never_leaves_a_split_that_looks_complete(tmp_path, capsys):
    src = copy_fsdd(tmp_path / "in", per_speaker=25)
    out = tmp_path / "o"
    corpus = out / "fsdd"
    code, _, err = cli_result(capsys, "prepare", "fsdd", src, "--out", out)
    assert code == 0, err
    full = _consistent(corpus)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "speechbudget.cli",
        "prepare",
        "fsdd",
        str(src),
        "--out",
        str(out),
        "--force",
    ]

    def changed(name):
        before = (corpus / name).stat().st_mtime_ns if (corpus / name).exists() else None
        return lambda: (corpus / name).exists() and (corpus / name).stat().st_mtime_ns != before

    def new_features():
        before = set(corpus.glob("feats_train*"))
        return lambda: bool(set(corpus.glob("feats_train*")) - before)

    # the reproduction (1.5 s after recordings_train.jsonl.gz changes) and moments around it
    moments = [  # (condition made just before each start, seconds after it holds)
        (lambda: lambda: not (corpus / "cuts_train.jsonl.gz").exists(), 0.0),
        (lambda: changed("recordings_train.jsonl.gz"), 0.0),
        (lambda: changed("recordings_train.jsonl.gz"), 1.5),
        (new_features, 0.3),
        (lambda: changed("cuts_train.jsonl.gz"), 0.0),
    ]
    killed = 0
    for make_ready, extra in moments:
        killed += _kill_when(cmd, env, make_ready(), extra)
        _consistent(corpus)  # complete or absent at every instant
    assert killed >= 3, "the prepare runs finished before they could be killed"
    code, _, err = cli_result(capsys, "prepare", "fsdd", src, "--out", out)
    assert code == 0, err
    assert _consistent(corpus) == full
    storages = sorted(p.name for p in corpus.glob("feats_*"))
    assert len(storages) == len(prepared_splits(corpus)), storages  # old feature folders are gone


def test_rerun_with_other_options_stops_instead_of_mixing_splits(tmp_path, capsys):
    src = copy_fsdd(tmp_path / "in", per_speaker=3)
    out = tmp_path / "o"
    assert cli_result(capsys, "prepare", "fsdd", src, "--out", out)[0] == 0
    code, _, err = cli_result(capsys, "prepare", "fsdd", src, "--out", out, "--dev-speakers", "george")
    assert code == 2 and "--dev-speakers: [] -> ['george']" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = cli_result(
        capsys, "prepare", "fsdd", src, "--out", out, "--dev-speakers", "george", "--force"
    )
    assert code == 0, err
    speakers = {
        split: {c.supervisions[0].speaker for c in load_cuts(out / "fsdd" / f"cuts_{split}.jsonl.gz")}
        for split in prepared_splits(out / "fsdd")
    }
    assert speakers == {"train": {"jackson", "nicolas"}, "dev": {"george"}, "test": {"theo"}}
    # and back: the dev split the new options no longer make is removed, not left beside the others
    assert cli_result(capsys, "prepare", "fsdd", src, "--out", out, "--force")[0] == 0
    assert prepared_splits(out / "fsdd") == ["test", "train"]
    assert sum(1 for _ in load_cuts(out / "fsdd")) == 12


def _prepare_killed_after_first_split(capsys, monkeypatch, *args):
    """`prepare ARGS` interrupted as its second split starts (what a Ctrl-C between splits leaves)."""
    from speechbudget.data import prepare as prepare_mod

    real, calls = prepare_mod.prepare_split, []

    def split_then_interrupt(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(prepare_mod, "prepare_split", split_then_interrupt)
    code, _, _ = cli_result(capsys, "prepare", *args)
    monkeypatch.setattr(prepare_mod, "prepare_split", real)
    assert code == 130 and len(calls) == 2
    return calls[0]


def test_splits_of_a_killed_run_are_not_kept_under_other_options(tmp_path, capsys, monkeypatch):
    """A split written before a kill belongs to that run's options: a re-run with others (or a killed
    --force re-run followed by the old options) must not keep it beside splits of the new options,
    which would put a test speaker into train."""
    src = copy_fsdd(tmp_path / "in", per_speaker=3)
    out, corpus = tmp_path / "o", tmp_path / "o" / "fsdd"
    first = _prepare_killed_after_first_split(
        capsys, monkeypatch, "fsdd", src, "--out", out, "--dev-speakers", "jackson"
    )
    assert prepared_splits(corpus) == [first] == ["train"]
    code, _, err = cli_result(capsys, "prepare", "fsdd", src, "--out", out, "--test-speakers", "george")
    assert code == 2 and "--test-speakers: ['theo'] -> ['george']" in err and "--force" in err
    # the same options resume: the killed run's train split is kept, the others are made
    code, out_json, err = cli_result(
        capsys, "prepare", "fsdd", src, "--out", out, "--dev-speakers", "jackson", "--json"
    )
    assert code == 0, err
    assert [(s["split"], s["skipped"]) for s in json.loads(out_json)["splits"]] == [
        ("train", True),
        ("dev", False),
        ("test", False),
    ]
    # a --force re-run with other options, killed after its first split, then the old options again
    _prepare_killed_after_first_split(
        capsys, monkeypatch, "fsdd", src, "--out", out, "--test-speakers", "george", "--force"
    )
    code, _, err = cli_result(capsys, "prepare", "fsdd", src, "--out", out, "--dev-speakers", "jackson")
    assert code == 2 and "--force" in err
    # splits with no record of their options at all are not kept either
    (corpus / "prepare.json").unlink()
    code, _, err = cli_result(capsys, "prepare", "fsdd", src, "--out", out, "--test-speakers", "george")
    assert code == 2 and "no readable record" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli_result(
        capsys, "prepare", "fsdd", src, "--out", out, "--test-speakers", "george", "--force"
    )
    assert code == 0, err
    speakers = {
        split: {c.supervisions[0].speaker for c in load_cuts(corpus / f"cuts_{split}.jsonl.gz")}
        for split in prepared_splits(corpus)
    }
    assert speakers == {"train": {"jackson", "nicolas", "theo"}, "test": {"george"}}


def test_a_kept_split_reports_the_numbers_it_was_made_with(tmp_path, capsys):
    src = copy_fsdd(tmp_path / "in", per_speaker=3)
    (src / "9_george_99.wav").write_bytes(b"not audio")
    out = tmp_path / "o"
    code, first, err = cli_result(capsys, "prepare", "fsdd", src, "--out", out, "--json")
    assert code == 0, err
    code, again, err = cli_result(capsys, "prepare", "fsdd", src, "--out", out, "--json")
    assert code == 0, err
    made, kept = json.loads(first)["splits"], json.loads(again)["splits"]
    assert [s["rejected"] for s in made] == [s["rejected"] for s in kept] and sum(
        s["rejected"] for s in kept
    ) == 1
    assert [s["reasons"] for s in made] == [s["reasons"] for s in kept]
    assert [s["converted"] for s in made] == [s["converted"] for s in kept]
    assert all(s["skipped"] for s in kept) and not any(s["skipped"] for s in made)


def test_manifests_hold_absolute_paths(tmp_path, capsys, monkeypatch):
    import soundfile as sf

    from speechbudget.data.audio import resample

    native = tmp_path / "in" / "native"
    native.mkdir(parents=True)
    for wav in sorted(FSDD.glob("*_theo_0.wav"))[:3]:  # 16 kHz wavs need no conversion: stored as found
        data, sr = sf.read(wav, dtype="float32")
        sf.write(native / wav.name, resample(data, sr), 16000)
    monkeypatch.chdir(tmp_path)
    assert cli_result(capsys, "prepare", "dir", "in/native", "--out", "o", "--no-features")[0] == 0
    for cut in load_cuts(tmp_path / "o" / "dir" / "cuts_train.jsonl.gz"):
        assert Path(cut.recording.sources[0].source).is_absolute()


def test_different_files_never_share_an_id(tmp_path, capsys):
    root = tmp_path / "in"
    wavs = sorted(FSDD.glob("*_theo_*.wav"))[:4]
    for path, wav in zip(("a-b/c.wav", "a/b-c.wav", "x.wav", "x.flac"), wavs):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".flac"):
            import soundfile as sf

            data, sr = sf.read(wav)
            sf.write(root / path, data, sr)
        else:
            shutil.copy(wav, root / path)
    code, out, err = cli_result(
        capsys, "prepare", "dir", root, "--out", tmp_path / "o", "--no-features", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["splits"][0]["kept"] == 4

    cv = tmp_path / "cv"
    shutil.copytree(COMMONVOICE, cv)
    table = (cv / "validated.tsv").read_text().splitlines()
    first = table[1].split("\t")
    (cv / "clips" / "sub").mkdir()
    shutil.copy(cv / "clips" / first[1], cv / "clips" / "sub" / first[1])
    table.append("\t".join([first[0], f"sub/{first[1]}", *first[2:]]))
    (cv / "validated.tsv").write_text("\n".join(table) + "\n")
    code, out, err = cli_result(
        capsys, "prepare", "commonvoice", cv, "--out", tmp_path / "o", "--no-features", "--json"
    )
    assert code == 0, err
    kept = sum(s["kept"] for s in json.loads(out)["splits"])
    rejected = sum(s["rejected"] for s in json.loads(out)["splits"])
    assert kept == len(table) - 1 and rejected == 0


def test_fsdd_reports_what_it_cannot_use_and_keeps_subfolders(tmp_path, capsys):
    root = copy_fsdd(tmp_path / "in", per_speaker=2)
    (root / "more").mkdir()
    shutil.copy(FSDD / "5_jackson_9.wav", root / "more" / "5_jackson_9.wav")
    shutil.copy(FSDD / "6_jackson_9.wav", root / "6_jackson_9.WAV")
    shutil.copy(FSDD / "7_jackson_9.wav", root / "notes.wav")
    (root / "7_jackson_8.mp3").write_bytes(b"")
    (root / "8_jackson_8.wav").write_bytes(b"")  # 0 bytes
    code, out, err = cli_result(
        capsys, "prepare", "fsdd", root, "--out", tmp_path / "o", "--no-features", "--json"
    )
    assert code == 0, err
    train = next(s for s in json.loads(out)["splits"] if s["split"] == "train")
    assert train["kept"] == 6 + 2
    rejected = {
        Path(r["audio"]).name: r["reason"]
        for r in map(json.loads, (tmp_path / "o" / "fsdd" / "rejected_train.jsonl").read_text().splitlines())
    }
    assert rejected["notes.wav"].startswith("name is not")
    assert rejected["7_jackson_8.mp3"].startswith("not an FSDD recording")
    assert rejected["8_jackson_8.wav"] == "empty file (0 bytes)"


def test_a_failed_first_prepare_leaves_no_empty_corpus_folder(tmp_path, capsys):
    root = copy_fsdd(tmp_path / "in", per_speaker=1)
    code, _, err = cli_result(
        capsys, "prepare", "fsdd", root, "--out", tmp_path / "o", "--test-speakers", "nobody"
    )
    assert code == 2 and "unknown FSDD speakers" in err
    assert not (tmp_path / "o" / "fsdd").exists()


@pytest.mark.parametrize("bad", ["--test-fraction=1.5", "--dev-fraction=-0.1"])
def test_commonvoice_fractions_outside_the_unit_interval_are_refused(tmp_path, capsys, bad):
    code, _, err = cli_result(capsys, "prepare", "commonvoice", COMMONVOICE, "--out", tmp_path / "o", bad)
    assert code == 2 and "must be in [0, 1)" in err
