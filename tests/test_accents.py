"""Accented English for text-to-speech augmentation: English phonemes said with another language's
sounds by that language's espeak-ng voice (`tts.accents`; `prepare.accents` for a synthetic pool)."""

from __future__ import annotations

import collections
import csv
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, cli_result, copy_fsdd

from speechbudget.data.accents import ACCENTS, accented, english_phonemes
from speechbudget.data.corpus_spec import CorpusSpec
from speechbudget.data.espeak import transcribe
from speechbudget.data.manifests import load_cuts
from speechbudget.data.synthetic import (
    UtteranceSpec,
    accent_voices,
    list_voices,
    make_speakers,
    plan_corpus,
    plan_transcripts,
    speak,
    speaker_mix,
)
from speechbudget.errors import SpeechBudgetError

DIGITS = "zero one two three four five six seven eight nine oh"


def _sounds(phonemes: str) -> list[str]:
    return phonemes.removeprefix("[[").removesuffix("]]").split()


def test_english_phonemes_become_the_accent_s_own_sounds():
    # French: /θ/ -> s, /ð/ -> z, no /h/, every word stressed on its last vowel
    fr = _sounds(accented("three the house seven", "fr"))
    assert fr[0].startswith("sr") and fr[1].startswith("z") and not fr[2].startswith("h")
    assert fr[3] == "sEv'@n" and all(w.count("'") == 1 for w in fr)
    # Greek: keeps /θ/ and /ð/, /h/ -> x, /ʃ/ -> s, five vowels only; English stress kept
    el = _sounds(accented("three the house she seven", "el"))
    assert (
        el[0] == "Tr'i" and el[1].startswith("D") and el[2].startswith("x") and el[3].replace("'", "") == "si"
    )
    assert el[4] == "s'even"
    assert set(re.sub(r"[^a-zA-Z@]", "", "".join(_sounds(accented(DIGITS, "el"))))) <= set(
        "aeiouTDzsrfvkntmlpbgdx"
    )


def test_spanish_german_and_indian_english_keep_their_own_rules():
    # Spanish: /v/ -> b, /z/ -> s, /h/ -> the jota, /ʃ/ -> tʃ, five vowels
    es = _sounds(accented("seven zero house she", "es"))
    assert es[0] == "s'eben" and es[1].startswith("s") and es[2].startswith("x") and es[3].startswith("tS")
    # German: /w/ -> v, /θ/ -> s, /ð/ -> z, the uvular R, "go" a long pure o
    de = _sounds(accented("one three the go", "de"))
    assert de[0].startswith("v") and de[1].startswith("sR") and de[2].startswith("z") and de[3] == "g'o:"
    # Indian English: retroflex t and d, dental aspirated /θ/, /w/ -> v
    hi = _sounds(accented("two three one day", "hi"))
    assert hi[0].startswith("t.") and hi[1].startswith("t#") and hi[2].startswith("v") and hi[3] == "d.'e:"


def test_italian_portuguese_and_russian_keep_their_own_rules():
    # Italian: no /h/, /θ/ -> t, a schwa after a final obstruent ("eight" -> "eighta"), none after /s/
    it = _sounds(accented("house three eight six", "it"))
    assert it[0].startswith("'a") and it[1].startswith("tr") and it[2].endswith("t@") and it[3].endswith("s")
    # Brazilian Portuguese: /h/ -> x, /ð/ -> d, an i after a final obstruent ("five" -> "fivi")
    pt = _sounds(accented("house the five", "pt-br"))
    assert pt[0].startswith("x") and pt[1].startswith("d") and pt[2].endswith("vi")
    # Russian: /w/ -> v, /θ/ -> s, /ð/ -> z, /h/ -> x; no vowel added
    ru = _sounds(accented("one three the house eight", "ru"))
    assert [w[0] for w in ru[:4]] == ["v", "s", "z", "x"] and ru[4].endswith("t")


def test_japanese_opens_every_syllable_and_arabic_has_no_p_or_v():
    # Japanese: a vowel after each consonant no vowel follows (o after t), l and r one flap, only n closes
    ja = _sounds(accented("three six eight little nine", "ja"))
    assert ja[:3] == ["sur`'i:", "s'ikusu", "'eito"] and ja[3].count("r`") == 2 and ja[4] == "n'ain"
    # Arabic: /p/ -> b, /v/ -> f, "pen" -> "pin"
    ar = _sounds(accented("pen seven", "ar"))
    assert ar[0] == "b'in" and ar[1][3] == "f"


