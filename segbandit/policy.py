"""The latent-space Gaussian policy pi_phi (paper Sec. 3.2, Eq. 7-12).

The policy reads the encoder latents ``z (B, d, h, w)`` and predicts, per feature channel, the mean and
log standard deviation of a Gaussian.  The action ``s`` is sampled by reparameterisation, either densely
(``(B, d, h, w)``, the paper's ``s``: every position draws its own noise around the channel's mean) or
per channel (``(B, d)``, broadcast over space).

The log-probability of Eq. 12 is a *sum* over ``h * w * d`` elements.  For FCN-R50 on VOC that is
``2048 * 64 * 64`` = 8.4M terms, so the PPO ratio ``exp(log pi - log pi_ref)`` of such sums overflows as
soon as the policy moves: ``reduction="mean"`` (the per-element average) is offered beside it.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn

Reduction = Literal["sum", "mean"]
REDUCTIONS: tuple[str, ...] = ("sum", "mean")
ACTION_MODES: tuple[str, ...] = ("dense", "channel")  # s (B, d, h, w) as Eq. 11, or (B, d) broadcast over space
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _check_params(mu: torch.Tensor, log_std: torch.Tensor) -> None:
    if mu.dim() != 2 or mu.shape != log_std.shape:
        raise ValueError(
            f"expected mu and log_std of shape (B, d), got {tuple(mu.shape)} and {tuple(log_std.shape)}"
        )


def _broadcast_params(
    action: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of ``mu``/``log_std`` (B, d) that broadcast against ``action`` (B, d) or (B, d, h, w)."""
    _check_params(mu, log_std)
    if action.dim() not in (2, 4) or action.shape[:2] != mu.shape:
        raise ValueError(
            f"expected an action of shape (B, d) or (B, d, h, w) with (B, d) = {tuple(mu.shape)}, "
            f"got {tuple(action.shape)}"
        )
    if action.dim() == 4:
        return mu[:, :, None, None], log_std[:, :, None, None]
    return mu, log_std


def _reduce(per_element: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B, ...) -> (B,) by summing or averaging every non-batch element."""
    flat = per_element.flatten(1)  # (B, n)
    return flat.sum(1) if reduction == "sum" else flat.mean(1)


def sample_action(
    mu: torch.Tensor,
    log_std: torch.Tensor,
    spatial_size: tuple[int, int] | None = None,
    generator: torch.Generator | None = None,
    shard: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Reparameterised sample ``s = mu + sigma * eps`` (Eq. 11); differentiable in ``mu`` and ``log_std``.

    mu, log_std: (B, d).  ``spatial_size=(h, w)`` gives a dense action (B, d, h, w), ``None`` a per-channel one (B, d).
    The noise comes from ``generator`` (torch's global RNG when None).  ``shard=(rank, world_size)``: this process
    holds rows ``rank, rank + N, ...`` of a global batch of ``B * N``; the noise of the whole global batch is drawn
    and this process's rows are kept, so N processes together draw exactly the noise of one process.
    """
    _check_params(mu, log_std)
    rank, world = shard if shard is not None else (0, 1)
    if not 0 <= rank < world:
        raise ValueError(f"expected shard (rank, world_size) with 0 <= rank < world_size, got {shard}")
    shape = (mu.shape[0] * world, *mu.shape[1:], *(spatial_size or ()))
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)[rank::world]  # (B, d[, h, w])
    if spatial_size is None:
        return mu + log_std.exp() * eps  # (B, d)
    return mu[:, :, None, None] + log_std.exp()[:, :, None, None] * eps  # (B, d, h, w), Eq. 11


