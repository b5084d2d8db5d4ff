"""Which split a speaker's audio goes to, for every source that knows its speakers.

Named speakers (``test_speakers``, ``dev_speakers``) or a hashed share of them (``test_fraction``,
``dev_fraction``): one rule, so a corpus's splits are speaker-disjoint whichever source made them,
and a typo in a speaker's name stops ``prepare`` instead of leaving a split silently empty.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

from ...errors import SpeechBudgetError


def check_named(test_speakers: Sequence[str], dev_speakers: Sequence[str]) -> None:
    both = sorted(set(test_speakers) & set(dev_speakers))
    if both:  # the speaker would go to test alone, and dev be silently missing
        raise SpeechBudgetError(
            f"{', '.join(both)} named in both test_speakers and dev_speakers; a speaker belongs to one split"
        )


def check_fractions(dev_fraction: float, test_fraction: float) -> None:
    for key, value in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise SpeechBudgetError(f"{key} must be in [0, 1), got {value}")
    if dev_fraction + test_fraction >= 1:
        raise SpeechBudgetError(
            f"dev_fraction + test_fraction must leave speakers for train, got {dev_fraction + test_fraction}"
        )


def hashed_split(speaker: str, dev_fraction: float, test_fraction: float, rest: str = "train") -> str:
    """By a hash of the speaker's name: stable as the corpus grows, the same on every machine."""
    h = int(hashlib.sha1(speaker.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test_fraction else "dev" if h < test_fraction + dev_fraction else rest


def split_of(
    speaker: str,
    test_speakers: Sequence[str] = (),
    dev_speakers: Sequence[str] = (),
    dev_fraction: float = 0.0,
    test_fraction: float = 0.0,
    rest: str = "train",
) -> str:
    """Named speakers first, then the hashed shares; everyone else goes to ``rest``."""
    if speaker in test_speakers:
        return "test"
    if speaker in dev_speakers:
        return "dev"
    return hashed_split(speaker, dev_fraction, test_fraction, rest)


def check_found(named: Iterable[str], found: Iterable[str], corpus: str) -> None:
    """Every named speaker exists in the corpus: a typo must not leave the test split empty."""
    found = sorted(set(found))
    unknown = [s for s in named if s not in found]
    if unknown:
        shown = ", ".join(found[:20]) + (f" ... ({len(found)} in all)" if len(found) > 20 else "")
        raise SpeechBudgetError(
            f"test_speakers/dev_speakers name unknown {corpus} speakers {unknown}; found: {shown}"
        )


def check_shares(
    found: Iterable[str], dev_fraction: float, test_fraction: float, rest: str = "train"
) -> None:
    """A share asked for holds at least one speaker (a hash of 4 names may put none below 0.25)."""
    found = sorted(set(found))
    got = {hashed_split(s, dev_fraction, test_fraction, rest) for s in found}
    for split, share in (("test", test_fraction), ("dev", dev_fraction)):
        if share > 0 and split not in got:
            raise SpeechBudgetError(
                f"{split}_fraction {share} held out none of the {len(found)} speakers (the share is drawn by a "
                f"hash of each name): raise it, or name them with {split}_speakers"
            )
