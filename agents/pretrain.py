"""The shipped segmentor of ``SegBandit-v0``: co-train it with the main job's recipe, then keep its weights as a bundle.

The phases, all seeded (docs/benchmark.md measures what each buys):

1. :data:`PRETRAINED_RECIPE`: the digits preset with channel actions (``(B, d)``, the action of
   ``SegBanditPooled-v0``; a dense env broadcasts it), trained by :func:`agents.fit.fit` (Eq. 6).
2. :func:`train_on_hints` (the hint construction, :data:`HINT_STEPS`): the encoder kept, the modulation and decoder
   retrained by CE with a label-derived channel action, the class-presence hint (:func:`presence_hint`), so that the
   decoder relies on ``s`` for something the zero action does not say: which digits the image holds.
3. :func:`imitate_hint` (:data:`IMITATE_STEPS`): the policy alone regressed on that hint from ``z``, the reference
   policy of ``segbandit.REFERENCE_SCORES`` (what a policy that reads only ``z`` can gain).
4. :func:`refine_policy` (off by default; the former shipped file used 300 steps after phase 1): the policy alone
   trained through the frozen segmentor by the CE gradient of the reparameterised action.

:func:`make_pretrained` runs them and writes a :class:`segbandit.pretrained.Bundle`; on one CPU thread the same seed
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
from segbandit.policy import LatentPolicy
from segbandit.pretrained import POLICY_KEYS, SEGMENTOR_KEYS, Bundle, build_from_bundle, bundle_digest, freeze
from segbandit.pretrained import load_bundle, policy_from_bundle

# The digits preset as it stood when the shipped file was built (NCHW weights, 1,400 iterations, an evaluation every
# 200), pinned so that the command keeps rebuilding that file bit for bit as the preset moves on.
PRETRAINED_RECIPE: dict[str, Any] = dict(action_mode="channel", num_overlays=0, eval_stochastic=False,
                                         channels_last=False, **DIGITS_SCHEDULE_1400)
REFINE_STEPS = 0  # refine_policy: Adam steps on the policy alone through the decoder's CE (the former shipped file: 300)
REFINE_LR = 1e-3
HINT_STEPS = 900  # the hint construction (train_on_hints): decoder steps with label-derived actions, 0 = off
HINT_LR = 1e-3
HINT_PROB = 1.0  # share of the images decoded with the hint (the rest with s = 0)
IMITATE_STEPS = 1500  # the hint construction's policy (imitate_hint): Adam steps regressing mu on the hint, 0 = off
IMITATE_LR = 1e-3


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


Loss = Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Generator], torch.Tensor]


def _training_steps(cfg: TrainConfig, steps: int, transition: BanditTransition, opt: torch.optim.Optimizer,
                    loss: Loss) -> None:
    """``steps`` optimiser steps of ``loss(features, masks, generator)``, one per shuffled training batch of ``cfg``
    (seeded); the encoder runs without gradient, so ``opt`` moves only what reads its features."""
    train, *_ = build_datasets(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=generator)
    done = 0
    while done < steps:
        for images, masks in loader:
            with torch.no_grad():
                feats = transition.encode(images)  # {"out": (B, d, h, w), skips}
            value = loss(feats, masks, generator)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            done += 1
            if done >= steps:
                return


def _decoder_ce(transition: BanditTransition,
                action: Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]) -> Loss:
    """The loss CE(decode(z, action(z, masks, generator)), y) (Eq. 6's CE with the action in the decoder)."""

    def loss(feats: dict[str, torch.Tensor], masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = feats["out"]  # (B, d, h, w)
        s = action(z, masks, generator)  # (B, d)
        logits = transition.decode(z, s, tuple(masks.shape[-2:]), transition.segmentor.skips(feats))  # (B, K, H, W)
        return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)

    return loss


def _train_policy(bundle: Bundle, cfg: TrainConfig, steps: int, lr: float,
                  make_loss: Callable[[BanditTransition, LatentPolicy], Loss], meta: dict[str, Any]) -> Bundle:
    """Adam on the bundle's policy alone for ``steps`` training batches of ``make_loss(transition, policy)``, the
    segmentor frozen (eval mode, no gradient).  Returns the bundle with the trained policy and ``meta`` recorded."""
    segmentor = freeze(build_from_bundle(bundle))
    policy = policy_from_bundle(bundle, segmentor.latent_channels).train()
    policy.requires_grad_(True)
    transition = BanditTransition(segmentor, reward_fn=None)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    _training_steps(cfg, steps, transition, opt, make_loss(transition, policy))
    policy.eval()
    trained = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
    return dataclasses.replace(bundle, policy=trained, meta={**bundle.meta, **meta})


def refine_policy(bundle: Bundle, cfg: TrainConfig, steps: int = REFINE_STEPS, lr: float = REFINE_LR,
                  bound: float = DEFAULT_ACTION_BOUND) -> Bundle:
    """Adam on the policy only, min CE(decode(z, clamp(mu + sigma eps, -bound, bound)), y) on the training scenes,
    the segmentor frozen (eval mode, no gradient).  Returns the bundle with the refined policy."""

    def make_loss(transition: BanditTransition, policy: LatentPolicy) -> Loss:
        def sampled(z: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            mu, log_std = policy(z)  # (B, d) each
            eps = torch.randn(mu.shape, generator=generator)
            return (mu + log_std.exp() * eps).clamp(-bound, bound)  # the env's channel action (Eq. 11), in its bound

        return _decoder_ce(transition, sampled)

    return _train_policy(bundle, cfg, steps, lr, make_loss, {"refine_steps": steps, "refine_lr": lr})


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
    zero action does not say; :func:`imitate_hint` afterwards trains the policy to say it.  Returns the bundle with
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
    transition = BanditTransition(segmentor, reward_fn=None)
    _training_steps(cfg, steps, transition, opt, _decoder_ce(transition, hinted))
    segmentor.eval()
    weights = {name: v.detach().cpu().clone() for name, v in segmentor.state_dict().items()}
    meta = {**bundle.meta, "hint_steps": steps, "hint_lr": lr, "hint_prob": hint_prob}
    return dataclasses.replace(bundle, segmentor=weights, meta=meta)


def imitate_hint(bundle: Bundle, cfg: TrainConfig, steps: int = IMITATE_STEPS, lr: float = IMITATE_LR,
                 bound: float = DEFAULT_ACTION_BOUND) -> Bundle:
    """The policy of the hint construction: Adam on the policy alone, min ||mu(z) - presence_hint(y)||^2 on the
    training scenes (the segmentor frozen, its encoder giving z).  Its mean then estimates ``bound * (2 P(present | z)
    - 1)`` per digit, the hint a policy that reads only z can give.  Returns the bundle with that policy."""

    def make_loss(transition: BanditTransition, policy: LatentPolicy) -> Loss:
        k, d = int(transition.segmentor.num_classes), int(transition.segmentor.latent_channels)

        def loss(feats: dict[str, torch.Tensor], masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
            mu, _ = policy(feats["out"])  # (B, d)
            return F.mse_loss(mu, presence_hint(masks, k, d, bound))

        return loss

    return _train_policy(bundle, cfg, steps, lr, make_loss, {"imitate_steps": steps, "imitate_lr": lr})


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
    imitate_steps: int = IMITATE_STEPS,
    start_from: Any = None,
    workdir: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Co-train ``cfg`` (default :func:`pretrained_config`), train the decoder on hints (``hint_steps``, 0 = off),
    regress the policy on the hint (``imitate_steps``, 0 = off), refine it through the decoder (``refine_steps``,
    0 = off), write the bundle to ``path``; returns the fit result with
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
    if imitate_steps > 0:
        bundle = imitate_hint(bundle, cfg, imitate_steps)
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
    "IMITATE_LR",
    "IMITATE_STEPS",
    "PRETRAINED_RECIPE",
    "REFINE_LR",
    "REFINE_STEPS",
    "bundle_from_trainer",
    "imitate_hint",
    "make_pretrained",
    "presence_hint",
    "pretrained_config",
    "refine_policy",
    "save_bundle",
    "train_on_hints",
]
