"""Corpus sources: the one registry that ``speechbudget prepare`` and recipes both read.

A source module declares an options dataclass (each field with a default and one line of help in
``metadata["help"]``; ``metadata["argument"]`` marks the corpus folder, a positional argument on
the command line) and ``find_items(options, context)``, and registers both as ``SOURCE``. The CLI
builds ``prepare <source>`` from the dataclass; a recipe's ``prepare:`` / ``labeled:`` section is
validated against the same dataclass. Adding a source is adding one module to ``_MODULES``.

A source only finds audio and its metadata; validation, conversion to 16 kHz mono, manifests and
features are the same for every source and live in :mod:`speechbudget.data.prepare`.
"""

from __future__ import annotations

import dataclasses
import importlib
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ...errors import SpeechBudgetError

_MODULES = (
    "synthetic",
    "tts",
    "fsdd",
    "commonvoice",
    "librispeech",
    "folder",
    "speechcommands",
    "esc50",
    "scenes",
    "flickr8k",
    "spokencoco",
)


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
    #: why the source cannot use this file (reported in rejected_<split>.jsonl, never dropped silently)
    problem: Optional[str] = None
    #: class names of the whole clip (classification corpora); stored in ``cut.custom["labels"]``
    labels: Optional[List[str]] = None


@dataclass(frozen=True)
class FindContext:
    """What a source may use besides its options: where the corpus goes, and the workers."""

    corpus_dir: Path
    executor: Optional[Executor] = None


@dataclass(frozen=True)
class Source:
    name: str
    summary: str  # one line for `prepare --help`
    options: type  # the options dataclass
    find_items: Callable[[Any, FindContext], List[SourceItem]]
    examples: tuple = ()  # command lines for the command's --help

    @property
    def path_field(self) -> Optional[str]:
        """The option that is the corpus folder (a positional argument), if the source reads one."""
        return next((f.name for f in dataclasses.fields(self.options) if f.metadata.get("argument")), None)


def option(default: Any = None, help: str = "", *, argument: bool = False, factory: Any = None) -> Any:
    """A source option: its default and the one line of help the CLI shows."""
    meta = {"help": help, "argument": argument}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def registry() -> Dict[str, Source]:
    """Every source, by name, in the order the help lists them."""
    return {s.name: s for s in (importlib.import_module(f"{__name__}.{m}").SOURCE for m in _MODULES)}


def source_names() -> List[str]:
    return list(registry())


def get_source(name: str) -> Source:
    found = registry().get(name)
    if found is None:
        raise SpeechBudgetError(f"unknown source {name!r}; choose one of {', '.join(registry())}")
    return found


def path_id(prefix: str, relative: Path) -> str:
    """An utterance id unique by construction: the file's path below the corpus root, extension
    included, with "%" and "/" escaped - so ``a-b/c.wav``, ``a/b-c.wav`` and ``a/b-c.flac`` never meet."""
    escaped = relative.as_posix().replace("%", "%25").replace("/", "%2F")
    return f"{prefix}-{escaped}"


def option_names(source: Source) -> List[str]:
    return [f.name for f in dataclasses.fields(source.options)]
