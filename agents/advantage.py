"""Advantage modules for the bandit: one step, gamma = 1, so the return is the reward itself.

``EMABaselineAdvantage`` is the paper's stabilised advantage (Eq. 16-18): update the running baseline b with
the batch's rewards, then A = clamp(r - b, a_min, a_max).  ``CriticAdvantage`` is the same with a learned
baseline V(z) (for A2C / REINFORCE).  Both write ``"advantage"`` and ``"value_target"`` of shape (B, 1), the
shape TorchRL's losses expect (a flat (B,) advantage is refused by ``ClipPPOLoss``'s broadcast guard).
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from segbandit.baselines import Baseline


def _rewards(td: TensorDictBase, key: str) -> torch.Tensor:
    """The rewards under ``key`` as (B,) float32; accepts (B,) or (B, 1)."""
    r = td.get(key)
    if r.dim() == 2 and r.shape[-1] == 1:
        r = r.squeeze(-1)
    if r.dim() != 1 or r.shape[0] != td.batch_size[0]:
        raise ValueError(f"expected rewards of shape ({td.batch_size[0]},) or ({td.batch_size[0]}, 1), got {tuple(r.shape)}")
    return r.float()


def _check_bounds(a_min: float, a_max: float) -> None:
    if a_min > a_max:
        raise ValueError(f"expected a_min <= a_max, got a_min={a_min}, a_max={a_max}")


class EMABaselineAdvantage(TensorDictModuleBase):
    """Writes A = clamp(r - b, a_min, a_max) (B, 1) after folding the rewards into b (Eq. 16-18).

    Also writes ``value_target`` = r (B, 1): harmless for critic-free losses, the regression target for critics.
    A batch with a non-finite reward leaves b untouched (its advantages are non-finite, so the step is skipped
    by the trainer's guard instead of poisoning the baseline for the rest of the run).
    """

    def __init__(
        self,
        baseline: Baseline,
        a_min: float = -1.0,
        a_max: float = 1.0,
        reward_key: str = "reward",
        advantage_key: str = "advantage",
        value_target_key: str = "value_target",
    ) -> None:
        super().__init__()
        _check_bounds(a_min, a_max)
        self.baseline = baseline
        self.a_min, self.a_max = float(a_min), float(a_max)
        self.reward_key, self.advantage_key, self.value_target_key = reward_key, advantage_key, value_target_key
        self.in_keys = [reward_key]
        self.out_keys = [advantage_key, value_target_key]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        r = _rewards(tensordict, self.reward_key)  # (B,)
        if bool(torch.isfinite(r).all()):
            self.baseline.update(r)  # Eq. 16
        adv = self.baseline.advantage(r, self.a_min, self.a_max)  # (B,), Eq. 17-18
        tensordict.set(self.advantage_key, adv.unsqueeze(-1))  # (B, 1)
        tensordict.set(self.value_target_key, r.unsqueeze(-1))  # (B, 1)
        return tensordict


class CriticAdvantage(TensorDictModuleBase):
    """A learned baseline: writes ``state_value`` V(z) (B, 1, no gradient), A = clamp(r - V, a_min, a_max) and
    ``value_target`` = r (both (B, 1)).  The critic itself is trained by the loss's critic term."""

    def __init__(
        self,
        critic: TensorDictModuleBase,
        a_min: float = -1.0,
        a_max: float = 1.0,
        reward_key: str = "reward",
        value_key: str = "state_value",
        advantage_key: str = "advantage",
        value_target_key: str = "value_target",
    ) -> None:
        super().__init__()
        _check_bounds(a_min, a_max)
        self.critic = critic
        self.a_min, self.a_max = float(a_min), float(a_max)
        self.reward_key, self.value_key = reward_key, value_key
        self.advantage_key, self.value_target_key = advantage_key, value_target_key
        self.in_keys = [reward_key, *critic.in_keys]
        self.out_keys = [value_key, advantage_key, value_target_key]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        r = _rewards(tensordict, self.reward_key)  # (B,)
        with torch.no_grad():
            value = self.critic(tensordict.select(*self.critic.in_keys)).get(self.value_key).float()  # (B, 1)
        adv = (r.unsqueeze(-1) - value).clamp(self.a_min, self.a_max)  # (B, 1)
        tensordict.set(self.value_key, value)
        tensordict.set(self.advantage_key, adv)
        tensordict.set(self.value_target_key, r.unsqueeze(-1))
        return tensordict


__all__ = ["CriticAdvantage", "EMABaselineAdvantage"]
