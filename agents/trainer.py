"""The co-training trainer: one segmentor forward and one backward per batch for Eq. 6.

``L = L_CE + aux_weight * L_CE(aux) + lambda_P * L_Policy + lambda_KL * KL(pi_ref || pi_phi)``  (Eq. 2, 4-6)

Per batch (``CoTrainer.train_step``), one forward and one backward:

1. :meth:`CoTrainer.rollout` runs one round of the bandit: the environment's transition
   (:class:`envs.transition.BanditTransition`, the same code ``SegBandit-v0`` steps) encodes ``z`` (B, d, h, w); the
   policy reads the *detached* latents once (Eq. 7-10, float32, also under autocast), so the policy and KL losses
   never reach the encoder; ``s = mu + sigma * eps`` (Eq. 11, reparameterised, noise from the trainer's seeded
   ``torch.Generator``: the CE loss reaches the policy through ``s``); the transition decodes and scores the logits
   (Eq. 15, float32).  It returns one tensordict: observation, action, loc, scale, logits, aux logits, mask, rewards.
2. :class:`agents.cotraining.CoTrainingLoss` reads that tensordict: CE (+ aux CE) on the same logits, the policy
   objective (Eq. 3-5, 16-18; the TorchRL loss reuses loc / scale instead of running the policy again), weighted
   ``loss_*`` terms and their sum (Eq. 6).
3. One backward; a guarded step (a non-finite loss or gradient norm is not applied, the iteration is reported and
   counted); ``optimizer.step()``, ``scheduler.step()``, ``objective.after_step()`` (EMA reference, Eq. 19).

Schedules (paper Table 1):

- ``joint`` (default): Eq. 6 from the first step.
- ``sft_then_rl``: the first half of ``max_iters`` is supervised fine-tuning: CE (+aux) only, policy and KL terms
  off.  The modulation is fed the deterministic action ``s = mu`` during SFT, so the policy's mean head and the
  modulation path are trained by CE as ordinary layers of the network and the RL phase starts from a calibrated
  action space (feeding zeros would leave the decoder untrained for a signal, and sampling would already be RL
  exploration).  The second half is RL only: ``L = lambda_P L_Policy + L_KL``, the CE term off; the segmentor is
  then frozen (eval mode, no gradient) and only the policy (and a critic, if any) learns.
- ``rl_only``: no CE at all: ``L = lambda_P L_Policy + L_KL``; only the policy learns and the segmentor stays at its
  initialisation (frozen, eval mode: it is the bandit's deterministic transition).  This is the paper's
  "only RL" row (6.4 mIoU): without supervision the decoder never learns the classes.

Objective ``rss`` (reward-only segmentation, the second seed; ``segbandit.rss``): no CE and no latent action.  The
segmentor's logits are the pixel policy; :func:`segbandit.rss.rss_loss` samples G label maps per image at every active
PSR scale, rewards them (pixel or image level, PSD) and returns the policy-gradient loss, one backward as above.  The
scale schedule (``ScaleSchedule``) moves after each applied step and is saved in the checkpoint.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, Sampler

from agents.checkpoint import capture_rng_state, restore_rng_state
from agents.config import TrainConfig
from agents.cotraining import LOSS_KEYS, OBJECTIVE_DIAGNOSTICS, CoTrainingLoss
from agents.distributed import convert_sync_batchnorm
from envs.transition import BanditTransition
from segbandit.baselines import PER_IMAGE_BASELINES, per_image_baseline
from segbandit.constants import IGNORE_INDEX
from segbandit.distributed import (
    SINGLE,
    DistInfo,
    active,
    all_gather_objects,
    all_reduce_sum,
    broadcast_buffers,
)
from segbandit.metrics import SegmentationMetric
from segbandit.policy import LatentPolicy, sample_action
from segbandit.pretrained import load_bundle
from segbandit.rss import RSSConfig, ScaleSchedule, pixel_entropy, rss_loss
from segbandit.rewards import REWARD_TERMS as _TERMS
from segbandit.rewards import CompositeReward

logger = logging.getLogger(__name__)

REWARD_TERMS: tuple[str, ...] = (*_TERMS, "total")  # the reward_* statistics a step and an evaluation report
CHECKPOINT_FORMAT = 2
RSS_KEYS: tuple[str, ...] = ("reward_sampled", "psr_scale")  # what an RSS step adds: its sampled maps' mean reward


class NonFiniteError(RuntimeError):
    """``max_nonfinite`` consecutive steps had a non-finite loss or gradient: training stopped."""


# ----------------------------------------------------------------------------- seeding, devices, optimiser


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> cuda if available, else cpu; anything else as given."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_optimizer(cfg: TrainConfig, params: Iterable[Any]) -> torch.optim.Optimizer:
    """The optimiser of ``cfg``: SGD(lr, momentum, weight_decay) (the paper's FCN recipe) or AdamW(lr, weight_decay).

    ``params``: parameters or param groups (dicts with ``"params"``; a group may carry its own ``"lr"``).
    """
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid names: sgd, adamw")


def lr_factor(iteration: int, max_iters: int, poly_power: float, warmup_iters: int = 0) -> float:
    """The learning-rate multiplier after ``iteration`` steps: linear warm-up, then poly decay to 0 at ``max_iters``.

    ``min(1, (t + 1) / (warmup_iters + 1)) * (1 - t / max_iters) ** poly_power``; without warm-up this is torch's
    ``PolynomialLR`` (mmsegmentation's ``PolyLR`` with ``min_lr=0``) in closed form.
    """
    t = min(int(iteration), int(max_iters))
    warm = min(1.0, (t + 1) / (warmup_iters + 1)) if warmup_iters > 0 else 1.0
    return warm * (1.0 - t / max_iters) ** poly_power


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Warm-up then poly decay over the whole run (:func:`lr_factor`), as a ``LambdaLR`` of every param group.

    The factor is a function of the iteration and the config alone, so the schedule of a resumed run follows the
    config it resumes with (a longer ``max_iters`` stretches the decay).
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, max_iters=cfg.max_iters, poly_power=cfg.poly_power,
                                     warmup_iters=cfg.warmup_iters)
    )


class IterationBatchSampler(Sampler[list[int]]):
    """Endless batches whose content depends only on (seed, iteration): resuming at iteration t is exact.

    Epoch e is the order of a ``torch.utils.data.DistributedSampler`` (shuffle, ``drop_last``, seed
    ``seed * 1_000_003``, ``set_epoch(e)`` at every epoch), i.e. ``torch.randperm(n)`` from a generator seeded with
    ``seed * 1_000_003 + e``; batch t is batch ``k = t % batches_per_epoch`` of epoch ``t // batches_per_epoch`` (the
    incomplete tail of an epoch is dropped).  ``batch_size`` is the per-rank batch.  Under DDP (``num_replicas`` > 1)
    rank r reads every ``num_replicas``-th index of the epoch, so the union over ranks of batch t is exactly the
    single-process batch t of the global batch ``batch_size * num_replicas``: the data order does not depend on the
    number of processes, and a run may resume on a different number of GPUs with the same global batch.
    The position is ``start_iteration`` (the number of batches already consumed); see :meth:`state_dict`.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        start_iteration: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1 or num_samples < batch_size * num_replicas:
            raise ValueError(
                f"need 1 <= batch_size * num_replicas <= num_samples, got batch_size={batch_size}, "
                f"num_replicas={num_replicas}, num_samples={num_samples}"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_iteration = start_iteration
        self.num_replicas, self.rank = num_replicas, rank
        self.sampler = DistributedSampler(
            range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed * 1_000_003,
            drop_last=True,
        )
        self.batches_per_epoch = len(self.sampler) // batch_size
        self._epoch: tuple[int, list[int]] | None = None

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def _order(self, epoch: int) -> list[int]:
        if self._epoch is None or self._epoch[0] != epoch:
            self.sampler.set_epoch(epoch)
            self._epoch = (epoch, list(self.sampler))
        return self._epoch[1]

    def batch(self, iteration: int) -> list[int]:
        """This rank's indices of batch ``iteration`` (0-based)."""
        epoch, k = divmod(iteration, self.batches_per_epoch)
        return self._order(epoch)[k * self.batch_size : (k + 1) * self.batch_size]

    def position(self, iteration: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of batch ``iteration``."""
        return divmod(iteration, self.batches_per_epoch)

    def state_dict(self, iteration: int | None = None) -> dict[str, int]:
        """The data position after ``iteration`` consumed batches (default ``start_iteration``), as plain ints."""
        it = self.start_iteration if iteration is None else int(iteration)
        epoch, k = self.position(it)
        return {
            "iteration": it, "epoch": epoch, "batch_in_epoch": k, "batches_per_epoch": self.batches_per_epoch,
            "seed": int(self.seed), "num_samples": self.num_samples, "global_batch_size": self.global_batch_size,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue at ``state["iteration"]``; warn when the order it was drawn from differs from this sampler's."""
        for key in ("seed", "num_samples", "global_batch_size"):
            if key in state and int(state[key]) != int(getattr(self, key)):
                logger.warning(
                    "the checkpoint's data order used %s=%s, this run uses %s: resuming is not exact",
                    key, state[key], getattr(self, key),
                )  # fmt: skip
        self.start_iteration = int(state["iteration"])

    def __iter__(self) -> Iterator[list[int]]:
        t = self.start_iteration
        while True:
            yield self.batch(t)
            t += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a number for len(), never used by the loop
        return 2**62


# ----------------------------------------------------------------------------- the trainer


def _check_batch(images: torch.Tensor, masks: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"expected images of shape (B, 3, H, W) float, got {tuple(images.shape)} {images.dtype}")
    if masks.dim() != 3 or masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"expected masks of shape (B, H, W) = {(images.shape[0], *images.shape[-2:])}, got {tuple(masks.shape)}"
        )
    if masks.dtype != torch.int64:
        raise ValueError(f"expected int64 masks (255 = void), got {masks.dtype}")


class CoTrainer:
    """Co-trains a :class:`segbandit.models.Segmentor` and a :class:`LatentPolicy` with Eq. 6.

    Args:
        segmentor: the encoder / modulation / decoder (``features``, ``decode``, ``decode_aux``).
        policy: the latent policy pi_phi reading ``z``.
        objective: an ``agents.objective.PolicyObjective`` over the same ``policy`` (baseline, EMA reference, loss).
        optimizer, scheduler: built over segmentor, policy and (if any) critic parameters, e.g. with
            :func:`build_optimizer` / :func:`build_scheduler`.
        cfg: the run's :class:`TrainConfig` (lambdas, schedule, action mode, aux weight, grad clip, seed...).
        reward_fn: ``(logits, masks) -> dict`` of (B,) terms and ``"total"`` (default: ``CompositeReward``).
        device: where the batches go (default: the segmentor's device).
        dist_info: this process's rank and the world size (default: one process).  With ``world_size > 1`` (and an
            initialised process group) segmentor, policy and objective are wrapped together in one
            ``DistributedDataParallel`` (``find_unused_parameters=True``: schedules and modulations leave different
            parameters without gradient), the CE is normalised by the global number of labelled pixels and the
            action noise is drawn for the global batch and sliced, so N ranks with per-rank batch B/N compute the
            step of one process with batch B (up to float summation order).  ``train_step``, ``evaluate`` and
            ``state_dict`` are then collectives: every rank must call them.
        sync_bn: under DDP, average batch-norm statistics over the global batch (``nn.SyncBatchNorm`` on CUDA,
            :class:`agents.distributed.GlobalBatchNorm2d` on CPUs).
    """

    def __init__(
        self,
        segmentor: nn.Module,
        policy: LatentPolicy,
        objective: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        cfg: TrainConfig,
        reward_fn: Any = None,
        device: torch.device | str | None = None,
        *,
        dist_info: DistInfo | None = None,
        sync_bn: bool = False,
    ) -> None:
        self.segmentor = segmentor
        self.policy = policy
        self.objective = objective
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.cfg = cfg
        self.num_classes = int(segmentor.num_classes)
        self.dist = dist_info or SINGLE
        self.sync_bn = bool(sync_bn)
        reward_fn = reward_fn or CompositeReward(
            self.num_classes, tuple(cfg.reward_weights), IGNORE_INDEX, cfg.boundary_tolerance
        )
        self.device = torch.device(device) if device is not None else next(segmentor.parameters()).device
        # bf16 autocast on CUDA, built once and reused; a no-op context on CPU.  Rewards, metrics and KL cast inside.
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" and cfg.amp else None
        self.transition = BanditTransition(segmentor, reward_fn, autocast)  # the env's encode / decode / reward
        self.generator = torch.Generator(device=self.device).manual_seed(int(cfg.seed) + 1)  # action noise (Eq. 11)
        class_weight = None
        if cfg.class_weights is not None:
            if len(cfg.class_weights) != self.num_classes:
                raise ValueError(
                    f"class_weights must have one value per class ({self.num_classes}), got {len(cfg.class_weights)}"
                )
            class_weight = torch.tensor(cfg.class_weights, dtype=torch.float32, device=self.device)
        self.class_weight = class_weight  # CE's, and with objective "rss" the policy gradient's per pixel
        self.loss = CoTrainingLoss(
            objective, self.num_classes, lambda_policy=cfg.lambda_policy, aux_weight=cfg.aux_weight,
            class_weight=class_weight, dist_info=self.dist,
        )  # Eq. 6  # fmt: skip
        self._use_aux = cfg.aux_weight > 0 and getattr(segmentor, "aux_classifier", None) is not None
        self.rss: RSSConfig | None = None  # reward-only segmentation (objective "rss")
        self.scales: ScaleSchedule | None = None  # its PSR schedule
        if cfg.objective == "rss":
            self.rss = RSSConfig(level=cfg.reward_level, num_samples=cfg.rss_samples, temperature=cfg.rss_temperature,
                                 psd=cfg.psd, normalize=cfg.rss_normalize, reward=cfg.rss_reward,
                                 psr_mode=cfg.psr_mode)  # fmt: skip
            self.scales = ScaleSchedule(cfg.psr_scales, cfg.psr_milestones or (), cfg.psr_patience,
                                        cumulative=cfg.psr_cumulative)  # fmt: skip
            # the label maps' noise: each rank draws its own (its images differ), from the checkpointed generator
            self.generator.manual_seed(int(cfg.seed) + 1 + 100_003 * self.dist.rank)
        self._epoch_batch: dict[str, torch.Tensor] | None = None  # the batch later PPO epochs re-read
        # a continual step's distillation (agents.continual): relabels each batch and adds loss terms; None = none
        self.distiller: Any = None
        self.iteration = 0  # completed (attempted) iterations
        self.nonfinite_streak = 0
        self.skipped_iterations: list[int] = []
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._step_module: nn.Module = _StepModule(self)
        if self.dist.enabled:
            if not active(self.dist):  # raises when no process group is up
                raise RuntimeError(f"dist_info says world_size={self.dist.world_size} but no process group is initialised")
            if self.sync_bn:
                for m in (self.segmentor, self.policy, self.objective):
                    convert_sync_batchnorm(m, self.device.type, self.dist)  # in place: parameters and buffers are kept
            ids = [self.device.index if self.device.index is not None else 0] if self.device.type == "cuda" else None
            self._step_module = DistributedDataParallel(
                self._step_module, device_ids=ids, find_unused_parameters=True, broadcast_buffers=True
            )
        # every buffer a forward may change (batch-norm statistics, the reward baseline, an adaptive KL beta):
        # a skipped step puts them back
        seen: set[int] = set()
        self._buffers: list[torch.Tensor] = []
        for m in self._modules():
            for b in m.buffers():
                if id(b) not in seen:
                    seen.add(id(b))
                    self._buffers.append(b)

    @property
    def reward_fn(self) -> Any:
        """The reward of Eq. 15 the bandit's transition scores with (settable)."""
        return self.transition.reward_fn

    @reward_fn.setter
    def reward_fn(self, fn: Any) -> None:
        self.transition.reward_fn = fn

    def _modules(self) -> tuple[nn.Module, ...]:
        """The modules whose parameters and buffers the run trains and saves."""
        return (self.segmentor, self.policy, self.objective)

    # -- construction from a config

    @classmethod
    def from_config(
        cls,
        cfg: TrainConfig,
        num_classes: int,
        device: str | torch.device | None = None,
        reward_fn: Any = None,
        *,
        dist_info: DistInfo | None = None,
        sync_bn: bool = False,
    ) -> "CoTrainer":
        """Seed everything from ``cfg.seed`` and build segmentor, policy, objective, optimiser and schedule.

        Every rank builds identical weights (same seed); afterwards ranks other than 0 reseed python, numpy and
        torch with ``seed + 100_003 * rank`` so that their augmentation and dropout draws differ.
        """
        from agents.objective import PolicyObjective
        from segbandit.models import build_segmentor

        seed_everything(cfg.seed)
        dev = resolve_device(device if device is not None else cfg.device)
        segmentor = build_segmentor(
            cfg.model,
            num_classes,
            modulation=cfg.modulation,
            pretrained_backbone=cfg.pretrained_backbone,
            aux_loss=cfg.aux_weight > 0,
            attn_dim=cfg.attn_dim,
            num_heads=cfg.num_heads,
            signal_norm=cfg.signal_norm,
            alpha_init=cfg.alpha_init,
        )
        policy = LatentPolicy(
            segmentor.latent_channels,
            hidden_channels=cfg.policy_hidden,
            num_blocks=cfg.policy_blocks,
            pool_size=cfg.policy_pool,
            logstd_bound=cfg.logstd_bound,
            log_std_init=cfg.policy_log_std_init,
        )
        layout = torch.channels_last if cfg.channels_last else torch.contiguous_format  # conv outputs follow it
        segmentor.to(dev, memory_format=layout)
        policy.to(dev, memory_format=layout)
        objective = PolicyObjective(
            policy,
            cfg.algo,
            action_mode=cfg.action_mode,
            reduction=cfg.logprob_reduction,
            baseline=cfg.baseline,
            tau=cfg.tau,
            eta=cfg.eta,
            a_min=cfg.a_min,
            a_max=cfg.a_max,
            clip_epsilon=cfg.clip_eps,
            lambda_kl=cfg.lambda_kl,
            entropy_coef=cfg.entropy_coef,
            ratio_clip=cfg.ratio_clip,
            dist_info=dist_info or SINGLE,
        ).to(dev)
        optimizer = build_optimizer(cfg, param_groups(segmentor, policy, objective, cfg))
        scheduler = build_scheduler(cfg, optimizer)
        info = dist_info or SINGLE
        if info.rank > 0:
            seed_everything(cfg.seed + 100_003 * info.rank)
        return cls(
            segmentor, policy, objective, optimizer, scheduler, cfg, reward_fn=reward_fn, device=dev,
            dist_info=info, sync_bn=sync_bn,
        )  # fmt: skip

    # -- schedule (Table 1)

    def phase(self, iteration: int | None = None) -> str:
        """``"joint"`` (Eq. 6), ``"sft"`` (CE only, s = mu) or ``"rl"`` (policy terms only) at 1-based ``iteration``."""
        it = self.iteration + 1 if iteration is None else iteration
        if self.rss is not None:
            return "rss"
        if self.cfg.schedule == "joint":
            return "joint"
        if self.cfg.schedule == "rl_only":
            return "rl"
        return "sft" if it <= self.cfg.max_iters // 2 else "rl"  # sft_then_rl

    # -- one batch

    def _forward_losses(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """The loss of Eq. 6 for one batch (with graph) and its detached terms; loss None if the batch is unusable.

        Runs through the DDP wrapper when distributed (so that gradients are averaged over ranks).
        """
        _check_batch(images, masks)
        return self._step_module(images, masks)

    def _act(
        self,
        z: torch.Tensor,
        deterministic: bool,
        generator: torch.Generator | None,
        shard: tuple[int, int] | None = None,
        samples: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, log_std (B, d), action) for detached float latents z (B, d, h, w): the policy's one run of the step.

        ``samples`` = K draws per image, stacked sample-major: action (K * B, d[, h, w]), rows k * B + b.
        """
        mu, log_std = self.policy(z)  # (B, d) each, float32, Eq. 7-10
        spatial = tuple(z.shape[-2:]) if self.cfg.action_mode == "dense" else None
        if deterministic:  # s = mu
            action = mu if spatial is None else mu[:, :, None, None].expand(-1, -1, *spatial)
        else:
            loc, log_scale = (mu, log_std) if samples == 1 else (mu.repeat(samples, 1), log_std.repeat(samples, 1))
            action = sample_action(loc, log_scale, spatial, generator=generator, shard=shard)  # Eq. 11, reparameterised
        return mu, log_std, action

    def rollout(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        segmentor_grad: bool = True,
        aux: bool = False,
        samples: int = 1,
        greedy: bool = False,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One round of the bandit on a batch, as the environment plays it, with the graph a co-training step needs.

        images (B, 3, H, W), masks (B, H, W).  Returns the step's tensors and whether every logit is finite (0-d
        bool): ``observation`` z (B, d, h, w) detached float32, ``loc`` / ``scale`` (B, d) with graph, ``action``
        ((B, d, h, w) dense or (B, d)), ``logits`` (B, K, H, W) (``logits_aux`` when ``aux``), ``mask``, ``reward``
        (B,) and ``reward_<term>`` (B,).  Noise from ``generator`` (the trainer's action generator when None) for
        this rank's rows of the global batch; ``segmentor_grad=False`` runs the segmentor without graph (a frozen
        environment), the policy always with it (unless the caller is under ``torch.no_grad``).

        ``samples`` = K > 1 draws K actions per image; only the modulation and the decoder re-run for the K - 1
        extra ones (without graph).  ``observation``, ``loc``, ``scale``, ``action`` and ``reward`` then hold the
        K * B rows of the policy's batch (sample-major), ``logits`` / ``mask`` / ``reward_<term>`` the first sample's
        B images (CE and the logged terms).  ``greedy`` also scores s = mu (``reward_greedy`` (B,), no graph).
        """
        grad = contextlib.nullcontext() if segmentor_grad else torch.no_grad()
        with grad:
            feats = self.transition.encode(images)
        z = feats["out"]  # (B, d, h, w)
        skips = self.segmentor.skips(feats)  # pass-through features the decoder reads beside z (Segformer; else ())
        fixed_skips = tuple(t.detach() for t in skips)  # for the extra decodes without graph
        b = z.shape[0]
        obs = z.detach().float()  # the policy never sends gradient into the encoder
        own_noise = generator is None
        mu, log_std, action = self._act(
            obs, deterministic, self.generator if own_noise else generator,
            (self.dist.rank, self.dist.world_size) if own_noise else None, samples if not deterministic else 1,
        )  # fmt: skip
        with grad:
            out = self.transition.score(z, action[:b], masks, feats.get("aux") if aux else None, skips)  # Eq. 15
        finite = out.pop("finite")
        scale = log_std.exp()
        step = {"observation": obs, "loc": mu, "scale": scale, "action": action, "mask": masks, **out}
        if action.shape[0] > b:  # the other K - 1 samples: modulation + decoder only, no graph
            k = action.shape[0] // b
            with torch.no_grad():
                rest = self.transition.score(z.detach().repeat(k - 1, 1, 1, 1), action[b:].detach(),
                                             masks.repeat(k - 1, 1, 1),
                                             skips=tuple(t.repeat(k - 1, 1, 1, 1) for t in fixed_skips))  # fmt: skip
            finite = finite & rest["finite"]
            step.update(observation=obs.repeat(k, 1, 1, 1), loc=mu.repeat(k, 1), scale=scale.repeat(k, 1),
                        reward=torch.cat([out["reward"], rest["reward"]]))  # fmt: skip
        if greedy:
            with torch.no_grad():
                mean_action = mu.detach() if action.dim() == 2 else mu.detach()[:, :, None, None].expand_as(action[:b])
                step["reward_greedy"] = self.transition.score(
                    z.detach(), mean_action, masks, skips=fixed_skips)["reward"]  # r(x, s = mu)
        return step, finite

    def add_per_image_baseline(self, step: dict[str, torch.Tensor], num_images: int) -> None:
        """Eq. 16 replaced by each image's own baseline (RLOO / group mean / greedy action): ``baseline_value``."""
        rewards = step["reward"].detach().reshape(-1, num_images)  # (K, B)
        step["baseline_value"] = per_image_baseline(self.cfg.baseline, rewards, step.get("reward_greedy")).reshape(-1)

    def _compute_losses(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, Any]]:
        if self.rss is not None:
            return self._rss_losses(images, masks)
        distributed = self.dist.enabled
        phase = self.phase()
        use_ce, use_rl = phase in ("joint", "sft"), phase in ("joint", "rl")
        self.segmentor.train(use_ce)  # CE off: the segmentor is the frozen environment (eval mode, no gradient)
        self.policy.train()
        per_image = self.cfg.baseline in PER_IMAGE_BASELINES and use_rl
        distill = self.distiller if use_ce else None  # a continual step's old model (agents.continual.PLOPDistiller)
        ce_weight, tap = None, contextlib.nullcontext()
        if distill is not None:
            masks, ce_weight = distill.targets(images, masks)  # pseudo-labels and per-image CE factor (old model)
            tap = distill.capture(self.segmentor)  # the new model's maps, recorded during the rollout
        with tap:
            step, finite = self.rollout(
                images, masks, deterministic=phase == "sft", segmentor_grad=use_ce, aux=use_ce and self._use_aux,
                samples=self.cfg.action_samples if use_rl else 1, greedy=per_image and self.cfg.baseline == "greedy",
            )  # the SFT phase feeds s = mu (see the module docstring)
        if ce_weight is not None:
            step["ce_weight"] = ce_weight
        stats: dict[str, Any] = {"phase": phase}
        r_stats = {f"reward_{k}": step[f"reward_{k}" if k != "total" else "reward"].mean() for k in REWARD_TERMS}
        rewards = step["reward"].detach().reshape(-1, images.shape[0])  # (K, B)
        r_stats["reward_std_actions"] = r_stats["reward_std_images"] = torch.full((), math.nan)
        if rewards.shape[0] > 1:  # how much of the reward the action explains, against the image
            r_stats["reward_std_actions"] = rewards.std(0).mean()
            r_stats["reward_std_images"] = rewards.mean(0).std() if rewards.shape[1] > 1 else torch.zeros(())
        if per_image:
            self.add_per_image_baseline(step, images.shape[0])
        reason = None
        if not bool(finite):
            reason = "non-finite logits"
        elif not bool(torch.isfinite(step["reward"]).all()):
            reason = "non-finite reward"
        # Under DDP a rank never leaves early: every rank must run the same collectives (baseline mean, gradient
        # all-reduce); the reason is kept and the step is skipped on every rank after the backward.
        if reason is not None and not distributed:  # every key a normal step reports, NaN: the loop reads them all
            nan = {k: torch.full((), math.nan) for k in (*LOSS_KEYS, *OBJECTIVE_DIAGNOSTICS)}
            return None, {**stats, "reason": reason, **_floats({**nan, **r_stats})}
        if reason is not None:
            stats["reason"] = reason
        extra = distill.loss() if distill is not None else None  # e.g. PLOP's loss_pod
        terms = self.loss(step, ce=use_ce, rl=use_rl, extra=extra)  # Eq. 6: weighted loss_* terms and their sum
        if use_rl and self.cfg.ppo_epochs > 1:  # what the later PPO epochs over this batch read (no graph)
            self._epoch_batch = {k: step[k].detach() for k in ("observation", "action", "reward", "loc", "scale")}
            self._epoch_batch["advantage"] = self.objective.last_advantage
            self._epoch_batch["latents"] = step["observation"][: images.shape[0]].detach()  # (B, d, h, w), once each
        return terms["loss"], {**stats, **_floats({**terms, **r_stats})}

    def _rss_losses(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """Reward-only segmentation: the segmentor's logits are the pixel policy (no CE, no latent action).

        The transition decodes with the zero signal (the segmentor has no modulation) and scores the greedy map with
        the composite reward (logged as ``reward_*``); :func:`segbandit.rss.rss_loss` samples and rewards G maps per
        image at every active PSR scale; ``entropy_coef`` adds a bonus on the policy's mean pixel entropy (``entropy``,
        logged always: a policy collapsing to one label shows here first).  ``reward_sampled`` is the finest active
        scale's mean sampled reward (the plateau schedule reads it), ``psr_scale`` that scale's pooling factor.
        """
        self.segmentor.train()
        feats = self.transition.encode(images)
        z = feats["out"]  # (B, d, h, w)
        out = self.transition.score(z, torch.zeros_like(z), masks, skips=self.segmentor.skips(feats))  # logits, r (B,)
        active = self.scales.active()
        stats: dict[str, Any] = {"phase": "rss", "psr_scale": float(active[-1])}
        stats.update(_floats({f"reward_{k}": out[f"reward_{k}" if k != "total" else "reward"].mean() for k in REWARD_TERMS}))
        stats.update({k: math.nan for k in (*LOSS_KEYS, *OBJECTIVE_DIAGNOSTICS, "reward_std_actions", "reward_std_images")})
        if not bool(out["finite"]):
            stats["reward_sampled"] = math.nan
            if not self.dist.enabled:  # under DDP every rank runs the same collectives; the step is skipped after
                return None, {**stats, "reason": "non-finite logits"}
            stats["reason"] = "non-finite logits"
        loss, per_scale = rss_loss(out["logits"], masks, self.rss, active, num_classes=self.num_classes,
                                   info=self.dist, generator=self.generator, class_weight=self.class_weight)  # fmt: skip
        entropy = pixel_entropy(out["logits"], masks, self.rss.temperature)  # mean over labelled pixels, with graph
        bonus = self.cfg.entropy_coef * entropy
        stats.update(loss=float((loss - bonus).detach()), loss_policy=float(loss.detach()), entropy=float(entropy.detach()),
                     loss_entropy=float(-bonus.detach()), reward_sampled=per_scale[f"reward/{active[-1]}"])  # fmt: skip
        return loss - bonus, stats

    def warm_start(self, source: Any) -> None:
        """Load the segmentor's weights from a main job's ``ckpt_*.pt``, a bundle or a state dict (a CE run, say).

        An auxiliary head present on one side only is skipped; any other missing, unexpected or misshapen weight is a
        ValueError naming it.  Policy, optimiser and schedule stay fresh: this is an initialisation, not a resume.
        """
        weights = load_bundle(source).segmentor
        own = self.segmentor.state_dict()
        aux = "aux_classifier."
        weights = {k: v for k, v in weights.items() if not (k.startswith(aux) and k not in own)}
        missing = sorted(k for k in own if k not in weights and not k.startswith(aux))
        unexpected = sorted(k for k in weights if k not in own)
        if missing or unexpected:
            raise ValueError(f"the weights do not fit this run's {self.cfg.model} (modulation {self.cfg.modulation}): "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")  # fmt: skip
        bad = [k for k, v in weights.items() if tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise ValueError(f"the weights do not fit this run's {self.cfg.model}: {bad[0]} has shape "
                             f"{tuple(weights[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}")  # fmt: skip
        self.segmentor.load_state_dict(weights, strict=False)

    def _policy_epochs(self) -> dict[str, float]:
        """PPO epochs 2..E over the batch just trained on: only the policy (and a critic) learn.

        Each epoch runs the policy on the stored latents and takes ``lambda_P L_Policy + L_KL`` with the first
        epoch's advantages; with ``algo="ppo_ewma"`` the ratio is against the behaviour policy that sampled the
        actions and the KL against the EMA reference (decoupled PPO-EWMA), with ``latent_ppo`` both against the
        reference.  Parameters without gradient (the segmentor) are not stepped.  Returns the last epoch's ratio and
        clip fraction; a non-finite epoch stops the epochs without being applied.
        """
        batch, self._epoch_batch = self._epoch_batch, None
        out = {"ratio_final": math.nan, "clip_fraction_final": math.nan}
        policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.objective.critic is not None:
            policy_params += [p for p in self.objective.critic.parameters() if p.requires_grad]
        for _ in range(self.cfg.ppo_epochs - 1):
            self.optimizer.zero_grad(set_to_none=True)
            mu, log_std = self.policy(batch["latents"])  # (B, d) each: one policy run per epoch
            k = batch["loc"].shape[0] // mu.shape[0]  # action samples per image
            loc, scale = mu.repeat(k, 1), log_std.exp().repeat(k, 1)  # (K * B, d) with graph
            pol = self.objective(batch["observation"], batch["action"], batch["reward"], batch["loc"], batch["scale"],
                                 current=(loc, scale), advantage=batch["advantage"])  # fmt: skip
            loss = self.cfg.lambda_policy * pol["loss_policy"] + pol["loss_kl"] + pol["loss_critic"] + pol["loss_entropy"]
            if not bool(torch.isfinite(loss.detach())):
                break
            loss.backward()
            for p in policy_params:  # DDP averages only the wrapped step's gradients: these by hand
                if p.grad is not None and self.dist.enabled:
                    p.grad = all_reduce_sum(p.grad, self.dist) / self.dist.world_size
            clip = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
            if not math.isfinite(float(torch.nn.utils.clip_grad_norm_(policy_params, clip))):
                break
            self.optimizer.step()  # only parameters with a gradient move (torch optimisers skip grad None)
            out = {"ratio_final": float(pol["ratio"]), "clip_fraction_final": float(pol["clip_fraction"])}
        self.optimizer.zero_grad(set_to_none=True)
        return out

    def backward_only(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, Any]:
        """Zero the gradients, compute the batch loss and backpropagate it, without stepping (for inspection)."""
        self.optimizer.zero_grad(set_to_none=True)
        images, masks = images.to(self.device), masks.to(self.device)
        loss, stats = self._forward_losses(images, masks)
        if loss is not None and loss.requires_grad:
            loss.backward()
        return stats

    def train_step(self, images: torch.Tensor, masks: torch.Tensor) -> dict[str, Any]:
        """One co-training iteration on a batch: images (B, 3, H, W) float, masks (B, H, W) int64 (255 = void).

        Returns python floats: ``loss``, ``loss_ce``, ``loss_aux``, ``loss_policy``, ``loss_kl``, ``loss_critic``,
        ``loss_entropy``, ``reward_{iou,dice,ce,boundary,total}`` (batch means), ``ratio``, ``clip_fraction``, ``kl``,
        ``approx_kl``, ``entropy``, ``advantage``, ``baseline`` (NaN when the objective did not run, e.g. during SFT),
        ``grad_norm``, ``lr``, ``skipped`` (0/1) and ``iteration``; plus ``phase`` (str).  Under DDP the numbers are
        means over the ranks (the global batch).

        Guarded: a non-finite logit, reward, loss or gradient norm (on any rank) skips the step: no parameter,
        optimiser state, EMA reference, baseline or batch-norm statistic changes (the buffers the forward touched
        are put back); the iteration is logged and counted, and ``max_nonfinite`` skips in a row raise
        :class:`NonFiniteError`.  The learning-rate schedule follows the iteration count, skipped or not.
        Gradients are clipped to a global norm of ``cfg.grad_clip`` when set.
        """
        iteration = self.iteration + 1
        lr = self.cfg.lr * float(self.scheduler.lr_lambdas[0](self.scheduler.last_epoch))  # the base lr, any group mults
        self.optimizer.zero_grad(set_to_none=True)
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        saved = [b.clone() for b in self._buffers]  # restored if the step is skipped
        loss, stats = self._forward_losses(images, masks)
        reason = stats.pop("reason", None)
        distributed = self.dist.enabled
        grad_norm = math.nan
        if loss is not None and not bool(torch.isfinite(loss.detach())):
            reason = reason or f"non-finite loss {float(loss.detach()):.4g}"
        # Under DDP the backward always runs (the other ranks wait in its gradient all-reduce); a bad rank's NaN
        # gradients reach every rank and the agreement below skips the step everywhere.
        if loss is not None and loss.requires_grad and (reason is None or distributed):
            loss.backward()
            max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
            norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm=max_norm)
            grad_norm = float(norm)
            if reason is None and not math.isfinite(grad_norm):
                reason = f"non-finite gradient norm {grad_norm}"
        if distributed:
            stats, any_bad = self._agree(stats, reason is not None)
            if any_bad and reason is None:
                reason = "non-finite step on another rank"
        epochs = {"ratio_final": math.nan, "clip_fraction_final": math.nan}
        if reason is None:
            self.optimizer.step()
            self.nonfinite_streak = 0
            if self._epoch_batch is not None:
                epochs = self._policy_epochs()  # PPO epochs 2..E over the same batch
        else:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, old in zip(self._buffers, saved):
                    b.copy_(old)
            self.nonfinite_streak += 1
            self.skipped_iterations.append(iteration)
            logger.warning(
                "iteration %d: %s; the step was skipped (not applied), %d in a row",
                iteration,
                reason,
                self.nonfinite_streak,
            )
            if self.nonfinite_streak >= self.cfg.max_nonfinite:
                raise NonFiniteError(
                    f"iteration {iteration}: {self.nonfinite_streak} consecutive non-finite steps "
                    f"(max_nonfinite={self.cfg.max_nonfinite}), last: {reason}; lower --lr, set --grad-clip, or "
                    f"use --logprob-reduction mean"
                )
        if self.scheduler is not None:  # the schedule follows the iteration count, skipped or not
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
                self.scheduler.step()
        if reason is None and self.scales is not None:
            self.scales.step(iteration - 1, stats["reward_sampled"])  # PSR: the next finer scale on schedule / plateau
        elif reason is None:
            self.objective.after_step()  # Eq. 19: pi_ref <- eta pi_ref + (1 - eta) pi_phi
        self.iteration = iteration
        self._epoch_batch = None
        stats.update(grad_norm=grad_norm, lr=lr, skipped=0.0 if reason is None else 1.0, iteration=iteration, **epochs)
        if reason is not None:
            stats["skip_reason"] = reason
        return stats

    def _agree(self, stats: dict[str, Any], bad: bool) -> tuple[dict[str, Any], bool]:
        """One all-reduce: the mean of the numeric stats over ranks and whether any rank wants to skip."""
        keys = [k for k, v in stats.items() if isinstance(v, float)]
        vec = torch.tensor([1.0 if bad else 0.0, *(stats[k] for k in keys)], dtype=torch.float64, device=self.device)
        vec = all_reduce_sum(vec, self.dist)
        vals = (vec[1:] / self.dist.world_size).tolist()
        return {**stats, **dict(zip(keys, vals))}, bool(vec[0].item() > 0)

    # -- evaluation

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, deterministic: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Logits (B, K, H, W) float32 for images (B, 3, H, W) with s = mu (deterministic) or a sampled s.

        Always in eval mode (batch-norm running statistics are used and left unchanged); the modes are restored.
        Sampling draws from ``generator`` (torch's global RNG when None), never from the training noise.
        """
        images = images.to(self.device)
        with self._eval_mode():
            feats = self.transition.encode(images)
            z = feats["out"]  # (B, d, h, w)
            _, _, action = self._act(z.float(), deterministic, generator)
            size = (int(images.shape[-2]), int(images.shape[-1]))
            return self.transition.decode(z, action, size, self.segmentor.skips(feats))

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = (self.segmentor.training, self.policy.training)
        self.segmentor.eval()
        self.policy.eval()
        try:
            yield
        finally:
            self.segmentor.train(was_training[0])
            self.policy.train(was_training[1])

    def sync_buffers(self) -> None:
        """Give every rank rank 0's buffers (batch-norm running statistics): a collective, a no-op in one process.

        DDP copies rank 0's buffers at the start of each forward only, so after a step plain batch-norms hold each
        rank's own statistics; :meth:`evaluate` and :meth:`state_dict` call this first, so ranks evaluate the same
        network and save (and pass the sync check with) identical state.
        """
        broadcast_buffers(self._modules(), self.dist)

    @torch.no_grad()
    def evaluate(self, loader: Iterable[Any], deterministic: bool = True, max_batches: int | None = None) -> dict[str, Any]:
        """mIoU & co. over ``loader`` with the deterministic action s = mu (or sampled actions).

        Returns ``miou``, ``pixel_acc``, ``mean_dice`` (floats), ``per_class_iou`` (list of K floats, NaN for classes
        absent from target and prediction), the mean reward terms ``reward_{iou,dice,ce,boundary,total}`` and
        ``num_images``.  Sampling uses its own generator seeded from ``cfg.seed``, so evaluating never shifts the
        training noise stream and is itself reproducible.  Under DDP (a collective) every rank evaluates its own
        share of the images with rank 0's batch-norm statistics, and the confusion matrix and reward sums are summed
        over the ranks: every rank gets the global numbers.
        """
        self.sync_buffers()
        metric = SegmentationMetric(self.num_classes, IGNORE_INDEX, device=self.device, dist_info=self.dist)
        gen = torch.Generator(device=self.device).manual_seed(int(self.cfg.seed) + 7919)
        sums = torch.zeros(len(REWARD_TERMS) + 1, dtype=torch.float64, device=self.device)  # reward sums, count
        with self._eval_mode():
            for i, (images, masks) in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                images, masks = images.to(self.device), masks.to(self.device)
                step, _ = self.rollout(images, masks, deterministic=deterministic, generator=gen, segmentor_grad=False)
                metric.update(step["logits"], masks)
                sums[:-1] += torch.stack([step[f"reward_{k}" if k != "total" else "reward"].double().sum()
                                          for k in REWARD_TERMS])  # fmt: skip
                sums[-1] += images.shape[0]
        sums = all_reduce_sum(sums, self.dist).tolist()
        n = int(sums[-1])
        res = metric.compute()  # sums the confusion matrix over the ranks under DDP
        out: dict[str, Any] = {
            "miou": float(res["miou"]),
            "pixel_acc": float(res["pixel_acc"]),
            "mean_dice": float(res["mean_dice"]),
            "per_class_iou": [float(v) for v in res["per_class_iou"].tolist()],
            "num_images": n,
        }
        out.update({f"reward_{k}": s / max(n, 1) for k, s in zip(REWARD_TERMS, sums[:-1])})
        return out

    # -- checkpoint state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as tensors and plain values (``torch.load(weights_only=True)``-safe).

        Segmentor, policy, objective (EMA reference, baseline, critic), optimiser, scheduler, iteration, the
        skip counters, every RNG state (python, numpy, torch CPU and CUDA, the action-noise generator) and the
        config.  bf16 autocast needs no gradient scaler, so ``"scaler"`` is empty.  Under DDP this is a collective:
        the buffers are rank 0's (:meth:`sync_buffers`) and ``"rng_per_rank"`` holds every rank's RNG states
        (augmentation and dropout draw per rank).
        """
        self.sync_buffers()
        rng = capture_rng_state({"action": self.generator})
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "segmentor": self.segmentor.state_dict(),
            "policy": self.policy.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": {},
            "iteration": self.iteration,
            "nonfinite_streak": self.nonfinite_streak,
            "skipped_iterations": list(self.skipped_iterations),
            "rng": rng,
            "config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
            "sync_bn": self.sync_bn,
        }
        if self.scales is not None:
            state["psr"] = self.scales.state_dict()
        if self.dist.enabled:
            state["rng_per_rank"] = all_gather_objects(rng, self.dist)
        return state

    def load_state_dict(self, state: dict[str, Any], restore_rng: bool = True) -> None:
        """Restore a :meth:`state_dict` (models, objective, optimiser, schedule, iteration, RNG states).

        Under DDP each rank takes its own RNG states when the checkpoint was written by as many ranks; otherwise
        (another world size) rank 0's, with a warning that augmentation draws will not repeat exactly.
        """
        self.segmentor.load_state_dict(state["segmentor"])
        self.policy.load_state_dict(state["policy"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
            if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
                # the schedule is this config's (e.g. a max_iters extended on resume), not the lr the optimiser saved
                for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
                    group["lr"] = base * fn(self.scheduler.last_epoch)
        self.iteration = int(state["iteration"])
        if self.scales is not None and "psr" in state:
            self.scales.load_state_dict(state["psr"])
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        self.skipped_iterations = [int(i) for i in state.get("skipped_iterations", [])]
        if restore_rng and "rng" in state:
            rng = state["rng"]
            per_rank = state.get("rng_per_rank")
            if per_rank is not None and len(per_rank) == self.dist.world_size:
                rng = per_rank[self.dist.rank]
            elif int(state.get("world_size", 1)) != self.dist.world_size:
                logger.warning(
                    "checkpoint written by %s process(es), resumed on %d: the data order and action noise continue "
                    "exactly, augmentation and dropout draws do not",
                    state.get("world_size", 1), self.dist.world_size,
                )  # fmt: skip
            restore_rng_state(rng, {"action": self.generator})


class _StepModule(nn.Module):
    """Segmentor, policy and the co-training loss (with the objective) as one module whose forward is the co-training loss, so that a single
    ``DistributedDataParallel`` wrapper sees every parameter the step trains (the trainer calls ``features`` /
    ``decode`` and the TorchRL loss, not ``forward``)."""

    def __init__(self, trainer: CoTrainer) -> None:
        super().__init__()
        self.segmentor, self.policy, self.loss = trainer.segmentor, trainer.policy, trainer.loss
        object.__setattr__(self, "_trainer", trainer)  # not a submodule

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, Any]]:
        return self._trainer._compute_losses(images, masks)


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.modules.normalization.RMSNorm)


def segmentor_groups(segmentor: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The segmentor's optimiser groups: one group, or, with ``backbone_lr_mult`` / ``head_lr_mult`` /
    ``norm_weight_decay`` set (mmsegmentation's ``paramwise_cfg``: the Segformer and SETR recipes), encoder and decoder
    side (heads, modulation, alpha) at lr x their multiplier, each split into normalisation-layer parameters (weight
    decay ``norm_weight_decay``) and the rest."""
    params = [p for p in segmentor.parameters() if p.requires_grad]
    if cfg.backbone_lr_mult == 1.0 and cfg.head_lr_mult == 1.0 and cfg.norm_weight_decay is None:
        return [{"params": params, "name": "segmentor"}]  # the plain recipe: one group (checkpoints keep their layout)
    norm_ids = {id(p) for m in segmentor.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    encoder = getattr(segmentor, "backbone", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    groups = []
    for side, mult in (("backbone", cfg.backbone_lr_mult), ("head", cfg.head_lr_mult)):
        for norm in (False, True):
            ps = [p for p in params if (id(p) in encoder_ids) == (side == "backbone") and (id(p) in norm_ids) == norm]
            if not ps:
                continue
            group: dict[str, Any] = {"params": ps, "name": f"{side}_norm" if norm else side, "lr": cfg.lr * mult}
            if norm and cfg.norm_weight_decay is not None:
                group["weight_decay"] = cfg.norm_weight_decay
            groups.append(group)
    return groups


def param_groups(segmentor: nn.Module, policy: nn.Module, objective: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Optimiser groups: the segmentor's (:func:`segmentor_groups`), the policy (lr = ``cfg.policy_lr`` or
    ``cfg.lr``) and the objective's critic, if any."""
    groups: list[dict[str, Any]] = [
        *segmentor_groups(segmentor, cfg),
        {
            "params": [p for p in policy.parameters() if p.requires_grad],
            "name": "policy",
            "lr": cfg.policy_lr if cfg.policy_lr is not None else cfg.lr,
        },
    ]
    critic = getattr(objective, "critic", None)
    if critic is not None:
        groups.append({"params": [p for p in critic.parameters() if p.requires_grad], "name": "critic"})
    return groups


def _floats(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """0-d tensors -> python floats with one device sync."""
    if not tensors:
        return {}
    keys = list(tensors)
    values = torch.stack([t.detach().float().reshape(()) for t in tensors.values()]).tolist()
    return dict(zip(keys, values))


__all__ = [
    "RSS_KEYS",
    "CHECKPOINT_FORMAT",
    "CoTrainer",
    "NonFiniteError",
    "IterationBatchSampler",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "param_groups",
    "segmentor_groups",
    "resolve_device",
    "seed_everything",
]
