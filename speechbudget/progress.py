"""Progress bars for long work, shared by every stage.

Library code calls :func:`track`; the CLI decides whether bars are shown (they are hidden
with ``--json`` or when stderr is not a terminal, so logs and scripts stay clean).
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, Optional, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
console = Console(stderr=True)
_enabled = sys.stderr.isatty()


def set_enabled(on: bool) -> None:
    global _enabled
    _enabled = on


def enabled() -> bool:
    return _enabled


def make_progress(percent: bool = False) -> Progress:
    """Bars that count items ("12/40"), or with ``percent`` show a share ("45%": a training budget,
    which is not a number of anything a reader could count)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn() if percent else MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not _enabled,
        transient=False,
    )


def track(items: Iterable[T], total: Optional[int] = None, description: str = "working") -> Iterator[T]:
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:  # e.g. a DataLoader over a sampler of unknown length
            total = None
    with make_progress() as p:
        task = p.add_task(description, total=total, info="")
        for x in items:
            yield x
            p.advance(task)
