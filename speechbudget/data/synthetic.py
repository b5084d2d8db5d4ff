"""The embedded default corpus: sentences from a small English grammar, spoken by espeak-ng voices.

Why it exists: every stage of the toolkit (prepare, pretrain, fine-tune, decode) must run offline on a
laptop and in tests. This corpus needs no download, has exact transcripts, as many hours as asked for,
and many speakers, so dev/test can use speakers never seen in training.

The pieces are pure and deterministic: `plan_corpus` decides every utterance (text, speaker, split,
seed) from one integer seed; `synthesize` turns one spec into one 16 kHz wav, always the same bytes.
"""

from __future__ import annotations

import collections
import hashlib
import math
import random
import re
import subprocess
import tempfile
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import soundfile as sf

from speechbudget.atomic import atomic_output
from speechbudget.errors import SpeechBudgetError

from .accents import ACCENTS, accented, check_accents
from .audio import SAMPLE_RATE, resample
from .espeak import espeak_binary
from .flite import flite_voices, speak_flite

GRAMMAR_DIR = Path(__file__).resolve().parents[2] / "data" / "synthetic"
#: what the synthetic speakers say: open-vocabulary sentences, or connected digits (TIDIGITS-style,
#: 11 words: a task a CPU learns in minutes)
GRAMMARS = {"sentences": GRAMMAR_DIR, "digits": GRAMMAR_DIR.parent / "synthetic-digits"}
SILENCE_FLOOR_DB = 50.0  # below the peak: espeak-ng's pauses are digital silence
MIN_WORDS, MAX_WORDS = 4, 14

# espeak-ng variants that sound like a person; the others are robots, whispers, croaks or effects,
# which would teach a model nothing about speech. Filtered against what is installed.
HUMAN_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "Annie",
    "Denis",
    "Mike",
    "adam",
    "aunty",
    "belinda",
    "benjamin",
    "david",
    "ed",
    "edward",
    "linda",
    "michel",
    "paul",
    "quincy",
    "rob",
    "robert",
    "steph",
    "travis",
)

# A speaker's base prosody; espeak's own defaults are pitch 50 (0-99) and 175 words per minute.
PITCH_RANGE = (30, 70)
SPEED_RANGE = (140, 190)
# Per-utterance wobble around the speaker's base, so one speaker does not sound identical every time.
PITCH_JITTER = 5
SPEED_JITTER = 0.05
# espeak-ng amplitude (default 100): some variants clip at the default, so leave headroom, and the
# output is then peak-normalised to PEAK so voices have comparable loudness.
ESPEAK_AMPLITUDE = 60
PEAK = 0.5

# Duration model, seconds at 175 words per minute: INTERCEPT + PER_LETTER * letters + PER_WORD * words,
# scaled by 175 / speed. Fitted by least squares on real espeak-ng output (see tests/test_synthetic.py,
# which checks it on fresh utterances).
DURATION_INTERCEPT = 0.42
DURATION_PER_LETTER = 0.042
DURATION_PER_WORD = 0.079


# ---------------------------------------------------------------- grammar


#: the most a synthetic corpus is made of: its list of utterances is planned in memory first
MAX_HOURS = 1000.0


@dataclass(frozen=True)
class WordList:
    """Entries of one word-list file; each entry has one string per form (e.g. sg, pl)."""

    name: str
    forms: tuple[str, ...]
    entries: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Grammar:
    """Word lists plus templates whose `<list>` / `<list.form>` slots are filled at random."""

    lists: dict[str, WordList]
    templates: tuple[str, ...]

    def vocabulary(self) -> set[str]:
        """Every word a generated sentence can contain."""
        words = {w for wl in self.lists.values() for entry in wl.entries for e in entry for w in e.split()}
        for template in self.templates:
            words.update(t for t in template.split() if not t.startswith("<"))
        return words | {"an"}


_SLOT = re.compile(r"<([a-z_]+)(?:\.([a-z_]+))?>")
_WORDS = re.compile(r"[a-z]+( [a-z]+)*")


