"""The synthetic corpus: grammar, planning, and real espeak-ng synthesis (a handful of utterances)."""

import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechbudget.data import synthetic
from speechbudget.data.synthetic import (
    estimate_duration,
    generate_sentence,
    list_voices,
    load_grammar,
    plan_corpus,
    synthesize,
)
from speechbudget.errors import SpeechBudgetError

NOISE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "noise"


@pytest.fixture(scope="module")
def specs():
    return plan_corpus(0.25, seed=3, num_speakers=10)


def _read(path: Path) -> np.ndarray:
    audio, _ = sf.read(path, dtype="float64")
    return audio


def _snr_db(clean: np.ndarray, mixed: np.ndarray) -> float:
    noise = mixed - clean
    return 10 * np.log10(np.mean(clean**2) / np.mean(noise**2))


# ---------------------------------------------------------------- grammar


def test_sentences_are_clean_lowercase_words_of_the_right_length():
    rng = random.Random(0)
    for _ in range(500):
        text = generate_sentence(rng)
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", text), text
        assert synthetic.MIN_WORDS <= len(text.split()) <= synthetic.MAX_WORDS


def test_grammar_has_a_few_hundred_words_and_fixes_articles():
    grammar = load_grammar()
    assert len(grammar.vocabulary()) >= 300
    assert synthetic._fix_articles("a old farmer saw an big dog an hour ago".split()) == (
        "an old farmer saw a big dog an hour ago".split()
    )


def test_missing_grammar_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SpeechBudgetError, match="grammar not found"):
        load_grammar(tmp_path / "nowhere")


def test_unknown_template_slot_is_rejected(tmp_path):
    (tmp_path / "nouns.txt").write_text("cat\n")
    (tmp_path / "templates.txt").write_text("the <nouns> ate the <fruit>\n")
    with pytest.raises(SpeechBudgetError, match="unknown slot <fruit>"):
        load_grammar(tmp_path)


# ---------------------------------------------------------------- planning


def test_list_voices_are_english_voice_variant_pairs():
    voices = list_voices()
    assert len(voices) >= 24
    assert all(re.fullmatch(r"en[a-z0-9-]*\+\w+", v) for v in voices)


def test_plan_is_deterministic_and_seed_dependent(specs):
    assert plan_corpus(0.25, seed=3, num_speakers=10) == specs
    assert plan_corpus(0.25, seed=4, num_speakers=10) != specs
    ids = [s.id for s in specs]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"synth-spk\d{3}-\d{6}", i) for i in ids)


def test_plan_reaches_the_requested_hours(specs):
    seconds = sum(estimate_duration(s) for s in specs)
    assert 0.25 * 3600 <= seconds <= 0.25 * 3600 + 15