def gaussian_log_prob_elements(action: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(s_j; mu_c, sigma_c) of every action element, in float32: the terms Eq. 12 reduces.

    action: (B, d) or (B, d, h, w); mu, log_std: (B, d).  Returns the action's shape.
    """
    mu_b, log_std_b = _broadcast_params(action, mu, log_std)
    a, mu_b, log_std_b = action.float(), mu_b.float(), log_std_b.float()
    z = (a - mu_b) * torch.exp(-log_std_b)
    return -0.5 * z.square() - log_std_b - _LOG_SQRT_2PI  # (B, d[, h, w]), one term per (h, w, d)


def gaussian_log_prob(
    action: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor, reduction: Reduction = "sum"
) -> torch.Tensor:
    """log pi(s) of a diagonal Gaussian with per-channel parameters, in float32 (Eq. 12).

    action: (B, d) or (B, d, h, w); mu, log_std: (B, d).  Returns (B,): the sum over (h, w, d) as in
    Eq. 12 (``"sum"``) or the per-element mean (``"mean"``).
    """
    _check_reduction(reduction)
    return _reduce(gaussian_log_prob_elements(action, mu, log_std), reduction)  # Eq. 12


def gaussian_kl(
    mu_p: torch.Tensor,
    log_std_p: torch.Tensor,
    mu_q: torch.Tensor,
    log_std_q: torch.Tensor,
    reduction: Reduction = "sum",
    num_positions: int = 1,
) -> torch.Tensor:
    """Closed-form KL(p || q) between diagonal Gaussians with per-channel parameters (B, d), in float32.

    With a dense action every one of the ``num_positions = h * w`` positions shares its channel's
    parameters, so the KL of the whole action is ``num_positions`` times the per-channel sum
    (``"sum"``, matching Eq. 12's log-probability) or the per-channel mean (``"mean"``).  Returns (B,).
    Used as ``KL(pi_ref || pi_phi)`` for Eq. 5 with p = reference, q = current policy.
    """
    _check_reduction(reduction)
    _check_params(mu_p, log_std_p)
    _check_params(mu_q, log_std_q)
    if mu_p.shape != mu_q.shape:
        raise ValueError(f"expected p and q of the same shape, got {tuple(mu_p.shape)} and {tuple(mu_q.shape)}")
    mu_p, log_std_p, mu_q, log_std_q = mu_p.float(), log_std_p.float(), mu_q.float(), log_std_q.float()
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))  # sigma_p^2 / sigma_q^2
    mean_term = (mu_p - mu_q).square() * torch.exp(-2.0 * log_std_q)
    kl = log_std_q - log_std_p + 0.5 * (var_ratio + mean_term) - 0.5  # (B, d)
    return kl.sum(1) * num_positions if reduction == "sum" else kl.mean(1)


def gaussian_entropy(log_std: torch.Tensor, reduction: Reduction = "sum", num_positions: int = 1) -> torch.Tensor:
    """Entropy of the action distribution (B,), with the same reduction convention as :func:`gaussian_kl`."""
    _check_reduction(reduction)
    per_channel = log_std.float() + 0.5 + _LOG_SQRT_2PI  # (B, d)
    return per_channel.sum(1) * num_positions if reduction == "sum" else per_channel.mean(1)


class LatentPolicy(nn.Module):
    """Gaussian policy over latent modulation signals (Eq. 7-10).

    Args:
        in_channels: d, the latent channels the encoder emits (and the action's channels).
        hidden_channels: width of the convolutional projection.  The paper predicts mu and sigma "from a
            compressed projection of z"; 256 keeps the policy small next to a d = 2048 backbone.
        num_blocks: L, the number of Conv-BN-ReLU blocks (the paper uses 4).
        pool_size: (P_h, P_w) of the adaptive average pooling (an int means square).
        logstd_bound: the factor of ``bound * tanh(.)`` in Eq. 10 (4 in the paper); ``None`` gives the
            unbounded log sigma of Table 8.
        log_std_init: log sigma at initialisation (0: sigma = 1, the default), through the bias of ``fc_log_std``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int = 256,
        num_blocks: int = 4,
        pool_size: int | tuple[int, int] = 4,
        logstd_bound: float | None = 4.0,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        if logstd_bound is not None and not abs(log_std_init) < logstd_bound:
            raise ValueError(f"log_std_init must lie inside (-{logstd_bound}, {logstd_bound}), got {log_std_init}")
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if logstd_bound is not None and logstd_bound <= 0:
            raise ValueError(f"logstd_bound must be positive or None, got {logstd_bound}")
        self.in_channels = in_channels
        self.logstd_bound = logstd_bound
        pool = (pool_size, pool_size) if isinstance(pool_size, int) else tuple(pool_size)
        blocks: list[nn.Module] = []
        for i in range(num_blocks):  # Eq. 7-8: B(z) = ReLU(BN(Conv(z))), L times
            c_in = in_channels if i == 0 else hidden_channels
            blocks += [
                nn.Conv2d(c_in, hidden_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden_channels),
                nn.ReLU(inplace=True),
            ]
        self.conv_proj = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(pool)  # Eq. 9: pool to (P_h, P_w), then flatten
        flat = hidden_channels * pool[0] * pool[1]
        self.fc_mu = nn.Linear(flat, in_channels)
        self.fc_log_std = nn.Linear(flat, in_channels)
        # A small mean and sigma = exp(log_std_init) at start: the deterministic action starts near the zero signal.
        nn.init.normal_(self.fc_mu.weight, std=0.01)
        nn.init.zeros_(self.fc_mu.bias)
        nn.init.zeros_(self.fc_log_std.weight)
        raw = log_std_init if logstd_bound is None else math.atanh(log_std_init / logstd_bound)  # Eq. 10 inverted
        nn.init.constant_(self.fc_log_std.bias, raw)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, d, h, w) -> (mu, log_std), each (B, d)."""
        if z.dim() != 4 or z.shape[1] != self.in_channels:
            raise ValueError(
                f"expected latents of shape (B, {self.in_channels}, h, w), got {tuple(z.shape)}"
            )
        z_bar = self.pool(self.conv_proj(z)).flatten(1)  # (B, hidden * P_h * P_w), Eq. 7-9
        mu = self.fc_mu(z_bar)  # (B, d), Eq. 10
        raw = self.fc_log_std(z_bar)  # (B, d)
        log_std = raw if self.logstd_bound is None else self.logstd_bound * torch.tanh(raw)  # Eq. 10
        return mu, log_std

    def act(
        self,
        z: torch.Tensor,
        action_mode: Literal["dense", "channel"] = "dense",
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Sample (or take the mean) action for latents z (B, d, h, w).

        Returns ``{"mu", "log_std", "action"}`` where action is (B, d, h, w) for ``"dense"`` and (B, d)
        for ``"channel"``; ``deterministic=True`` gives s = mu (broadcast to the action's shape).
        """
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        mu, log_std = self(z)
        spatial = tuple(z.shape[-2:]) if action_mode == "dense" else None
        if deterministic:
            action = mu if spatial is None else mu[:, :, None, None].expand(-1, -1, *spatial)
        else:
            action = sample_action(mu, log_std, spatial, generator=generator)
        return {"mu": mu, "log_std": log_std, "action": action}


def broadcast_action(action: torch.Tensor, spatial_size: tuple[int, int]) -> torch.Tensor:
    """A per-channel action (B, d) as a dense signal (B, d, h, w); a dense action passes through."""
    if action.dim() == 2:
        return action[:, :, None, None].expand(-1, -1, *spatial_size)
    if action.dim() == 4:
        return action
    raise ValueError(f"expected an action of shape (B, d) or (B, d, h, w), got {tuple(action.shape)}")


__all__ = [
    "ACTION_MODES",
    "LatentPolicy",
    "REDUCTIONS",
    "broadcast_action",
    "gaussian_entropy",
    "gaussian_kl",
    "gaussian_log_prob",
    "gaussian_log_prob_elements",
    "sample_action",
]
