"""`speechbudget prepare` on real audio, including damaged copies of real files."""

from __future__ import annotations

import csv
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import COMMONVOICE, FSDD, copy_fsdd
from lhotse import load_manifest

from speechbudget.cli import main
from speechbudget.data.manifests import load_cuts


def run_cli(*args: str) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def test_fsdd_manifests_features_and_speaker_disjoint_splits(tmp_path, shared_data, capsys):
    src = copy_fsdd(tmp_path / "fsdd", per_speaker=5)
    rc = run_cli("prepare", "fsdd", src, "--test-speakers", "theo", "--out", tmp_path / "out", "--json")
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert {s["split"]: s["kept"] for s in summary["splits"]} == {"train": 15, "test": 5}
    corpus = tmp_path / "out" / "fsdd"
    for split in ("train", "test"):
        for kind in ("recordings", "supervisions", "cuts"):
            assert (corpus / f"{kind}_{split}.jsonl.gz").is_file()
    train, test = load_manifest(corpus / "cuts_train.jsonl.gz"), load_manifest(corpus / "cuts_test.jsonl.gz")
    assert {c.supervisions[0].speaker for c in test} == {"theo"}
    assert "theo" not in {c.supervisions[0].speaker for c in train}
    cut = train[0]
    assert cut.sampling_rate == 16000 and cut.recording.sampling_rate == 16000
    assert cut.supervisions[0].text in {"zero", "one", "two", "three", "four"}
    feats = cut.load_features()
    assert feats.shape[1] == 80
    assert abs(feats.shape[0] - round(cut.duration * 100)) <= 2  # 10 ms shift
    assert np.isfinite(feats).all()
    audio = cut.load_audio()
    assert audio.shape[0] == 1  # mono
    # the source was 8 kHz: it was converted once to 16 kHz FLAC, at the same duration
    assert cut.recording.sources[0].source.endswith(".flac")
    assert abs(audio.shape[1] / 16000 - cut.duration) < 1e-3


def test_rerun_skips_and_force_redoes(tmp_path, shared_data, capsys):
    src = copy_fsdd(tmp_path / "fsdd", per_speaker=2)
    out = tmp_path / "out"
    assert run_cli("prepare", "fsdd", src, "--out", out, "--no-features", "--json") == 0
    capsys.readouterr()
    cuts = out / "fsdd" / "cuts_train.jsonl.gz"
    mtime = cuts.stat().st_mtime_ns
    assert run_cli("prepare", "fsdd", src, "--out", out, "--no-features", "--json") == 0
    again = json.loads(capsys.readouterr().out)
    assert all(s["skipped"] for s in again["splits"])
    assert cuts.stat().st_mtime_ns == mtime
    assert run_cli("prepare", "fsdd", src, "--out", out, "--no-features", "--force", "--json") == 0
    assert cuts.stat().st_mtime_ns != mtime


def _write_wav(path: Path, samples: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    sf.write(str(path), samples, sr, subtype=subtype)


def make_bad_folder(root: Path) -> tuple[Path, Path]:
    """Damaged copies of real FSDD audio next to good ones, and a transcript file."""
    root.mkdir(parents=True)
    good, sr = sf.read(FSDD / "3_jackson_0.wav", dtype="float32")
    shutil.copy(FSDD / "7_george_1.wav", root / "good.wav")
    _write_wav(root / "stereo.wav", np.stack([good, good * 0.5], axis=1), sr)
    from speechbudget.data.audio import resample

    _write_wav(root / "rate44k.wav", resample(good, sr, 44100), 44100)
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk" + bytes(range(256)) * 4)
    raw = (FSDD / "5_nicolas_2.wav").read_bytes()
    (root / "truncated.wav").write_bytes(raw[:30])  # header cut in half
    (root / "empty.wav").write_bytes(b"")
    with wave.open(str(root / "zerolen.wav"), "wb") as w:  # valid header, no samples
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
    _write_wav(root / "silent.wav", np.zeros_like(good), sr)
    nan = good.copy()
    nan[100:200] = np.nan
    _write_wav(root / "nan.wav", nan, sr, subtype="FLOAT")
    shutil.copy(FSDD / "1_theo_0.wav", root / "notext.wav")
    shutil.copy(FSDD / "2_theo_0.wav", root / "emptytext.wav")
    transcripts = root.parent / "text.tsv"
    lines = [
        f"{n}.wav\tseven"
        for n in ("good", "stereo", "rate44k", "corrupt", "truncated", "empty", "zerolen", "silent", "nan")
    ]
    lines.append("emptytext.wav\t   ")
    transcripts.write_text("\n".join(lines) + "\n")
    return root, transcripts


def test_bad_inputs_are_rejected_with_reasons_and_the_rest_kept(tmp_path, shared_data, capsys):
    folder, transcripts = make_bad_folder(tmp_path / "audio")
    rc = run_cli(
        "prepare", "dir", folder, "--transcripts", transcripts, "--name", "bad", "--out", tmp_path / "out"
    )
    assert rc == 0
    corpus = tmp_path / "out" / "bad"
    rejected = {
        json.loads(line)["id"]: json.loads(line)["reason"] for line in open(corpus / "rejected_train.jsonl")
    }
    assert set(rejected) == {
        "dir-corrupt.wav",
        "dir-truncated.wav",
        "dir-empty.wav",
        "dir-zerolen.wav",
        "dir-silent.wav",
        "dir-nan.wav",
        "dir-notext.wav",
        "dir-emptytext.wav",
    }
    assert "unreadable" in rejected["dir-corrupt.wav"]
    assert "unreadable" in rejected["dir-empty.wav"] or "empty" in rejected["dir-empty.wav"]
    assert "silent" in rejected["dir-silent.wav"]
    assert "NaN" in rejected["dir-nan.wav"]
    assert rejected["dir-notext.wav"] == "missing transcript"
    assert rejected["dir-emptytext.wav"] == "empty transcript"
    cuts = {c.id: c for c in load_cuts(corpus / "cuts_train.jsonl.gz")}
    assert set(cuts) == {"dir-good.wav", "dir-stereo.wav", "dir-rate44k.wav"}
    for c in cuts.values():
        assert c.sampling_rate == 16000 and c.num_channels == 1
        assert c.load_features().shape[1] == 80
    table = capsys.readouterr().out
    assert "rejected" in table


def test_nothing_usable_exits_non_zero_with_one_line(tmp_path, shared_data, capsys):
    folder = tmp_path / "audio"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"not audio at all")
    rc = run_cli("prepare", "dir", folder, "--out", tmp_path / "out")
    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing usable" in err[0]


