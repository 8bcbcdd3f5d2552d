"""Scale-out of the co-trainer with ``torch.distributed`` (DDP under ``torchrun``): joining the group, a
batch-norm that averages over the global batch, and checks that every rank agrees.

The collectives themselves (and :class:`DistInfo`) live in :mod:`segbandit.distributed`, the one place every
reduction goes through; they are re-exported here.  Library code never reads environment variables: the main job
reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (:func:`dist_info_from_env` takes the mapping it is
given) and passes a :class:`DistInfo` in.  Every function here is a no-op (or the trivial answer) in one process.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

from segbandit.distributed import (
    SINGLE,
    DistInfo,
    active,
    all_gather_objects,
    all_reduce_sum,
    all_reduce_sum_with_grad,
    any_rank,
    broadcast_buffers,
    broadcast_object,
)


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


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (all ranks), on any device.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this one all-reduces (differentiably, through
    :func:`all_reduce_sum_with_grad`) the per-channel count, sum and centred sum of squares, so that under gloo
    on CPUs a run of N ranks normalises exactly like one process holding the whole batch.  Outside a process
    group (``dist_info`` of one process), or in eval mode, it is a plain BatchNorm2d.  State-dict compatible with
    BatchNorm2d.
    """

    dist_info: DistInfo = SINGLE  # set by convert_sync_batchnorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (B, C, H, W)
        if not (self.training and active(self.dist_info)):
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"expected input of shape (B, C, H, W), got {tuple(x.shape)}")
        xf = x.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device)
        stats = all_reduce_sum_with_grad(torch.cat([count, xf.sum(dim=(0, 2, 3))]), self.dist_info)  # (1 + C,)
        n = stats[0]
        mean = stats[1:] / n  # (C,)
        centred = xf - mean[None, :, None, None]
        var = all_reduce_sum_with_grad(centred.pow(2).sum(dim=(0, 2, 3)), self.dist_info) / n  # (C,) biased
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


def convert_sync_batchnorm(module: nn.Module, device_type: str, info: DistInfo) -> nn.Module:
    """Every BatchNorm of ``module`` averaged over the global batch of ``info``: ``nn.SyncBatchNorm`` on CUDA, else
    :class:`GlobalBatchNorm2d` (gloo / CPU).  Parameters and buffers are kept (the optimiser's references stay valid).
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global_bn(module, info)


def _to_global_bn(module: nn.Module, info: DistInfo) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        out = GlobalBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        out.dist_info = info
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_global_bn(child, info))
    return out


__all__ = [
    "SINGLE",
    "DistInfo",
    "GlobalBatchNorm2d",
    "active",
    "all_gather_objects",
    "all_reduce_sum",
    "all_reduce_sum_with_grad",
    "any_rank",
    "broadcast_buffers",
    "assert_ranks_in_sync",
    "broadcast_object",
    "convert_sync_batchnorm",
    "dist_info_from_env",
    "init_process_group",
    "state_digest",
]
