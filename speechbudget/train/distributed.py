"""torchrun / DDP plumbing: one process per device, gloo on CPU, NCCL on CUDA."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from ..errors import SpeechBudgetError

        raise SpeechBudgetError(
            "device cuda was requested but no CUDA device is visible; use cpu (device=cpu, --device cpu)"
        )
    return torch.device("cuda", local_rank)


def device_option(device: str) -> torch.device:
    """A command's ``--device`` (cpu, cuda, cuda:N) checked and resolved: one line for a typo or a
    machine without CUDA, never torch's own error."""
    from ..errors import SpeechBudgetError

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SpeechBudgetError(f"--device must be cpu or cuda, got {device!r}")
    try:
        index = torch.device(device).index or 0
    except RuntimeError:
        raise SpeechBudgetError(f"--device must be cpu, cuda or cuda:N, got {device!r}") from None
    return pick_device(device, index)


def setup(requested_device: str = "auto") -> DistInfo:
    """Read torchrun's environment; initialise the process group when there is more than one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local, device)


def all_sum(values: list, info: DistInfo) -> list:
    """Sum a list of floats over ranks (identity without DDP)."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
