"""Every collective of the project, in one place, each told whether and how to reduce.

A :class:`DistInfo` says who this process is (``rank`` of ``world_size``).  Each function here reduces over the
process group when ``info.enabled`` and is the single-process answer otherwise; nothing in the library detects a
process group on its own, so a caller that runs several unrelated single-process models inside one group (a test,
a notebook under ``torchrun``) gets single-process results unless it passes the job's ``DistInfo``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"expected 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}")

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files."""
        return self.rank == 0


SINGLE = DistInfo()


def active(info: DistInfo) -> bool:
    """True when ``info`` describes several processes; RuntimeError when it does but no process group is up."""
    if not info.enabled:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"DistInfo says world_size={info.world_size} but no process group is initialised")
    return True


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The sum of ``t`` over the ranks of ``info`` (a new tensor; ``t`` itself in one process)."""
    if not active(info):
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_rank(flag: bool, info: DistInfo, device: torch.device | str = "cpu") -> bool:
    """True if ``flag`` is true on any rank (a collective: every rank must call it)."""
    if not active(info):
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def global_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of every element of ``x`` over the global batch of ``info`` (a 0-d float32 tensor)."""
    stats = torch.stack([x.float().sum(), torch.tensor(float(x.numel()), device=x.device)])
    stats = all_reduce_sum(stats, info)
    return stats[0] / stats[1].clamp_min(1.0)


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a collective)."""
    if not active(info):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (a collective)."""
    if not active(info):
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def broadcast_buffers(modules: Iterable[nn.Module], info: DistInfo, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (batch-norm running statistics, ...) of ``modules`` to every rank, in place.

    DDP copies rank 0's buffers at the start of each forward, so after the last training step every rank's plain
    batch-norm holds statistics of its own shard: this makes them agree before evaluation, a check or a save.
    """
    if not active(info):
        return
    seen: set[int] = set()
    for module in modules:
        for buf in module.buffers():
            if id(buf) not in seen:
                seen.add(id(buf))
                dist.broadcast(buf, src=src)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with gradient: the gradient of a sum over ranks is the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


def all_reduce_sum_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``x`` summed over ranks, differentiably (every rank must call it, also in the backward); ``x`` in one process."""
    if not active(info):
        return x
    return _AllReduceSum.apply(x)


__all__ = [
    "SINGLE",
    "DistInfo",
    "active",
    "all_gather_objects",
    "all_reduce_sum",
    "all_reduce_sum_with_grad",
    "any_rank",
    "broadcast_buffers",
    "broadcast_object",
    "global_mean",
]
