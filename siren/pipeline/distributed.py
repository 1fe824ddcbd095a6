"""torchrun helpers for extraction: process group, barrier, rank-0 broadcast, per-rank device.

One process (WORLD_SIZE unset or 1) never imports torch.distributed; under
`torchrun --nproc_per_node N` the group is gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import datetime
import os

from siren.log import rank_world

__all__ = ["rank_world", "init", "barrier", "from_rank0", "device_for_rank", "shutdown"]


def init() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises torch.distributed under torchrun if needed."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if world <= 1:
        return 0, 1, 0
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=6))
    return dist.get_rank(), dist.get_world_size(), local


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def from_rank0(obj, world: int):
    """Rank 0's value of `obj` on every rank (so all ranks take the same decision)."""
    if world <= 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def device_for_rank(device: str | None, local_rank: int, world: int) -> str:
    """The resolved device; with several ranks on CUDA, each rank's own GPU."""
    from siren.backbones import resolve_device

    device = resolve_device(device)
    if device == "cuda" and world > 1:
        return f"cuda:{local_rank}"
    return device


def shutdown(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