def test_every_listed_accent_gets_a_voice_it_can_and_a_draw_that_had_them_all_is_kept():
    many = ["es", "de", "hi", "it", "pt-br", "ru", "ja", "ar"]
    drawn = make_speakers(16, 0, accent_voices(many, 64))
    assert "es" not in {s.voice for s in drawn}  # the random draw alone leaves Spanish out
    mixed = speaker_mix(64, 0, None, many, 0.25)[48:]
    assert {s.voice for s in mixed} == set(many)
    # only one speaker changed: an accent drawn more than once gave Spanish its last voice
    assert sum(a.voice != b.voice for a, b in zip(drawn, mixed)) == 1
    assert [(s.variant, s.pitch, s.speed) for s in drawn] == [(s.variant, s.pitch, s.speed) for s in mixed]
    # a recipe's draw that already speaks every accent is unchanged (its corpus stays as measured)
    assert speaker_mix(64, 0, None, ["es", "de", "hi"], 0.25)[48:] == [
        replace(s, id=f"spk{48 + i:03d}")
        for i, s in enumerate(make_speakers(16, 0, accent_voices(["es", "de", "hi"], 64)))
    ]
    # fewer accented speakers than accents: each speaks another one (the draw alone repeats Russian)
    assert len({s.voice for s in make_speakers(5, 0, accent_voices(many, 20))}) == 4
    assert len({s.voice for s in speaker_mix(20, 0, None, many, 0.25)[15:]}) == 5


def test_every_accent_sound_is_one_its_voice_knows():
    # espeak-ng skips a phoneme name its voice lacks without a word: each sound of each table, spoken
    # alone as phoneme input, must come back (the voice's own rules may change it, e.g. German devoicing)
    # (one call per sound: joined into one call, a lone schwa runs into the next sound's clause)
    def heard(pair: tuple) -> bool:
        accent, sound = pair
        return bool("".join(transcribe(f"[[{sound}]]", accent, ipa=False, sep="", otherwise="")).strip("' "))

    pairs = [
        (accent, sound)
        for accent, table in ACCENTS.items()
        for sound in sorted(
            {s for target in table.table.values() for s in target} | set(table.epenthesis_after.values())
        )
    ]
    with ThreadPoolExecutor(4) as pool:
        assert [p for p, ok in zip(pairs, pool.map(heard, pairs)) if not ok] == []


def test_every_english_sound_of_real_sentences_has_an_accented_one():
    with open(SHARED / "commonvoice-mini" / "validated.tsv", newline="") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f, delimiter="\t")][:40]
    for accent in ACCENTS:
        for sentence in sentences:
            words = _sounds(accented(sentence, accent))
            assert len(words) == len(english_phonemes(sentence)), sentence
    with pytest.raises(SpeechBudgetError, match="unknown accent 'pt'"):
        accented("one", "pt")


def test_accented_voices_speak_their_own_sounds_and_the_plan_mixes_them_in():
    specs = plan_transcripts(
        ["one", "two"] * 8,
        seed=0,
        num_speakers=8,
        accents=["el", "fr"],
        accent_share=0.5,
    )
    by_speaker = {s.speaker: s.voice for s in specs}
    assert len(by_speaker) == 8 and collections.Counter(v in ACCENTS for v in by_speaker.values()) == {
        True: 4,
        False: 4,
    }
    # no accents: the plan of an older recipe, unchanged
    assert plan_transcripts(["one", "two"] * 8, seed=0, num_speakers=8) == plan_transcripts(
        ["one", "two"] * 8, seed=0, num_speakers=8, voices=list_voices()
    )
    # one accent serves more speakers than it has variants, each at its own pitch and speed
    voices = accent_voices(["fr"], 40)
    assert len(voices) >= 40 and {v.split("+")[0] for v in voices} == {"fr"}
    # real synthesis: the Greek voice says the accented phonemes, not the English text read as Greek
    spec = UtteranceSpec("u", "three", "s", "el", "m3", 50, 175, "train", 1)
    with_accent = speak(spec)
    assert 0.2 < len(with_accent) / 16000 < 2
    english = speak(UtteranceSpec("u", "three", "s", "en-us", "m3", 50, 175, "train", 1))
    assert len(with_accent) != len(english) or not np.allclose(with_accent, english)


