"""Where data-preparation work runs: in-process, a local process pool, or a Dask cluster.

All three look like a :class:`concurrent.futures.Executor` (Dask through
``Client.get_executor()``), which is also what lhotse's feature extraction accepts, so one
code path serves a laptop and a cluster.
"""

from __future__ import annotations

from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Sequence, TypeVar

from ..errors import SpeechBudgetError
from ..progress import track

T = TypeVar("T")
R = TypeVar("R")
EXECUTORS = ("local", "dask")


def _one_thread_per_worker() -> None:
    """Each pool worker gets one core: torch threads inside N workers would only fight. Set in the
    workers alone, so the parent (and the training stages after `prepare` in `run`) keep all cores."""
    import torch

    torch.set_num_threads(1)


@contextmanager
def open_executor(
    kind: str = "local", num_jobs: int = 1, scheduler: Optional[str] = None
) -> Iterator[Optional[Executor]]:
    """``None`` means run in this process (num_jobs 1, local)."""
    if kind not in EXECUTORS:
        raise SpeechBudgetError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if num_jobs < 1:
        raise SpeechBudgetError(f"num_jobs (--num-jobs) must be at least 1 (got {num_jobs})")
    if kind == "local":
        if num_jobs == 1:
            yield None
        else:
            with ProcessPoolExecutor(num_jobs, initializer=_one_thread_per_worker) as ex:
                yield ex
        return
    if not scheduler:
        raise SpeechBudgetError(
            "executor dask needs a scheduler address (--scheduler, recipe key scheduler; e.g. tcp://127.0.0.1:8786)"
        )
    from distributed import Client

    try:
        client = Client(scheduler, timeout="20s")
    except OSError as e:
        raise SpeechBudgetError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
    try:
        yield client.get_executor()
    finally:
        client.close()


def run_map(
    executor: Optional[Executor], fn: Callable[..., R], args: Sequence[tuple], description: str
) -> List[R]:
    """Apply ``fn(*a)`` for each ``a`` in ``args``; results in input order, with a progress bar."""
    if executor is None:
        return [fn(*a) for a in track(args, total=len(args), description=description)]
    futures = {executor.submit(fn, *a): i for i, a in enumerate(args)}
    out: List[Optional[R]] = [None] * len(args)
    for fut in track(as_completed(futures), total=len(futures), description=description):
        out[futures[fut]] = fut.result()
    return out  # type: ignore[return-value]
