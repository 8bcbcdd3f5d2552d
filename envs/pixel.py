"""``SegPixelBandit-v0``: reward-only segmentation as a one-step bandit, where the agent IS the segmentor.

One step is one round for all ``B`` images at once:

    observation  x  the normalised image                          (B, 3, H, W) float32
    action       a  a label map at the env's scale f              (B, H/f, W/f) int64 in [0, K)
    target       y  = rss.mode_pool(mask, f, K)                   (B, H/f, W/f), 255 where a cell is all void
    reward       "pixel": mean over non-void p of 1[a_p = y_p]    (B,)   (pixel accuracy; the map in info)
                 "image": rss.make_image_reward(image_reward, K)(a, y), or a user callable, checked in [0, 1]

Every step terminates, with Gymnasium's same-step autoreset exactly as ``SegBandit-v0`` (the envs share the image
stream, the step and the front ends: :class:`SegPixelBanditCore` only says how a batch is observed and how an
action is checked and scored; the front ends are thin subclasses of the ``SegBandit-v0`` ones).

- :class:`SegPixelBanditVectorEnv` — the natively batched Gymnasium vector env;
- :class:`SegPixelBanditEnv` — the single env;
- :class:`envs.torchrl_env.SegPixelBanditTorchEnv` — the TorchRL env (``envs.SegPixelBanditTorchEnv``, lazily).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from envs.core import BanditCoreBase, _resolve_num_classes
from envs.single import SegBanditEnv
from envs.stream import check_stream_fields, resolve_device
from envs.vector import SegBanditVectorEnv
from segbandit.constants import IGNORE_INDEX
from segbandit.rss import IMAGE_REWARDS, REWARD_LEVELS, check_scales, image_rewards, make_image_reward, mode_pool

ImageRewardArg = Union[str, Callable[[Tensor, Tensor], Tensor]]


@dataclass
class SegPixelBanditConfig:
    """Everything ``SegPixelBandit-v0`` is configured by (the keyword arguments of every pixel env front end).

    Args:
        dataset: ``"digits"`` (embedded, no download), ``"voc"`` (needs ``data_root``) or any map-style torch
            ``Dataset`` whose items are ``(image float (3, H, W), mask int (H, W))`` pairs of one fixed size.
        data_root: folder holding ``VOCdevkit`` (``dataset="voc"``).
        split: dataset split (``"train"``, ``"val"``, ``"trainaug"`` ...).
        num_classes: K; inferred from the dataset's ``num_classes`` when None.
        image_size: image side for named datasets (digits default 64, VOC default 512).
        scale: f, the action's pooling factor: the agent labels each f x f cell, scored against the cell's most
            frequent non-void label (``segbandit.rss.mode_pool``); f must divide H and W. 1 labels every pixel.
        reward_level: ``"pixel"`` (the reward is the pixel accuracy over non-void cells; ``info["pixel_reward"]``
            holds the map 1[a_p = y_p], 0 at void, and ``info["valid"]`` the non-void cells) or ``"image"`` (one
            scalar per image from ``image_reward``).
        image_reward: a name of ``segbandit.rss.IMAGE_REWARDS`` (``"miou"``, ``"miou_target"``, ``"dice"``,
            ``"boundary"``) or a callable ``reward(pred (N, h, w), target (N, h, w)) -> (N,)`` in [0, 1] (checked every
            step: ValueError on a wrong shape, a non-finite value or a value outside [0, 1]); used at
            ``reward_level="image"``.
        array_type: ``"numpy"`` (Gymnasium's convention) or ``"torch"`` (tensors stay on ``device``).
        device: where images, targets and rewards live; None means CPU.
        num_workers: DataLoader worker processes (0 loads in the stepping process).
        dataset_kwargs: extra keywords for ``segbandit.data.make_dataset`` (e.g. ``num_samples``, ``seed``).
        augment: use the dataset's train-time augmentation (off: ``reset(seed=...)`` fixes every observation).
        shuffle: shuffle the image order (with the generator seeded by ``reset(seed=...)``).
        render_mode: None or ``"rgb_array"`` (image | truth | action map of the last scored batch).
    """

    dataset: Union[str, Dataset] = "digits"
    data_root: Union[str, None] = None
    split: str = "train"
    num_classes: Union[int, None] = None
    image_size: Union[int, None] = None
    scale: int = 1
    reward_level: str = "pixel"
    image_reward: ImageRewardArg = "miou"
    array_type: str = "numpy"
    device: Union[str, torch.device, None] = None
    num_workers: int = 0
    dataset_kwargs: Union[dict, None] = None
    augment: bool = False
    shuffle: bool = True
    render_mode: Union[str, None] = None

    def __post_init__(self) -> None:
        if self.reward_level not in REWARD_LEVELS:
            raise ValueError(f"unknown reward_level {self.reward_level!r}; valid choices: {', '.join(REWARD_LEVELS)}")
        if isinstance(self.image_reward, str):
            if self.image_reward not in IMAGE_REWARDS:
                raise ValueError(
                    f"unknown image_reward {self.image_reward!r}; valid choices: {', '.join(sorted(IMAGE_REWARDS))} "
                    "or a callable reward(pred (N, h, w), target (N, h, w)) -> (N,)"
                )
        elif not callable(self.image_reward):
            raise ValueError(
                f"image_reward must be a name of segbandit.rss.IMAGE_REWARDS or a callable, got "
                f"{type(self.image_reward).__name__}"
            )
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, np.integer)) or self.scale < 1:
            raise ValueError(f"scale must be a positive int, got {self.scale!r}")
        self.scale = int(self.scale)
        check_stream_fields(self)  # array_type, num_workers, render_mode


class SegPixelBanditCore(BanditCoreBase):
    """The image stream, the mode-pooled targets and the reward of ``SegPixelBandit-v0``, batched over ``num_envs``.

    ``reset(seed) -> images``; ``step(labels) -> (next_images, reward, info)`` (same-step autoreset, every step
    terminates); ``score(labels)`` rewards without moving on. The action is a label map (B, H/f, W/f) in [0, K).
    """

    segmentor = None  # the agent is the segmentor

    def __init__(self, num_envs: int, config: SegPixelBanditConfig) -> None:
        super().__init__(num_envs, config, resolve_device(config.device))
        self.num_classes = _resolve_num_classes(config, self.dataset)
        h, w = self.image_size
        check_scales([config.scale], h, w)  # ValueError naming the factor and the size
        self.scale = config.scale
        self.observation_shape: tuple[int, ...] = (3, h, w)
        self.action_shape: tuple[int, ...] = (h // config.scale, w // config.scale)
        if config.reward_level == "pixel":
            self.reward_fn = None
        elif isinstance(config.image_reward, str):
            self.reward_fn = make_image_reward(config.image_reward, self.num_classes)
        else:
            self.reward_fn = config.image_reward
        self._targets: Union[Tensor, None] = None  # (B, h, w) int64, void 255

    @property
    def info_specs(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """``reward_level="pixel"``: the map ``pixel_reward`` (h, w) float32 and ``valid`` (h, w) bool per sub-env."""
        if self.config.reward_level != "pixel":
            return {}
        return {"pixel_reward": (self.action_shape, torch.float32), "valid": (self.action_shape, torch.bool)}

    @property
    def targets(self) -> Union[Tensor, None]:
        """The current targets at the env's scale (B, H/f, W/f) int64, 255 where a cell is all void."""
        return self._targets

    # ------------------------------------------------------------------ data
    def _pool(self, masks: Tensor) -> Tensor:
        return mode_pool(masks, self.scale, self.num_classes, IGNORE_INDEX)  # (n, h, w)

    def _load(self, images: Tensor, masks: Tensor) -> Tensor:
        self._targets = self._pool(masks)
        return images  # the observation is the normalised image itself

    def _replace_rows(self, idx: Tensor, images: Tensor, masks: Tensor) -> Tensor:
        self._targets = self._targets.index_copy(0, idx, self._pool(masks))
        return self._images

    # ------------------------------------------------------------------ acting
    def check_action(self, action: Any, batched: bool = True) -> Tensor:
        """Validate a label map and return it as int64 on ``device``, shape (B, H/f, W/f).

        ``batched=False`` takes one sub-env's map (H/f, W/f) and adds the batch dimension (B must be 1).
        Raises ValueError naming the expected and actual shape or dtype, or the labels outside [0, K).
        """
        if not isinstance(action, Tensor):
            try:
                action = torch.as_tensor(action)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ValueError(f"expected an int64 label map action, got {type(action).__name__}: {err}") from err
        if action.is_floating_point() or action.is_complex() or action.dtype == torch.bool:
            raise ValueError(f"expected an integer label map (int64), got dtype {action.dtype}")
        expected = (self.num_envs, *self.action_shape) if batched else self.action_shape
        if tuple(action.shape) != expected:
            what = "(B, H/f, W/f)" if batched else "(H/f, W/f)"
            raise ValueError(
                f"expected a label map of shape {what} = {expected} (image {self.image_size[0]}x{self.image_size[1]}, "
                f"scale {self.scale}), got {tuple(action.shape)}"
            )
        if not batched:
            if self.num_envs != 1:
                raise ValueError(f"an unbatched action needs num_envs == 1, got num_envs={self.num_envs}")
            action = action.unsqueeze(0)
        action = action.to(device=self.device, dtype=torch.int64, non_blocking=True)
        low, high = int(action.min()), int(action.max())
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"expected labels in [0, {self.num_classes}), got labels from {low} to {high}")
        return action

    def score(self, action: Any) -> dict[str, Tensor]:
        """Reward the label maps on the current images; the batch stays current.

        Returns ``reward`` (B,) float32 and, at ``reward_level="pixel"``, ``pixel_reward`` (B, h, w) float32
        (1[a_p = y_p], 0 at void) and ``valid`` (B, h, w) bool.
        """
        self._check_reset()
        a = self.check_action(action)  # (B, h, w) int64
        y = self._targets  # (B, h, w)
        if self.config.reward_level == "pixel":
            valid = y != IGNORE_INDEX  # (B, h, w)
            pixel_reward = ((a == y) & valid).float()  # r_p = 1[a_p = y_p], 0 at void
            reward = pixel_reward.sum(dim=(1, 2)) / valid.sum(dim=(1, 2)).clamp(min=1)  # (B,), 0 when all void
            result = {"reward": reward, "pixel_reward": pixel_reward, "valid": valid}
        else:
            result = {"reward": image_rewards(self.reward_fn, a.unsqueeze(0), y)[0]}  # (B,), checked in [0, 1]
        if self.config.render_mode is not None:
            f = self.scale
            preds = a.repeat_interleave(f, dim=1).repeat_interleave(f, dim=2)  # (B, H, W), nearest upsampling
            self.last_scored = {"images": self._images, "masks": self._masks, "preds": preds}
        return result


