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
from segbandit.pretrained import load_bundle, policy_from_bundle

# The digits preset as it stood when the shipped file was built (NCHW weights, 1,400 iterations, an evaluation every
# 200), pinned so that the command keeps rebuilding that file bit for bit as the preset moves on.
PRETRAINED_RECIPE: dict[str, Any] = dict(action_mode="channel", num_overlays=0, eval_stochastic=False,
                                         channels_last=False, **DIGITS_SCHEDULE_1400)
REFINE_STEPS = 300  # phase 2: Adam steps on the policy alone (batch = the recipe's)
REFINE_LR = 1e-3
HINT_STEPS = 0  # the hint construction (train_on_hints): decoder steps with label-derived actions, 0 = off
HINT_LR = 1e-3
HINT_PROB = 0.5  # share of the images decoded with the hint (the rest with s = 0)


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


def _decoder_ce_steps(cfg: TrainConfig, steps: int, transition: BanditTransition, opt: torch.optim.Optimizer,
                      action: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]) -> None:
    """``steps`` optimiser steps of CE(decode(z, action(z, masks, generator)), y), one per shuffled training batch of
    ``cfg`` (seeded); the encoder runs without gradient, so ``opt`` moves what the action and the decoder depend on."""
    train, *_ = build_datasets(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=generator)
    segmentor = transition.segmentor
    done = 0
    while done < steps:
        for images, masks in loader:
            with torch.no_grad():
                feats = transition.encode(images)
            z = feats["out"]  # (B, d, h, w)
            s = action(z, masks, generator)  # (B, d)
            logits = transition.decode(z, s, tuple(masks.shape[-2:]), segmentor.skips(feats))  # (B, K, H, W)
            loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done >= steps:
                return


