"""Reward baselines for the advantage A = clamp(r - b, a_min, a_max) (paper Eq. 16-18, Table 5b).

Usage per batch: ``baseline.update(r)`` then ``A = baseline.advantage(r, a_min, a_max)``.  Built with the job's
``dist_info`` (several processes), the batch mean is the mean over the global batch, so every rank holds the same b.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from segbandit.distributed import SINGLE, DistInfo, global_mean


def _check_rewards(r: torch.Tensor) -> None:
    if r.dim() != 1 or r.numel() == 0:
        raise ValueError(f"expected rewards of shape (B,) with B >= 1, got {tuple(r.shape)}")


class Baseline(nn.Module):
    """A scalar baseline b kept as a buffer (so it lives in ``state_dict``); batch means over ``dist_info``'s ranks."""

    def __init__(self, dist_info: DistInfo = SINGLE) -> None:
        super().__init__()
        self.dist_info = dist_info
        self.register_buffer("b", torch.zeros(()))

    @property
    def value(self) -> torch.Tensor:
        """The current baseline b (0-d float32 tensor)."""
        return self.b

    def update(self, r: torch.Tensor) -> None:
        """Fold the batch rewards r (B,) into b."""
        raise NotImplementedError

    def advantage(self, r: torch.Tensor, a_min: float = float("-inf"), a_max: float = float("inf")) -> torch.Tensor:
        """A = clamp(r - b, a_min, a_max) (Eq. 17-18), (B,) float32; call after :meth:`update`."""
        _check_rewards(r)
        if a_min > a_max:
            raise ValueError(f"expected a_min <= a_max, got a_min={a_min}, a_max={a_max}")
        return (r.float() - self.b.to(r.device)).clamp(a_min, a_max)  # Eq. 17-18


class EMABaseline(Baseline):
    """b <- tau * b + (1 - tau) * mean(r) (Eq. 16).  The first batch sets b to its mean (no zero-start bias)."""

    def __init__(self, tau: float = 0.9, dist_info: DistInfo = SINGLE) -> None:
        super().__init__(dist_info)
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must lie in [0, 1], got {tau}")
        self.tau = tau
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, r: torch.Tensor) -> None:
        _check_rewards(r)
        r_bar = global_mean(r.detach(), self.dist_info).to(self.b.device)
        if bool(self.initialized):
            self.b.mul_(self.tau).add_((1.0 - self.tau) * r_bar)  # Eq. 16
        else:
            self.b.copy_(r_bar)
            self.initialized.fill_(True)


class BatchMeanBaseline(Baseline):
    """b = mean(r) of the current (global) batch (Table 5b, second row)."""

    @torch.no_grad()
    def update(self, r: torch.Tensor) -> None:
        _check_rewards(r)
        self.b.copy_(global_mean(r.detach(), self.dist_info).to(self.b.device))


class ZeroBaseline(Baseline):
    """b = 0: every reward counts as a positive signal (Table 5b, first row)."""

    def update(self, r: torch.Tensor) -> None:
        _check_rewards(r)


BASELINES: dict[str, type[Baseline]] = {"ema": EMABaseline, "batch_mean": BatchMeanBaseline, "zero": ZeroBaseline}


# Baselines per image, from K action samples of the same image (RLOO / GRPO) or from its greedy action s = mu.
PER_IMAGE_BASELINES: tuple[str, ...] = ("rloo", "group_mean", "greedy")


def per_image_baseline(name: str, rewards: torch.Tensor, greedy: torch.Tensor | None = None) -> torch.Tensor:
    """The baseline of every sample, (K, B), for rewards (K, B) of K actions on each of B images.

    ``rloo``: the mean reward of the image's *other* K - 1 samples (leave-one-out, unbiased; K >= 2);
    ``group_mean``: the mean over the image's K samples (GRPO without the std scaling; K >= 2);
    ``greedy``: the reward ``greedy`` (B,) of the image's mean action s = mu (self-critical baseline).
    """
    if name not in PER_IMAGE_BASELINES:
        raise ValueError(f"unknown per-image baseline {name!r}; valid names: {', '.join(PER_IMAGE_BASELINES)}")
    if rewards.dim() != 2:
        raise ValueError(f"expected rewards of shape (K, B), got {tuple(rewards.shape)}")
    k = rewards.shape[0]
    r = rewards.float()
    if name == "greedy":
        if greedy is None or tuple(greedy.shape) != (rewards.shape[1],):
            raise ValueError(f"the greedy baseline needs greedy rewards of shape ({rewards.shape[1]},)")
        return greedy.float().expand_as(r)
    if k < 2:
        raise ValueError(f"the {name} baseline needs K >= 2 samples per image, got K = {k}")
    total = r.sum(0, keepdim=True)  # (1, B)
    if name == "rloo":
        return (total - r) / (k - 1)  # (K, B)
    return (total / k).expand_as(r)


def make_baseline(name: str, tau: float = 0.9, dist_info: DistInfo = SINGLE) -> Baseline:
    """Build a baseline by name: ``ema`` (ours, with momentum ``tau``), ``batch_mean`` or ``zero``."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; valid names: {sorted(BASELINES)}")
    return EMABaseline(tau, dist_info) if name == "ema" else BASELINES[name](dist_info)


__all__ = [
    "BASELINES", "PER_IMAGE_BASELINES", "Baseline", "BatchMeanBaseline", "EMABaseline", "ZeroBaseline", "make_baseline",
    "per_image_baseline",
]  # fmt: skip
