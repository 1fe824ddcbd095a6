"""One logging style for every stage: `[siren] message` on stderr, from rank 0 only.

Under torchrun every rank runs the same code; only rank 0 speaks unless a message is about one
rank (`all_ranks=True`, prefixed with the rank), so logs read the same at any world size.
"""

from __future__ import annotations

import os
import sys


def rank_world() -> tuple[int, int]:
    """(rank, world size): from torch.distributed once initialised, else torchrun's environment."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to log
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def log(msg: str, *, all_ranks: bool = False) -> None:
    rank, world = rank_world()
    if rank == 0 or all_ranks:
        prefix = f"[siren rank {rank}/{world}]" if world > 1 and all_ranks else "[siren]"
        print(f"{prefix} {msg}", file=sys.stderr, flush=True)
