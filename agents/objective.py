"""``PolicyObjective``: the per-batch policy term of Eq. 6, for any algorithm of the loss registry.

The trainer samples s = mu + sigma * eps from the policy (Eq. 11), runs the segmentor, scores the
prediction, then calls the objective once per batch with detached latents, the action, the rewards and the
behaviour parameters (mu, sigma at sampling time).  The objective fills a TensorDict the way the chosen TorchRL
loss expects, runs it, and returns the loss terms (with graph) and detached diagnostics.

| algo         | loss                          | advantage (B, 1)           | ratio / penalty against               |
| ------------ | ----------------------------- | -------------------------- | ------------------------------------- |
| ``latent_ppo`` | :class:`LatentPPOLoss` (ours) | clamp(r - b_EMA) (Eq. 16-18) | EMA reference pi_ref (Eq. 4, 5, 19)   |
| ``ppo_ewma``   | :class:`LatentPPOLoss`        | clamp(r - b_EMA)           | ratio: behaviour; KL: EMA reference (PPO-EWMA) |
| ``ppo``        | TorchRL ``ClipPPOLoss``       | clamp(r - b_EMA)           | behaviour log-probability             |
| ``klpen_ppo``  | TorchRL ``KLPENPPOLoss``      | clamp(r - b_EMA)           | behaviour Gaussian (beta = lambda_kl, fixed) |
| ``a2c``        | TorchRL ``A2CLoss``           | clamp(r - V(z))            | - (critic regresses r)                |
| ``reinforce``  | TorchRL ``ReinforceLoss``     | clamp(r - V(z))            | - (critic regresses r)                |

The objective does not own the policy: the policy's weights are left out of its ``state_dict`` (they belong
to whoever passed the policy in); the baseline, the EMA reference, the critic and the loss coefficients are in it.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from tensordict import TensorDict
from torch.distributions import kl_divergence
from torchrl.objectives import LossModule

from agents.actor import LOG_PROB_KEY, LatentGaussianParams, check_action_mode, make_actor, make_value_head
from agents.advantage import CriticAdvantage, EMABaselineAdvantage
from agents.distributions import LatentGaussian
from agents.losses import CRITIC_ALGOS, LOSSES, make_loss, ratio_diagnostics
from agents.reference import EMAReferencePolicy
from segbandit.baselines import BASELINES, PER_IMAGE_BASELINES, make_baseline
from segbandit.distributed import SINGLE, DistInfo
from segbandit.policy import REDUCTIONS, LatentPolicy

REFERENCE_ALGOS: tuple[str, ...] = ("latent_ppo", "ppo_ewma")  # the algorithms with an EMA reference (Eq. 19)
_ACTOR_PREFIX = "loss.actor_network."  # where the caller's policy sits inside this module


def _check_algo(algo: str) -> None:
    if algo not in LOSSES:
        raise ValueError(f"unknown algo {algo!r}; valid names: {sorted(LOSSES)}")


class PolicyObjective(nn.Module):
    """The policy-gradient objective of one batch (Eq. 4-6, 16-19), built on a TorchRL loss.

    Args:
        policy: the :class:`LatentPolicy` being trained (not owned: left out of ``state_dict``).
        algo: one of :data:`ALGOS`.
        action_mode: ``"dense"`` (actions (B, d, h, w)) or ``"channel"`` ((B, d)).
        reduction: log-probability reduction, ``"sum"`` (Eq. 12) or ``"mean"``.
        baseline, tau: the reward baseline (``segbandit.baselines``) and its momentum (Eq. 16).
        eta: momentum of the EMA reference (Eq. 19), ``latent_ppo`` only.
        a_min, a_max: advantage clamp (Eq. 18).
        clip_epsilon: PPO clip (Eq. 4).
        lambda_kl: KL weight (Eq. 5-6); ``klpen_ppo``'s fixed beta.
        entropy_coef: entropy bonus weight (0 = off).
        dist_info: the job's processes; the baseline's batch mean is then the global batch's (Eq. 16).
    """

    def __init__(
        self,
        policy: LatentPolicy,
        algo: str = "latent_ppo",
        *,
        action_mode: str = "dense",
        reduction: str = "sum",
        baseline: str = "ema",
        tau: float = 0.9,
        eta: float = 0.99,
        a_min: float = -1.0,
        a_max: float = 1.0,
        clip_epsilon: float = 0.2,
        lambda_kl: float = 1.0,
        entropy_coef: float = 0.0,
        ratio_clip: str = "action",
        dist_info: DistInfo = SINGLE,
    ) -> None:
        super().__init__()
        _check_algo(algo)
        check_action_mode(action_mode)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if baseline not in BASELINES and baseline not in PER_IMAGE_BASELINES:
            raise ValueError(f"unknown baseline {baseline!r}; valid names: {sorted([*BASELINES, *PER_IMAGE_BASELINES])}")
        if a_min > a_max:
            raise ValueError(f"expected a_min <= a_max, got a_min={a_min}, a_max={a_max}")
        object.__setattr__(self, "policy", policy)  # not registered: the caller owns the policy
        self.algo, self.action_mode, self.reduction = algo, action_mode, reduction
        self.clip_epsilon, self.lambda_kl = float(clip_epsilon), float(lambda_kl)

        actor = make_actor(policy, action_mode, None, reduction)
        critic = make_value_head(policy.in_channels) if algo in CRITIC_ALGOS else None
        self.loss: LossModule = make_loss(
            algo, actor, clip_epsilon=clip_epsilon, lambda_kl=lambda_kl, critic=critic,
            entropy_coef=entropy_coef, reduction=reduction, ratio_clip=ratio_clip,
        )
        if algo == "ppo_ewma":  # a per-element ratio, like the whole one, is against the behaviour policy
            self.loss.set_keys(ratio_loc="behaviour_loc", ratio_scale="behaviour_scale")
        # a per-image baseline (rloo, group_mean, greedy) comes with the batch (forward's baseline_values)
        self.per_image_baseline = baseline in PER_IMAGE_BASELINES and critic is None
        self.a_min, self.a_max = float(a_min), float(a_max)
        self.advantage = (
            None if critic is not None or self.per_image_baseline
            else EMABaselineAdvantage(make_baseline(baseline, tau, dist_info), a_min, a_max)
        )
        # borrows the loss's critic (registered there): kept out of the module tree to avoid a second copy
        object.__setattr__(self, "_critic_advantage", None if critic is None else CriticAdvantage(critic, a_min, a_max))
        self.reference = (
            EMAReferencePolicy(policy, eta, reduction, action_mode) if algo in REFERENCE_ALGOS else None
        )

        # Probe the current policy's (loc, scale) as the loss computes them, for the diagnostics.
        self._current: tuple[torch.Tensor, torch.Tensor] | None = None
        self._params_module = next(m for m in actor.modules() if isinstance(m, LatentGaussianParams))
        self._params_module.register_forward_hook(self._capture_params)
        self.register_state_dict_post_hook(_drop_policy_state)
        self.register_load_state_dict_pre_hook(_fill_policy_state)

    # -- views ------------------------------------------------------------------------------------
    @property
    def actor(self) -> nn.Module:
        """The TorchRL ``ProbabilisticActor`` wrapping the policy."""
        return self.loss.actor_network

    @property
    def critic(self) -> nn.Module | None:
        """The value head (``ValueOperator``) for ``a2c`` / ``reinforce``; ``None`` for critic-free algos."""
        return getattr(self.loss, "critic_network", None)

    @property
    def baseline(self):
        """The reward baseline module (``None`` when a critic is the baseline)."""
        return None if self.advantage is None else self.advantage.baseline

    def _capture_params(self, module: nn.Module, args, output) -> None:
        self._current = (output[0].detach(), output[1].detach())

    # -- the objective ----------------------------------------------------------------------------
    def _check_inputs(self, z, action, reward, behaviour_loc, behaviour_scale) -> None:
        d = self.policy.in_channels
        if z.dim() != 4 or z.shape[1] != d:
            raise ValueError(f"expected latents z of shape (B, {d}, h, w), got {tuple(z.shape)}")
        b = z.shape[0]
        want = tuple(z.shape) if self.action_mode == "dense" else (b, d)
        if tuple(action.shape) != want:
            raise ValueError(f"expected a {self.action_mode} action of shape {want}, got {tuple(action.shape)}")
        if tuple(reward.shape) not in ((b,), (b, 1)):
            raise ValueError(f"expected rewards of shape ({b},), got {tuple(reward.shape)}")
        for name, t in (("behaviour_loc", behaviour_loc), ("behaviour_scale", behaviour_scale)):
            if tuple(t.shape) != (b, d):
                raise ValueError(f"expected {name} of shape ({b}, {d}), got {tuple(t.shape)}")

    def _behaviour(self, z, behaviour_loc, behaviour_scale) -> LatentGaussian:
        return LatentGaussian(
            behaviour_loc.float(), behaviour_scale.float(), reduction=self.reduction,
            spatial_like=z if self.action_mode == "dense" else None,
        )

    def build_tensordict(
        self,
        z: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        behaviour_loc: torch.Tensor,
        behaviour_scale: torch.Tensor,
        baseline_values: torch.Tensor | None = None,
        advantage: torch.Tensor | None = None,
    ) -> TensorDict:
        """The TensorDict (batch [B]) the algorithm's loss reads, with advantage (and reference) filled in.

        ``baseline_values`` (B,): each row's baseline, for a per-image baseline (``rloo``, ``group_mean``,
        ``greedy``): A = clamp(r - b_row, a_min, a_max).
        """
        z, action, reward = z.detach(), action.detach(), reward.detach()
        behaviour_loc, behaviour_scale = behaviour_loc.detach(), behaviour_scale.detach()
        self._check_inputs(z, action, reward, behaviour_loc, behaviour_scale)
        b = z.shape[0]
        td = TensorDict(
            {"observation": z, "action": action, "reward": reward.float().reshape(b, 1)}, batch_size=[b]
        )
        if advantage is not None:  # a later PPO epoch over the same batch: the first epoch's advantages, b untouched
            td.set("advantage", advantage.detach().float().reshape(b, 1))
            if self._critic_advantage is not None:
                td.set("value_target", td["reward"])
        elif self._critic_advantage is not None:
            self._critic_advantage(td)  # state_value, advantage = clamp(r - V(z)), value_target = r
        elif self.per_image_baseline:
            if baseline_values is None or tuple(baseline_values.shape) != (b,):
                raise ValueError(f"a per-image baseline needs baseline_values of shape ({b},)")
            td.set("baseline_value", baseline_values.detach().float().reshape(b, 1))
            td.set("advantage", (td["reward"] - td["baseline_value"]).clamp(self.a_min, self.a_max))  # Eq. 17-18
        else:
            self.advantage(td)  # advantage = clamp(r - b), Eq. 16-18
        if self.algo in REFERENCE_ALGOS:
            self.reference.ema.module.train(self.policy.training)  # evaluate pi_ref like pi_phi
            self.reference(td)  # ref_loc, ref_scale, log pi_ref(s) under LOG_PROB_KEY (Eq. 4)
        if self.algo == "ppo_ewma":  # PPO-EWMA: the ratio against the behaviour policy, the KL against pi_ref
            behaviour = self._behaviour(z, behaviour_loc, behaviour_scale)
            td.set("behaviour_loc", behaviour.loc)
            td.set("behaviour_scale", behaviour.scale)
            with torch.no_grad():
                td.set(LOG_PROB_KEY, behaviour.log_prob(action))  # log pi_behaviour(s) (B,)
        elif self.algo != "latent_ppo":
            behaviour = self._behaviour(z, behaviour_loc, behaviour_scale)
            td.set("behaviour_loc", behaviour.loc)
            td.set("behaviour_scale", behaviour.scale)
            with torch.no_grad():
                td.set(LOG_PROB_KEY, behaviour.log_prob(action))  # log pi_behaviour(s) (B,)
            # under the actor's own keys too: losses that rebuild the old distribution (KLPENPPOLoss) read these;
            # losses that re-run the actor overwrite them with the current parameters
            td.set("loc", behaviour.loc)
            td.set("scale", behaviour.scale)
        return td

    def forward(
        self,
        z: torch.Tensor,
        action: torch.Tensor,
        reward: torch.Tensor,
        behaviour_loc: torch.Tensor,
        behaviour_scale: torch.Tensor,
        *,
        current: tuple[torch.Tensor, torch.Tensor] | None = None,
        baseline_values: torch.Tensor | None = None,
        advantage: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One batch: z (B, d, h, w), action (B, d, h, w) or (B, d), reward (B,), behaviour_loc/scale (B, d).

        ``current``: the policy's (loc, scale) (B, d) on these latents *with their graph*, when the caller already
        ran the policy in this step (the co-trainer does, to sample the action): the loss then reads them instead of
        running the policy a second time.  Without it the loss runs the policy itself.  ``baseline_values`` (B,):
        each row's per-image baseline.  ``advantage`` (B,): use these advantages as they are (a later PPO epoch
        over the same batch; the baseline is not updated again), see ``last_advantage``.

        Returns ``loss_policy``, ``loss_kl`` (times lambda_kl), ``loss_critic``, ``loss_entropy`` (0-d, with
        graph; zeros where the algorithm has no such term) and detached 0-d float32 diagnostics ``ratio``,
        ``clip_fraction``, ``kl``, ``approx_kl``, ``entropy``, ``advantage``, ``baseline``, ``reward``,
        ``log_ratio_max``, ``nonfinite_ratio``.  All inputs are detached here: only the policy (and the
        critic) get gradients.
        """
        td = self.build_tensordict(z, action, reward, behaviour_loc, behaviour_scale, baseline_values, advantage)
        self.last_advantage = td["advantage"].detach()  # (B, 1): what later PPO epochs over this batch reuse
        self._current = None
        reuse = self._params_module.reuse(*current) if current is not None else contextlib.nullcontext()
        with reuse:
            out = self.loss(td)
        zero = torch.zeros((), device=td["observation"].device)
        result: dict[str, torch.Tensor] = {
            "loss_policy": out["loss_actor"] if self.algo == "reinforce" else out["loss_objective"],
            "loss_kl": out.get("loss_kl", zero),
            "loss_critic": out.get("loss_value", zero) if self.algo == "reinforce" else out.get("loss_critic", zero),
            "loss_entropy": out.get("loss_entropy", zero),
        }
        result.update(self._diagnostics(td, out))
        return result

    @torch.no_grad()
    def _diagnostics(self, td: TensorDict, out: TensorDict) -> dict[str, torch.Tensor]:
        wanted = ("ratio", "clip_fraction", "kl", "approx_kl", "entropy", "log_ratio_max", "nonfinite_ratio")
        diag: dict[str, torch.Tensor] = {}
        if self.algo in REFERENCE_ALGOS:  # LatentPPOLoss reports them all
            diag = {k: out[k].detach().float() for k in wanted}
        else:  # from the current parameters the loss just computed, against the behaviour policy
            if self._current is None:
                raise RuntimeError(f"the {self.algo} loss did not evaluate the policy")
            loc, scale = self._current
            spatial_like = td["observation"] if self.action_mode == "dense" else None
            current = LatentGaussian(loc, scale, reduction=self.reduction, spatial_like=spatial_like)
            behaviour = LatentGaussian(
                td["behaviour_loc"], td["behaviour_scale"], reduction=self.reduction, spatial_like=spatial_like
            )
            diag.update(ratio_diagnostics(current.log_prob(td["action"]) - td[LOG_PROB_KEY], self.clip_epsilon))
            diag["entropy"] = current.entropy().mean()
            diag["kl"] = kl_divergence(behaviour, current).mean()  # KL(pi_behaviour || pi_phi)
            diag = {k: diag[k] for k in wanted}
        if self._critic_advantage is not None:
            diag["baseline"] = td["state_value"].float().mean()
        elif self.per_image_baseline:
            diag["baseline"] = td["baseline_value"].float().mean()
        else:
            diag["baseline"] = self.advantage.baseline.value.detach().float().clone()
        diag["advantage"] = td["advantage"].float().mean()
        diag["reward"] = td["reward"].float().mean()
        return diag

    # -- after the optimiser step -----------------------------------------------------------------
    def after_step(self) -> None:
        """Eq. 19: fold the updated policy into the EMA reference (``latent_ppo``); call after optimizer.step()."""
        if self.reference is not None:
            self.reference.update(self.policy)


def _drop_policy_state(module: nn.Module, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + _ACTOR_PREFIX)]:
        del state_dict[key]


def _fill_policy_state(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    # The policy's own entries are not saved with the objective: load them as they are now (a no-op copy).
    for name, tensor in module.loss.actor_network.state_dict().items():
        state_dict.setdefault(prefix + _ACTOR_PREFIX + name, tensor)


__all__ = ["REFERENCE_ALGOS", "PolicyObjective"]
