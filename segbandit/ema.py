"""The EMA reference policy pi_ref used for the PPO ratio and the KL penalty (paper Eq. 19).

phi_old <- eta * phi_old + (1 - eta) * phi, after every optimiser step.  Built on PyTorch's own
``torch.optim.swa_utils.AveragedModel`` with its EMA averaging function; buffers (BatchNorm statistics)
are averaged too, so the reference evaluates exactly like an averaged policy.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMAReference(nn.Module):
    """A frozen exponential moving average of ``module`` (Eq. 19).

    The copy starts equal to ``module``; :meth:`update` folds the current weights in with momentum ``eta``.
    Its parameters never require gradients and calling it runs under ``torch.no_grad()``.
    """

    def __init__(self, module: nn.Module, eta: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must lie in [0, 1], got {eta}")
        self.eta = eta
        self.averaged = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(eta), use_buffers=True)
        self.averaged.requires_grad_(False)
        self.averaged.update_parameters(module)  # the first call copies: pi_ref = pi_phi at start

    @property
    def module(self) -> nn.Module:
        """The averaged (reference) module itself."""
        return self.averaged.module

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """phi_ref <- eta * phi_ref + (1 - eta) * phi (Eq. 19); call after the optimiser step."""
        self.averaged.update_parameters(module)
        self.module.train(module.training)

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)


__all__ = ["EMAReference"]
