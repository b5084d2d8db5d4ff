"""Text-to-speech augmentation: a transcribed corpus's transcripts spoken by espeak-ng or flite voices
(`prepare tts`, a recipe's `tts:`), a fold's from its own training speakers only."""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY, cli_result, copy_fsdd

from speechbudget.data.flite import speak_flite
from speechbudget.data.manifests import cut_speaker, load_cuts
from speechbudget.data.synthetic import engine_voices, plan_transcripts
from speechbudget.errors import SpeechBudgetError
from speechbudget.run_recipe import load_run_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
NEEDS_FLITE = pytest.mark.skipif(
    shutil.which("flite") is None, reason="no flite: scripts/setup.sh installs it"
)


def _texts(path: Path) -> collections.Counter:
    return collections.Counter(s.text for c in load_cuts(path) for s in c.supervisions)


def test_every_transcript_is_spoken_copies_times_by_different_voices():
    texts = ["zero", "one", "two", "three"]
    specs = plan_transcripts(texts, copies=3, seed=0, num_speakers=5)
    assert collections.Counter(s.text for s in specs) == collections.Counter(texts * 3)
    assert {s.split for s in specs} == {"train"}
    assert len({s.id for s in specs}) == len(specs)
    # a transcript's copies are spoken by different voices; every voice speaks
    for t in texts:
        assert len({s.speaker for s in specs if s.text == t}) == 3
    assert len({s.speaker for s in specs}) == 5
    assert plan_transcripts(texts, copies=3, seed=0, num_speakers=5) == specs  # same seed, same plan
    assert plan_transcripts(texts, copies=3, seed=1, num_speakers=5) != specs
    # a fraction: that share of the transcripts, each once, the same share for the same seed
    half = plan_transcripts(texts * 5, copies=0.5, seed=0, num_speakers=5)
    assert len(half) == 10 and collections.Counter(s.text for s in half) <= collections.Counter(texts * 5)
    assert half == plan_transcripts(texts * 5, copies=0.5, seed=0, num_speakers=5)
    assert len(plan_transcripts(texts, copies=1.5, num_speakers=5)) == 6
    for bad in ({"copies": 0}, {"copies": 0.1}, {"texts": []}):
        with pytest.raises(SpeechBudgetError):
            plan_transcripts(**{"texts": texts, **bad})


def test_prepare_tts_speaks_a_real_corpus_transcripts_in_its_band(tmp_path, capsys):
    real = _prepared_fsdd(tmp_path, capsys)
    args = ["prepare", "tts", "--transcripts", real, "--copies", "2", "--speakers", "3"]
    code, out, err = cli_result(capsys, *args, "--band-limit-hz", "4000", "--out", tmp_path, "--json")
    assert code == 0, err
    assert json.loads(out)["splits"][0]["kept"] == 2 * len(load_cuts(real))
    tts = tmp_path / "tts" / "cuts_train.jsonl.gz"
    assert _texts(tts) == collections.Counter({t: 2 * n for t, n in _texts(real).items()})
    cuts = load_cuts(tts).to_eager()
    assert len({cut_speaker(c) for c in cuts}) == 3 and all(c.has_features for c in cuts)
    # the voices are speech, band-limited like an 8 kHz recording: almost no energy above 4 kHz
    audio, rate = sf.read(cuts[0].recording.sources[0].source)
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    assert rate == 16000 and 0.2 < len(audio) / rate < 3
    assert spectrum[freqs > 4200].sum() < 1e-3 * spectrum.sum()
    # --silence 0.02: cut close to the words like FSDD, which espeak-ng's ~0.3 s pause at the end is not;
    # a re-run with the new option and --force makes new audio rather than reusing the old files
    code, out, err = cli_result(capsys, *args, "--silence", "0.02", "--force", "--out", tmp_path, "--json")
    assert code == 0, err
    trimmed = load_cuts(tts).to_eager()
    assert {c.supervisions[0].text for c in trimmed} == {c.supervisions[0].text for c in cuts}
    saved = sum(c.duration for c in cuts) - sum(c.duration for c in trimmed)
    assert saved > 0.2 * len(cuts), saved
    for bad, message in (
        ([], "needs --transcripts"),
        (["--transcripts", tmp_path / "missing.jsonl.gz"], "not found"),
        (["--transcripts", tmp_path / "fsdd" / "0_george_0.wav"], "not a lhotse"),
        (["--transcripts", real, "--silence", "-1"], "silence must be 0 s or more"),
    ):
        code, _, err = cli_result(capsys, "prepare", "tts", *bad, "--out", tmp_path, "--name", "bad")
        assert code == 2 and message in err and "Traceback" not in err