def test_a_bad_accent_option_is_one_line(tmp_path, capsys):
    for values, message in (
        ({"accents": "pt"}, f"unknown accent 'pt'; choose from {', '.join(sorted(ACCENTS))}$"),
        ({"accents": "el", "engine": "flite"}, "spoken by espeak-ng"),
        ({"accents": "el", "accent_share": 0}, "accent_share must be in"),
    ):
        with pytest.raises(SpeechBudgetError, match=message):
            CorpusSpec.build("tts", values, "tts")
    fsdd = copy_fsdd(tmp_path / "fsdd", per_speaker=1, speakers=("george", "jackson", "theo"))
    assert cli_result(capsys, "prepare", "fsdd", fsdd, "--out", tmp_path)[0] == 0
    real = tmp_path / "fsdd" / "cuts_train.jsonl.gz"
    args = ["prepare", "tts", "--transcripts", real, "--out", tmp_path, "--speakers", "4"]
    code, _, err = cli_result(capsys, *args, "--accents", "xx")
    assert code == 2 and "unknown accent 'xx'" in err and "Traceback" not in err
    # and a good one: half the voices accented, every clip speech of a plausible length
    code, _, err = cli_result(capsys, *args, "--accents", "el,fr", "--copies", "4", "--silence", "0.02")
    assert code == 0, err
    cuts = load_cuts(Path(tmp_path) / "tts" / "cuts_train.jsonl.gz").to_eager()
    voices = {c.supervisions[0].custom["voice"].split("+")[0] for c in cuts}
    assert voices & set(ACCENTS) and voices - set(ACCENTS)
    assert all(0.15 < c.duration < 1.5 for c in cuts)


def test_a_pretraining_pool_with_accented_voices(tmp_path, capsys):
    # `prepare.accents`: the synthetic corpus's voices mixed like the tts clips'; without accents the
    # corpus an older recipe planned, to the utterance
    plain = plan_corpus(0.05, seed=2, num_speakers=20, grammar="digits")
    assert plain == plan_corpus(0.05, seed=2, num_speakers=20, grammar="digits", accent_share=0.5)
    mixed = plan_corpus(
        0.05,
        seed=2,
        num_speakers=20,
        grammar="digits",
        accents=["el"],
        accent_share=0.5,
    )
    voice = {s.speaker: (s.split, s.voice == "el") for s in mixed}
    assert collections.Counter(accented for _, accented in voice.values()) == {True: 10, False: 10}
    # whole speakers go to a split, accented or not: 2 dev and 2 test voices, so most accented ones train
    assert sum(split == "train" and accented for split, accented in voice.values()) >= 6
    with pytest.raises(SpeechBudgetError, match="unknown accent 'xx'"):
        CorpusSpec.build("synthetic", {"accents": "xx"}, "prepare")
    code, _, err = cli_result(
        capsys, "prepare", "synthetic", "--grammar", "digits", "--hours", "0.01", "--speakers", "10",
        "--accents", "fr", "--out", tmp_path,
    )  # fmt: skip
    assert code == 0, err
    cuts = load_cuts(Path(tmp_path) / "synthetic" / "cuts_train.jsonl.gz").to_eager()
    voices = {c.supervisions[0].custom["voice"].split("+")[0] for c in cuts}
    assert "fr" in voices and voices - {"fr"}
    assert all(0.2 < c.duration < 10 for c in cuts)


def test_without_espeak_ng_each_caller_says_its_own_way_out(monkeypatch):
    """A missing espeak-ng is a one-line error naming what to do without it where it was needed."""
    from speechbudget.asr.phones import pronounce

    monkeypatch.setenv("PATH", "")
    english_phonemes.cache_clear()
    with pytest.raises(SpeechBudgetError, match="espeak-ng not found.*leave tts.accents empty"):
        english_phonemes("three")
    with pytest.raises(SpeechBudgetError, match="espeak-ng not found.*bpe, unigram or char tokenizer"):
        pronounce(["three"])