def _content_lines(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _load_word_list(path: Path) -> WordList:
    lines = _content_lines(path)
    forms: tuple[str, ...] = ("base",)
    if lines and lines[0].startswith("@forms"):
        forms = tuple(lines.pop(0).split()[1:])
    entries = []
    for line in lines:
        entry = tuple(part.strip() for part in line.split("|"))
        if len(entry) != len(forms) or not all(_WORDS.fullmatch(e) for e in entry):
            raise SpeechBudgetError(
                f"{path}: bad entry {line!r}: expected {len(forms)} '|'-separated forms of lowercase words"
            )
        entries.append(entry)
    if not entries:
        raise SpeechBudgetError(f"{path} has no entries: add one word or phrase per line")
    return WordList(path.stem, forms, tuple(entries))


def load_grammar(directory: Path = GRAMMAR_DIR) -> Grammar:
    """Read every `*.txt` word list and `templates.txt` from `directory`, checking every slot."""
    templates_path = directory / "templates.txt"
    if not templates_path.is_file():
        raise SpeechBudgetError(
            f"synthetic corpus grammar not found at {directory}: it ships in the repository's data/synthetic; "
            "reinstall speechbudget from a full checkout"
        )
    lists = {p.stem: _load_word_list(p) for p in sorted(directory.glob("*.txt")) if p != templates_path}
    templates = tuple(_content_lines(templates_path))
    for template in templates:
        for name, form in _SLOT.findall(template):
            if name not in lists or (form and form not in lists[name].forms):
                raise SpeechBudgetError(
                    f"{templates_path}: unknown slot <{name}{'.' + form if form else ''}>"
                )
    return Grammar(lists, templates)


@lru_cache(maxsize=1)
def default_grammar() -> Grammar:
    return load_grammar(GRAMMAR_DIR)


@lru_cache(maxsize=4)
def named_grammar(name: str) -> Grammar:
    if name not in GRAMMARS:
        raise SpeechBudgetError(f"unknown synthetic grammar {name!r}; choose one of {', '.join(GRAMMARS)}")
    return load_grammar(GRAMMARS[name])


def _starts_with_vowel_sound(word: str) -> bool:
    # Spelling is a good enough guide for our word lists; these prefixes are the usual exceptions.
    if word.startswith(("hour", "honest", "honour", "heir")):
        return True
    return word[0] in "aeiou" and not word.startswith(("uni", "use", "usu", "eu", "one", "once"))


def _fix_articles(words: list[str]) -> list[str]:
    """'a apple' -> 'an apple' (and back), since slots are filled independently of the article."""
    out = list(words)
    for i in range(len(out) - 1):
        if out[i] in ("a", "an"):
            out[i] = "an" if _starts_with_vowel_sound(out[i + 1]) else "a"
    return out


def _fill(template: str, grammar: Grammar, rng: random.Random) -> str:
    def pick(match: re.Match) -> str:
        word_list = grammar.lists[match.group(1)]
        form = match.group(2) or word_list.forms[0]
        return rng.choice(word_list.entries)[word_list.forms.index(form)]

    return _SLOT.sub(pick, template)


def generate_sentence(rng: random.Random, grammar: Grammar | None = None) -> str:
    """One lowercase sentence of MIN_WORDS..MAX_WORDS words, no punctuation."""
    grammar = grammar or default_grammar()
    while True:
        words = _fill(rng.choice(grammar.templates), grammar, rng).split()
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return " ".join(_fix_articles(words))


# ---------------------------------------------------------------- voices and speakers


def _voice_table(selector: str) -> list[list[str]]:
    """Rows of `espeak-ng --voices=<selector>`: [priority, language, age/gender, name, file, ...]."""
    result = subprocess.run(
        [espeak_binary(), f"--voices={selector}"], capture_output=True, text=True, check=True
    )
    return [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]


@lru_cache(maxsize=1)
def _installed_variants() -> tuple[str, ...]:
    installed = {row[4].removeprefix("!v/") for row in _voice_table("variant") if row[4].startswith("!v/")}
    return tuple(v for v in HUMAN_VARIANTS if v in installed)


@lru_cache(maxsize=1)
def _installed_voices() -> tuple[str, ...]:
    table = _voice_table("en")
    # mb/ voices need the separately installed MBROLA synthesizer; "variant" rows are not languages.
    bases = sorted({row[1] for row in table if row[1].startswith("en") and not row[4].startswith("mb/")})
    variants = _installed_variants()
    if not bases or not variants:
        raise SpeechBudgetError(
            "espeak-ng has no English voices: reinstall it with `apt-get install espeak-ng`"
        )
    return tuple(f"{base}+{variant}" for base in bases for variant in variants)


def list_voices() -> list[str]:
    """English espeak-ng voices times human-sounding variants, as 'voice+variant' (e.g. 'en-us+m3')."""
    return list(_installed_voices())


def accent_voices(accents: list[str], num_speakers: int) -> list[str]:
    """Voices for `num_speakers` speakers of English with the given accents (accents.ACCENTS), as
    'language+variant'; a voice serves several speakers (each its own pitch and speed) when needed."""
    check_accents(accents)
    return _enough(
        [f"{accent}+{variant}" for accent in accents for variant in _installed_variants()], num_speakers
    )


def _enough(voices: list[str], num_speakers: int) -> list[str]:
    """`voices` repeated until there is one per speaker (make_speakers gives each its own pitch and speed)."""
    return voices * math.ceil(num_speakers / len(voices))


#: the engines that speak a corpus; a flite speaker is 'flite+<voice>' (its voice in the variant's place)
ESPEAK, FLITE = "espeak", "flite"
ENGINES = (ESPEAK, FLITE)


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise SpeechBudgetError(f"unknown tts engine {engine!r}; choose {' or '.join(ENGINES)}")


def engine_voices(engine: str, num_speakers: int) -> list[str]:
    """Voices for `num_speakers` speakers of `engine`. Flite has four voices, so each serves several
    speakers, told apart by their own base pitch and speed (make_speakers)."""
    check_engine(engine)
    if engine == ESPEAK:
        return list_voices()
    return _enough([f"{FLITE}+{v}" for v in flite_voices()], num_speakers)


@dataclass(frozen=True)
class Speaker:
    id: str
    voice: str
    variant: str
    pitch: int
    speed: int


def make_speakers(num_speakers: int, seed: int = 0, voices: list[str] | None = None) -> list[Speaker]:
    """Distinct voice+variant pairs, each with its own base pitch and speed, fixed by `seed`."""
    voices = sorted(voices if voices is not None else list_voices())
    if not 1 <= num_speakers <= len(voices):
        raise SpeechBudgetError(
            f"speakers must be between 1 and {len(voices)} (the voices available), got {num_speakers}"
        )
    rng = random.Random(f"speakers:{seed}")
    speakers = []
    for i, name in enumerate(rng.sample(voices, num_speakers)):
        voice, variant = name.split("+", 1)
        pitch, speed = rng.randint(*PITCH_RANGE), rng.randint(*SPEED_RANGE)
        speakers.append(Speaker(f"spk{i:03d}", voice, variant, pitch, speed))
    return speakers


def speaker_mix(
    num_speakers: int,
    seed: int = 0,
    voices: list[str] | None = None,
    accents: Sequence[str] = (),
    accent_share: float = 0.0,
) -> list[Speaker]:
    """`make_speakers`, with `accent_share` of them speaking English with one of `accents` (numbered
    after the others); without accents the same speakers as `make_speakers`, so older corpora stay
    as planned."""
    num_accented = round(accent_share * num_speakers) if accents else 0
    speakers = make_speakers(num_speakers - num_accented, seed, voices) if num_speakers > num_accented else []
    if num_accented:
        others = _every_accent(
            make_speakers(num_accented, seed, accent_voices(list(accents), num_speakers)), accents
        )
        speakers += [replace(s, id=f"spk{len(speakers) + i:03d}") for i, s in enumerate(others)]
    return speakers


def _every_accent(speakers: list[Speaker], accents: Sequence[str]) -> list[Speaker]:
    """The random draw with as many of `accents` as it has speakers: an accent it missed takes the voice
    of the last speaker of an accent drawn most, while one was drawn twice (same variant, pitch and
    speed). A draw that has every accent is returned as it is."""
    speakers = list(speakers)
    for accent in accents:
        counts = collections.Counter(s.voice for s in speakers)
        most = max(accents, key=lambda a: counts[a])
        if not counts[accent] and counts[most] > 1:
            i = max(i for i, s in enumerate(speakers) if s.voice == most)
            speakers[i] = replace(speakers[i], voice=accent)
    return speakers


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class UtteranceSpec:
    """Everything needed to synthesize one utterance; `pitch`/`speed` are the speaker's base values."""

    id: str
    text: str
    speaker: str
    voice: str
    variant: str
    pitch: int
    speed: int
    split: str
    seed: int


def _stable_seed(*parts: object) -> int:
    """A 32-bit seed that is the same on every machine and Python version (unlike hash())."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def utterance_prosody(spec: UtteranceSpec) -> tuple[int, int]:
    """The (pitch, speed) actually spoken: the speaker's base plus a small wobble from `spec.seed`."""
    rng = random.Random(spec.seed)
    pitch = spec.pitch + rng.randint(-PITCH_JITTER, PITCH_JITTER)
    speed = round(spec.speed * (1 + rng.uniform(-SPEED_JITTER, SPEED_JITTER)))
    return min(max(pitch, 0), 99), speed


def estimate_duration(spec: UtteranceSpec) -> float:
    """Seconds of audio `synthesize` will produce, from letters and words (no espeak call needed)."""
    words = spec.text.split()
    letters = sum(len(w) for w in words)
    _, speed = utterance_prosody(spec)
    at_default_speed = DURATION_INTERCEPT + DURATION_PER_LETTER * letters + DURATION_PER_WORD * len(words)
    return at_default_speed * 175 / speed


def _assign_splits(
    speakers: list[Speaker], dev_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Whole speakers go to one split, so dev/test speakers are never heard in training."""
    n = len(speakers)
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_dev = max(1, round(n * dev_fraction)) if dev_fraction > 0 else 0
    if n - n_test - n_dev < 1:
        raise SpeechBudgetError(
            f"{n} speakers leave none for training after {n_dev} dev and {n_test} test speakers: "
            f"raise the number of speakers (--speakers, at least {n_test + n_dev + 1})"
        )
    order = [s.id for s in speakers]
    random.Random(f"splits:{seed}").shuffle(order)
    splits = ["test"] * n_test + ["dev"] * n_dev + ["train"] * (n - n_test - n_dev)
    return dict(zip(order, splits))


def plan_corpus(
    hours: float,
    seed: int = 0,
    num_speakers: int = 24,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
    voices: list[str] | None = None,
    grammar: str = "sentences",
    accents: Sequence[str] = (),
    accent_share: float = 0.0,
) -> list[UtteranceSpec]:
    """Utterances totalling about `hours` of audio, spread evenly over speakers, `accent_share` of
    whom speak with one of `accents`; same seed, same list."""
    if not 0 < hours <= MAX_HOURS:
        raise SpeechBudgetError(
            f"hours must be positive and at most {MAX_HOURS:g} (the utterance list is planned in memory; "
            f"use a real corpus beyond that), got {hours}"
        )
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise SpeechBudgetError("dev_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    words = named_grammar(grammar)
    speakers = speaker_mix(num_speakers, seed, voices, accents, accent_share)
    split_of = _assign_splits(speakers, dev_fraction, test_fraction, seed)
    rng = random.Random(f"sentences:{seed}")
    specs, total, target = [], 0.0, hours * 3600
    counts = [0] * len(speakers)
    while total < target:
        k = len(specs) % len(speakers)  # round robin: every speaker gets the same share
        s = speakers[k]
        uid = f"synth-{s.id}-{counts[k]:06d}"
        counts[k] += 1
        spec = UtteranceSpec(
            uid,
            generate_sentence(rng, words),
            s.id,
            s.voice,
            s.variant,
            s.pitch,
            s.speed,
            split_of[s.id],
            _stable_seed(seed, uid),
        )
        specs.append(spec)
        total += estimate_duration(spec)
    return specs


def plan_transcripts(
    texts: list[str],
    copies: float = 1.0,
    seed: int = 0,
    num_speakers: int = 64,
    voices: list[str] | None = None,
    accents: Sequence[str] = (),
    accent_share: float = 0.0,
) -> list[UtteranceSpec]:
    """Every transcript spoken `copies` times (a fraction: that share of them, chosen by `seed`), each
    time by the next voice of a shuffled round robin, all in the train split: a synthetic copy of a
    transcribed corpus (``prepare tts``). `accent_share` of the speakers speak with one of `accents`."""
    if not copies > 0:
        raise SpeechBudgetError(f"copies must be positive, got {copies}")
    if not texts:
        raise SpeechBudgetError("no transcripts to speak")
    whole = int(copies)
    spoken = list(texts) * whole + random.Random(f"tts-texts:{seed}").sample(
        list(texts), round((copies - whole) * len(texts))
    )
    if not spoken:
        raise SpeechBudgetError(
            f"copies {copies} of {len(texts)} transcripts is no utterance: raise copies to at least {1 / len(texts):.2g}"
        )
    speakers = speaker_mix(num_speakers, seed, voices, accents, accent_share)
    random.Random(f"tts-order:{seed}").shuffle(speakers)
    specs = []
    for i, text in enumerate(spoken):
        s = speakers[i % len(speakers)]
        uid = f"tts-{s.id}-{i:07d}"
        specs.append(
            UtteranceSpec(
                uid, text, s.id, s.voice, s.variant, s.pitch, s.speed, "train", _stable_seed(seed, uid)
            )
        )
    return specs


# ---------------------------------------------------------------- synthesis


def speak(spec: UtteranceSpec) -> np.ndarray:
    """The clean utterance as float64 in [-PEAK, PEAK] at 16 kHz (what `synthesize` writes without noise)."""
    pitch, speed = utterance_prosody(spec)
    if spec.voice == FLITE:
        audio, rate = speak_flite(spec.text, spec.variant, pitch, speed)
    else:
        audio, rate = _speak_espeak(spec, pitch, speed)
    audio = resample(audio, rate, dtype=np.float64)
    peak = np.abs(audio).max()
    if peak == 0:
        engine = FLITE if spec.voice == FLITE else "espeak-ng"
        raise SpeechBudgetError(f"{engine} produced silence for {spec.id} ({spec.text!r})")
    return audio * (PEAK / peak)


def _speak_espeak(spec: UtteranceSpec, pitch: int, speed: int) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="speechbudget-espeak-") as tmp:
        wav = Path(tmp) / "out.wav"
        text = accented(spec.text, spec.voice) if spec.voice in ACCENTS else spec.text
        cmd = [
            espeak_binary(),
            "-v",
            f"{spec.voice}+{spec.variant}",
            "-s",
            str(speed),
            "-p",
            str(pitch),
            "-a",
            str(ESPEAK_AMPLITUDE),
            "-w",
            str(wav),
        ]
        result = subprocess.run(cmd, input=text, capture_output=True, text=True)
        if result.returncode != 0 or not wav.is_file():
            raise SpeechBudgetError(
                f"espeak-ng failed for {spec.id} with voice {spec.voice}+{spec.variant}: "
                f"{result.stderr.strip() or 'no output'}; pick voices from list_voices()"
            )
        audio, rate = sf.read(wav, dtype="float64", always_2d=True)
    return audio.mean(axis=1), rate


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x)))


def _noise_files(noise_dir: Path) -> list[Path]:
    if not noise_dir.is_dir():
        raise SpeechBudgetError(
            f"noise folder {noise_dir} does not exist: pass a folder of .wav files, or no noise"
        )
    files = sorted(noise_dir.glob("*.wav"))
    if not files:
        raise SpeechBudgetError(
            f"noise folder {noise_dir} has no .wav files: add some, or pass no noise folder"
        )
    return files


def _noise_segment(path: Path, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random stretch of `path`, resampled to 16 kHz, looped if the file is shorter than needed."""
    info = sf.info(path)
    needed = math.ceil(num_samples * info.samplerate / SAMPLE_RATE) + 1
    start = int(rng.integers(0, info.frames - needed + 1)) if info.frames > needed else 0
    noise, _ = sf.read(path, start=start, frames=needed, dtype="float64", always_2d=True)
    noise = resample(noise.mean(axis=1), info.samplerate, dtype=np.float64)
    reps = math.ceil(num_samples / max(len(noise), 1))
    return np.tile(noise, reps)[:num_samples]


def mix_noise(clean: np.ndarray, noise_dir: Path, snr_db: float, seed: int) -> np.ndarray:
    """Add noise at exactly `snr_db` (power of the whole clean utterance over power of the added noise).

    If the mix would clip, signal and noise are scaled down together, which keeps the SNR.
    """
    rng = np.random.default_rng(seed)
    files = _noise_files(noise_dir)
    for _ in range(10):  # a segment can be digital silence; draw again rather than divide by zero
        noise = _noise_segment(files[rng.integers(len(files))], len(clean), rng)
        if _power(noise) > 1e-10:
            break
    else:
        raise SpeechBudgetError(f"noise files in {noise_dir} look silent: use recordings with audible noise")
    noise *= math.sqrt(_power(clean) / (_power(noise) * 10 ** (snr_db / 10)))
    mixed = clean + noise
    peak = np.abs(mixed).max()
    return mixed * (0.99 / peak) if peak > 0.99 else mixed


def _write_wav_atomic(path: Path, audio: np.ndarray) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a wav."""
    pcm = np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    with atomic_output(path) as tmp:
        sf.write(str(tmp), pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")


def check_silence(keep_s: float) -> None:
    if not keep_s >= 0:
        raise SpeechBudgetError(f"silence must be 0 s or more (seconds kept at each end), got {keep_s}")


def trim_silence(audio: np.ndarray, keep_s: float, floor_db: float = SILENCE_FLOOR_DB) -> np.ndarray:
    """Cut the ends quieter than `floor_db` under the peak, keeping `keep_s` seconds at each end.

    espeak-ng ends every clip with ~0.3 s of digital silence; a corpus cut close to its words (FSDD)
    has none, and synthetic copies of it should not teach the model words followed by a pause."""
    check_silence(keep_s)
    loud = np.flatnonzero(np.abs(audio) > np.abs(audio).max() * 10 ** (-floor_db / 20))
    if loud.size == 0:
        return audio
    keep = round(keep_s * SAMPLE_RATE)
    return audio[max(loud[0] - keep, 0) : loud[-1] + 1 + keep]


def _audio_key(
    spec: UtteranceSpec, noise_dir: Path | None, snr_db: float | None, silence: float | None
) -> str:
    """Eight hex digits of everything that shapes the wav: a re-run with other words, voices, noise or
    trimming writes new files instead of reusing ones made under other options."""
    noise = str(Path(noise_dir).resolve()) if noise_dir is not None else None
    parts = [repr(spec), noise, snr_db, silence]
    if spec.voice in ACCENTS:  # the phonemes spoken: a changed accent table makes new files
        parts.append(accented(spec.text, spec.voice))
    return f"{_stable_seed(*parts):08x}"


def synthesize(
    spec: UtteranceSpec,
    out_dir: Path,
    noise_dir: Path | None = None,
    snr_db: float | None = None,
    silence: float | None = None,
) -> Path:
    """Write `out_dir/<split>/<id>-<key>.wav` (16 kHz mono 16-bit) and return its path; skip if it
    exists. `silence`: seconds kept at each end (None: as espeak-ng speaks, ~0.3 s at the end)."""
    if (noise_dir is None) != (snr_db is None):
        raise SpeechBudgetError("noise needs both a noise folder and snr_db (or neither for clean speech)")
    if noise_dir is not None:
        _noise_files(Path(noise_dir))  # a bad folder is an error even when the wav is already there
    path = Path(out_dir) / spec.split / f"{spec.id}-{_audio_key(spec, noise_dir, snr_db, silence)}.wav"
    if path.is_file():
        return path
    audio = speak(spec)
    if silence is not None:
        audio = trim_silence(audio, silence)
    if noise_dir is not None:
        audio = mix_noise(audio, Path(noise_dir), snr_db, spec.seed)
    _write_wav_atomic(path, audio)
    return path
