"""Does the RL carry signal?  Measurements of one batch that say how much the action, and each loss term, matter.

- ``reward_std_actions`` / ``reward_std_images``: the reward's spread across ``draws`` actions on the same image
  (mean over images) against its spread across images (of the per-image mean).  A policy gradient can only learn
  from the first; an advantage against a scalar baseline mostly measures the second (image difficulty).
- ``grad_norm_policy_<term>``: the norm of the policy's gradient from each weighted loss term alone (``ce``
  through the reparameterised sample, ``policy`` (Eq. 4), ``kl`` (Eq. 5)).

Nothing here changes the run: every parameter, buffer, gradient and random stream is as it was afterwards.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from agents.trainer import CoTrainer
from segbandit.baselines import PER_IMAGE_BASELINES

GRAD_TERMS: tuple[str, ...] = ("loss_ce", "loss_policy", "loss_kl")


def _policy_grad_norm(params: list[torch.Tensor]) -> float:
    grads = [p.grad.detach().float().reshape(-1) for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.cat(grads))) if grads else 0.0


def policy_diagnostics(trainer: CoTrainer, images: torch.Tensor, masks: torch.Tensor, draws: int = 8) -> dict[str, Any]:
    """Reward spread across actions vs images, and the policy's gradient norm per loss term, on one batch.

    images (B, 3, H, W), masks (B, H, W); ``draws`` actions per image (sampled with a generator of its own).
    """
    images, masks = images.to(trainer.device), masks.to(trainer.device)
    saved = [b.clone() for b in trainer._buffers]
    modes = (trainer.segmentor.training, trainer.policy.training)
    gen = torch.Generator(device=trainer.device).manual_seed(int(trainer.cfg.seed) + 4242)
    out: dict[str, Any] = {}
    try:
        with torch.no_grad(), trainer._eval_mode():
            step, _ = trainer.rollout(images, masks, generator=gen, segmentor_grad=False, samples=draws)
        rewards = step["reward"].reshape(draws, images.shape[0])  # (draws, B)
        out["reward_std_actions"] = float(rewards.std(0).mean())
        out["reward_std_images"] = float(rewards.mean(0).std()) if images.shape[0] > 1 else math.nan
        # the gradient each term sends to the policy, in training mode as a step computes it
        trainer.segmentor.train()
        trainer.policy.train()
        per_image = trainer.cfg.baseline in PER_IMAGE_BASELINES
        step, _ = trainer.rollout(images, masks, generator=gen, aux=False, samples=trainer.cfg.action_samples,
                                  greedy=per_image and trainer.cfg.baseline == "greedy")  # fmt: skip
        if per_image:
            trainer.add_per_image_baseline(step, images.shape[0])
        terms = trainer.loss(step)
        params = [p for p in trainer.policy.parameters() if p.requires_grad]
        for name in GRAD_TERMS:
            trainer.optimizer.zero_grad(set_to_none=True)
            if terms[name].requires_grad:
                terms[name].backward(retain_graph=True)
            out[f"grad_norm_policy_{name[len('loss_'):]}"] = _policy_grad_norm(params)
        out.update({k: float(terms[k]) for k in ("ratio", "clip_fraction", "kl")})
    finally:
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, old in zip(trainer._buffers, saved):
                b.copy_(old)
        trainer.segmentor.train(modes[0])
        trainer.policy.train(modes[1])
    return out


__all__ = ["GRAD_TERMS", "policy_diagnostics"]
