"""Atomic file output: write under a temporary sibling name, rename only on success.

Every file a later stage reads goes through here, so a killed run never leaves a half-written
file that looks complete.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, Path]


def tmp_sibling(path: Path) -> Path:
    """A temporary name in the same folder that keeps the suffixes (lhotse picks formats by them)."""
    return path.with_name(f".tmp{os.getpid()}.{path.name}")


@contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """``with atomic_output(p) as tmp: write(tmp)`` -> ``p`` appears complete or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: PathLike, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: PathLike, obj: Any, sort_keys: bool = False) -> None:
    """The one JSON writer for files a later stage (or run) reads."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str, sort_keys=sort_keys)
    write_text(path, text + "\n")
