"""The EMA reference policy pi_ref as a tensordict module (Eq. 4, 19).

``forward`` evaluates the reference on the latents, without gradient, and writes its Gaussian parameters
``"ref_loc"`` / ``"ref_scale"`` (B, d) and log pi_ref(action) (B,) under the actor's log-probability key, the
entry TorchRL's ``ClipPPOLoss`` subtracts from the current log-probability: that makes its ratio Eq. 4's
rho = pi_phi(s) / pi_ref(s).  ``update(policy)`` is Eq. 19.
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from agents.actor import LOG_PROB_KEY, check_action_mode
from agents.distributions import LatentGaussian
from segbandit.ema import EMAReference
from segbandit.policy import REDUCTIONS, LatentPolicy


class EMAReferencePolicy(TensorDictModuleBase):
    """A frozen EMA copy of ``policy`` (momentum ``eta``) that scores the taken action."""

    def __init__(
        self,
        policy: LatentPolicy,
        eta: float = 0.99,
        reduction: str = "sum",
        action_mode: str = "dense",
        observation_key: str = "observation",
        action_key: str = "action",
        log_prob_key: str = LOG_PROB_KEY,
    ) -> None:
        super().__init__()
        check_action_mode(action_mode)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.ema = EMAReference(policy, eta)
        self.reduction = reduction
        self.action_mode = action_mode
        self.observation_key, self.action_key, self.log_prob_key = observation_key, action_key, log_prob_key
        self.in_keys = [observation_key, action_key]
        self.out_keys = ["ref_loc", "ref_scale", log_prob_key]

    @property
    def eta(self) -> float:
        return self.ema.eta

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        z = tensordict.get(self.observation_key)  # (B, d, h, w)
        action = tensordict.get(self.action_key)  # (B, d, h, w) dense / (B, d) channel
        expected_dim = 4 if self.action_mode == "dense" else 2
        if action.dim() != expected_dim or action.shape[:2] != z.shape[:2] or (
            expected_dim == 4 and action.shape[2:] != z.shape[2:]
        ):
            want = f"({z.shape[0]}, {z.shape[1]}, {z.shape[2]}, {z.shape[3]})" if expected_dim == 4 else f"({z.shape[0]}, {z.shape[1]})"
            raise ValueError(f"expected a {self.action_mode} action of shape {want}, got {tuple(action.shape)}")
        mu, log_std = self.ema(z.detach())  # (B, d) each, pi_ref's parameters
        dist = LatentGaussian(
            mu.float(), log_std.float().exp(), reduction=self.reduction,
            spatial_like=z if self.action_mode == "dense" else None,
        )
        tensordict.set("ref_loc", dist.loc)
        tensordict.set("ref_scale", dist.scale)
        tensordict.set(self.log_prob_key, dist.log_prob(action.detach()))  # (B,) log pi_ref(s), Eq. 4
        return tensordict

    def update(self, policy: LatentPolicy) -> None:
        """phi_ref <- eta * phi_ref + (1 - eta) * phi (Eq. 19); call after the optimiser step."""
        self.ema.update(policy)


__all__ = ["EMAReferencePolicy"]