class SegPixelBanditVectorEnv(SegBanditVectorEnv):
    """``SegPixelBandit-v0``, ``num_envs`` images per step (same-step autoreset, like ``SegBandit-v0``).

    Args:
        num_envs: B, the number of sub-envs (images labelled per step).
        **kwargs: the fields of :class:`SegPixelBanditConfig` (dataset, num_classes, image_size, scale,
            reward_level, image_reward, array_type, device, ...).

    Spaces: ``single_observation_space`` Box(-inf, inf, (3, H, W), float32); ``single_action_space``
    ``MultiDiscrete(np.full((H/f, W/f), K))``. ``info`` (``reward_level="pixel"``): ``pixel_reward`` (B, h, w)
    and ``valid`` (B, h, w), also under ``final_info``.
    """

    config_cls = SegPixelBanditConfig
    core_cls = SegPixelBanditCore

    def _make_spaces(self) -> tuple[gym.Space, gym.Space]:
        obs = gym.spaces.Box(low=-np.inf, high=np.inf, shape=self.core.observation_shape, dtype=np.float32)
        action = gym.spaces.MultiDiscrete(np.full(self.core.action_shape, self.core.num_classes, dtype=np.int64))
        return obs, action


class SegPixelBanditEnv(SegBanditEnv):
    """One image per step of ``SegPixelBandit-v0``. Keyword arguments: those of :class:`SegPixelBanditConfig`.

    ``step(label_map (H/f, W/f) int)`` returns the scored image as the terminal observation, the reward as a float
    and, at ``reward_level="pixel"``, ``info["pixel_reward"]`` (h, w) and ``info["valid"]`` (h, w).
    """

    vector_cls = SegPixelBanditVectorEnv


__all__ = ["SegPixelBanditConfig", "SegPixelBanditCore", "SegPixelBanditEnv", "SegPixelBanditVectorEnv"]