def refine_policy(bundle: Bundle, cfg: TrainConfig, steps: int = REFINE_STEPS, lr: float = REFINE_LR,
                  bound: float = DEFAULT_ACTION_BOUND) -> Bundle:
    """Phase 2: Adam on the policy only, min CE(decode(z, clamp(mu + sigma eps, -bound, bound)), y) on the training
    scenes, the segmentor frozen (eval mode, no gradient).  Returns the bundle with the refined policy."""
    segmentor = freeze(build_from_bundle(bundle))
    policy = policy_from_bundle(bundle, segmentor.latent_channels).train()
    policy.requires_grad_(True)

    def sampled(z: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mu, log_std = policy(z)  # (B, d) each
        eps = torch.randn(mu.shape, generator=generator)
        return (mu + log_std.exp() * eps).clamp(-bound, bound)  # the env's channel action (Eq. 11), in its bound

    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    _decoder_ce_steps(cfg, steps, BanditTransition(segmentor, reward_fn=None), opt, sampled)
    policy.eval()
    refined = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    return dataclasses.replace(bundle, policy=refined, meta={**bundle.meta, "refine_steps": steps, "refine_lr": lr})


def presence_hint(masks: torch.Tensor, num_classes: int, channels: int, bound: float = DEFAULT_ACTION_BOUND) -> torch.Tensor:
    """The label-derived channel action of the hint construction: (B, H, W) int64 masks -> (B, channels) float32.

    Channel k - 1 is ``+bound`` where foreground class k (1 <= k < K) has a labelled pixel in the mask and ``-bound``
    where it has none; the other channels are 0, so ``s = 0`` reads as "no information" (the midpoint)."""
    if masks.dim() != 3:
        raise ValueError(f"expected masks of shape (B, H, W), got {tuple(masks.shape)}")
    if channels < num_classes - 1:
        raise ValueError(f"a presence hint needs at least K - 1 = {num_classes - 1} action channels, got {channels}")
    valid = masks != IGNORE_INDEX  # (B, H, W)
    flat = torch.where(valid, masks, 0).flatten(1)  # (B, H*W)
    counts = torch.zeros(masks.shape[0], num_classes).scatter_add_(1, flat, valid.flatten(1).float())  # (B, K)
    hint = torch.zeros(masks.shape[0], channels)  # (B, d)
    hint[:, : num_classes - 1] = bound * (2.0 * (counts[:, 1:] > 0).float() - 1.0)
    return hint


def train_on_hints(bundle: Bundle, cfg: TrainConfig, steps: int = HINT_STEPS, lr: float = HINT_LR,
                   hint_prob: float = HINT_PROB, bound: float = DEFAULT_ACTION_BOUND) -> Bundle:
    """The hint construction (issue 14): the encoder frozen, the modulation and decoder trained by CE with the channel
    action ``s = presence_hint(y)`` on a ``hint_prob`` share of the images and ``s = 0`` on the rest.

    The decoder then reads from ``s`` which classes the image holds, something a policy can infer from ``z`` and the
    zero action does not say; :func:`refine_policy` afterwards trains the policy to say it.  Returns the bundle with
    the new segmentor weights (the policy unchanged)."""
    if not 0.0 < hint_prob <= 1.0:
        raise ValueError(f"hint_prob must be in (0, 1], got {hint_prob}")
    segmentor = build_from_bundle(bundle).train()
    freeze(segmentor.backbone)  # the observation z stays the shipped encoder's
    params = [p for name, p in segmentor.named_parameters() if not name.startswith("backbone.")]
    k, d = int(segmentor.num_classes), int(segmentor.latent_channels)

    def hinted(z: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        keep = (torch.rand(masks.shape[0], generator=generator) < hint_prob).float()  # (B,)
        return presence_hint(masks, k, d, bound) * keep[:, None]  # (B, d)

    opt = torch.optim.Adam(params, lr=lr)
    _decoder_ce_steps(cfg, steps, BanditTransition(segmentor, reward_fn=None), opt, hinted)
    segmentor.eval()
    weights = {name: v.detach().cpu().clone() for name, v in segmentor.state_dict().items()}
    meta = {**bundle.meta, "hint_steps": steps, "hint_lr": lr, "hint_prob": hint_prob}
    return dataclasses.replace(bundle, segmentor=weights, meta=meta)


def save_bundle(bundle: Bundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` atomically (``torch.load(weights_only=True)`` reads it back)."""
    return atomic_write(path, lambda fh: torch.save(bundle.to_dict(), fh))


def make_pretrained(
    path: str | os.PathLike,
    cfg: TrainConfig | None = None,
    *,
    refine_steps: int = REFINE_STEPS,
    refine_lr: float = REFINE_LR,
    hint_steps: int = HINT_STEPS,
    hint_prob: float = HINT_PROB,
    start_from: Any = None,
    workdir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Co-train ``cfg`` (default :func:`pretrained_config`), train the decoder on hints (``hint_steps``, 0 = off),
    refine its policy (``refine_steps``, 0 = off), write the bundle to ``path``; returns the fit result with
    ``digest`` (:func:`segbandit.pretrained.bundle_digest`), ``cotrained_digest`` (before the later phases) and
    ``path``.  ``start_from``: a bundle source (:func:`segbandit.pretrained.load_bundle`) that replaces the
    co-training phase."""
    cfg = cfg or pretrained_config()
    if start_from is not None:
        bundle = load_bundle(start_from)
        result: dict[str, Any] = {"miou": float(bundle.meta.get("val_miou", float("nan"))),
                                  "iterations": int(bundle.meta.get("iterations", 0))}
    else:
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
    if hint_steps > 0:
        bundle = train_on_hints(bundle, cfg, hint_steps, hint_prob=hint_prob)
    if refine_steps > 0:
        bundle = refine_policy(bundle, cfg, refine_steps, refine_lr)
    digest = bundle_digest(bundle)
    bundle.meta.update({"digest": digest, "cotrained_digest": cotrained})
    out = save_bundle(bundle, path)
    return {**result, "digest": digest, "cotrained_digest": cotrained, "path": str(out)}


__all__ = [
    "HINT_LR",
    "HINT_PROB",
    "HINT_STEPS",
    "PRETRAINED_RECIPE",
    "REFINE_LR",
    "REFINE_STEPS",
    "bundle_from_trainer",
    "make_pretrained",
    "presence_hint",
    "pretrained_config",
    "refine_policy",
    "save_bundle",
    "train_on_hints",
]
