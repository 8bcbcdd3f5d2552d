"""Scale-out of the co-trainer with ``torch.distributed`` (DDP under ``torchrun``): who this process is, a
batch-norm that averages over the global batch, and checks that every rank agrees.

Library code never reads environment variables: the main job reads torchrun's ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` (:func:`dist_info_from_env` takes the mapping it is given) and passes a :class:`DistInfo` in.
Every function here is a no-op (or the trivial answer) in a single process.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
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


def dist_info_from_env(env: Mapping[str, str]) -> DistInfo:
    """The :class:`DistInfo` that ``torchrun`` describes in ``env`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return SINGLE
    return DistInfo(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", env.get("RANK", "0"))))


def init_process_group(info: DistInfo, device_type: str, timeout_s: float = 1800.0) -> str:
    """Join the process group (NCCL for CUDA devices, gloo otherwise); returns the backend name.

    Uses the ``env://`` rendezvous (``MASTER_ADDR`` / ``MASTER_PORT``, which torchrun sets).
    """
    backend = "nccl" if device_type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(
            backend, rank=info.rank, world_size=info.world_size, timeout=timedelta(seconds=timeout_s)
        )
    return dist.get_backend()


def active(info: DistInfo) -> bool:
    """True when ``info`` describes several processes and the process group is up."""
    return info.enabled and dist.is_available() and dist.is_initialized()


def any_rank(flag: bool, info: DistInfo, device: torch.device | str = "cpu") -> bool:
    """True if ``flag`` is true on any rank (a collective: every rank must call it)."""
    if not active(info):
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


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


def state_digest(modules: Iterable[nn.Module]) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes) of ``modules``: equal iff bit-identical."""
    h = hashlib.sha256()
    for module in modules:
        for name, t in module.state_dict(keep_vars=False).items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def assert_ranks_in_sync(modules: Iterable[nn.Module], info: DistInfo) -> str:
    """Raise RuntimeError unless every rank holds bit-identical parameters and buffers; returns the digest."""
    digest = state_digest(list(modules))
    digests = all_gather_objects(digest, info)
    if len(set(digests)) != 1:
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(f"ranks out of sync: the parameters of rank(s) {differ} differ from rank 0's")
    return digest


# ----------------------------------------------------------------------------- batch-norm over the global batch


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


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over ranks, differentiable (every rank must call it, also in the backward)."""
    return _AllReduceSum.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (all ranks), on any device.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this one all-reduces (differentiably, through
    :func:`all_reduce_sum_with_grad`) the per-channel count, sum and centred sum of squares, so that under gloo
    on CPUs a run of N ranks normalises exactly like one process holding the whole batch.  Outside a process
    group, or in eval mode, it is a plain BatchNorm2d.  State-dict compatible with BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, C, H, W)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"expected input of shape (B, C, H, W), got {tuple(x.shape)}")
        xf = x.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device)
        stats = all_reduce_sum_with_grad(torch.cat([count, xf.sum(dim=(0, 2, 3))]))  # (1 + C,)
        n = stats[0]
        mean = stats[1:] / n  # (C,)
        centred = xf - mean[None, :, None, None]
        var = all_reduce_sum_with_grad(centred.pow(2).sum(dim=(0, 2, 3))) / n  # (C,) biased
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(m * mean.detach().to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Every BatchNorm of ``module`` averaged over the global batch: ``nn.SyncBatchNorm`` on CUDA, else
    :class:`GlobalBatchNorm2d` (gloo / CPU).  Parameters and buffers are kept (the optimiser's references stay valid).
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_bn(module)


def _to_global_bn(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        out = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_global_bn(child))
    return out


def shard(n: int, info: DistInfo) -> range:
    """This rank's share of ``n`` items, without padding or repeats: ``range(rank, n, world_size)``."""
    return range(info.rank, n, info.world_size)


__all__ = [
    "SINGLE",
    "DistInfo",
    "GlobalBatchNorm2d",
    "active",
    "all_gather_objects",
    "all_reduce_sum_with_grad",
    "any_rank",
    "assert_ranks_in_sync",
    "broadcast_object",
    "convert_sync_batchnorm",
    "dist_info_from_env",
    "init_process_group",
    "shard",
    "state_digest",
]
