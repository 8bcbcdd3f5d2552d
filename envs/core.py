"""The bandit logic of ``SegBandit-v0``, written once, in torch, natively batched over ``B`` sub-envs.

Every front end (the Gymnasium vector env, the single env, the TorchRL env, the Stable-Baselines3 adapter)
wraps :class:`SegBanditCore`. One step is one contextual-bandit round for all ``B`` images at once:

    context  z = encoder(x)                                  (B, d, h, w)  -- the observation (or its mean over h, w)
    action   s (B, d, h, w) dense, or (B, d) per channel broadcast over space
    logits   = decoder(z, s)  upsampled to the image size    (B, K, H, W)
    reward   r = sum_k lambda_k r_k(logits, y)               (B,)          # Eq. 15

Images stream from :class:`envs.stream.ImageStream` (a torch ``DataLoader``, ``batch_size=B``, ``drop_last=True``)
whose shuffling order is fixed by ``reset(seed=...)``; the iterator persists across steps and restarts with the
next epoch when the data run out.

:class:`BanditCoreBase` is what every segbandit core shares (the stream, the current batch, reset, same-step
autoreset ``step``, partial resets, render, close); :class:`SegBanditCore` and
:class:`envs.pixel.SegPixelBanditCore` only add how a batch is observed, how an action is checked and scored.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from gymnasium.error import ResetNeeded
from torch import Tensor
from torch.utils.data import Dataset

from envs.stream import ARRAY_TYPES, RENDER_MODES, ImageStream, check_choice, check_stream_fields, resolve_device
from envs.transition import BanditTransition
from segbandit.constants import DEFAULT_ACTION_BOUND
from segbandit.models import Segmentor, build_segmentor
from segbandit.policy import ACTION_MODES, LatentPolicy
from segbandit.pretrained import DEFAULT_PRETRAINED, build_from_bundle, freeze, load_bundle, policy_from_bundle
from segbandit.rewards import REWARD_TERMS, CompositeReward, parse_reward_weights

OBS_MODES: tuple[str, ...] = ("latent", "pooled")

WeightsArg = Union[str, Sequence[float], Mapping[str, float]]
SegmentorArg = Union[str, os.PathLike, Mapping[str, Any], Segmentor]



@dataclass
class SegBanditConfig:
    """Everything ``SegBandit-v0`` is configured by (the keyword arguments of every env front end).

    Args:
        dataset: ``"digits"`` (embedded, no download), ``"voc"`` (needs ``data_root``) or any map-style torch
            ``Dataset`` whose items are ``(image float (3, H, W), mask int (H, W))`` pairs of one fixed size.
        data_root: folder holding ``VOCdevkit`` (``dataset="voc"``).
        split: dataset split (``"train"``, ``"val"``, ``"trainaug"`` ...).
        segmentor: where the weights come from. ``"auto"`` (default): the shipped co-trained segmentor
            (``segbandit.pretrained.DEFAULT_PRETRAINED``) on the digits with the default architecture, random weights
            otherwise; ``"random"``: ``model`` built from ``model_seed``; a name of ``segbandit.pretrained.PRETRAINED``,
            a main job's ``ckpt_*.pt``, a bundle or a plain state dict (file or dict), the architecture read from its
            stored config (a plain state dict: from ``model`` / ``modulation`` / ``model_kwargs``, the attention width
            from the weights); or a :class:`~segbandit.models.Segmentor` to share with a trainer. A segmentor the env
            builds or loads is frozen (eval mode, no gradients); a shared one keeps its mode and is run in eval mode by
            the env's steps (no BatchNorm statistics move), unless ``differentiable``.
        model: the architecture name (``segbandit.models.SEGMENTORS``) for ``segmentor="random"`` or a plain state
            dict; a :class:`~segbandit.models.Segmentor` here is shared as with ``segmentor=``.
        num_classes: K; inferred from a shared segmentor or the dataset's ``num_classes`` when None.
        image_size: image side for named datasets (digits default 64, VOC default 512).
        obs_mode: ``"latent"`` observes z (d, h, w); ``"pooled"`` its spatial mean (d,).
        action_mode: ``"dense"`` acts with s (d, h, w) (the paper's signal); ``"channel"`` with (d,) broadcast
            over space.
        reward_weights: lambda of Eq. 15 as ``"1,1,1,1"``, 4 floats, or a dict keyed iou/dice/ce/boundary.
        array_type: ``"numpy"`` (Gymnasium's convention) or ``"torch"`` (tensors stay on ``device``).
        device: where the segmentor runs; None means the shared segmentor's device, or CPU.
        num_workers: DataLoader worker processes (0 loads in the stepping process).
        modulation / model_kwargs / model_seed: how a segmentor named by ``model`` is built; its initial
            weights are drawn from ``model_seed`` without touching the global torch RNG, so that every env
            built with the same arguments holds the same network.
        dataset_kwargs: extra keywords for ``segbandit.data.make_dataset`` (e.g. ``num_samples``, ``seed``).
        augment: use the dataset's train-time augmentation. Off by default: the env then serves each image
            deterministically, so ``reset(seed=...)`` fixes every observation and reward. (With augmentation,
            DataLoader workers are seeded from the same generator; with ``num_workers=0`` the transforms draw
            from torch's global RNG.)
        shuffle: shuffle the image order (with the generator seeded by ``reset(seed=...)``).
        action_bound: None gives an unbounded action Box (the Gaussian signal of the paper); a float ``b``
            gives the Box [-b, b] and actions are clipped to it (Stable-Baselines3 wants finite bounds).
        differentiable: keep the autograd graph of encode/decode (for a co-trainer sharing the segmentor);
            off by default, where the env runs under ``torch.no_grad()``.
        episode_length: K images per episode (each step scores one image and moves to the next; the K-th step
            terminates). 1 is the one-step bandit; a larger K lets NEXT_STEP-autoreset clients (CleanRL's
            ``SyncVectorEnv``) spend 1/(K+1) of their steps on resets instead of 1/2.
        paired_reward: return ``r(s) - r(0)``, the gain over the zero action on the same image (its ``r(0)`` is
            computed once per image, when it is encoded, and reported as ``reward_zero``).
        render_mode: None or ``"rgb_array"`` (image | truth | prediction of the last scored batch).
        cache_latents: keep every image's latents z (and ``r(0)`` with ``paired_reward``) after its first encoding,
            so that a later epoch decodes without encoding again; needs a frozen segmentor (not shared, not
            differentiable) and no augmentation. Memory: N x d x h x w floats (8,000 digit scenes: 0.5 GB).
    """

    dataset: Union[str, Dataset] = "digits"
    data_root: Union[str, None] = None
    split: str = "train"
    model: Union[str, Segmentor] = "fcn_resnet_tiny"
    segmentor: SegmentorArg = "auto"
    num_classes: Union[int, None] = None
    image_size: Union[int, None] = None
    obs_mode: str = "latent"
    action_mode: str = "dense"
    reward_weights: WeightsArg = (1.0, 1.0, 1.0, 1.0)
    array_type: str = "numpy"
    device: Union[str, torch.device, None] = None
    num_workers: int = 0
    modulation: str = "attention"
    model_kwargs: Union[dict, None] = None
    model_seed: int = 0
    dataset_kwargs: Union[dict, None] = None
    augment: bool = False
    shuffle: bool = True
    action_bound: Union[float, None] = None
    differentiable: bool = False
    episode_length: int = 1
    paired_reward: bool = False
    render_mode: Union[str, None] = None
    cache_latents: bool = False

    def __post_init__(self) -> None:
        check_choice("obs_mode", self.obs_mode, OBS_MODES)
        check_choice("action_mode", self.action_mode, ACTION_MODES)
        check_stream_fields(self)  # array_type, num_workers, render_mode
        if self.action_bound is not None and not (float(self.action_bound) > 0 and float(self.action_bound) < float("inf")):
            raise ValueError(f"action_bound must be a finite positive float or None, got {self.action_bound!r}")
        if isinstance(self.reward_weights, str):
            self.reward_weights = parse_reward_weights(self.reward_weights)
        if isinstance(self.episode_length, bool) or not isinstance(self.episode_length, int) or self.episode_length < 1:
            raise ValueError(f"episode_length must be a positive int, got {self.episode_length!r}")
        if self.cache_latents and (self.augment or self.differentiable):
            raise ValueError("cache_latents needs fixed images and a frozen segmentor: not with augment or differentiable")


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Temporarily put every submodule in eval mode and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _resolve_device(config: SegBanditConfig) -> torch.device:
    shared = config.model if isinstance(config.model, Segmentor) else None
    model_device = next(shared.parameters()).device if shared is not None else None
    device = resolve_device(config.device, default=model_device)
    if model_device is not None and model_device != device:
        raise ValueError(
            f"the shared segmentor lives on {model_device} but device={device} was asked for; "
            "move the segmentor first or leave device=None"
        )
    return device


def _resolve_num_classes(config: Any, dataset: Dataset) -> int:
    """K from ``config.num_classes``, a shared segmentor (``config.model``, when the config has one) or the dataset."""
    model = getattr(config, "model", None)
    candidates = {
        "num_classes": config.num_classes,
        "the shared segmentor": model.num_classes if isinstance(model, Segmentor) else None,
        "the dataset": getattr(dataset, "num_classes", None),
    }
    given = {k: int(v) for k, v in candidates.items() if v is not None}
    if not given:
        raise ValueError(
            "cannot tell the number of classes: pass num_classes=K (the dataset has no num_classes attribute "
            "and no segmentor was shared)"
        )
    if len(set(given.values())) > 1:
        raise ValueError(f"inconsistent number of classes: {given}")
    return next(iter(given.values()))


def _shared_segmentor(config: SegBanditConfig) -> Union[Segmentor, None]:
    if isinstance(config.model, Segmentor):
        if not (isinstance(config.segmentor, str) and config.segmentor == "auto"):
            raise ValueError("pass the segmentor to share as segmentor= or as model=, not both")
        return config.model
    return config.segmentor if isinstance(config.segmentor, Segmentor) else None


def _default_source(config: SegBanditConfig) -> Union[SegmentorArg, str]:
    """``"auto"``: the shipped segmentor where it fits (the digits, the default architecture), else random weights."""
    fits = (config.dataset == "digits" and config.model == "fcn_resnet_tiny" and config.modulation == "attention"
            and not config.model_kwargs)
    return DEFAULT_PRETRAINED if fits else "random"


def _resolve_segmentor(
    config: SegBanditConfig, num_classes: int, device: torch.device
) -> tuple[Segmentor, bool, Union[LatentPolicy, None]]:
    """The segmentor (shared as it is, or built / loaded, frozen, on ``device``), whether it is owned, and the policy
    it was co-trained with (when its file holds one)."""
    shared = _shared_segmentor(config)
    if shared is not None:
        return shared, False, None
    source = config.segmentor
    if isinstance(source, str) and source == "auto":
        source = _default_source(config)
    if isinstance(source, str) and source == "random":
        if not isinstance(config.model, str):
            raise ValueError(f"model must be a segmentor name or a segbandit Segmentor, got {type(config.model).__name__}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.model_seed)
            segmentor = build_segmentor(
                config.model, num_classes, modulation=config.modulation, **(config.model_kwargs or {})
            )
        return freeze(segmentor.to(device)), True, None
    if not isinstance(source, (str, os.PathLike, Mapping)):
        raise ValueError(
            "segmentor must be 'auto', 'random', a pretrained name, a checkpoint or state-dict file or dict, or a "
            f"Segmentor; got {type(source).__name__}"
        )
    bundle = load_bundle(source)
    segmentor = build_from_bundle(
        bundle, num_classes, model=config.model, modulation=config.modulation, **(config.model_kwargs or {})
    )
    policy = policy_from_bundle(bundle, segmentor.latent_channels)
    return freeze(segmentor.to(device)), True, None if policy is None else freeze(policy.to(device))


class LatentCache:
    """Per-image latents z (N, d, h, w) and zero-action rewards r(0) (N,), filled on first use (``cache_latents``)."""

    def __init__(self, num_images: int, latent_shape: tuple[int, int, int], device: torch.device) -> None:
        self.z = torch.empty(num_images, *latent_shape, device=device)  # (N, d, h, w)
        self.has_z = torch.zeros(num_images, dtype=torch.bool, device=device)
        self.r0 = torch.empty(num_images, device=device)  # (N,)
        self.has_r0 = torch.zeros(num_images, dtype=torch.bool, device=device)

    def fetch(self, values: Tensor, filled: Tensor, idx: Tensor, compute: Any) -> Tensor:
        """``values[idx]``, computing ``compute(rows)`` only for the rows of ``idx`` not filled yet."""
        need = ~filled[idx]  # (B,)
        if bool(need.any()):
            values[idx[need]] = compute(need).to(values.dtype)
            filled[idx[need]] = True
        return values[idx]


class BanditCoreBase:
    """What every segbandit core shares: the image stream, the current batch of ``num_envs`` images, and the round.

    ``reset(seed) -> obs``; ``step(action) -> (next_obs, reward, info)`` scores the actions on the current images
    (:meth:`score`) and moves on to the next batch (:meth:`advance`, same-step autoreset; ``info["final_obs"]`` is the
    scored observation); ``reset_rows(rows)`` replaces only some sub-envs' images (TorchRL partial resets).

    A subclass sets ``observation_shape``, ``action_shape`` and ``num_classes``, and implements
    ``_load(images, masks) -> obs`` (observe a fresh batch), ``_replace_rows(idx, images, masks) -> obs`` (observe
    after the rows ``idx`` got fresh images), ``check_action`` and ``score`` (which returns ``reward`` (B,), the
    per-env diagnostics named by ``info_specs`` and anything else for ``info``, and sets ``last_scored`` for render).
    """

    def __init__(self, num_envs: int, config: Any, device: torch.device, indexed: bool = False) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        self.num_envs = num_envs
        self.config = config
        self.device = device
        self.stream = ImageStream(num_envs, config, device, indexed=indexed)  # dataset, loader, seeding
        self.dataset = self.stream.dataset
        self._raw_images = self.stream.raw
        self.image_size: tuple[int, int] = self.stream.image_size
        self._batch_index: Union[Tensor, None] = None  # (B,) dataset indices of the current images (indexed)
        self._images: Union[Tensor, None] = None  # (B, 3, H, W)
        self._masks: Union[Tensor, None] = None  # (B, H, W) int64
        self._obs: Union[Tensor, None] = None  # (B, *observation_shape), detached
        self.steps_in_episode = 0  # steps since the episode began (all sub-envs in lockstep)
        self.last_scored: Union[dict[str, Tensor], None] = None  # images, masks, preds of the last scored batch
        self.closed = False

    # ------------------------------------------------------------------ what a subclass defines
    @property
    def episode_length(self) -> int:
        """Images per episode (every ``episode_length``-th step terminates)."""
        return 1

    @property
    def info_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The per-env diagnostics that ``step`` puts in ``info``: key -> (per-env shape, dtype); () is a scalar."""
        return {}

    @property
    def info_keys(self) -> tuple[str, ...]:
        """The keys of :attr:`info_specs`: what the front ends hand out per sub-env."""
        return tuple(self.info_specs)

    def _load(self, images: Tensor, masks: Tensor) -> Tensor:
        raise NotImplementedError

    def _replace_rows(self, idx: Tensor, images: Tensor, masks: Tensor) -> Tensor:
        raise NotImplementedError

    def check_action(self, action: Any, batched: bool = True) -> Tensor:
        raise NotImplementedError

    def score(self, action: Any) -> dict[str, Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ state
    @property
    def batches_drawn(self) -> int:
        """Batches taken from the loader since construction."""
        return self.stream.batches_drawn

    @property
    def images(self) -> Union[Tensor, None]:
        """The current images (B, 3, H, W) on ``device`` (None before reset)."""
        return self._images

    @property
    def masks(self) -> Union[Tensor, None]:
        """The current label maps (B, H, W) int64 on ``device`` (None before reset)."""
        return self._masks

    @property
    def observation(self) -> Union[Tensor, None]:
        """The current observation (B, *observation_shape) float32, detached."""
        return self._obs

    def _check_open(self) -> None:
        if self.closed:
            from gymnasium.error import ClosedEnvironmentError

            raise ClosedEnvironmentError("the env is closed: build a new one to go on")

    def _check_reset(self) -> None:
        self._check_open()
        if self._obs is None:
            raise ResetNeeded("step() was called before reset(): call reset() first")

    # ------------------------------------------------------------------ data
    def seed(self, seed: Union[int, None]) -> None:
        """Seed the image order: the next batch starts a fresh epoch drawn from ``seed`` (None = random)."""
        self.stream.seed(seed)

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        """Next (images (B, 3, H, W) float32, masks (B, H, W) int64) on ``device``; a new epoch when exhausted.

        With an indexed stream (``cache_latents``) the batch's dataset indices (B,) are kept in ``_batch_index``."""
        images, masks = self.stream.next_batch()
        if self.stream.indexed:
            self._batch_index = self.stream.batch_index
        return images, masks

    def advance(self) -> Tensor:
        """Load (and observe) the next batch; returns its observation (B, *observation_shape)."""
        images, masks = self._next_batch()
        obs = self._load(images, masks)
        self._images, self._masks, self._obs = images, masks, obs
        return obs

    def reset(self, seed: Union[int, None] = None) -> Tensor:
        """Start over (re-seeding the image order when ``seed`` is given) and return the first observation."""
        self._check_open()
        if seed is not None:
            self.seed(seed)
        self.steps_in_episode = 0
        return self.advance()

    def reset_rows(self, rows: Tensor) -> Tensor:
        """Replace only the sub-envs where ``rows`` (B,) bool is True by images of a fresh batch (TorchRL partial reset)."""
        rows = rows.reshape(-1).to(self.device)
        if rows.shape[0] != self.num_envs:
            raise ValueError(f"expected a reset mask of {self.num_envs} entries, got shape {tuple(rows.shape)}")
        if self._obs is None or bool(rows.all()):
            return self.advance()
        if not bool(rows.any()):
            return self._obs
        idx = rows.nonzero().squeeze(1)  # (n,)
        kept = self._batch_index
        images, masks = self._next_batch()
        images, masks = images[idx], masks[idx]
        self._images = self._images.index_copy(0, idx, images)
        self._masks = self._masks.index_copy(0, idx, masks)
        self._obs = self._replace_rows(idx, images, masks)  # sees the fresh batch's indices in _batch_index
        if kept is not None:  # the current images' indices: the kept rows' and the fresh ones'
            self._batch_index = kept.index_copy(0, idx, self._batch_index[idx])
        return self._obs

    # ------------------------------------------------------------------ acting
    def step(self, action: Any, advance_terminal: bool = True) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Score ``action`` on the current images, then move to the next batch (same-step autoreset).

        Returns ``(next_obs, reward (B,), info)`` with ``info`` holding everything :meth:`score` returned besides the
        reward (the diagnostics of :attr:`info_specs` among it), ``final_obs``: the scored observation, and
        ``terminated`` (bool): the step ended the episode of ``episode_length`` images (all sub-envs in lockstep).
        ``advance_terminal=False``: a terminal step keeps the scored batch (``next_obs`` is its observation) for the
        caller's reset to move on (TorchRL).
        """
        out = self.score(action)
        final_obs = self._obs
        self.steps_in_episode += 1
        terminated = self.steps_in_episode >= self.episode_length
        next_obs = self.advance() if advance_terminal or not terminated else final_obs
        info: dict[str, Any] = {k: v for k, v in out.items() if k != "reward"}
        info["final_obs"] = final_obs
        info["terminated"] = terminated
        if terminated:
            self.steps_in_episode = 0
        return next_obs, out["reward"], info

    def render(self) -> Union[Any, None]:
        """Frames (B, H, 3W, 3) uint8 of the last scored batch (the current one, prediction black, before any step)."""
        if self.config.render_mode is None:
            return None
        from segbandit.visual import side_by_side

        if self.last_scored is not None:
            return side_by_side(self.last_scored["images"], self.last_scored["masks"], self.last_scored["preds"])
        if self._images is None:
            raise ResetNeeded("render() was called before reset(): call reset() first")
        return side_by_side(self._images, self._masks, None)

    def close(self) -> None:
        """Stop the DataLoader workers (if any); a later step or reset raises ``ClosedEnvironmentError``."""
        self.stream.close()
        self.closed = True


class SegBanditCore(BanditCoreBase):
    """Dataset, segmentor, reward and the current batch of ``num_envs`` images, all in torch.

    ``reset(seed) -> obs``; ``step(action) -> (next_obs, reward, info)`` scores the actions on the current
    images and moves on to the next batch (``info["final_obs"]`` is the scored observation). The two halves are
    also public: ``score(action)`` (decode + reward, the batch stays) and ``advance()`` (load + encode).
    """

    def __init__(self, num_envs: int, config: SegBanditConfig) -> None:
        super().__init__(num_envs, config, _resolve_device(config), indexed=config.cache_latents)
        self.num_classes = _resolve_num_classes(config, self.dataset)
        self.segmentor, self.owns_segmentor, self.policy = _resolve_segmentor(config, self.num_classes, self.device)
        weights = config.reward_weights
        self.reward_fn = CompositeReward(self.num_classes, weights=dict(weights) if isinstance(weights, Mapping) else tuple(weights))
        self.transition = BanditTransition(self.segmentor, self.reward_fn)  # encode / decode / reward, written once
        self.latent_shape: tuple[int, int, int] = self._probe_latent_shape()
        d, h, w = self.latent_shape
        self.observation_shape: tuple[int, ...] = (d, h, w) if config.obs_mode == "latent" else (d,)
        self.action_shape: tuple[int, ...] = (d, h, w) if config.action_mode == "dense" else (d,)
        if config.cache_latents and not self.owns_segmentor:
            raise ValueError("cache_latents needs a segmentor the env owns (frozen), not a shared one: pass "
                             "cache_latents=False")
        if config.cache_latents and self.segmentor.skip_keys:
            raise ValueError(f"cache_latents keeps z only, and this segmentor's decoder also reads the pass-through "
                             f"features {self.segmentor.skip_keys}: pass cache_latents=False")
        self.cache = LatentCache(len(self.dataset), self.latent_shape, self.device) if config.cache_latents else None
        self._z: Union[Tensor, None] = None  # (B, d, h, w), with its graph when differentiable
        self._skips: tuple[Tensor, ...] = ()  # the decoder's pass-through features of the current images (Segformer)
        self._reward_zero: Union[Tensor, None] = None  # (B,) r(x, s = 0) of the current images (paired_reward)

    @property
    def episode_length(self) -> int:
        return self.config.episode_length

    @property
    def info_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Each reward term (and ``reward_zero`` with ``paired_reward``): one float32 scalar per sub-env."""
        keys = (*REWARD_TERMS, "reward_zero") if self.config.paired_reward else REWARD_TERMS
        return {k: ((), torch.float32) for k in keys}

    # ------------------------------------------------------------------ helpers
    def _grad(self) -> contextlib.AbstractContextManager:
        """No graph and eval mode (a shared segmentor's BatchNorm statistics never move), unless differentiable."""
        if self.config.differentiable:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        if not self.owns_segmentor:  # an owned segmentor is frozen in eval mode already
            stack.enter_context(_eval_mode(self.segmentor))
        return stack

    def _probe_latent_shape(self) -> tuple[int, int, int]:
        """(d, h, w) of the latents of one blank image (run in eval mode, so no BatchNorm statistics move)."""
        x = torch.zeros(1, 3, *self.image_size, device=self.device)
        with torch.no_grad(), _eval_mode(self.segmentor):
            z = self.segmentor.encode(x)  # (1, d, h, w)
        return int(z.shape[1]), int(z.shape[2]), int(z.shape[3])

    @property
    def latents(self) -> Union[Tensor, None]:
        """The current latents z (B, d, h, w) (with their graph when ``differentiable``)."""
        return self._z

    @property
    def skips(self) -> tuple[Tensor, ...]:
        """The pass-through features the decoder reads beside the current latents (``Segmentor.skips``; () for most)."""
        return self._skips

    # ------------------------------------------------------------------ data
    def _observe(self, z: Tensor) -> Tensor:
        z = z.detach().float()  # (B, d, h, w)
        return z if self.config.obs_mode == "latent" else z.mean(dim=(2, 3))  # (B, d, h, w) or (B, d)

    def _load(self, images: Tensor, masks: Tensor) -> Tensor:
        """Encode a fresh batch (and its r(0) with ``paired_reward``); its observation."""
        z, self._skips = self._encode(images)  # (B, d, h, w), pass-through features
        self._z = z
        self._reward_zero = self._zero_reward(z, masks, skips=self._skips) if self.config.paired_reward else None
        return self._observe(z)

    def _replace_rows(self, idx: Tensor, images: Tensor, masks: Tensor) -> Tensor:
        """Encode the fresh images (n, 3, H, W) of the rows ``idx`` (n,) into the current latents."""
        z, skips = self._encode(images, idx)  # (n, d, h, w), pass-through features
        self._z = self._z.index_copy(0, idx, z)
        self._skips = tuple(old.index_copy(0, idx, new) for old, new in zip(self._skips, skips))
        if self._reward_zero is not None:
            self._reward_zero = self._reward_zero.index_copy(0, idx, self._zero_reward(z, masks, idx, skips))
        return self._observe(self._z)

    def _encode(self, images: Tensor, rows: Union[Tensor, None] = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """z (n, d, h, w) of images (n, 3, H, W) (the batch's, or its ``rows``', cached latents where there are some)
        and the decoder's pass-through features (never cached: ``cache_latents`` refuses segmentors that have some)."""
        if self.cache is None:
            with self._grad():
                feats = self.transition.encode(images)
            return feats["out"], self.segmentor.skips(feats)
        idx = self._batch_index if rows is None else self._batch_index[rows]
        with self._grad():
            return self.cache.fetch(self.cache.z, self.cache.has_z, idx,
                                    lambda need: self.transition.encode(images[need])["out"]), ()

    def zero_action(self, n: Union[int, None] = None) -> Tensor:
        """The zero action (n or B, *action_shape) float32 on ``device``."""
        return torch.zeros(self.num_envs if n is None else n, *self.action_shape, device=self.device)

    def _zero_reward(self, z: Tensor, masks: Tensor, rows: Union[Tensor, None] = None,
                     skips: tuple[Tensor, ...] = ()) -> Tensor:
        """r(x, s = 0) (n,) for latents z (n, d, h, w): the paired reward's reference (cached with the latents)."""

        def score(need: Union[Tensor, slice]) -> Tensor:
            with torch.no_grad(), _eval_mode(self.segmentor):
                zn, mn = z[need].detach(), masks[need]
                sk = tuple(t[need].detach() for t in skips)
                return self.transition.score(zn, self.zero_action(zn.shape[0]), mn, skips=sk)["reward"]

        if self.cache is None:
            return score(slice(None))
        idx = self._batch_index if rows is None else self._batch_index[rows]
        return self.cache.fetch(self.cache.r0, self.cache.has_r0, idx, score)

    # ------------------------------------------------------------------ acting
    def check_action(self, action: Any, batched: bool = True) -> Tensor:
        """Validate an action and return it as float32 on ``device``, shape (B, *action_shape).

        ``batched=False`` takes one sub-env's action (action_shape) and adds the batch dimension (B must be 1).
        Raises ValueError naming the expected and actual shape or dtype, or on NaN / inf.
        """
        if not isinstance(action, Tensor):
            try:
                action = torch.as_tensor(action)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(f"expected a float32 array action, got {type(action).__name__}: {err}") from err
        if not action.is_floating_point():
            raise ValueError(f"expected a floating action (float32), got dtype {action.dtype}")
        expected = (self.num_envs, *self.action_shape) if batched else self.action_shape
        if tuple(action.shape) != expected:
            what = "(B, *action_shape)" if batched else "action_shape"
            raise ValueError(f"expected an action of shape {what} = {expected} ({self.config.action_mode} mode), got {tuple(action.shape)}")
        if not batched:
            if self.num_envs != 1:
                raise ValueError(f"an unbatched action needs num_envs == 1, got num_envs={self.num_envs}")
            action = action.unsqueeze(0)
        action = action.to(device=self.device, dtype=torch.float32, non_blocking=True)
        if not bool(torch.isfinite(action.detach()).all()):
            raise ValueError(f"the action of shape {tuple(action.shape)} contains NaN or inf")
        if self.config.action_bound is not None:
            action = action.clamp(-self.config.action_bound, self.config.action_bound)
        return action

    def score(self, action: Any) -> dict[str, Tensor]:
        """Decode the current latents with ``action`` and reward them (Eq. 15); the batch stays current.

        Returns ``reward`` (B,) float32, each term of ``REWARD_TERMS`` (B,) and ``logits`` (B, K, H, W)
        (with the autograd graph when ``differentiable``).
        """
        self._check_reset()
        a = self.check_action(action)  # (B, *action_shape)
        with self._grad():
            out = self.transition.score(self._z, a, self._masks, skips=self._skips)  # logits, rewards (B,), Eq. 15
        if not bool(out["finite"]):  # a finite but huge action overflows the decoder
            raise ValueError(
                f"the action (finite, max |a| = {float(a.abs().max()):.3g}) gave non-finite logits: the decoder "
                "overflowed, so there is no reward to return; bound the actions (e.g. action_bound=...)"
            )
        result = {"reward": out["reward"], **{k: out[f"reward_{k}"] for k in REWARD_TERMS}, "logits": out["logits"]}
        if self._reward_zero is not None:  # the gain over s = 0 on the same image
            result["reward_zero"] = self._reward_zero
            result["reward"] = out["reward"] - self._reward_zero
        if self.config.render_mode is not None:
            self.last_scored = {"images": self._images, "masks": self._masks,
                                "preds": out["logits"].detach().argmax(1)}  # (B, H, W)
        return result


__all__ = [
    "ACTION_MODES",
    "ARRAY_TYPES",
    "DEFAULT_ACTION_BOUND",
    "OBS_MODES",
    "RENDER_MODES",
    "REWARD_TERMS",
    "BanditCoreBase",
    "SegBanditConfig",
    "SegBanditCore",
]
