"""espeak-ng, the program behind the synthetic voices and the words' phonemes: where it is, and what it
says a text sounds like (the phone tokenizer's pronunciations, the accents' English phonemes)."""

from __future__ import annotations

import subprocess

from ..errors import SpeechBudgetError, require_program


def espeak_binary() -> str:
    """The espeak-ng executable, or a one-line error that says how to install it."""
    return require_program(
        "espeak-ng", "or prepare a corpus from your own audio instead of the synthetic one"
    )


def transcribe(text: str, voice: str, *, ipa: bool, sep: str) -> list[str]:
    """The non-empty lines of `voice`'s phoneme transcription of `text`, in IPA or in espeak-ng's own
    mnemonics (which its phoneme input ``[[...]]`` reads back), the phonemes of a word joined by `sep`."""
    notation = "--ipa" if ipa else "-x"
    result = subprocess.run(
        [espeak_binary(), "-q", notation, f"--sep={sep}", "-v", voice],
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
