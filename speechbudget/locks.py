"""One writer per experiment (or corpus) folder: an exclusive ``fcntl.flock`` on ``FOLDER/.lock``.

Two runs writing one folder interleave checkpoints, logs and manifests without a word. The lock
file records who holds it (pid, host, command, start time) so the second run can say so. The
kernel drops a flock when its process dies, so a lock left by a killed run never blocks.
Locks are re-entrant within a process: ``speechbudget run`` holds EXP while its stages lock
their own folders (and the same one twice is fine).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from .errors import SpeechBudgetError

LOCK_NAME = ".lock"

#: folder -> (open lock file, how many holders in this process)
_held: Dict[str, Tuple[object, int]] = {}


def _is_main_rank() -> bool:
    """Under torchrun every rank runs the same command; only rank 0 writes, so only it locks."""
    return int(os.environ.get("RANK", "0")) == 0


class FolderLock:
    """Held from creation until :meth:`release` (or the end of a ``with`` block, or garbage collection)."""

    def __init__(self, folder: Union[str, Path], what: str = "experiment folder"):
        self.folder = Path(folder)
        self.key: Optional[str] = None
        #: this lock made the folder: if the holder leaves nothing in it, releasing removes it again
        self.made = not self.folder.exists()
        if not _is_main_rank():
            return
        from .atomic import check_writable

        check_writable(self.folder, what)
        key = str(self.folder.resolve())
        if key in _held:
            f, n = _held[key]
            _held[key] = (f, n + 1)
            self.key = key
            return
        path = self.folder / LOCK_NAME
        f = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = _describe(f.read())
            f.close()
            raise SpeechBudgetError(
                f"{self.folder} is in use by {holder}; wait for it to finish or use another {what}"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": " ".join(sys.argv),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                }
            )
            + "\n"
        )
        f.flush()
        _held[key] = (f, 1)
        self.key = key

    def release(self) -> None:
        key, self.key = self.key, None
        if key is None or key not in _held:
            return
        f, n = _held[key]
        if n > 1:
            _held[key] = (f, n - 1)
            return
        del _held[key]
        if self.made and _holds_nothing(self.folder):  # a run that stopped before writing anything
            _remove_empty(self.folder)  # leaves no folder behind that looks like a run (still locked)
        f.close()  # closing the only descriptor drops the flock

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['started']} (command: {info['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _holds_nothing(folder: Path) -> bool:
    """Only the lock file and empty folders below ``folder``."""
    return all(not p.is_symlink() and (p.is_dir() or p.name == LOCK_NAME) for p in folder.rglob("*"))


def _remove_empty(folder: Path) -> None:
    try:
        (folder / LOCK_NAME).unlink(missing_ok=True)
        for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            d.rmdir()
        folder.rmdir()
    except OSError:  # something appeared meanwhile: it stays
        pass


def lock_experiment(exp_dir: Union[str, Path]) -> FolderLock:
    """``with lock_experiment(exp):`` - the trainer and ``speechbudget run``."""
    return FolderLock(exp_dir, "exp_dir")


def lock_corpus(corpus_dir: Union[str, Path]) -> FolderLock:
    """For data preparation, per prepared corpus; released by ``release()``, a ``with`` block, or
    when the returned object is dropped (e.g. the preparing function returns)."""
    return FolderLock(corpus_dir, "output folder")
