"""Run one function in a second process beside this one: its own threads, its output in a log file.

Why: on a CPU, two training runs of one thread each do more work per second than one run of two
threads (intra-op parallelism at these sizes scales ~1.4x on two cores, two processes ~2x). The
pipeline uses this for the scratch baseline, which needs nothing from pretraining but its FLOP total,
and for leave-one-speaker-out folds, which need nothing from each other (:func:`run_all`).

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
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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


@dataclass(frozen=True)
class Job:
    """One call for :func:`run_all`: ``target(*args)``, its output in ``log``, ``name`` in messages."""

    name: str
    target: Callable[..., Any]
    args: Tuple[Any, ...]
    log: Path


def run_all(
    jobs: Sequence[Job],
    parallel: int,
    threads: int,
    say: Callable[[str], None],
    on_end: Optional[Callable[[Job, int], None]] = None,
) -> Dict[str, int]:
    """Every job in a child process, ``parallel`` at a time with ``threads`` torch threads each, in
    order; returns each job's exit code (0: it finished). A job that fails does not stop the others;
    if this process is interrupted, the children still running are stopped (they resume, as any
    killed run, from their last checkpoint). ``on_end(job, exit code)`` runs here as each one ends,
    so what the finished jobs made can be recorded before the last one is done."""
    todo: List[Job] = list(jobs)
    running: Dict[Any, Tuple[Job, multiprocessing.Process, float]] = {}
    codes: Dict[str, int] = {}
    bar = progress.make_progress()
    task = bar.add_task(f"{len(todo)} jobs, {parallel} at a time", total=len(todo), info="")
    try:
        bar.start()
        while todo or running:
            while todo and len(running) < parallel:
                job = todo.pop(0)
                proc = start(job.target, job.args, threads, job.log)
                running[proc.sentinel] = (job, proc, time.perf_counter())
                say(
                    f"{job.name}: started in a process of its own ({threads} thread{'s' * (threads > 1)}; log: {job.log})"
                )
            for sentinel in wait(list(running)):
                job, proc, t0 = running.pop(sentinel)
                proc.join()
                codes[job.name] = proc.exitcode
                minutes = (time.perf_counter() - t0) / 60
                how = "done" if proc.exitcode == 0 else f"stopped (exit {proc.exitcode}; see {job.log})"
                say(f"{job.name}: {how} after {minutes:.1f} min")
                bar.advance(task)
                if on_end is not None:
                    on_end(job, proc.exitcode)
    finally:
        bar.stop()
        for _, proc, _ in running.values():
            if proc.is_alive():
                proc.terminate()
            proc.join()
    return codes
