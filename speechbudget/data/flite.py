"""Flite's English voices: synthetic speech made from recordings of real people.

espeak-ng (the synthetic corpus's engine) is a formant synthesiser: many voices, none of them a human
vocal tract. Flite's voices are built from recordings of four people (CMU ARCTIC's US male rms,
Scottish male awb and US female slt; the US male diphone voice kal16), so they carry real voices'
spectra; text-to-speech augmentation (``tts: {engine: flite}``) can use them instead of espeak-ng's.
Optional: only a recipe that asks for the engine needs ``apt-get install flite``.
"""

from __future__ import annotations

import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import SpeechBudgetError, require_program

#: the English voices of Debian's flite and the mean F0 (Hz) each speaks with by default, measured on
#: the ten digits (kal is left out: kal16's speaker at 8 kHz)
DEFAULT_F0 = {"awb": 130.0, "kal16": 100.0, "rms": 103.0, "slt": 168.0}


def flite_binary() -> str:
    """The flite executable, or a one-line error that says how to install it."""
    return require_program("flite", "or use tts.engine: espeak")


@lru_cache(maxsize=1)
def flite_voices() -> tuple[str, ...]:
    """The voices of DEFAULT_F0 that the installed flite has."""
    listed = subprocess.run([flite_binary(), "-lv"], capture_output=True, text=True, check=True).stdout
    installed = set(listed.replace("Voices available:", "").split())
    voices = tuple(v for v in sorted(DEFAULT_F0) if v in installed)
    if not voices:
        raise SpeechBudgetError(f"flite has none of the voices {', '.join(DEFAULT_F0)}: reinstall flite")
    return voices


def speak_flite(text: str, voice: str, pitch: int, speed: int) -> tuple[np.ndarray, int]:
    """(mono float64 audio, sample rate) of `text`; `pitch` and `speed` on espeak-ng's scales (pitch 50
    and 175 words a minute: the voice as recorded), so one speaker plan serves both engines. A pitch
    of 50 +- 40 moves the voice's mean F0 up or down an octave; rms' F0 does not follow."""
    if voice not in DEFAULT_F0:
        raise SpeechBudgetError(f"unknown flite voice {voice!r}; choose one of {', '.join(DEFAULT_F0)}")
    f0 = DEFAULT_F0[voice] * 2.0 ** ((pitch - 50) / 40)
    with tempfile.TemporaryDirectory(prefix="speechbudget-flite-") as tmp:
        wav = Path(tmp) / "out.wav"
        cmd = [
            flite_binary(),
            "-voice",
            voice,
            "--setf",
            f"duration_stretch={175 / speed:.4f}",
            "--setf",
            f"int_f0_target_mean={f0:.1f}",
            "-t",
            text,
            "-o",
            str(wav),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wav.is_file():
            raise SpeechBudgetError(
                f"flite failed with voice {voice}: {result.stderr.strip() or 'no output'}"
            )
        audio, rate = sf.read(wav, dtype="float64", always_2d=True)
    return audio.mean(axis=1), rate