def test_commonvoice_mp3_duplicates_and_speaker_split(tmp_path, shared_data, capsys):
    root = tmp_path / "cv"
    (root / "clips").mkdir(parents=True)
    rows = list(csv.DictReader(open(COMMONVOICE / "validated.tsv", newline=""), delimiter="\t"))[:12]
    for r in rows:
        shutil.copy(COMMONVOICE / "clips" / r["path"], root / "clips" / r["path"])
    with open(root / "validated.tsv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        w.writeheader()
        w.writerows(rows + [rows[0]])  # a duplicate row
    rc = run_cli("prepare", "commonvoice", root, "--out", tmp_path / "out", "--test-fraction", "0", "--json")
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    train = next(s for s in summary["splits"] if s["split"] == "train")
    assert train["kept"] == 12 and train["rejected"] == 1 and train["converted"] == 12
    rej = [json.loads(line) for line in open(tmp_path / "out" / "commonvoice" / "rejected_train.jsonl")]
    assert rej[0]["reason"].startswith("duplicate id")
    cuts = load_cuts(tmp_path / "out" / "commonvoice" / "cuts_train.jsonl.gz")
    texts = [c.supervisions[0].text for c in cuts]
    assert any("present" in t for t in texts)
    assert all(c.sampling_rate == 16000 for c in cuts)


def test_librispeech_layout_through_lhotse_recipe(tmp_path, shared_data):
    root = tmp_path / "LibriSpeech"
    chapter = root / "test-clean" / "1089" / "134686"
    chapter.mkdir(parents=True)
    lines = []
    for i, name in enumerate(["4_george_0.wav", "8_george_1.wav", "9_george_2.wav"]):
        audio, sr = sf.read(FSDD / name, dtype="float32")
        from speechbudget.data.audio import resample

        utt = f"1089-134686-{i:04d}"
        sf.write(str(chapter / f"{utt}.flac"), resample(audio, sr), 16000)
        lines.append(f"{utt} {['FOUR', 'EIGHT', 'NINE'][i]}")
    (chapter / "1089-134686.trans.txt").write_text("\n".join(lines) + "\n")
    assert run_cli("prepare", "librispeech", root, "--out", tmp_path / "out", "--no-features") == 0
    cuts = load_cuts(tmp_path / "out" / "librispeech" / "cuts_test.jsonl.gz")
    assert sorted(c.supervisions[0].text for c in cuts) == ["EIGHT", "FOUR", "NINE"]
    assert {c.supervisions[0].speaker for c in cuts} == {"1089"}


def test_interrupted_feature_extraction_leaves_no_complete_looking_manifest(
    tmp_path, shared_data, monkeypatch
):
    """A crash during feature extraction must not leave cuts_<split>.jsonl.gz behind."""
    src = copy_fsdd(tmp_path / "fsdd", per_speaker=2)
    import lhotse

    def boom(self, *a, **k):
        raise KeyboardInterrupt  # what Ctrl-C in the middle of extraction looks like

    monkeypatch.setattr(lhotse.CutSet, "compute_and_store_features", boom)
    rc = run_cli("prepare", "fsdd", src, "--out", tmp_path / "out")
    assert rc == 130
    assert not list((tmp_path / "out" / "fsdd").glob("cuts_*.jsonl.gz"))
    monkeypatch.undo()
    assert run_cli("prepare", "fsdd", src, "--out", tmp_path / "out") == 0
    assert (tmp_path / "out" / "fsdd" / "cuts_train.jsonl.gz").is_file()


def test_dask_executor_matches_local(tmp_path, shared_data, capsys):
    from distributed import LocalCluster

    src = copy_fsdd(tmp_path / "fsdd", per_speaker=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        rc = run_cli(
            "prepare",
            "fsdd",
            src,
            "--out",
            tmp_path / "dask",
            "--num-jobs",
            "2",
            "--executor",
            "dask",
            "--scheduler",
            cluster.scheduler_address,
            "--json",
        )
    assert rc == 0
    assert run_cli("prepare", "fsdd", src, "--out", tmp_path / "local", "--json") == 0
    a = {c.id: c for c in load_cuts(tmp_path / "dask" / "fsdd" / "cuts_train.jsonl.gz")}
    b = {c.id: c for c in load_cuts(tmp_path / "local" / "fsdd" / "cuts_train.jsonl.gz")}
    assert set(a) == set(b) and len(a) == 6
    for k in a:
        np.testing.assert_allclose(a[k].load_features(), b[k].load_features(), atol=1e-3)


def test_cli_misuse_is_one_line(tmp_path, capsys):
    assert run_cli("prepare", "nosuchsource", tmp_path) == 2
    assert run_cli("prepare", "fsdd", tmp_path / "missing") == 2
    assert run_cli("prepare", "dir", tmp_path, "--executor", "dask") == 2
    assert run_cli("data", "describe", tmp_path / "nope.jsonl.gz") == 2
    for line in [line for line in capsys.readouterr().err.splitlines() if line.strip()]:
        assert line.startswith("error:")


def test_describe_json(tmp_path, shared_data, capsys):
    src = copy_fsdd(tmp_path / "fsdd", per_speaker=3)
    assert run_cli("prepare", "fsdd", src, "--out", tmp_path / "out", "--no-features", "--json") == 0
    capsys.readouterr()
    assert run_cli("data", "describe", tmp_path / "out" / "fsdd", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["train"]["utterances"] == 9 and stats["train"]["speakers"] == 3
    assert stats["test"]["speakers"] == 1
    assert 0 < stats["train"]["duration_s"]["p50"] < 2
    assert stats["train"]["hours"] == pytest.approx(
        sum(c.duration for c in load_cuts(tmp_path / "out" / "fsdd" / "cuts_train.jsonl.gz")) / 3600, rel=1e-3
    )


def _band_energy(audio: np.ndarray, lo: float, hi: float, sr: int = 16000) -> float:
    spec = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / sr)
    return float(spec[(freqs >= lo) & (freqs < hi)].sum())


def test_band_limit_keeps_the_low_band_and_removes_the_high(tmp_path, shared_data, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    for p in sorted((COMMONVOICE / "clips").glob("*.mp3"))[:3]:  # real read speech, full band
        shutil.copy(p, clips / p.name)
    out = tmp_path / "out"
    for name, extra in (("full", []), ("tel", ["--band-limit-hz", "4000"])):
        args = ["prepare", "dir", clips, "--out", out, "--name", name, "--no-features", "--json", *extra]
        assert run_cli(*args) == 0
    capsys.readouterr()
    full = {c.id: c.load_audio()[0] for c in load_cuts(out / "full" / "cuts_train.jsonl.gz")}
    tel = {c.id: c.load_audio()[0] for c in load_cuts(out / "tel" / "cuts_train.jsonl.gz")}
    assert full.keys() == tel.keys() and len(full) == 3
    for cid, a in full.items():
        b = tel[cid]
        assert len(a) == len(b)
        assert _band_energy(a, 4600, 8000) > 1e-4 * _band_energy(a, 0, 8000)  # the clip has a high band
        assert _band_energy(b, 4600, 8000) < 1e-3 * _band_energy(a, 4600, 8000)  # ... and now it is gone
        assert abs(_band_energy(b, 100, 3500) / _band_energy(a, 100, 3500) - 1) < 0.05  # speech band kept
    stored = json.loads((out / "tel" / "prepare.json").read_text())["options"]
    assert stored["band_limit_hz"] == 4000
    # another band on the same corpus folder would mix two bands: refused, as any content option
    assert run_cli("prepare", "dir", clips, "--out", out, "--name", "tel", "--band-limit-hz", "3000") == 2
    assert run_cli("prepare", "dir", clips, "--out", out, "--name", "x", "--band-limit-hz", "8000") == 2
    err = capsys.readouterr().err
    assert "--band-limit-hz: 4000 -> 3000" in err and "--band-limit-hz must be between 1 and 7999" in err
