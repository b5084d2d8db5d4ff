"""Pronunciations from espeak-ng: words as phone sequences, the units of ``ctc.tokenizer: phone``.

English spelling is a poor guide to sound (the 'e' of three, seven and eight are three vowels, 'h'
is in three and eight): a CTC model on letters learns each word's letters as one pattern of the few
training voices. On phones, a sound shared by words (the /t/ of two and eight, the /aɪ/ of five
and nine) is one target, seen in more words and voices. The pronunciations come from espeak-ng,
which the synthetic corpus needs anyway; stress marks are dropped.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from ..data.synthetic import espeak_binary
from ..errors import SpeechBudgetError

__all__ = ["DEFAULT_VOICE", "pronounce"]

DEFAULT_VOICE = "en-us"
_NOT_PHONES = str.maketrans("", "", "ˈˌ\u200d")  # primary and secondary stress, zero-width joiner


def _espeak_ipa(text: str, voice: str) -> list[str]:
    result = subprocess.run(
        [espeak_binary(), "-q", "--ipa", "--sep=_", "-v", voice], input=text, capture_output=True, text=True
    )
    if result.returncode != 0 or "does not exist" in result.stderr:
        raise SpeechBudgetError(
            f"espeak-ng could not pronounce with voice {voice!r} ({result.stderr.strip() or 'no output'}): "
            "pick a voice from `espeak-ng --voices`"
        )
    return [line for line in result.stdout.splitlines() if line.strip()]


def _phones(line: str) -> tuple[str, ...]:
    return tuple(p for p in line.translate(_NOT_PHONES).replace(" ", "_").split("_") if p)


def pronounce(words: Sequence[str], voice: str = DEFAULT_VOICE) -> dict[str, tuple[str, ...]]:
    """Each word's phones (IPA, one string per phone). One espeak-ng call for all of them, one line per
    word; should espeak-ng join or split lines, each word is asked on its own. A word espeak-ng says
    nothing for (a lone symbol) gets no phones."""
    words = list(dict.fromkeys(words))
    if not words:
        return {}
    lines = _espeak_ipa("\n".join(words), voice)
    if len(lines) != len(words):
        lines = [" ".join(_espeak_ipa(w, voice)) for w in words]
    return {w: _phones(line) for w, line in zip(words, lines)}
