"""Policy losses: the paper's latent PPO (a TorchRL ``ClipPPOLoss``) and a registry of swappable TorchRL losses.

``LatentPPOLoss`` is critic-free.  Its ratio is taken against the EMA reference: the tensordict's log-probability
entry holds log pi_ref(s) (written by :class:`agents.reference.EMAReferencePolicy`), so ClipPPOLoss's
``exp(log pi_phi(s) - td[log-prob])`` is Eq. 4's rho.  It adds ``loss_kl = lambda_kl * KL(pi_ref || pi_phi)`` in
closed form (Eq. 5) from the reference's ``"ref_loc"`` / ``"ref_scale"`` and the current distribution, with the
log-probability reduction of the actor's distribution.  Advantages are used as given (``normalize_advantage``
off): they are already baselined and clamped (Eq. 16-18).

``ratio_clip="element"`` clips a ratio per action element instead of Eq. 4's one ratio of the whole action: with a
dense action (d * h * w elements sharing d channels' parameters) the clip on a geometric-mean ratio (``"mean"``
reduction) bounds no element, and on the product (``"sum"``) it clips every sample.  The per-element surrogate
``mean_j min(rho_j A, clip(rho_j) A)`` is PPO's for a factorised action; ``"action"`` (default) is Eq. 4 as written.

All losses are built with ``functional=False``: they call the caller's policy and critic modules directly, so
the optimiser's parameters are the ones that get gradients and DDP wrappers keep working.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey
from torch.distributions import kl_divergence
from torchrl.objectives import A2CLoss, ClipPPOLoss, KLPENPPOLoss, LossModule, ReinforceLoss

from agents.actor import ValueHead, actor_policy, make_value_head
from agents.distributions import LatentGaussian


RATIO_CLIPS: tuple[str, ...] = ("action", "element")  # one ratio of the whole action (Eq. 4) or one per element


@torch.no_grad()
def ratio_diagnostics(log_ratio: torch.Tensor, clip_epsilon: float) -> dict[str, torch.Tensor]:
    """Detached float32 diagnostics of a log importance ratio (B,) or (B, 1).

    ``ratio`` (mean rho), ``clip_fraction`` (share of |rho - 1| beyond epsilon, as ClipPPOLoss counts it),
    ``approx_kl`` (CleanRL's mean((rho - 1) - log rho)), and, because a ``"sum"``-reduced log-probability over
    a large latent overflows rho long before its logarithm is unusual, the finite-aware ``log_ratio_max``
    (max |log rho|) and ``nonfinite_ratio`` (share of samples whose rho is inf or NaN).
    """
    lw = log_ratio.detach().float().reshape(-1)  # (B,)
    ratio = lw.exp()
    low, high = math.log1p(-clip_epsilon), math.log1p(clip_epsilon)
    return {
        "ratio": ratio.mean(),
        "clip_fraction": ((lw < low) | (lw > high)).float().mean(),
        "approx_kl": (torch.expm1(lw) - lw).mean(),
        "log_ratio_max": lw.abs().max(),
        "nonfinite_ratio": (~torch.isfinite(ratio)).float().mean(),
    }


class LatentPPOLoss(ClipPPOLoss):
    """Clipped PPO against the EMA reference plus a closed-form KL penalty (Eq. 4-5), critic-free.

    Reads ``"observation"``, ``"action"``, ``"advantage"`` (B, 1), the actor's log-probability key holding
    log pi_ref(action) (B,), and ``"ref_loc"`` / ``"ref_scale"`` (B, d).  Returns ``loss_objective`` (Eq. 4),
    ``loss_kl`` (lambda_kl * KL, Eq. 5), ``loss_entropy`` only when ``entropy_bonus`` is on, and detached
    diagnostics: ``ratio``, ``clip_fraction``, ``kl`` (unscaled), ``approx_kl``, ``entropy``, ``advantage``,
    ``log_ratio_max``, ``nonfinite_ratio`` (besides ClipPPOLoss's own ``ESS``, ``kl_approx``, ``max_ratio``,
    ``mean_ratio``).  The ratio is not clamped beyond PPO's own clip: with ``"sum"`` over a large latent it can
    overflow, and the loss is then non-finite for the trainer's guard to see.
    """

    @dataclass
    class _AcceptedKeys(ClipPPOLoss._AcceptedKeys):
        """ClipPPOLoss's keys plus the reference's Gaussian parameters."""

        ref_loc: NestedKey = "ref_loc"
        ref_scale: NestedKey = "ref_scale"
        # the Gaussian under the per-element ratio (ratio_clip="element"): the reference, or the behaviour (PPO-EWMA)
        ratio_loc: NestedKey = "ref_loc"
        ratio_scale: NestedKey = "ref_scale"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    _schedulable_buffers = frozenset({"lambda_kl"})

    def __init__(
        self,
        actor_network: TensorDictModuleBase,
        *,
        clip_epsilon: float = 0.2,
        lambda_kl: float = 1.0,
        entropy_bonus: bool = False,
        entropy_coeff: float = 0.0,
        ratio_clip: str = "action",
        functional: bool = False,
        reduction: str | None = None,
        device: torch.device | None = None,
        **kwargs,
    ) -> None:
        if ratio_clip not in RATIO_CLIPS:
            raise ValueError(f"unknown ratio_clip {ratio_clip!r}; valid names: {', '.join(RATIO_CLIPS)}")
        for key in ("critic_network", "critic", "normalize_advantage"):
            if kwargs.get(key):
                raise ValueError(f"LatentPPOLoss is critic-free with advantages used as given; got {key}={kwargs[key]!r}")
            kwargs.pop(key, None)
        super().__init__(
            actor_network,
            None,
            clip_epsilon=clip_epsilon,
            entropy_bonus=entropy_bonus,
            entropy_coeff=entropy_coeff,
            critic_coeff=None,
            normalize_advantage=False,
            functional=functional,
            reduction=reduction,
            device=device,
            **kwargs,
        )
        if device is None:
            device = next(self.parameters()).device
        self.register_coeff_buffer("lambda_kl", float(lambda_kl), device=device)
        self.ratio_clip = ratio_clip
        self._last_policy_terms: tuple[torch.Tensor, LatentGaussian] | None = None

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            keys = list(super().out_keys)
            keys += ["loss_kl", "kl", "ratio", "approx_kl", "advantage", "log_ratio_max", "nonfinite_ratio"]
            if "entropy" not in keys:
                keys.append("entropy")
            self._out_keys = keys
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

    def _log_weight(self, tensordict: TensorDictBase, adv_shape: torch.Size):
        # Keep the log-ratio and the current distribution (with graph) for the KL term and the diagnostics.
        log_weight, dist, kl_approx, log_is_weight = super()._log_weight(tensordict, adv_shape)
        self._last_policy_terms = (log_weight, dist)
        return log_weight, dist, kl_approx, log_is_weight

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        ref_loc = tensordict.get(self.tensor_keys.ref_loc, None)
        ref_scale = tensordict.get(self.tensor_keys.ref_scale, None)
        if ref_loc is None or ref_scale is None:
            raise KeyError(
                f"LatentPPOLoss needs the reference's {self.tensor_keys.ref_loc!r} and {self.tensor_keys.ref_scale!r} "
                "in the tensordict (write them with agents.reference.EMAReferencePolicy)"
            )
        out = super().forward(tensordict)
        log_weight, dist = self._last_policy_terms
        self._last_policy_terms = None
        if not isinstance(dist, LatentGaussian):
            raise TypeError(f"LatentPPOLoss needs an actor with a LatentGaussian distribution, got {type(dist).__name__}")
        ref = LatentGaussian(
            ref_loc.detach().float(), ref_scale.detach().float(), dist.spatial_size, dist.reduction
        )
        kl = kl_divergence(ref, dist)  # (B,) KL(pi_ref || pi_phi), Eq. 5
        if self.ratio_clip == "element":
            self._element_objective(tensordict, dist, out)
        out.set("loss_kl", self.lambda_kl * self._reduce_loss(kl.unsqueeze(-1), tensordict).squeeze(-1))
        out.set("kl", kl.detach().mean())
        diag = ratio_diagnostics(log_weight, float(self.clip_epsilon))
        for key in ("ratio", "approx_kl", "log_ratio_max", "nonfinite_ratio"):
            out.set(key, diag[key])
        if "entropy" not in out.keys():
            out.set("entropy", dist.entropy().detach().mean())
        out.set("advantage", tensordict.get(self.tensor_keys.advantage).detach().float().mean())
        return out


    def _element_objective(self, tensordict: TensorDictBase, dist: LatentGaussian, out: TensorDictBase) -> None:
        """Replace ``loss_objective`` by the per-element clipped surrogate (Eq. 4 applied to each action element)."""
        action = tensordict.get(self.tensor_keys.action)  # (B, d[, h, w])
        old = LatentGaussian(
            tensordict.get(self.tensor_keys.ratio_loc).detach().float(),
            tensordict.get(self.tensor_keys.ratio_scale).detach().float(),
            dist.spatial_size, dist.reduction,
        )
        log_rho = dist.log_prob_elements(action) - old.log_prob_elements(action)  # (B, d[, h, w])
        adv = tensordict.get(self.tensor_keys.advantage).float()  # (B, 1)
        adv = adv.reshape(adv.shape[0], *([1] * (log_rho.dim() - 1)))  # broadcast over the action's elements
        low, high = math.log1p(-float(self.clip_epsilon)), math.log1p(float(self.clip_epsilon))
        log_rho_clip = log_rho.clamp(low, high)
        gain = torch.minimum(log_rho.exp() * adv, log_rho_clip.exp() * adv).flatten(1).mean(1)  # (B,)
        out.set("loss_objective", self._reduce_loss(-gain.unsqueeze(-1), tensordict).squeeze(-1))
        out.set("clip_fraction", (log_rho_clip != log_rho).float().mean().detach())


# -- registry ----------------------------------------------------------------------------------------
CRITIC_ALGOS: tuple[str, ...] = ("a2c", "reinforce")


def _latent_ppo(actor, *, clip_epsilon, lambda_kl, critic, entropy_coef) -> LossModule:
    return LatentPPOLoss(
        actor, clip_epsilon=clip_epsilon, lambda_kl=lambda_kl, entropy_bonus=entropy_coef > 0, entropy_coeff=entropy_coef
    )


def _ppo(actor, *, clip_epsilon, lambda_kl, critic, entropy_coef) -> LossModule:
    # TorchRL's plain ClipPPOLoss: ratio against the behaviour log-probability stored at sampling time.
    return ClipPPOLoss(
        actor,
        None,
        clip_epsilon=clip_epsilon,
        entropy_bonus=entropy_coef > 0,
        entropy_coeff=entropy_coef,
        normalize_advantage=False,
        functional=False,
    )


def _klpen_ppo(actor, *, clip_epsilon, lambda_kl, critic, entropy_coef) -> LossModule:
    # Fixed coefficient: increment = decrement = 1 keep beta = lambda_kl whatever the KL (dtarg is then moot).
    # The old distribution is rebuilt from the behaviour "loc" / "scale" stored in the tensordict.
    return KLPENPPOLoss(
        actor,
        None,
        beta=lambda_kl,
        increment=1.0,
        decrement=1.0,
        entropy_bonus=entropy_coef > 0,
        entropy_coeff=entropy_coef,
        normalize_advantage=False,
        functional=False,
    )


def _a2c(actor, *, clip_epsilon, lambda_kl, critic, entropy_coef) -> LossModule:
    return A2CLoss(
        actor, critic, entropy_bonus=entropy_coef > 0, entropy_coeff=entropy_coef, critic_coeff=1.0, functional=False
    )


def _reinforce(actor, *, clip_epsilon, lambda_kl, critic, entropy_coef) -> LossModule:
    return ReinforceLoss(actor, critic, functional=False)


LOSSES: dict[str, Callable[..., LossModule]] = {
    "latent_ppo": _latent_ppo,
    "ppo_ewma": _latent_ppo,  # the same loss; PolicyObjective puts the behaviour log-probability under the ratio key
    "ppo": _ppo,
    "klpen_ppo": _klpen_ppo,
    "a2c": _a2c,
    "reinforce": _reinforce,
}


def _actor_reduction(actor: TensorDictModuleBase) -> str | None:
    for module in actor.modules():
        kwargs = getattr(module, "distribution_kwargs", None)
        if isinstance(kwargs, dict) and "reduction" in kwargs:
            return kwargs["reduction"]
    return None


def make_loss(
    algo: str,
    actor: TensorDictModuleBase,
    *,
    clip_epsilon: float = 0.2,
    lambda_kl: float = 1.0,
    critic: TensorDictModuleBase | None = None,
    entropy_coef: float = 0.0,
    reduction: str | None = None,
    ratio_clip: str = "action",
) -> LossModule:
    """Build the policy loss ``algo`` (one of ``LOSSES``) for an actor from :func:`agents.actor.make_actor`.

    ``a2c`` and ``reinforce`` need a critic: a :func:`agents.actor.make_value_head` is built when ``critic`` is
    ``None``.  ``reduction``, when given, is the log-probability reduction the caller expects; it must match
    the actor's (the actor's distribution carries it).  ``ratio_clip="element"`` (one PPO ratio per action element)
    needs a :class:`LatentPPOLoss` algorithm.
    """
    if algo not in LOSSES:
        raise ValueError(f"unknown algo {algo!r}; valid names: {sorted(LOSSES)}")
    if entropy_coef < 0:
        raise ValueError(f"entropy_coef must be >= 0, got {entropy_coef}")
    if clip_epsilon <= 0:
        raise ValueError(f"clip_epsilon must be > 0, got {clip_epsilon}")
    actor_reduction = _actor_reduction(actor)
    if reduction is not None and actor_reduction is not None and reduction != actor_reduction:
        raise ValueError(f"reduction {reduction!r} does not match the actor's log-prob reduction {actor_reduction!r}")
    if algo in CRITIC_ALGOS and critic is None:
        critic = make_value_head(actor_policy(actor).in_channels)
    loss = LOSSES[algo](actor, clip_epsilon=clip_epsilon, lambda_kl=lambda_kl, critic=critic, entropy_coef=entropy_coef)
    if ratio_clip not in RATIO_CLIPS:
        raise ValueError(f"unknown ratio_clip {ratio_clip!r}; valid names: {', '.join(RATIO_CLIPS)}")
    if ratio_clip != "action":
        if not isinstance(loss, LatentPPOLoss):
            raise ValueError(f"ratio_clip={ratio_clip!r} needs a LatentPPOLoss algo (latent_ppo, ppo_ewma), got {algo!r}")
        loss.ratio_clip = ratio_clip
    return loss


__all__ = [
    "CRITIC_ALGOS",
    "LOSSES",
    "LatentPPOLoss",
    "RATIO_CLIPS",
    "ValueHead",
    "make_loss",
    "make_value_head",
    "ratio_diagnostics",
]
