"""``profile_steps: N``: a torch.profiler record of N training steps, for finding where a step's time goes.

The steps are ordinary training steps (same math, same budget); only their timing is recorded, after
``WARMUP`` steps so that allocator and kernel caches are warm. Written into ``EXP/profile/``:
``trace.json`` (open in https://ui.perfetto.dev or chrome://tracing) and ``top_ops.txt`` (the
operators with the most self time, as torch's ``key_averages`` table).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .. import atomic

WARMUP = 2
TOP = 30


class StepProfiler:
    """Call :meth:`step` after every training step; a no-op when ``steps`` is 0."""

    def __init__(self, exp_dir: Path, steps: int, cuda: bool = False):
        self.out = Path(exp_dir) / "profile"
        self.prof: Optional[torch.profiler.profile] = None
        if steps <= 0:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=0, warmup=WARMUP, active=steps, repeat=1),
            on_trace_ready=self._write,
            record_shapes=True,
        )
        self.prof.__enter__()

    def _write(self, prof: torch.profiler.profile) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_output(self.out / "trace.json") as tmp:
            prof.export_chrome_trace(str(tmp))
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=TOP)
        atomic.write_text(self.out / "top_ops.txt", table + "\n")

    def step(self) -> None:
        if self.prof is not None:
            self.prof.step()

    def close(self) -> None:
        if self.prof is not None:
            self.prof.__exit__(None, None, None)
            self.prof = None
