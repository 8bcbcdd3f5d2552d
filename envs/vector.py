"""``SegBanditVectorEnv``: the natively batched Gymnasium vector env of ``SegBandit-v0``.

One batched encode / decode / reward serves all ``num_envs`` sub-envs (not ``num_envs`` copies). Every step
terminates and the env uses Gymnasium's same-step autoreset, laid out exactly as
``gymnasium.vector.SyncVectorEnv(autoreset_mode=SAME_STEP)`` lays it out:

- ``obs`` returned by ``step`` are the NEXT images' observations;
- ``info["final_obs"]`` holds the scored observations (numpy: an object array of ``num_envs`` per-env arrays,
  like SyncVectorEnv; torch: one batched tensor, indexable the same way) with ``info["_final_obs"]`` all True;
- ``info["final_info"]`` holds the step's per-env infos (each reward term with its ``_term`` mask), with
  ``info["_final_info"]`` all True.

For convenience the reward terms ``iou``, ``dice``, ``ce``, ``boundary`` (with their ``_term`` masks) are also
at the top level of ``info``.

The class is generic over its core: ``config_cls`` / ``core_cls`` (class attributes) name the config and core,
``_make_spaces()`` builds the single observation and action spaces, and the per-env diagnostics are the core's
``info_keys``. :class:`envs.pixel.SegPixelBanditVectorEnv` (``SegPixelBandit-v0``) is such a subclass.
"""
from __future__ import annotations

from typing import Any, Union

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from envs.core import SegBanditConfig, SegBanditCore


def _to_numpy(t: Tensor) -> np.ndarray:
    """A fresh numpy copy of ``t`` (never a view of env state)."""
    t = t.detach()
    return t.numpy().copy() if t.device.type == "cpu" else t.cpu().numpy()


def _box(shape: tuple[int, ...], bound: Union[float, None]) -> gym.spaces.Box:
    b = np.inf if bound is None else float(bound)
    return gym.spaces.Box(low=-b, high=b, shape=shape, dtype=np.float32)


class SegBanditVectorEnv(VectorEnv):
    """Semantic segmentation as a contextual bandit, ``num_envs`` images per step.

    Args:
        num_envs: B, the number of sub-envs (images scored per step).
        **kwargs: the fields of :class:`envs.core.SegBanditConfig` (dataset, data_root, split, model,
            num_classes, image_size, obs_mode, action_mode, reward_weights, array_type, device, num_workers, ...).

    Attributes: ``segmentor``, ``reward_fn``, ``num_envs``, ``config``, ``core`` (the shared torch logic),
    ``single_observation_space`` / ``single_action_space`` (float32 Boxes) and their batched forms.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": ["rgb_array"], "render_fps": 4}
    config_cls: type = SegBanditConfig  # built from the keyword arguments
    core_cls: type = SegBanditCore  # built as core_cls(num_envs, config)

    def __init__(self, num_envs: int = 1, **kwargs: Any) -> None:
        self.config = self.config_cls(**kwargs)
        self.core = self.core_cls(num_envs, self.config)
        self.num_envs = num_envs
        self.array_type = self.config.array_type
        self.device = self.core.device
        self.render_mode = self.config.render_mode
        self.single_observation_space, self.single_action_space = self._make_spaces()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = dict(type(self).metadata)

    def _make_spaces(self) -> tuple[gym.Space, gym.Space]:
        """The single observation and action spaces: float32 Boxes of the latent shapes (the action one bounded
        by ``action_bound``)."""
        return _box(self.core.observation_shape, None), _box(self.core.action_shape, self.config.action_bound)

    @property
    def segmentor(self):
        """The segmentor the env decodes with (shared with the caller if one was passed as ``model``)."""
        return self.core.segmentor

    @property
    def reward_fn(self):
        """The :class:`segbandit.rewards.CompositeReward` scoring each sub-env (Eq. 15)."""
        return self.core.reward_fn

    # ------------------------------------------------------------------ conversions
    def _out(self, t: Tensor) -> Union[np.ndarray, Tensor]:
        return _to_numpy(t) if self.array_type == "numpy" else t

    def _mask(self) -> Union[np.ndarray, Tensor]:
        if self.array_type == "numpy":
            return np.ones(self.num_envs, dtype=np.bool_)
        return torch.ones(self.num_envs, dtype=torch.bool, device=self.device)

    def _final_obs(self, final_obs: Tensor) -> Union[np.ndarray, Tensor]:
        if self.array_type == "torch":
            return final_obs  # (B, *obs_shape): row i is sub-env i's final observation
        batch = _to_numpy(final_obs)
        per_env = np.empty(self.num_envs, dtype=object)  # SyncVectorEnv's layout: one array per sub-env
        for i in range(self.num_envs):  # B object slots, not a loop over data
            per_env[i] = batch[i]
        return per_env

    # ------------------------------------------------------------------ API
    def reset(
        self, *, seed: Union[int, None] = None, options: Union[dict[str, Any], None] = None
    ) -> tuple[Union[np.ndarray, Tensor], dict[str, Any]]:
        """Draw a batch of images; ``seed`` fixes the image order from here on. ``options`` is accepted and unused."""
        super().reset(seed=seed)
        obs = self.core.reset(seed)
        return self._out(obs), {}

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        """Score ``actions`` (B, *single_action_shape) on the current images; return the next images' observations.

        With ``episode_length`` K > 1 only every K-th step terminates; ``final_obs`` / ``final_info`` are then present.
        """
        next_obs, reward, info = self.core.step(actions)
        done = bool(info["terminated"])
        keys = [k for k in self.core.info_keys if k in info]
        terms = {k: self._out(info[k]) for k in keys}
        out_info: dict[str, Any] = {}
        for k in keys:
            out_info[k] = terms[k].copy() if self.array_type == "numpy" else terms[k].clone()
            out_info[f"_{k}"] = self._mask()
        if done:
            final_info: dict[str, Any] = {}
            for k in keys:
                final_info[k], final_info[f"_{k}"] = terms[k], self._mask()
            out_info["final_obs"], out_info["_final_obs"] = self._final_obs(info["final_obs"]), self._mask()
            out_info["final_info"], out_info["_final_info"] = final_info, self._mask()
        if self.array_type == "numpy":
            terminated = np.full(self.num_envs, done, dtype=np.bool_)
            truncated = np.zeros(self.num_envs, dtype=np.bool_)
        else:
            terminated = torch.full((self.num_envs,), done, dtype=torch.bool, device=self.device)
            truncated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return self._out(next_obs), self._out(reward), terminated, truncated, out_info

    def render(self) -> Union[tuple[np.ndarray, ...], None]:
        """With ``render_mode="rgb_array"``: one frame (H, 3W, 3) uint8 per sub-env, image | truth | prediction."""
        frames = self.core.render()
        return None if frames is None else tuple(frames)

    def close_extras(self, **kwargs: Any) -> None:
        core = self.__dict__.get("core")  # absent when __init__ failed
        if core is not None:
            core.close()


__all__ = ["SegBanditVectorEnv"]
