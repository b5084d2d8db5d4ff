"""Run one function in a second process beside this one: its own threads, its output in a log file.

Why: on a CPU, two training runs of one thread each do more work per second than one run of two
threads (intra-op parallelism at these sizes scales ~1.4x on two cores, two processes ~2x). The
pipeline uses this for the scratch baseline, which needs nothing from pretraining but its FLOP total.

The child is spawned (a fresh interpreter: no forked locks or thread pools), asks Linux to stop it
when this process dies (a killed ``run`` leaves no orphan training behind; the next ``run`` resumes
it from its checkpoint), and writes everything it prints to ``log``, its errors too (the parent says
the child stopped and where to read why); progress bars are off there.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Tuple

from . import progress
from .errors import SpeechBudgetError

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _child(target: Callable[..., Any], args: Tuple[Any, ...], threads: int, log: str) -> None:
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` blocks release locks
    import torch

    torch.set_num_threads(threads)
    progress.set_enabled(False)
    with open(log, "a", buffering=1) as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            target(*args)
        except SpeechBudgetError as e:  # a user's mistake: one line, as the CLI would say it
            print(f"error: {e}")
            sys.exit(1)
        except Exception:  # a bug: the traceback goes to the log, not over the parent's progress bars
            traceback.print_exc()
            sys.exit(1)


def start(
    target: Callable[..., Any], args: Tuple[Any, ...], threads: int, log: Path
) -> multiprocessing.Process:
    """``target(*args)`` (a module-level function) in a spawned child with ``threads`` torch threads."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    proc = multiprocessing.get_context("spawn").Process(
        target=_child, args=(target, args, threads, str(log)), name="speechbudget-sidecar"
    )
    proc.start()
    return proc
