"""Small helpers over ``torch.distributed`` that are no-ops in a single process."""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group (e.g. under ``torchrun``)."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over all ranks (a new tensor; ``t`` itself when not distributed)."""
    if not is_distributed():
        return t
    out = t.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of every element of ``x`` across all ranks (a 0-d float32 tensor)."""
    stats = torch.stack([x.float().sum(), torch.tensor(float(x.numel()), device=x.device)])
    stats = all_reduce_sum(stats)
    return stats[0] / stats[1].clamp_min(1.0)
