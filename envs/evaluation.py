"""Scoring a policy on ``SegBandit`` as a benchmark: the paired gain over the zero action on fixed images.

:func:`evaluate` runs a policy on the first ``num_images`` images of a split, in order (no shuffling, no
augmentation), and scores every image twice, with the policy's action and with ``s = 0``, so the gain is paired
image by image.  :func:`reference_actions` gives the reference policies behind ``segbandit.REFERENCE_SCORES``:
the zero action, uniform random actions in the bound, the shipped policy at its mean and sampled, and a
label-aware oracle (gradient descent on ``s`` against the true mask, :func:`oracle_actions`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from envs.core import SegBanditCore
from segbandit.constants import DEFAULT_ACTION_BOUND, IGNORE_INDEX
from segbandit.policy import sample_action

from segbandit.reference_scores import REFERENCE_POLICIES
Policy = Union[str, Callable[[Any], Any]]


def _bound(core: SegBanditCore) -> float:
    return float(core.config.action_bound) if core.config.action_bound is not None else DEFAULT_ACTION_BOUND


def _policy_params(core: SegBanditCore) -> tuple[Tensor, Tensor]:
    if core.policy is None:
        raise ValueError("this env's segmentor came without a co-trained policy (policy_mean / policy_sample need one)")
    with torch.no_grad():
        return core.policy(core.latents.detach())  # mu, log_std (B, d)


def _as_action(core: SegBanditCore, mu: Tensor) -> Tensor:
    """(B, d) per-channel values as the env's action (B, *action_shape)."""
    if core.config.action_mode == "channel":
        return mu
    return mu[:, :, None, None].expand(-1, -1, *core.latent_shape[1:]).contiguous()  # (B, d, h, w)


def oracle_actions(core: SegBanditCore, steps: int = 30, lr: float = 0.1, init: Union[Tensor, None] = None) -> Tensor:
    """Label-aware actions: Adam on ``s`` for ``steps`` steps minimising CE(decode(z, s), y), kept in the bound.

    Starts from ``init`` (B, *action_shape) or zero; the segmentor is not changed.  Not a policy (it reads the
    labels): the upper reference of what an action can gain on these images.
    """
    bound = _bound(core)
    s = (core.zero_action() if init is None else init.detach().clone()).requires_grad_(True)
    opt = torch.optim.Adam([s], lr=lr)
    z, y, size = core.latents.detach(), core.masks, core.image_size
    skips = tuple(t.detach() for t in core.skips)
    for _ in range(steps):  # optimisation steps on the whole batch at once
        opt.zero_grad(set_to_none=True)
        logits = core.transition.decode(z, s, size, skips)  # (B, K, H, W)
        F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX).backward()
        opt.step()
        with torch.no_grad():
            s.clamp_(-bound, bound)
    return s.detach()


def reference_actions(core: SegBanditCore, name: str, generator: Union[torch.Generator, None] = None) -> Tensor:
    """The action (B, *action_shape) of reference policy ``name`` (one of :data:`REFERENCE_POLICIES`) on the batch."""
    if name == "zero":
        return core.zero_action()
    if name == "random":
        u = torch.rand(core.num_envs, *core.action_shape, generator=generator)
        return ((2 * u - 1) * _bound(core)).to(core.device)
    if name in ("policy_mean", "policy_sample", "oracle"):
        if name == "oracle":
            init = _as_action(core, _policy_params(core)[0]) if core.policy is not None else None
            return oracle_actions(core, init=init)
        mu, log_std = _policy_params(core)
        if name == "policy_mean":
            return _as_action(core, mu)
        spatial = None if core.config.action_mode == "channel" else tuple(core.latent_shape[1:])
        return sample_action(mu, log_std, spatial, generator=generator).to(core.device)
    raise ValueError(f"unknown reference policy {name!r}; valid names: {', '.join(REFERENCE_POLICIES)}")


def _policy_action(core: SegBanditCore, policy: Policy, generator: torch.Generator) -> Tensor:
    if isinstance(policy, str):
        return reference_actions(core, policy, generator)
    obs = core.observation
    out = policy(obs.cpu().numpy() if core.config.array_type == "numpy" else obs)
    return core.check_action(out)


def evaluate(
    policy: Policy,
    env: Union[SegBanditCore, Any, None] = None,
    *,
    split: str = "val",
    num_images: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    **env_kwargs: Any,
) -> dict[str, Any]:
    """The mean reward of ``policy`` on the first ``num_images`` images of ``split``, paired with the zero action.

    ``policy``: a callable ``obs (B, *obs_shape) -> action (B, *action_shape)`` (numpy in, numpy or torch out, e.g.
    ``lambda obs: model.predict(obs, deterministic=True)[0]`` for SB3), or a name of :data:`REFERENCE_POLICIES`.
    ``env``: a Gymnasium / TorchRL front end or a :class:`SegBanditCore` whose configuration is copied (its dataset,
    segmentor, modes, bound) with ``split``, no shuffling and no augmentation; None builds one from ``env_kwargs``
    (e.g. those of ``segbandit.ENV_KWARGS[id]``).

    Returns ``reward`` and ``reward_zero`` (means), ``gain`` (mean of r(s) - r(0) per image), ``gain_se`` (its
    standard error), ``reward_std_images`` (std of r(s) across images), ``normalized_score`` (``reward`` on the
    reference scale, when the config has reference scores) and ``num_images``.
    """
    from dataclasses import replace

    from envs.core import SegBanditConfig
    from segbandit.reference_scores import normalized_score, reference_key

    base = getattr(getattr(env, "core", env), "config", None) if env is not None else SegBanditConfig(**env_kwargs)
    if env is not None and env_kwargs:
        base = replace(base, **env_kwargs)
    if num_images < 1 or batch_size < 1 or num_images % min(batch_size, num_images):
        raise ValueError(f"num_images must be a positive multiple of batch_size, got {num_images} and {batch_size}")
    cfg = replace(base, split=split, shuffle=False, augment=False, paired_reward=False, episode_length=1,
                  render_mode=None, dataset_kwargs={**(base.dataset_kwargs or {}), "num_samples": num_images}
                  if base.dataset == "digits" else base.dataset_kwargs)
    core = SegBanditCore(min(batch_size, num_images), cfg)  # a shared segmentor in the config stays shared
    generator = torch.Generator().manual_seed(seed)
    core.reset(seed)
    rewards, zeros = [], []
    batches = math.ceil(num_images / core.num_envs)
    for b in range(batches):  # one batched decode per batch and action
        action = _policy_action(core, policy, generator)
        rewards.append(core.score(action)["reward"].detach().float().cpu())
        zeros.append(core.score(core.zero_action())["reward"].detach().float().cpu())
        if b + 1 < batches:
            core.advance()
    r, r0 = torch.cat(rewards), torch.cat(zeros)  # (num_images,)
    gain = r - r0
    n = int(r.numel())
    result = {
        "reward": float(r.mean()),
        "reward_zero": float(r0.mean()),
        "gain": float(gain.mean()),
        "gain_se": float(gain.std() / math.sqrt(n)) if n > 1 else 0.0,
        "reward_std_images": float(r.std()) if n > 1 else 0.0,
        "num_images": n,
    }
    key = reference_key(cfg)
    result["normalized_score"] = (normalized_score(result["reward"], key, result["reward_zero"])
                                  if key is not None else None)  # the paired gain on the reference scale
    core.close()
    return result


__all__ = ["REFERENCE_POLICIES", "evaluate", "oracle_actions", "reference_actions"]
