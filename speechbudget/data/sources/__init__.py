"""Corpus sources: each turns a folder (or a synthesis plan) into :class:`SourceItem` lists.

A source only finds audio and its metadata; validation, conversion to 16 kHz mono, manifests
and features are the same for every source and live in :mod:`speechbudget.data.prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class SourceItem:
    """One utterance as a source found it, before validation."""

    id: str
    audio: str  # path to the audio file
    split: str  # train / dev / test
    text: Optional[str] = None  # None for unlabeled audio
    speaker: Optional[str] = None
    custom: Dict[str, Any] = field(default_factory=dict)
    #: whether this source promises a transcript; a labeled item with no text is rejected
    labeled: bool = True


SOURCES = ("synthetic", "fsdd", "commonvoice", "librispeech", "dir")