def _prepared_fsdd(tmp_path: Path, capsys) -> Path:
    fsdd = copy_fsdd(tmp_path / "fsdd", per_speaker=2, speakers=("george", "jackson", "theo"))
    assert cli_result(capsys, "prepare", "fsdd", fsdd, "--out", tmp_path)[0] == 0
    return tmp_path / "fsdd" / "cuts_train.jsonl.gz"


def _median_f0(audio: np.ndarray, rate: int) -> float:
    """Median autocorrelation pitch over the loud 40 ms frames (60-400 Hz)."""
    n, found = int(0.04 * rate), []
    for start in range(0, len(audio) - n, n // 2):
        x = audio[start : start + n]
        if np.abs(x).max() < 0.3 * np.abs(audio).max():
            continue
        x = x - x.mean()
        ac = np.correlate(x, x, "full")[n - 1 :]
        lo, hi = rate // 400, rate // 60
        found.append(rate / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(found))


@NEEDS_FLITE
def test_flite_speakers_are_its_voices_at_their_own_pitch_and_speed():
    voices = engine_voices("flite", 10)  # four voices, each serving several speakers
    assert len(voices) >= 10 and set(voices) == {"flite+awb", "flite+kal16", "flite+rms", "flite+slt"}
    specs = plan_transcripts(["seven"] * 20, copies=1, seed=0, num_speakers=10, voices=voices)
    assert {s.voice for s in specs} == {"flite"} and len({s.speaker for s in specs}) == 10
    assert len({s.variant for s in specs}) == 4 and len({(s.pitch, s.speed) for s in specs}) == 10
    # real synthesis: the pitch moves the voice's F0 (an octave over +-40), the speed its duration
    low, rate = speak_flite("seven zero", "slt", pitch=30, speed=175)
    high, _ = speak_flite("seven zero", "slt", pitch=70, speed=175)
    fast, _ = speak_flite("seven zero", "slt", pitch=50, speed=220)
    slow, _ = speak_flite("seven zero", "slt", pitch=50, speed=130)
    assert 1.6 < _median_f0(high, rate) / _median_f0(low, rate) < 2.4
    assert 1.4 < len(slow) / len(fast) < 2.0
    with pytest.raises(SpeechBudgetError, match="unknown flite voice"):
        speak_flite("one", "m3", 50, 175)
    with pytest.raises(SpeechBudgetError, match="choose espeak or flite"):
        engine_voices("festival", 4)


@NEEDS_FLITE
def test_prepare_tts_speaks_with_flite(tmp_path, capsys):
    real = _prepared_fsdd(tmp_path, capsys)
    args = [
        "prepare",
        "tts",
        "--transcripts",
        real,
        "--engine",
        "flite",
        "--speakers",
        "6",
        "--out",
        tmp_path,
    ]
    code, _, err = cli_result(capsys, *args, "--silence", "0.02")
    assert code == 0, err
    cuts = load_cuts(tmp_path / "tts" / "cuts_train.jsonl.gz").to_eager()
    assert _texts(tmp_path / "tts" / "cuts_train.jsonl.gz") == _texts(real)
    assert {c.supervisions[0].custom["voice"].split("+")[0] for c in cuts} == {"flite"}
    assert all(c.has_features and 0.15 < c.duration < 1.5 for c in cuts)


def test_an_unknown_or_missing_engine_is_one_line(tmp_path, capsys, monkeypatch):
    real = _prepared_fsdd(tmp_path, capsys)
    args = ["prepare", "tts", "--transcripts", real, "--out", tmp_path]
    code, _, err = cli_result(capsys, *args, "--engine", "festival")
    assert code == 2 and "unknown tts engine 'festival'" in err and "Traceback" not in err
    monkeypatch.setattr("speechbudget.errors.shutil.which", lambda name: None)  # flite not installed
    code, _, err = cli_result(capsys, *args, "--engine", "flite")
    assert code == 2 and "apt-get install flite" in err and "Traceback" not in err


def test_a_recipe_tts_section_is_checked_when_loaded(tmp_path):
    base = [f"exp_dir={tmp_path / 'e'}"]
    r = load_run_recipe(RECIPES / "fsdd.yaml", [*base, "tts.copies=2", "tts.band_limit_hz=4000"])
    assert r["tts"] == {
        "copies": 2,
        "band_limit_hz": 4000,
        "silence": 0.02,
        "noise_dir": "../shared/data/noise",
        "accents": ["es", "de", "hi"],
        "accent_share": 0.25,
    }
    assert load_run_recipe(RECIPES / "fsdd.yaml", [*base, "tts=null"])["tts"] is None  # the recipe's, dropped
    for bad, message in (
        ("tts.transcripts=x.jsonl.gz", "set by the pipeline"),
        ("tts.copis=2", "unknown key 'tts.copis'"),
        ("tts.copies=two", "tts.copies"),
        ("tts=3", "must be a mapping"),
        ("tts.engine=festival", "choose espeak or flite"),
    ):
        with pytest.raises(SpeechBudgetError, match=message):
            load_run_recipe(RECIPES / "fsdd.yaml", [*base, bad])
    with pytest.raises(SpeechBudgetError, match="drop it for finetune.task: classify"):
        load_run_recipe(RECIPES / "fsdd-keywords.yaml", [*base, "tts.copies=1"])


def test_each_fold_speaks_only_its_own_training_transcripts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SPEECHBUDGET_CACHE_DIR", str(tmp_path / "cache"))
    fsdd = copy_fsdd(tmp_path / "fsdd" / "recordings", per_speaker=3, speakers=("george", "jackson", "theo"))
    exp = tmp_path / "loso"
    args = ["run", RECIPES / "fsdd.yaml", f"exp_dir={exp}", f"labeled.path={fsdd.parent}"]
    args += [
        "labeled.num_jobs=1",
        *TINY,
        "scratch_baseline=false",
        "tts.speakers=4",
        "tts.copies=1",
    ]
    code, out, err = cli_result(capsys, *args, "--folds", "speakers", "--stop-stage", "folds")
    assert code == 0, err[-3000:]
    for speaker in ("george", "jackson"):
        fold = exp / "folds" / speaker
        card = json.loads((fold / "finetune" / "run_card.json").read_text())
        train = Path(card["config"]["train_cuts"])
        tts = fold / "data" / "finetune-tts" / "cuts_train.jsonl.gz"
        assert card["config"]["extra_train_cuts"] == str(tts)
        assert _texts(tts) == _texts(train)  # copies: 1, the fold's own transcripts
        assert not {cut_speaker(c) for c in load_cuts(tts)} & {"george", "jackson", "theo"}
        # the fold's transcripts come from the other speaker: the dev speaker's clips are never read
        assert {c.id.split("-")[1] for c in load_cuts(train)} == {"george", "jackson"} - {speaker}
    assert out.count("[tts] the transcripts of") == 2
    # the folds again: a finished fold neither speaks nor trains again
    (exp / ".stages" / "folds.json").unlink()
    code, out, err = cli_result(capsys, *args, "--folds", "speakers", "--stop-stage", "folds")
    assert code == 0 and "[fold george: finetune] done already" in out and "[tts]" not in out
