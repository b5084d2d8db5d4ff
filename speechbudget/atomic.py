"""Atomic file output: write under a temporary sibling name, rename only on success.

Every file a later stage reads goes through here, so a killed run never leaves a half-written
file that looks complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

from .errors import SpeechBudgetError

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
    except Exception as e:
        # where the write failed, for the CLI's full-disk check (the exp_dir may sit on another disk)
        try:
            e.speechbudget_folder = path.parent  # type: ignore[attr-defined]
        except AttributeError:  # an exception type without a __dict__
            pass
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: PathLike, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_png(path: PathLike, fig: Any, dpi: float = 110) -> None:
    """The one PNG writer (a matplotlib figure): a killed run leaves the old plot or none, never half."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def write_json(path: PathLike, obj: Any, sort_keys: bool = False) -> None:
    """The one JSON writer for files a later stage (or run) reads."""
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str, sort_keys=sort_keys)
    write_text(path, text + "\n")


def check_writable(folder: PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` and prove a file can be written there, before any work starts: a read-only or
    mistyped output folder must not surface hours later, at the first save, without its path."""
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == folder else f"is under the file {parent}"
                raise SpeechBudgetError(f"{what} {folder} {where}; choose a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SpeechBudgetError(
            f"cannot write to {what} {folder} ({e.strerror or e}); choose a writable folder"
        ) from None
    return folder


def check_output_file(path: PathLike, what: str = "output file") -> Path:
    """``path`` can be written as a file: not an existing folder, not under a file, its folder
    writable; checked before the work whose result it holds."""
    path = Path(path)
    if path.is_dir():
        raise SpeechBudgetError(f"{what} {path} is a folder; give a file name (e.g. {path / 'NAME'})")
    check_writable(path.parent, f"{what}'s folder")
    return path
