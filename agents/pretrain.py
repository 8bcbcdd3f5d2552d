"""The shipped segmentor of ``SegBandit-v0``: co-train it with the main job's recipe, then keep its weights as a bundle.

Two phases, both seeded:

1. :data:`PRETRAINED_RECIPE`: the digits preset with channel actions (``(B, d)``, the action of
   ``SegBanditPooled-v0``; a dense env broadcasts it), trained by :func:`agents.fit.fit` (Eq. 6).
2. :func:`refine_policy`: the segmentor frozen, the co-trained policy alone is trained through it by the CE
   gradient of the reparameterised action (``s = clamp(mu + sigma eps)`` in the env's action bound), so that the
   shipped policy gains reward over ``s = 0`` on images it never saw (co-trained alone, its mean gains nothing
   measurable: docs/benchmark.md).  It is the reference policy of ``segbandit.REFERENCE_SCORES``.

:func:`make_pretrained` runs both and writes a :class:`segbandit.pretrained.Bundle`; on one CPU thread the same seed
gives the same tensors bit for bit (``bundle_digest``).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

import torch.nn.functional as F
from torch.utils.data import DataLoader

from agents.atomic import atomic_write
from agents.config import DIGITS_SCHEDULE_1400, TrainConfig, make_config
from agents.datasets import build_datasets
from agents.fit import fit
from envs.transition import BanditTransition
from segbandit.constants import DEFAULT_ACTION_BOUND, IGNORE_INDEX
from segbandit.pretrained import POLICY_KEYS, SEGMENTOR_KEYS, Bundle, build_from_bundle, bundle_digest, freeze
from segbandit.pretrained import policy_from_bundle

# The digits preset as it stood when the shipped file was built (NCHW weights, 1,400 iterations, an evaluation every
# 200), pinned so that the command keeps rebuilding that file bit for bit as the preset moves on.
PRETRAINED_RECIPE: dict[str, Any] = dict(action_mode="channel", num_overlays=0, eval_stochastic=False,
                                         channels_last=False, **DIGITS_SCHEDULE_1400)
REFINE_STEPS = 300  # phase 2: Adam steps on the policy alone (batch = the recipe's)
REFINE_LR = 1e-3


def pretrained_config(seed: int = 0, **overrides: Any) -> TrainConfig:
    """The digits preset with :data:`PRETRAINED_RECIPE` and ``overrides`` on top."""
    return make_config("digits", **{**PRETRAINED_RECIPE, "seed": seed, **overrides})


def bundle_from_trainer(trainer: Any, meta: Mapping[str, Any] | None = None) -> Bundle:
    """The segmentor and policy weights of a :class:`agents.trainer.CoTrainer` with the config keys that rebuild them."""
    trainer.sync_buffers()
    cfg = trainer.cfg.to_dict()
    keep = (*SEGMENTOR_KEYS, *POLICY_KEYS, "action_mode", "crop_size", "dataset", "seed", "max_iters", "preset")
    return Bundle(
        segmentor={k: v.detach().cpu().clone() for k, v in trainer.segmentor.state_dict().items()},
        policy={k: v.detach().cpu().clone() for k, v in trainer.policy.state_dict().items()},
        config={k: cfg[k] for k in keep if k in cfg},
        num_classes=int(trainer.segmentor.num_classes),
        meta=dict(meta or {}),
    )


def refine_policy(bundle: Bundle, cfg: TrainConfig, steps: int = REFINE_STEPS, lr: float = REFINE_LR,
                  bound: float = DEFAULT_ACTION_BOUND) -> Bundle:
    """Phase 2: Adam on the policy only, min CE(decode(z, clamp(mu + sigma eps, -bound, bound)), y) on the training
    scenes, the segmentor frozen (eval mode, no gradient).  Returns the bundle with the refined policy."""
    segmentor = freeze(build_from_bundle(bundle))
    policy = policy_from_bundle(bundle, segmentor.latent_channels).train()
    policy.requires_grad_(True)
    transition = BanditTransition(segmentor, reward_fn=None)
    train, *_ = build_datasets(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=generator)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    step = 0
    while step < steps:
        for images, masks in loader:  # one Adam step per batch
            with torch.no_grad():
                feats = transition.encode(images)
            z = feats["out"]  # (B, d, h, w)
            mu, log_std = policy(z)  # (B, d) each
            eps = torch.randn(mu.shape, generator=generator)
            s = (mu + log_std.exp() * eps).clamp(-bound, bound)  # the env's channel action (Eq. 11), in its bound
            loss = F.cross_entropy(transition.decode(z, s, tuple(masks.shape[-2:]), segmentor.skips(feats)), masks, ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    policy.eval()
    refined = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    return dataclasses.replace(bundle, policy=refined, meta={**bundle.meta, "refine_steps": steps, "refine_lr": lr})


def save_bundle(bundle: Bundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` atomically (``torch.load(weights_only=True)`` reads it back)."""
    return atomic_write(path, lambda fh: torch.save(bundle.to_dict(), fh))


def make_pretrained(
    path: str | os.PathLike,
    cfg: TrainConfig | None = None,
    *,
    refine_steps: int = REFINE_STEPS,
    refine_lr: float = REFINE_LR,
    workdir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Co-train ``cfg`` (default :func:`pretrained_config`), refine its policy (``refine_steps``, 0 = off), write the
    bundle to ``path``; returns the fit result with ``digest`` (:func:`segbandit.pretrained.bundle_digest`),
    ``cotrained_digest`` (before the refinement) and ``path``."""
    cfg = cfg or pretrained_config()
    captured: dict[str, Bundle] = {}

    def keep(trainer: Any, val_loader: Any) -> dict[str, Any]:
        captured["bundle"] = bundle_from_trainer(trainer)
        return {}

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        run = dataclasses.replace(cfg, out=cfg.out or os.path.join(tmp, "run"))
        result = fit(run, on_end=keep, save_checkpoints=False, log=log)
    bundle = captured["bundle"]
    bundle.meta.update({"val_miou": float(result["miou"]), "iterations": int(result["iterations"]),
                        "torch": str(torch.__version__)})
    cotrained = bundle_digest(bundle)
    if refine_steps > 0:
        bundle = refine_policy(bundle, cfg, refine_steps, refine_lr)
    digest = bundle_digest(bundle)
    bundle.meta.update({"digest": digest, "cotrained_digest": cotrained})
    out = save_bundle(bundle, path)
    return {**result, "digest": digest, "cotrained_digest": cotrained, "path": str(out)}


__all__ = [
    "PRETRAINED_RECIPE",
    "REFINE_LR",
    "REFINE_STEPS",
    "bundle_from_trainer",
    "make_pretrained",
    "pretrained_config",
    "refine_policy",
    "save_bundle",
]