def test_dev_and_test_speakers_are_never_in_train(specs):
    speakers = {split: {s.speaker for s in specs if s.split == split} for split in ("train", "dev", "test")}
    assert all(speakers.values())
    assert not speakers["train"] & speakers["dev"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["dev"] & speakers["test"]
    assert len({s.voice + s.variant for s in specs}) == 10


def test_bad_plan_arguments_are_clear_errors():
    with pytest.raises(SpeechBudgetError, match="none for training"):
        plan_corpus(0.1, num_speakers=2)
    with pytest.raises(SpeechBudgetError, match="speakers must be between 1 and"):
        plan_corpus(0.1, num_speakers=10_000)
    with pytest.raises(SpeechBudgetError, match="hours"):
        plan_corpus(0)


# ---------------------------------------------------------------- synthesis (real espeak-ng)


def test_synthesize_writes_16k_mono_deterministic_wav(specs, tmp_path):
    spec = specs[0]
    path = synthesize(spec, tmp_path / "a")
    assert path.parent == tmp_path / "a" / spec.split and path.name.startswith(f"{spec.id}-")
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 0.2 * len(spec.text.split()) <= info.duration <= 0.8 * len(spec.text.split()) + 1
    assert synthesize(spec, tmp_path / "b").read_bytes() == path.read_bytes()
    assert not list(path.parent.glob("*.tmp"))


def test_synthesize_skips_existing_files_of_the_same_options_only(specs, tmp_path):
    path = synthesize(specs[1], tmp_path)
    path.write_bytes(b"already here")
    assert synthesize(specs[1], tmp_path) == path  # resumed: the file is not made again
    assert path.read_bytes() == b"already here"
    # other words, noise or trimming never reuse it (prepare --force with new options redoes the audio)
    other = [
        synthesize(replace(specs[1], text="four four"), tmp_path),
        synthesize(specs[1], tmp_path, noise_dir=NOISE_DIR, snr_db=10.0),
        synthesize(specs[1], tmp_path, noise_dir=NOISE_DIR, snr_db=20.0),
        synthesize(specs[1], tmp_path, silence=0.02),
    ]
    assert len({path, *other}) == 5 and all(p.read_bytes() != b"already here" for p in other)


def test_trimming_keeps_the_words_and_the_asked_silence(specs, tmp_path):
    spec = replace(specs[0], text="seven")
    whole = _read(synthesize(spec, tmp_path))
    trimmed = _read(synthesize(spec, tmp_path, silence=0.02))
    # espeak-ng ends a clip with ~0.3 s of silence; trimmed, 20 ms are left at each end
    assert len(whole) - len(trimmed) > 0.2 * synthetic.SAMPLE_RATE
    loud = np.flatnonzero(np.abs(trimmed) > np.abs(trimmed).max() * 10 ** (-synthetic.SILENCE_FLOOR_DB / 20))
    keep = round(0.02 * synthetic.SAMPLE_RATE)
    assert loud[0] <= keep and len(trimmed) - 1 - loud[-1] <= keep
    assert abs(np.sum(trimmed**2) - np.sum(whole**2)) < 1e-3 * np.sum(whole**2)  # all the speech is kept
    assert len(_read(synthesize(spec, tmp_path, silence=0.0))) < len(trimmed)
    with pytest.raises(SpeechBudgetError, match="0 s or more"):
        synthetic.trim_silence(whole, -0.1)


def test_duration_estimate_is_close_to_real_duration(specs):
    sample = specs[:: len(specs) // 10][:10]
    real = np.array([len(synthetic.speak(s)) / synthetic.SAMPLE_RATE for s in sample])
    estimated = np.array([estimate_duration(s) for s in sample])
    assert np.all(np.abs(estimated - real) <= 0.25 * real), list(zip(estimated, real))
    assert abs(estimated.sum() - real.sum()) <= 0.1 * real.sum()


def test_noise_is_mixed_at_the_requested_snr(specs, tmp_path):
    spec = specs[2]
    clean = _read(synthesize(spec, tmp_path / "clean"))
    noisy_path = synthesize(spec, tmp_path / "noisy", noise_dir=NOISE_DIR, snr_db=5.0)
    assert abs(_snr_db(clean, _read(noisy_path)) - 5.0) < 0.5
    again = synthesize(spec, tmp_path / "again", noise_dir=NOISE_DIR, snr_db=5.0)
    assert again.read_bytes() == noisy_path.read_bytes()


def test_noise_at_another_rate_is_resampled(specs, tmp_path):
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    hum = np.sin(2 * np.pi * 120 * np.arange(8000 * 3) / 8000)
    stereo = np.stack([hum, np.random.default_rng(0).normal(0, 0.3, hum.size)], axis=1)
    sf.write(noise_dir / "hum.wav", stereo, 8000)  # 3 s: shorter than some utterances, so it loops
    spec = replace(specs[3], text="the old farmer sold seven green apples in the market last week")
    clean = _read(synthesize(spec, tmp_path / "clean"))
    mixed = _read(synthesize(spec, tmp_path / "noisy", noise_dir=noise_dir, snr_db=0.0))
    assert abs(_snr_db(clean, mixed)) < 0.5


def test_missing_noise_folder_is_a_clear_error(specs, tmp_path):
    with pytest.raises(SpeechBudgetError, match="does not exist"):
        synthesize(specs[0], tmp_path, noise_dir=tmp_path / "no-noise", snr_db=10.0)
    with pytest.raises(SpeechBudgetError, match="snr_db"):
        synthesize(specs[0], tmp_path, noise_dir=NOISE_DIR)


def test_missing_espeak_is_a_clear_error(specs, monkeypatch):
    monkeypatch.setattr("speechbudget.errors.shutil.which", lambda name: None)
    with pytest.raises(SpeechBudgetError, match="apt-get install espeak-ng"):
        synthetic.speak(specs[0])


def test_digits_grammar_says_only_digits_and_unknown_grammar_is_an_error():
    from speechbudget.data.synthetic import plan_corpus
    from speechbudget.errors import SpeechBudgetError

    words = {"zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    specs = plan_corpus(0.02, seed=1, grammar="digits")
    assert specs and all(set(s.text.split()) <= words and 4 <= len(s.text.split()) <= 7 for s in specs)
    with pytest.raises(SpeechBudgetError, match="unknown synthetic grammar"):
        plan_corpus(0.02, grammar="klingon")
