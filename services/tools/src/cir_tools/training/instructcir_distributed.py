"""One process or many: what a trainer needs to know about its place in a torchrun launch.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR/PORT); with WORLD_SIZE > 1 the process group
is started here (nccl on CUDA, gloo on the CPU) and each process takes the GPU of its LOCAL_RANK. A plain
`python` / `cir` run is rank 0 of 1 and starts nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cir_common.torch_placement import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: str

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics and the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def start_distributed(device: str) -> DistributedContext:
    """The context of this process; `device` is a preference ("auto", "cpu", "cuda") resolved per rank."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    resolved = resolve_device(device, "trainer")
    if world_size <= 1:
        return DistributedContext(rank=0, world_size=1, device=resolved)
    if resolved.startswith("cuda"):
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        resolved = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.startswith("cuda") else "gloo")
    return DistributedContext(rank=rank, world_size=world_size, device=resolved)


def stop_distributed(context: DistributedContext) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_processes(value: float, context: DistributedContext) -> float:
    """The mean of `value` over all processes (every process must call it)."""
    if not context.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(total)
    return float(total) / context.world_size


def barrier(context: DistributedContext) -> None:
    if context.distributed:
        dist.barrier()
