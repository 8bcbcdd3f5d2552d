"""Configuration of a co-training run (paper Eq. 6): one dataclass with every knob of the main job, and presets.

``TrainConfig()`` holds the paper's values where the paper gives them (SSSegmentation's FCN-R50 VOC-aug recipe,
lambda_Policy = lambda_KL = 1 (Table 6), reward weights 1,1,1,1 (Table 5a), attention modulation (Table 7), the EMA
baseline (Table 5b), the joint schedule (Table 1), log sigma bounded by 4*tanh (Table 8), 4 policy blocks) and
documented choices where it is silent (tau, eta, a_min, a_max, clip epsilon).  ``PRESETS`` are named sets of
overrides: ``"digits"`` is the CPU default of ``examples/train_voc_bandit.py``, ``"voc-fcn-r50"`` the paper's FCN
setting.  Field names match the main job's flags (``--lambda-kl`` -> ``lambda_kl``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.atomic import atomic_write
from segbandit.modulation import SIGNAL_NORMS
from agents.losses import RATIO_CLIPS
from segbandit.policy import ACTION_MODES, REDUCTIONS

SCHEDULES: tuple[str, ...] = ("joint", "sft_then_rl", "rl_only")  # Table 1
# what a run trains on (segbandit.data.DATASETS also holds the evaluation-only night sets, for --eval-domains)
DATASET_NAMES: tuple[str, ...] = ("digits", "voc", "cityscapes", "ade20k", "lip", "cihp")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
LOGPROB_REDUCTIONS: tuple[str, ...] = REDUCTIONS  # segbandit.policy's, under the name the flags use
MIN_CROP_SIZE = 16  # DigitScenes' smallest scene; a stride-8 segmentor then still has a 2 x 2 latent

# The argument groups of the main job's --help, in display order (agents.cli builds one group per name).
GROUPS: tuple[str, ...] = ("run", "data", "model", "RL objective", "reward-only segmentation", "optimisation",
                          "continual")
# What trains the segmentor: the latent-space RL of Eq. 6 (CE + latent policy), or reward-only segmentation (RSS, the
# second seed): the segmentor itself is a pixel policy trained from rewards alone (segbandit.rss, docs/rss.md).
OBJECTIVES: tuple[str, ...] = ("latent_rl", "rss")
# An RSS run's defaults where the flags leave them (make_config): no latent modulation (the segmentor is the policy),
# no auxiliary CE head, no sampled-action evaluation (there is no latent action to sample).
RSS_DEFAULTS: dict[str, Any] = {"modulation": "none", "aux_weight": 0.0, "eval_stochastic": False}

# A field's valid names: a fixed tuple, or a zero-argument callable that reads a registry when the parser is built
# (so a name registered after import is accepted, and building TrainConfig never imports torch or torchrl).
Choices = tuple[str, ...] | Callable[[], Iterable[str]]


def _knob(
    default: Any,
    help: str,
    *,
    group: str,
    choices: Choices | None = None,
    none_words: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
) -> Any:
    """A TrainConfig field with its flag's description in ``metadata`` (read by :mod:`agents.cli`).

    Args:
        default: the field's default value.
        help: one line for ``--help``.
        group: one of :data:`GROUPS`.
        choices: the valid values (see :data:`Choices`); None = any value of the field's type.
        none_words: words a flag turns into :data:`EXPLICIT_NONE` (an Optional field set to None).
        aliases: further flag names (``"--eval-samples"``).
    """
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; valid names: {', '.join(GROUPS)}")
    if not help or "\n" in help:
        raise ValueError(f"help must be one non-empty line, got {help!r}")
    metadata = {"help": help, "group": group, "choices": choices, "none_words": none_words, "aliases": aliases}
    return dataclasses.field(default=default, metadata=metadata)


def _preset_names() -> list[str]:
    return sorted(PRESETS)


def _segmentor_names() -> list[str]:
    from segbandit.models import SEGMENTORS

    return sorted(SEGMENTORS)


def _modulation_names() -> list[str]:
    from segbandit.modulation import MODULATION_NAMES

    return list(MODULATION_NAMES)


def _loss_names() -> list[str]:
    from agents.losses import LOSSES  # imports torchrl: only when a parser is built

    return list(LOSSES)


def _reward_level_names() -> list[str]:
    from segbandit.rss import REWARD_LEVELS

    return list(REWARD_LEVELS)


def _image_reward_names() -> list[str]:
    from segbandit.rss import IMAGE_REWARDS

    return sorted(IMAGE_REWARDS)


def _psr_mode_names() -> list[str]:
    from segbandit.rss import PSR_MODES

    return list(PSR_MODES)


def _continual_method_names() -> list[str]:
    from agents.continual import METHODS

    return list(METHODS)


def _baseline_names() -> list[str]:
    from segbandit.baselines import BASELINES, PER_IMAGE_BASELINES

    return sorted([*BASELINES, *PER_IMAGE_BASELINES])


@dataclass
class TrainConfig:
    """Every knob of a co-training run.  Defaults: the paper's FCN-R50 / PASCAL VOC-aug setting.

    Each field's ``metadata`` describes its flag of the main job (:func:`agents.cli.build_parser`): ``help``,
    ``group`` (one of :data:`GROUPS`), ``choices``, ``none_words`` and ``aliases`` (see :func:`_knob`).
    """

    # -- run
    preset: str = _knob("voc-fcn-r50", "defaults for every knob (digits without --data-root, voc-fcn-r50 with it)",
                        group="run", choices=_preset_names)
    seed: int = _knob(0, "random seed (initialisation, data order, sampled actions)", group="run")
    device: str = _knob("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...", group="run")
    amp: bool = _knob(True, "bf16 autocast on CUDA (never on CPU)", group="run")
    channels_last: bool = _knob(True, "segmentor and policy weights in channels-last memory format (NHWC "
                                      "convolution kernels: oneDNN on CPUs, cuDNN with autocast)", group="run")
    max_iters: int = _knob(40000, "training iterations (optimizer steps)", group="run")
    eval_every: int = _knob(4000, "evaluate on the val split every N iterations", group="run")
    save_every: int = _knob(4000, "write a checkpoint every N iterations", group="run")
    log_every: int = _knob(50, "log the training metrics every N iterations", group="run")
    keep_checkpoints: int = _knob(3, "keep the newest N ckpt_*.pt", group="run")
    num_overlays: int = _knob(8, "images in the overlay grid (overlays.png)", group="run")
    eval_stochastic: bool = _knob(True, "the final evaluation also reports the sampled-action mIoU", group="run")
    sync_bn: bool = _knob(False, "under torchrun: batch-norm statistics over the global batch (SyncBatchNorm on "
                                 "CUDA, GlobalBatchNorm2d on CPU)", group="run")
    check_data: bool = _knob(False, "read every train and val sample before training (bad files stop the run up "
                                    "front)", group="run")
    out: str | None = _knob(None, "output folder (default runs/<preset>-<timestamp>)", group="run")
    resume: bool = _knob(False, "continue from the newest checkpoint in --out (default: the newest runs/<preset>-* "
                                "run)", group="run")
    init_from: str | None = _knob(None, "warm start: the segmentor's weights from a main job's ckpt_*.pt or a bundle "
                                        "(e.g. a CE run) before the first step; 'none' = from scratch", group="run",
                                  none_words=("none",))

    # -- data
    dataset: str = _knob("voc", "digits (embedded, no download), or voc, cityscapes, ade20k, lip, cihp (need "
                                 "--data-root)",
                         group="data", choices=DATASET_NAMES)
    data_root: str | None = _knob(None, "the dataset's root: the folder containing VOCdevkit (or VOC2012), the "
                                        "Cityscapes folder (leftImg8bit, gtFine), or ADEChallengeData2016 (or its "
                                        "parent); switches from digits to the preset's dataset (VOC)", group="data")
    train_split: str = _knob("trainaug", "training split; VOC: trainaug (default), train, trainval; Cityscapes / "
                                         "ADE20K: train", group="data")
    val_split: str = _knob("val", "evaluation split (VOC: val)", group="data")
    eval_domains: str = _knob("", "after training, evaluate on each of these comma-separated target domains, "
                                  "name[=root] (digits_night, digits_texture; dark_zurich=/data/dz, "
                                  "nighttime_driving=..., cihp=...); writes domains.md", group="data")
    crop_size: int = _knob(512, "train crop; digits: the scene size; Cityscapes: crop_size x 2 crop_size",
                           group="data")
    batch_size: int = _knob(16, "global batch; under torchrun each of N processes reads batch-size / N images",
                            group="data")
    eval_batch_size: int | None = _knob(None, "evaluation batch; 'none' = --batch-size", group="data",
                                        none_words=("none",))
    train_size: int | None = _knob(None, "digits: number of distinct training scenes; 'none' = the dataset's "
                                         "default", group="data", none_words=("none",))
    val_size: int | None = _knob(None, "evaluate on the first N val images; 'none' = the whole split", group="data",
                                 none_words=("none",), aliases=("--eval-samples",))
    num_workers: int = _knob(4, "DataLoader worker processes (0 = load in the main process)", group="data")
    augment: bool = _knob(True, "train-time augmentation (the dataset preset's train transforms); --no-augment: "
                                "the eval transforms", group="data")

    # -- model (segmentor + latent policy)
    model: str = _knob("fcn_resnet50", "segmentor (segbandit.models.SEGMENTORS)", group="model",
                       choices=_segmentor_names)
    pretrained_backbone: bool = _knob(True, "ImageNet backbone (Table 1: \"Pre-training on ImageNet\")",
                                      group="model")
    modulation: str = _knob("attention", "how the action modulates the latent (Eq. 13-14, Table 7)", group="model",
                            choices=_modulation_names)
    attn_dim: int | None = _knob(None, "inner width of the attention modulation; 'd' = the latent width, the paper",
                                 group="model", none_words=("d", "none"))
    num_heads: int = _knob(8, "heads of the attention modulation", group="model")
    signal_norm: str = _knob("batch", "normalisation of the signal projection (Eq. 13): batch (the paper), group, "
                                      "or none (keeps the action's scale)", group="model", choices=SIGNAL_NORMS)
    alpha_init: float = _knob(1.0, "initial alpha on the modulated latent, concat(z, alpha * m); 0 starts as the "
                                   "plain model", group="model")
    aux_weight: float = _knob(0.4, "CE weight of the aux head (mmsegmentation / SSSegmentation)", group="model")
    class_weights: tuple[float, ...] | None = _knob(
        None, "per-class CE weights, K comma-separated floats (mmsegmentation's class_weight; with --objective rss they "
              "weight each pixel's policy gradient); 'none' = plain CE",
        group="model", none_words=("none",))
    policy_hidden: int = _knob(256, "width of the policy's conv projection (Eq. 7-8)", group="model")
    policy_blocks: int = _knob(4, "policy conv blocks, L in Eq. 7", group="model")
    policy_pool: int = _knob(4, "pooled size P_h = P_w of the policy head (Eq. 9)", group="model")
    logstd_bound: float | None = _knob(4.0, "log sigma = bound * tanh(.) (Eq. 10, Table 8); 'none' = unbounded",
                                       group="model", none_words=("none",))
    policy_log_std_init: float = _knob(0.0, "log sigma of the policy at initialisation (0: sigma = 1)", group="model")
    action_mode: str = _knob("dense", "dense: s of shape (B, d, h, w) (Eq. 11); channel: one action per channel "
                                      "(B, d)", group="model", choices=ACTION_MODES)

    # -- RL objective (Eq. 3-6, 15-19)
    algo: str = _knob("latent_ppo", "policy loss (agents.losses.LOSSES)", group="RL objective", choices=_loss_names)
    schedule: str = _knob("joint", "Table 1: joint (Eq. 6), sft_then_rl or rl_only", group="RL objective",
                          choices=SCHEDULES)
    lambda_policy: float = _knob(1.0, "weight of the policy loss (Eq. 6; Table 6 best: 1)", group="RL objective")
    lambda_kl: float = _knob(1.0, "weight of the KL to the EMA reference (Eq. 5-6; Table 6 best: 1)",
                             group="RL objective")
    clip_eps: float = _knob(0.2, "PPO clip epsilon (Eq. 4; PPO's usual value, the paper does not state it)",
                            group="RL objective")
    ratio_clip: str = _knob("action", "PPO clip on the ratio of the whole action (Eq. 4, the paper) or on each action "
                                      "element's ratio (element)", group="RL objective", choices=RATIO_CLIPS)
    tau: float = _knob(0.9, "EMA baseline momentum (Eq. 16; not stated in the paper)", group="RL objective")
    eta: float = _knob(0.99, "EMA reference momentum (Eq. 19; not stated in the paper)", group="RL objective")
    # a_min / a_max are not stated in the paper; rewards lie in [0, 4], so |A| <= 1 keeps a single image from dominating
    a_min: float = _knob(-1.0, "lower bound of the advantage clamp (Eq. 18)", group="RL objective")
    a_max: float = _knob(1.0, "upper bound of the advantage clamp (Eq. 18)", group="RL objective")
    baseline: str = _knob("ema", "reward baseline: ema (Eq. 16), batch_mean, zero (Table 5b); per image: rloo, "
                                 "group_mean (need --action-samples >= 2), greedy (r at s = mu)", group="RL objective",
                          choices=_baseline_names)
    ppo_epochs: int = _knob(1, "policy updates per batch: epoch 1 is the joint step, epochs 2.. re-run only the policy "
                               "on the stored latents (with --algo ppo_ewma: PPO-EWMA)", group="RL objective")
    action_samples: int = _knob(1, "K actions sampled per image; the modulation and decoder re-run for the K - 1 extra "
                                   "ones (no graph), the policy loss reads all K", group="RL objective")
    reward_weights: tuple[float, float, float, float] = _knob(
        (1.0, 1.0, 1.0, 1.0), "lambda for iou,dice,ce,boundary, e.g. 1,1,1,1 (Eq. 15)", group="RL objective")
    boundary_tolerance: int = _knob(2, "pixel tolerance (Chebyshev distance) of the boundary reward (Eq. 15)",
                                    group="RL objective")
    # Eq. 12 sums log pi over the h*w*d action elements; "mean" averages them.  Measured on the digits preset
    # (dense action, d*h*w = 512*8*8 = 32768 elements, 150 iterations, seed 0), iterations 101-150:
    #   "sum":  mean ratio 486, clip fraction 0.975, KL(pi_ref || pi) 3.65, max log-ratio 8.8, loss_policy ~11
    #           (already at iterations 1-50: ratio 1.76, clip fraction 0.71) -> PPO clips almost every sample and
    #           the unclipped rho*A terms of negative advantages dominate: the policy update is noise;
    #   "mean": mean ratio 1.00001, clip fraction 0.0, KL 6e-6, max log-ratio 5e-5 -> the trust region works.
    # Val mIoU was the same (0.102 vs 0.101, CE dominates the segmentor at that point).  With a policy that moves
    # faster (AdamW at lr 1e-3 on the policy) even "mean" overflowed, see DIGITS_PRESET.  Default: "mean".
    logprob_reduction: str = _knob("mean", "log pi over the action elements: sum (Eq. 12) or mean",
                                   group="RL objective", choices=LOGPROB_REDUCTIONS)
    entropy_coef: float = _knob(0.0, "weight of the entropy bonus (0 = off; with --objective rss on the pixel policy)",
                                group="RL objective")

    # -- reward-only segmentation (RSS seed; segbandit.rss, docs/rss.md: every formula there is our design)
    objective: str = _knob("latent_rl", "latent_rl: the paper's Eq. 6 (CE + latent policy); rss: reward-only, the "
                                        "segmentor itself is a pixel policy, no CE", group="reward-only segmentation",
                           choices=OBJECTIVES)
    reward_level: str = _knob("image", "rss: pixel (r_p = 1[a_p = y_p], baseline pi(y_p | x)) or image (one reward "
                                       "per sampled map)", group="reward-only segmentation", choices=_reward_level_names)
    rss_samples: int = _knob(4, "rss: G label maps sampled per image (image level: >= 2)",
                             group="reward-only segmentation")
    rss_temperature: float = _knob(1.0, "rss: softmax temperature T of the pixel policy",
                                   group="reward-only segmentation")
    rss_reward: str = _knob("miou", "rss image level: the reward of one sampled map (segbandit.rss.IMAGE_REWARDS)",
                            group="reward-only segmentation", choices=_image_reward_names)
    psd: bool = _knob(True, "rss image level: pairwise spatial discrepancy, credit only where samples disagree "
                            "(--no-psd: the group-mean baseline)", group="reward-only segmentation")
    psr_scales: tuple[int, ...] = _knob((16, 8, 4, 1), "rss: progressive scale reward, pooling factors coarse to "
                                                      "fine; 1 = off (full resolution only)",
                                        group="reward-only segmentation")
    psr_milestones: tuple[int, ...] | None = _knob(None, "rss: iterations at which PSR moves to the next finer scale "
                                                         "(one per move); 'none' = on a reward plateau",
                                                   group="reward-only segmentation", none_words=("none",))
    psr_patience: int = _knob(50, "rss plateau schedule: updates without a gain of 1e-3 in the finest active scale's "
                                  "reward before moving on", group="reward-only segmentation")
    psr_mode: str = _knob("grid", "rss image level: how PSR's factors act: grid (actions on an f-times average-pooled "
                                  "logit grid, mode-pooled target; the issue's form) or window (full-size actions, the "
                                  "image reward of each window of an f x f tiling; our variant)",
                          group="reward-only segmentation", choices=_psr_mode_names)
    psr_cumulative: bool = _knob(True, "rss: keep training the coarser scales (each with its own reward) after "
                                       "moving on", group="reward-only segmentation")
    rss_normalize: bool = _knob(True, "rss: normalise advantages by their global (all-rank) statistics",
                                group="reward-only segmentation")

    # -- optimisation (SSSegmentation FCN recipe)
    optimizer: str = _knob("sgd", "sgd (the paper's FCN recipe) or adamw", group="optimisation", choices=OPTIMIZERS)
    lr: float = _knob(0.01, "learning rate", group="optimisation")
    policy_lr: float | None = _knob(None, "learning rate of the policy; 'none' = --lr", group="optimisation",
                                    none_words=("none",))
    momentum: float = _knob(0.9, "SGD momentum", group="optimisation")
    weight_decay: float = _knob(5e-4, "weight decay", group="optimisation")
    poly_power: float = _knob(0.9, "lr * (1 - t / max_iters) ** power (mmsegmentation's PolyLR)",
                              group="optimisation")
    warmup_iters: int = _knob(0, "linear warm-up from lr / (N + 1) to lr over the first N steps",
                              group="optimisation")
    backbone_lr_mult: float = _knob(1.0, "lr multiplier of the segmentor's encoder (SETR recipe: 0.1)",
                                    group="optimisation")
    head_lr_mult: float = _knob(1.0, "lr multiplier of the decoder side: heads, modulation, alpha (Segformer recipe: "
                                     "10, mmsegmentation's 'head' lr_mult)", group="optimisation")
    norm_weight_decay: float | None = _knob(None, "weight decay of the normalisation layers' parameters; 'none' = "
                                                  "--weight-decay (Segformer recipe: 0)", group="optimisation",
                                            none_words=("none",))
    grad_clip: float | None = _knob(None, "max global gradient norm; 'none' = off", group="optimisation",
                                    none_words=("none",))
    max_nonfinite: int = _knob(20, "consecutive skipped (non-finite) steps before giving up (exit code 3)",
                               group="optimisation")

    # -- class-incremental steps (examples/train_continual.py; PLOP's protocol and factors, agents.continual)
    task: str | None = _knob(None, "class-incremental task (segbandit.continual.TASKS): digits 6-4, 6-2, 6-1; VOC "
                                   "15-5, 15-1, 10-1, 19-1; ADE20K 100-50, 100-10, 100-5, 50-50", group="continual")
    continual_method: str = _knob("plop+rl", "finetune, plop, plop+rl (PLOP with Eq. 6), finetune+rl",
                                  group="continual", choices=_continual_method_names, aliases=("--method",))
    overlap: bool = _knob(True, "PLOP's overlap setting (images may show future classes, as background); "
                                "--no-overlap: disjoint", group="continual")
    step_iters: int | None = _knob(None, "iterations of each step after the first; 'none' = max_iters / 3 (PLOP: 30 "
                                         "then 10 epochs)", group="continual", none_words=("none",))
    step_lr_mult: float = _knob(0.1, "lr of the steps after the first, times --lr (PLOP: 0.01 then 0.001)",
                                group="continual")
    pod_factor: float = _knob(0.01, "Local POD weight on the backbone stages and the latent (PLOP)", group="continual")
    pod_logits_factor: float = _knob(0.0005, "Local POD weight on the logits (PLOP)", group="continual")
    pod_scales: tuple[int, ...] = _knob((1, 2, 4), "Local POD window grids (PLOP: 1, 2, 4)", group="continual")
    pseudo_threshold: float = _knob(0.001, "floor of the per-class median entropy thresholds of PLOP's pseudo-labels",
                                    group="continual")

    def __post_init__(self) -> None:
        self.reward_weights = tuple(float(w) for w in self.reward_weights)  # type: ignore[assignment]
        if self.class_weights is not None:
            self.class_weights = tuple(float(w) for w in self.class_weights)  # type: ignore[assignment]
            if not self.class_weights or any(not (w >= 0 and w < float("inf")) for w in self.class_weights):
                raise ValueError(f"class_weights must be finite non-negative floats, got {self.class_weights}")
        if len(self.reward_weights) != 4:
            raise ValueError(f"reward_weights must have 4 values (iou, dice, ce, boundary), got {self.reward_weights}")
        for name, value, valid in (
            ("schedule", self.schedule, SCHEDULES),
            ("action_mode", self.action_mode, ACTION_MODES),
            ("dataset", self.dataset, DATASET_NAMES),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("logprob_reduction", self.logprob_reduction, LOGPROB_REDUCTIONS),
            ("ratio_clip", self.ratio_clip, RATIO_CLIPS),
        ):
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid names: {', '.join(valid)}")
        for name in ("max_iters", "batch_size", "crop_size", "eval_every", "save_every", "log_every", "max_nonfinite",
                     "keep_checkpoints", "action_samples", "ppo_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if int(self.crop_size) < MIN_CROP_SIZE:
            raise ValueError(f"crop_size must be >= {MIN_CROP_SIZE} (the digit scenes and the segmentors' output "
                             f"stride need it), got {self.crop_size}")
        if self.baseline in ("rloo", "group_mean") and int(self.action_samples) < 2:
            raise ValueError(f"baseline {self.baseline} compares the K actions of an image: it needs action_samples >= 2, "
                             f"got {self.action_samples}")
        if int(self.warmup_iters) < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {self.warmup_iters}")
        if self.a_min > self.a_max:
            raise ValueError(f"expected a_min <= a_max, got a_min={self.a_min}, a_max={self.a_max}")
        self.psr_scales = tuple(int(f) for f in self.psr_scales)  # type: ignore[assignment]
        self.pod_scales = tuple(int(f) for f in self.pod_scales)  # type: ignore[assignment]
        if not self.pod_scales or min(self.pod_scales) < 1:
            raise ValueError(f"pod_scales must be positive ints, got {self.pod_scales}")
        if self.step_iters is not None and int(self.step_iters) < 1:
            raise ValueError(f"step_iters must be >= 1, got {self.step_iters}")
        if self.psr_milestones is not None:
            self.psr_milestones = tuple(int(m) for m in self.psr_milestones)  # type: ignore[assignment]
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; valid names: {', '.join(OBJECTIVES)}")
        if self.objective == "rss":
            self._check_rss()

    def _check_rss(self) -> None:
        """The RSS knobs: a valid RSSConfig and scale schedule, and no latent modulation (the segmentor is the policy)."""
        from segbandit.rss import RSSConfig, ScaleSchedule, check_scales

        if self.modulation != "none":
            raise ValueError(f"objective rss trains the segmentor itself as the pixel policy: it needs modulation "
                             f"'none', got {self.modulation!r}")
        RSSConfig(level=self.reward_level, num_samples=self.rss_samples, temperature=self.rss_temperature,
                  psd=self.psd, normalize=self.rss_normalize, reward=self.rss_reward,
                  psr_mode=self.psr_mode)  # raises on a bad value
        ScaleSchedule(self.psr_scales, self.psr_milestones or (), self.psr_patience, cumulative=self.psr_cumulative)
        check_scales(self.psr_scales, self.crop_size, self.crop_size)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples as lists)."""
        return to_dict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write the full config as JSON to ``path`` (atomically)."""
        save_config(self, path)


# The data of both digits presets: 64 px DigitScenes, 8,000 distinct training scenes, 256 val scenes, no workers.
_DIGITS_DATA: dict[str, Any] = dict(
    dataset="digits",
    data_root=None,
    train_split="train",
    val_split="val",
    crop_size=64,
    train_size=8000,
    val_size=256,
    num_workers=0,
)

# The CPU default: fcn_resnet_tiny from scratch on 64 px DigitScenes, sized so that the no-argument main job learns
# the task within 5 minutes on 2 CPU cores.  Every choice below was measured on the embedded data (docs/embedded.md
# has the tables and the commands):
# - model: fcn_resnet_tiny (output stride 4, d = 64, ~0.25 GFLOP per 64 px image with attention and policy) instead of
#   fcn_resnet18 (stride 8, d = 512, 1.88 GFLOP), whose latent caps mIoU at ~0.59 and which reached 0.126 in 500
#   iterations (the old budget, preset "digits-fcn-r18");
# - attention at the paper's width attn_dim = d (64) with 4 heads of 16 (8 heads of 8 cost 3x the time on a CPU);
#   policy width 32 (its 4 conv blocks then cost ~10% of a forward);
# - no dropout in its FCN heads (the model underfits the budget: dropout 0.1 cost 3.3 points at 800 iterations);
# - AdamW lr 3e-3, wd 1e-2, 100 warm-up iterations, then lr * (1 - t/T) ** 0.5 (poly 0.5 kept the lr high for longer:
#   +1.6 points at 800 iterations, +0.3 at 1500 over linear decay; with it lr 3e-3 beat 4e-3 by 1.5 points at 800);
#   at poly 1.0, lr 6e-3 / 1e-2 and wd 1e-4 were worse or equal; the paper's SGD 0.01 does not learn from scratch here;
# - CE class weights 1 (background) : 5 (each digit): background is 90% of the labelled pixels and each digit ~1%;
#   1:3 and 1:8 were worse or equal, no weighting learned the digits ~2x slower;
# - 8,000 distinct training scenes rendered once into an in-memory uint8 bank (131 MB), no augmentation: 2000 x 16
#   images see each scene 4 times; 12,000 scenes rendered for longer than the 10% data-share budget allows, and
#   random affine augmentation cost 2.8 points at this budget;
# - batch 16 x 2000 iterations: channels-last weights (TrainConfig.channels_last) made a step 1.15x faster
#   (benchmarks/bench_layout.py), and the time it saved went into iterations (1,400 before: median 73.9 % over 3
#   seeds in 3.7 min; 2,000: 76.7 % in 4.0-4.4 min); batch 8 (x 1600) and batch 24 / 32 (same images) were worse
#   at equal time;
# - an evaluation every 250 iterations (8 in a run, for curves.png).
DIGITS_PRESET: dict[str, Any] = dict(
    **_DIGITS_DATA,
    augment=False,
    model="fcn_resnet_tiny",
    pretrained_backbone=False,
    attn_dim=None,
    num_heads=4,
    policy_hidden=32,
    class_weights=(1.0,) + (5.0,) * 10,
    optimizer="adamw",
    lr=3e-3,
    policy_lr=1e-4,
    weight_decay=1e-2,
    poly_power=0.5,
    warmup_iters=100,
    max_iters=2000,
    batch_size=16,
    eval_every=250,
    save_every=1000,
    log_every=10,
    keep_checkpoints=2,
)

# The digits preset's schedule before channels-last steps bought it 600 more iterations (the transformer presets and
# the shipped pretrained segmentor were measured at it).
DIGITS_SCHEDULE_1400: dict[str, Any] = dict(max_iters=1400, eval_every=200, save_every=700)

# The digits preset before fcn_resnet_tiny (kept so that the old budget stays reachable: --preset digits-fcn-r18):
# fcn_resnet18 from scratch, AdamW 1e-3 (policy 1e-4), batch 8, 500 iterations, 8,000 augmented scenes.  Measured
# on the slower of this project's 2-core machines: 7.4-7.8 min wall, peak RSS 1.39 GB, val mIoU 0.126 (s = mu);
# 0.082 = predicting background everywhere.  SGD lr 0.01 / 0.05 stayed at 0.082 for 300 iterations; AdamW 3e-3 too.
# The policy's lr: at 1e-3 the KL to the EMA reference was 47 after one step (fan-in 128*4*4 = 2048 heads) and every
# later step was skipped; at 1e-6 the policy did not move.
DIGITS_FCN_R18_PRESET: dict[str, Any] = dict(
    **_DIGITS_DATA,
    model="fcn_resnet18",
    pretrained_backbone=False,
    attn_dim=128,
    policy_hidden=128,
    optimizer="adamw",
    lr=1e-3,
    policy_lr=1e-4,
    weight_decay=1e-4,
    max_iters=500,
    batch_size=8,
    eval_every=250,
    save_every=250,
    log_every=10,
)

# The paper's FCN setting (Table 2 row "FCN + Latent-Space RL", ResNet-50, PASCAL VOC): SSSegmentation's VOC-aug
# recipe, trainaug 10,582 images, 512 crop, batch 16, 40k iterations, SGD 0.01 / 0.9 / 5e-4 with poly 0.9,
# evaluation on val (1,449 images).  This is TrainConfig's own default, spelled out, except the attention width.
VOC_FCN_R50_PRESET: dict[str, Any] = dict(
    dataset="voc",
    train_split="trainaug",
    val_split="val",
    crop_size=512,
    train_size=None,
    val_size=None,
    num_workers=4,
    model="fcn_resnet50",
    pretrained_backbone=True,
    # The one departure from the paper (attn_dim = d = 2048): at 64 x 64 tokens the full-width attention is 43% of a
    # co-training step's FLOPs (2.44x a plain step); width 512 with 8 heads brings the step to 1.75x (docs/benchmarks.md),
    # and the same 4x reduction at digits scale cost no accuracy.  --attn-dim d restores the paper's width.
    attn_dim=512,
    num_heads=8,
    policy_hidden=256,
    optimizer="sgd",
    lr=0.01,
    momentum=0.9,
    weight_decay=5e-4,
    poly_power=0.9,
    max_iters=40000,
    batch_size=16,
    eval_every=4000,
    save_every=4000,
    log_every=50,
)

# The paper's Table 2 grid, SSSegmentation's recipes: a dataset's data and schedule x a model's optimiser, as
# "<dataset>-<model>" (voc-fcn-r50 above is the VOC x FCN-R50 cell).  Datasets: VOC-aug 512 crop, batch 16, 40k
# iterations; Cityscapes 512 x 1024 crops, batch 8, 80k iterations (mmsegmentation's FCN schedule); ADE20K 512 crop,
# batch 16, 160k iterations.
DATASET_RECIPES: dict[str, dict[str, Any]] = {
    "voc": {k: VOC_FCN_R50_PRESET[k] for k in ("dataset", "train_split", "val_split", "crop_size", "train_size",
                                               "val_size", "num_workers", "max_iters", "batch_size", "eval_every",
                                               "save_every", "log_every")},
    "cityscapes": dict(dataset="cityscapes", train_split="train", val_split="val", crop_size=512, train_size=None,
                       val_size=None, num_workers=4, max_iters=80000, batch_size=8, eval_every=8000, save_every=8000,
                       log_every=50),
    "ade20k": dict(dataset="ade20k", train_split="train", val_split="val", crop_size=512, train_size=None,
                   val_size=None, num_workers=4, max_iters=160000, batch_size=16, eval_every=16000, save_every=16000,
                   log_every=50),
}  # fmt: skip
MODEL_RECIPES: dict[str, dict[str, Any]] = {
    "fcn-r50": {k: VOC_FCN_R50_PRESET[k] for k in ("model", "pretrained_backbone", "attn_dim", "num_heads",
                                                   "policy_hidden", "optimizer", "lr", "momentum", "weight_decay",
                                                   "poly_power")},
    # Segformer (SSSegmentation / mmsegmentation): AdamW 6e-5, betas (0.9, 0.999) (torch's default), wd 0.01, poly 1.0
    # after a 1,500-iteration linear warm-up, head lr x10, no weight decay on norms; no auxiliary head.  The
    # attention runs at the paper's width d = 512 (16 x 16 tokens at 512 px: cheap).
    **{f"segformer-{size}": dict(model=f"segformer_mit_{size}", pretrained_backbone=True, attn_dim=None, num_heads=8,
                                 policy_hidden=256, optimizer="adamw", lr=6e-5, weight_decay=0.01, poly_power=1.0,
                                 warmup_iters=1500, head_lr_mult=10.0, norm_weight_decay=0.0, aux_weight=0.0)
       for size in ("b1", "b3")},
    # SETR-Naive (mmsegmentation): SGD 0.01, momentum 0.9, wd 0, encoder lr x0.1, poly 0.9, aux heads at 0.4 each.
    "setr-vit-l": dict(model="setr_naive_vit_l16", pretrained_backbone=True, attn_dim=None, num_heads=8,
                       policy_hidden=256, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, poly_power=0.9,
                       backbone_lr_mult=0.1, aux_weight=0.4),
}  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {
    "digits": DIGITS_PRESET,
    "digits-fcn-r18": DIGITS_FCN_R18_PRESET,
    # the CPU-sized transformers on the digits recipe (docs/transformers.md has what they reach)
    # (at the budget they were measured with: 1,400 iterations, an evaluation every 200)
    "digits-segformer-b0": {**DIGITS_PRESET, **DIGITS_SCHEDULE_1400, "model": "segformer_mit_b0", "aux_weight": 0.0,
                            "lr": 1e-3},
    "digits-setr-tiny": {**DIGITS_PRESET, **DIGITS_SCHEDULE_1400, "model": "setr_naive_vit_tiny"},
    **{f"{ds}-{model}": {**data, **recipe} for ds, data in DATASET_RECIPES.items() for model, recipe in MODEL_RECIPES.items()},
}
assert PRESETS["voc-fcn-r50"] == VOC_FCN_R50_PRESET  # the grid's VOC x FCN-R50 cell is the paper's preset, unchanged


class _ExplicitNone:
    """The value a flag parser gives for "set this field to None" (None itself means "flag not given")."""

    def __repr__(self) -> str:
        return "EXPLICIT_NONE"


EXPLICIT_NONE = _ExplicitNone()


def make_config(preset: str = "digits", **overrides: Any) -> TrainConfig:
    """TrainConfig of preset ``preset`` with ``overrides`` on top (unknown field names -> ValueError)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid names: {', '.join(sorted(PRESETS))}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; valid fields: {sorted(names)}")
    values = {**PRESETS[preset], **overrides, "preset": preset}
    if values.get("objective") == "rss":
        values = {**values, **{k: v for k, v in RSS_DEFAULTS.items() if k not in overrides}}
    return TrainConfig(**values)


