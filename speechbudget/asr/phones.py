"""Pronunciations from espeak-ng: words as phone sequences, the units of ``ctc.tokenizer: phone``.

English spelling is a poor guide to sound (the 'e' of three, seven and eight are three vowels, 'h'
is in three and eight): a CTC model on letters learns each word's letters as one pattern of the few
training voices. On phones, a sound shared by words (the /t/ of two and eight, the /aɪ/ of five
and nine) is one target, seen in more words and voices. The pronunciations come from espeak-ng,
which the synthetic corpus needs anyway; stress marks are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.espeak import transcribe

__all__ = ["DEFAULT_VOICE", "pronounce"]

DEFAULT_VOICE = "en-us"
_NO_ESPEAK = "or train a bpe, unigram or char tokenizer instead of phones"
_NOT_PHONES = str.maketrans("", "", "ˈˌ\u200d")  # primary and secondary stress, zero-width joiner


def _phones(line: str) -> tuple[str, ...]:
    return tuple(p for p in line.translate(_NOT_PHONES).replace(" ", "_").split("_") if p)


def pronounce(words: Sequence[str], voice: str = DEFAULT_VOICE) -> dict[str, tuple[str, ...]]:
    """Each word's phones (IPA, one string per phone). One espeak-ng call for all of them, one line per
    word; should espeak-ng join or split lines, each word is asked on its own. A word espeak-ng says
    nothing for (a lone symbol) gets no phones."""
    words = list(dict.fromkeys(words))
    if not words:
        return {}
    lines = transcribe("\n".join(words), voice, ipa=True, sep="_", otherwise=_NO_ESPEAK)
    if len(lines) != len(words):
        lines = [" ".join(transcribe(w, voice, ipa=True, sep="_", otherwise=_NO_ESPEAK)) for w in words]
    return {w: _phones(line) for w, line in zip(words, lines)}
