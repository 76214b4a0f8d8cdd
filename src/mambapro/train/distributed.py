"""torchrun / DistributedDataParallel plumbing (gloo on CPU, NCCL on CUDA).

Outside torchrun everything degrades to a single process: ``world_size == 1``, ``rank == 0``.
Ranks, world size and the rendezvous come from the environment torchrun sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), on one node or several; see
``docs/scale.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mambapro.errors import UserError
from mambapro.runtime import resolve_device

__all__ = [
    "DistInfo",
    "init_distributed",
    "barrier",
    "all_reduce_mean",
    "cleanup",
    "gather_to_main",
    "rank_device",
    "same_on_all_ranks",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment, if any.

    With NCCL, this process's GPU (``cuda:LOCAL_RANK``) becomes the current device before the
    group forms, so that collectives before the model is placed (barriers, object gathers) use
    the rank's own GPU rather than GPU 0 on every rank.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def rank_device(info: DistInfo) -> torch.device | None:
    """This rank's device when the group runs on NCCL (``cuda:LOCAL_RANK``); None otherwise,
    where the caller's own choice of device stands (one process, or gloo on CPU)."""
    if info.enabled and dist.is_initialized() and dist.get_backend() == "nccl":
        return resolve_device("cuda", info.local_rank)
    return None


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean over ranks (a copy; the input is untouched)."""
    if not info.enabled:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / info.world_size


def same_on_all_ranks(value: Any, info: DistInfo, what: str, hint: str = "") -> None:
    """Raise :class:`UserError` on every rank when ``value`` (picklable, compared with ``==``)
    is not the same on all ranks: a collective, so every rank must call it, and every rank
    refuses together (none goes on to wait for the others)."""
    if not info.enabled:
        return
    values: list[Any] = [None] * info.world_size
    dist.all_gather_object(values, value)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        other = differ[0]
        more = f" and {len(differ) - 1} more ranks" if len(differ) > 1 else ""
        raise UserError(
            f"{what} differs between the ranks (rank 0: {values[0]}; rank {other}: {values[other]}{more})"
            + (f"; {hint}" if hint else "")
        )


def gather_to_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``obj`` (picklable) on rank 0, in rank order; None on the other ranks.
    One process: ``[obj]``."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