def config_from_args(args: Any) -> TrainConfig:
    """TrainConfig from parsed flags (an argparse.Namespace or a dict).

    The preset (``args.preset``; None = ``"<dataset>-fcn-r50"`` when a data root is given, else ``"digits"``) supplies the
    defaults; every flag whose value is not None overrides it, and :data:`EXPLICIT_NONE` sets a field to None
    (``--attn-dim d``: the paper's full width; ``--logstd-bound none``: unbounded log sigma, Table 8).  A data root
    switches the dataset to the preset's (VOC for the digits presets) unless ``--dataset`` is given.
    Keys that are not config fields are ignored, so the whole namespace can be passed.
    """
    values = dict(vars(args)) if not isinstance(args, Mapping) else dict(args)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in values.items() if k in names and k != "preset" and v is not None}
    overrides = {k: (None if v is EXPLICIT_NONE else v) for k, v in overrides.items()}
    preset = values.get("preset")
    if preset is None:  # a data root without a preset: that dataset's FCN-R50 recipe (VOC unless --dataset says)
        preset = f"{overrides.get('dataset', 'voc')}-fcn-r50" if overrides.get("data_root") else "digits"
    if overrides.get("data_root") and "dataset" not in overrides:  # a data root is never the embedded digits
        preset_dataset = PRESETS.get(preset, {}).get("dataset", "voc")
        overrides["dataset"] = preset_dataset if preset_dataset != "digits" else "voc"
    if isinstance(overrides.get("reward_weights"), Mapping):  # parse_reward_weights gives {term: weight}
        w = overrides["reward_weights"]
        overrides["reward_weights"] = tuple(float(w[t]) for t in ("iou", "dice", "ce", "boundary"))
    return make_config(preset, **overrides)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Every field of ``cfg`` as JSON-ready values (tuples become lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


# Fields a flag may change when resuming a run (``--resume``): how long it runs, how often it reports and saves,
# where it runs.  Every other field is the saved run's; a flag that would change one is refused (resume_config).
RESUME_MUTABLE: frozenset[str] = frozenset({
    "max_iters", "eval_every", "save_every", "log_every", "keep_checkpoints", "num_overlays", "eval_batch_size",
    "eval_stochastic", "num_workers", "device", "max_nonfinite", "check_data", "resume", "out",
})  # fmt: skip


def resume_config(saved: Mapping[str, Any], explicit: Mapping[str, Any]) -> TrainConfig:
    """The saved run's config with the explicitly given ``explicit`` fields on top, for ``--resume``.

    Raises ValueError naming the first field outside :data:`RESUME_MUTABLE` whose given value differs from the
    saved one (a different dataset, model, learning rate, ... would silently not be what was asked for, or fail
    deep inside ``load_state_dict``).
    """
    base = from_dict(saved)
    given = {k: (None if v is EXPLICIT_NONE else v) for k, v in explicit.items()}
    for name in sorted(set(given) - RESUME_MUTABLE):
        wanted = getattr(from_dict({**saved, name: given[name]}), name)
        if wanted != getattr(base, name):
            raise ValueError(
                f"--resume: {name} = {getattr(base, name)!r} in the saved run, {wanted!r} asked; only "
                f"{', '.join(sorted(RESUME_MUTABLE - {'resume', 'out'}))} may change on resume"
            )
    return from_dict({**saved, **given})


def from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Inverse of :func:`to_dict` (unknown keys -> ValueError)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}")
    return TrainConfig(**dict(values))


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write the full config as indented JSON, atomically (:func:`agents.atomic.atomic_write`)."""

    def write(fh: Any) -> None:
        json.dump(to_dict(cfg), fh, indent=2, sort_keys=True)
        fh.write("\n")

    atomic_write(path, write, binary=False)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a config written by :func:`save_config`."""
    with open(path) as fh:
        return from_dict(json.load(fh))


__all__ = [
    "ACTION_MODES",
    "DATASET_NAMES",
    "EXPLICIT_NONE",
    "GROUPS",
    "LOGPROB_REDUCTIONS",
    "OBJECTIVES",
    "OPTIMIZERS",
    "DATASET_RECIPES",
    "DIGITS_SCHEDULE_1400",
    "MODEL_RECIPES",
    "PRESETS",
    "RSS_DEFAULTS",
    "SCHEDULES",
    "TrainConfig",
    "config_from_args",
    "resume_config",
    "RESUME_MUTABLE",
    "from_dict",
    "load_config",
    "make_config",
    "save_config",
    "to_dict",
]
