"""espeak-ng, the program behind the synthetic voices and the words' phonemes: where it is, and what it
says a text sounds like (the phone tokenizer's pronunciations, the accents' English phonemes)."""

from __future__ import annotations

import subprocess

from ..errors import SpeechBudgetError, require_program

#: what to do without espeak-ng, said by the error when it is missing (each caller knows its own way out)
SYNTHETIC_ALTERNATIVE = "or prepare a corpus from your own audio instead of the synthetic one"


def espeak_binary(otherwise: str = SYNTHETIC_ALTERNATIVE) -> str:
    """The espeak-ng executable, or a one-line error that says how to install it or, `otherwise`, what
    to do without it."""
    return require_program("espeak-ng", otherwise)


def transcribe(text: str, voice: str, *, ipa: bool, sep: str, otherwise: str) -> list[str]:
    """The non-empty lines of `voice`'s phoneme transcription of `text`, in IPA or in espeak-ng's own
    mnemonics (which its phoneme input ``[[...]]`` reads back), the phonemes of a word joined by `sep`;
    `otherwise`: what to do without espeak-ng."""
    notation = "--ipa" if ipa else "-x"
    result = subprocess.run(
        [espeak_binary(otherwise), "-q", notation, f"--sep={sep}", "-v", voice],
        input=text,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or "does not exist" in result.stderr:
        raise SpeechBudgetError(
            f"espeak-ng could not pronounce with voice {voice!r} ({result.stderr.strip() or 'no output'}): "
            "pick a voice from `espeak-ng --voices`"
        )
    return [line for line in result.stdout.splitlines() if line.strip()]
