"""TorchRL actor and critic over encoder latents.

``make_actor`` wraps :class:`segbandit.policy.LatentPolicy` as a TorchRL ``ProbabilisticActor``: it reads the
latents z (B, d, h, w) under ``"observation"``, writes the per-channel Gaussian parameters ``"loc"`` and
``"scale"`` (B, d), a sampled ``"action"`` (Eq. 11) and its log-probability under ``"action_log_prob"``
(Eq. 12).  ``make_value_head`` is the small critic A2C and REINFORCE need: global-average-pooled latents
through an MLP to ``"state_value"`` (B, 1).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn
from tensordict.nn import InteractionType, TensorDictModule
from torchrl.modules import ProbabilisticActor, ValueOperator

from agents.distributions import LatentGaussian
from segbandit.policy import ACTION_MODES, REDUCTIONS, LatentPolicy

# The actor's log-probability key, passed explicitly so it does not depend on tensordict's
# ``composite_lp_aggregate`` mode (TorchRL 0.14 would otherwise pick "sample_log_prob" or "action_log_prob").
LOG_PROB_KEY = "action_log_prob"


def check_action_mode(action_mode: str) -> None:
    if action_mode not in ACTION_MODES:
        raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")


class LatentGaussianParams(nn.Module):
    """z (B, d, h, w) -> (loc, scale), each (B, d) float32: the policy's mu and exp(log sigma) (Eq. 10).

    Inside :meth:`reuse` it returns the given parameters instead of running the policy again: a co-training step
    computes them once (the sample that fed the decoder came from them) and the TorchRL loss reads the same tensors,
    graph included, so the policy runs once per step and its batch-norm statistics move once.
    """

    def __init__(self, policy: LatentPolicy) -> None:
        super().__init__()
        self.policy = policy
        self._given: tuple[torch.Tensor, torch.Tensor] | None = None

    @contextlib.contextmanager
    def reuse(self, loc: torch.Tensor, scale: torch.Tensor) -> Iterator[None]:
        """Within the block, ``forward`` returns ``(loc, scale)`` (B, d) for a batch of B latents."""
        self._given = (loc, scale)
        try:
            yield
        finally:
            self._given = None

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._given is not None:
            loc, scale = self._given
            if loc.shape[0] != z.shape[0]:
                raise ValueError(f"reused policy parameters are for {loc.shape[0]} latents, got {z.shape[0]}")
            return loc, scale
        mu, log_std = self.policy(z)  # (B, d), (B, d)
        return mu.float(), log_std.float().exp()


def make_actor(
    policy: LatentPolicy,
    action_mode: str = "dense",
    spatial_size: tuple[int, int] | None = None,
    reduction: str = "sum",
    observation_key: str = "observation",
) -> ProbabilisticActor:
    """The policy as a TorchRL ``ProbabilisticActor`` (sampling by default: interaction type RANDOM).

    Writes ``"loc"``, ``"scale"`` (B, d), ``"action"`` ((B, d, h, w) for ``"dense"``, (B, d) for
    ``"channel"``) and ``LOG_PROB_KEY`` (B,).  A dense actor without ``spatial_size`` reads (h, w) from the
    observation at every call, so latents of any size work.
    """
    check_action_mode(action_mode)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if action_mode == "channel" and spatial_size is not None:
        raise ValueError(f"a channel action has no spatial size, got spatial_size={spatial_size!r}")
    params = TensorDictModule(LatentGaussianParams(policy), in_keys=[observation_key], out_keys=["loc", "scale"])
    dist_keys: dict[str, str] = {"loc": "loc", "scale": "scale"}
    dist_kwargs: dict[str, object] = {"reduction": reduction}
    if action_mode == "dense":
        if spatial_size is None:
            dist_keys["spatial_like"] = observation_key
        else:
            dist_kwargs["spatial_size"] = tuple(spatial_size)
    return ProbabilisticActor(
        params,
        in_keys=dist_keys,
        out_keys=["action"],
        distribution_class=LatentGaussian,
        distribution_kwargs=dist_kwargs,
        return_log_prob=True,
        log_prob_key=LOG_PROB_KEY,
        default_interaction_type=InteractionType.RANDOM,
    )


def actor_policy(actor: nn.Module) -> LatentPolicy:
    """The :class:`LatentPolicy` inside an actor built by :func:`make_actor`."""
    for module in actor.modules():
        if isinstance(module, LatentGaussianParams):
            return module.policy
    raise ValueError(f"expected an actor built by make_actor (holding a LatentPolicy), got {type(actor).__name__}")


class ValueHead(nn.Module):
    """V(z): global average pooling of the latents (B, d, h, w), then an MLP -> (B, 1) float32."""

    def __init__(self, in_channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 4 or z.shape[1] != self.in_channels:
            raise ValueError(f"expected latents of shape (B, {self.in_channels}, h, w), got {tuple(z.shape)}")
        pooled = z.mean(dim=(2, 3))  # (B, d)
        return self.mlp(pooled).float()  # (B, 1)


def make_value_head(in_channels: int, hidden: int = 64, observation_key: str = "observation") -> ValueOperator:
    """The critic as a TorchRL ``ValueOperator``: reads ``observation_key``, writes ``"state_value"`` (B, 1)."""
    return ValueOperator(ValueHead(in_channels, hidden), in_keys=[observation_key], out_keys=["state_value"])


__all__ = [
    "ACTION_MODES",
    "LOG_PROB_KEY",
    "LatentGaussianParams",
    "ValueHead",
    "actor_policy",
    "make_actor",
    "make_value_head",
]
