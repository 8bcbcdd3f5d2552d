"""``SegBanditTorchEnv``: ``SegBandit-v0`` as a natively batched TorchRL ``EnvBase`` (``batch_size=[B]``).

Same core as the Gymnasium envs. TorchRL's conventions for a one-step episode:

- ``_step`` scores the action on the current images: ``("next", "reward")`` (B, 1), ``done = terminated = True``
  for every sub-env, and as next ``"observation"`` the scored (terminal) observation itself: a bandit has no
  successor state.  With ``episode_length=K`` only every K-th step is done; the others move to the next image,
  whose observation is then the next ``"observation"``.
- the observation spec holds only ``"observation"``: the reward terms ``iou``/``dice``/``ce``/``boundary`` (B, 1)
  (and ``reward_zero`` with ``paired_reward``) are diagnostics, under ``("info", term)`` with ``reward_info=True``.
- the action spec is bounded by default (``action_bound`` = :data:`envs.core.DEFAULT_ACTION_BOUND`): TorchRL's
  ``TanhNormal`` and ``ActionScaling`` read the spec's bounds, and an unbounded one gives infinite actions.
- the reset that TorchRL issues after every done step (``step_and_maybe_reset`` in collectors and rollouts)
  loads and encodes the next batch. So each collected frame costs exactly one decode + reward and one
  encode of a fresh image: no step is spent on a reset, and no image is encoded twice.
- ``differentiable=True`` with a shared segmentor also puts ``"logits"`` (B, K, H, W) in the step output with
  their autograd graph (latents encoded at reset keep theirs), so a co-trainer can add cross-entropy to the
  same forward. The reset output then carries zero logits.

Seeding: ``env.set_seed(s)`` fixes the image order from the next reset on.

The class is generic over its core: ``config_cls`` / ``core_cls`` name the config and core, ``_config_defaults()``
the keyword defaults, ``_action_spec()`` the action spec, and the ``("info", key)`` diagnostics are the core's
``info_specs``. :class:`SegPixelBanditTorchEnv` (``SegPixelBandit-v0``: image observations, a categorical label map
as the action) is such a subclass.
"""
from __future__ import annotations

from typing import Any, Union

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from envs.core import DEFAULT_ACTION_BOUND, SegBanditConfig, SegBanditCore
from envs.pixel import SegPixelBanditConfig, SegPixelBanditCore


class SegBanditTorchEnv(EnvBase):
    """Semantic segmentation as a contextual bandit for TorchRL, ``num_envs`` images per step.

    Args:
        num_envs: B, the batch size of the env.
        reward_info: also return each reward term under ``("info", term)`` (B, 1).
        **kwargs: the fields of :class:`envs.core.SegBanditConfig` (``array_type`` is ignored: TorchRL is torch);
            ``action_bound`` defaults to :data:`envs.core.DEFAULT_ACTION_BOUND` (``None`` explicitly: unbounded).
    """

    config_cls: type = SegBanditConfig
    core_cls: type = SegBanditCore

    def __init__(self, num_envs: int = 1, reward_info: bool = False, **kwargs: Any) -> None:
        kwargs.pop("array_type", None)
        kwargs = {**self._config_defaults(), **kwargs}
        config = self.config_cls(array_type="torch", **kwargs)
        core = self.core_cls(num_envs, config)
        super().__init__(device=core.device, batch_size=torch.Size([num_envs]))
        self.__dict__["core"] = core  # plain attribute: the env does not own the shared segmentor as a submodule
        self.__dict__["config"] = config
        self.__dict__["reward_info"] = bool(reward_info)
        self._make_specs()

    @property
    def segmentor(self):
        """The segmentor the env decodes with."""
        return self.core.segmentor

    @property
    def reward_fn(self):
        """The composite reward (Eq. 15)."""
        return self.core.reward_fn

    @property
    def num_envs(self) -> int:
        return self.core.num_envs

    # ------------------------------------------------------------------ hooks of a subclass
    def _config_defaults(self) -> dict[str, Any]:
        """Keyword defaults that differ from the config's: a bounded action (TorchRL's samplers read the bounds)."""
        return {"action_bound": DEFAULT_ACTION_BOUND}

    def _action_spec(self):
        """The action spec (B, *action_shape): float32, Bounded by ``action_bound`` (Unbounded for None)."""
        b, dev = self.core.num_envs, self.device
        bound = self.config.action_bound
        shape = (b, *self.core.action_shape)
        if bound is None:
            return Unbounded(shape=shape, dtype=torch.float32, device=dev)
        return Bounded(low=-float(bound), high=float(bound), shape=shape, dtype=torch.float32, device=dev)

    @property
    def _with_logits(self) -> bool:
        """Put the differentiable ``"logits"`` (B, K, H, W) in the outputs."""
        return bool(self.config.differentiable)

    # ------------------------------------------------------------------ generic
    def _info_spec(self, shape: tuple[int, ...], dtype: torch.dtype):
        b, dev = self.core.num_envs, self.device
        full = (b, *shape) if shape else (b, 1)  # a scalar per sub-env is (B, 1), like the reward
        if dtype == torch.bool:
            return Categorical(2, shape=full, dtype=torch.bool, device=dev)
        return Unbounded(shape=full, dtype=dtype, device=dev)

    def _make_specs(self) -> None:
        b, dev = self.core.num_envs, self.device
        obs: dict[str, Any] = {
            "observation": Unbounded(shape=(b, *self.core.observation_shape), dtype=torch.float32, device=dev)
        }
        if self.reward_info:
            obs["info"] = Composite(
                {k: self._info_spec(shape, dtype) for k, (shape, dtype) in self.core.info_specs.items()},
                shape=(b,), device=dev,
            )
        if self._with_logits:
            h, w = self.core.image_size
            obs["logits"] = Unbounded(shape=(b, self.core.num_classes, h, w), dtype=torch.float32, device=dev)
        self.observation_spec = Composite(obs, shape=(b,), device=dev)
        self.action_spec = self._action_spec()
        self.reward_spec = Unbounded(shape=(b, 1), dtype=torch.float32, device=dev)
        self.done_spec = Composite(
            done=Categorical(2, shape=(b, 1), dtype=torch.bool, device=dev),
            terminated=Categorical(2, shape=(b, 1), dtype=torch.bool, device=dev),
            shape=(b,),
            device=dev,
        )

    def _info_out(self, info: dict[str, Any]) -> dict[str, Any]:
        """The diagnostics of ``info`` shaped as their specs: a scalar per sub-env as (B, 1), a map as it is."""
        return {k: info[k] if shape else info[k].unsqueeze(-1) for k, (shape, _) in self.core.info_specs.items()}

    def _fill(self, out: dict[str, Any], done: bool) -> TensorDict:
        b = self.core.num_envs
        flag = torch.full((b, 1), done, dtype=torch.bool, device=self.device)
        out["done"], out["terminated"] = flag, flag.clone()
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: Union[TensorDictBase, None] = None, **kwargs: Any) -> TensorDictBase:
        rows = None if tensordict is None else tensordict.get("_reset", None)
        if rows is not None and self.core.episode_length > 1 and not bool(rows.all()):
            raise ValueError("a partial reset needs episode_length=1 (the sub-envs' episodes run in lockstep)")
        self.core.steps_in_episode = 0
        obs = self.core.advance() if rows is None else self.core.reset_rows(rows)
        b = self.core.num_envs
        out: dict[str, Any] = {"observation": obs}
        if self.reward_info:
            out["info"] = {k: self._info_spec(shape, dtype).zero() for k, (shape, dtype) in self.core.info_specs.items()}
        if self._with_logits:
            out["logits"] = torch.zeros(b, self.core.num_classes, *self.core.image_size, device=self.device)
        return self._fill(out, done=False)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        # terminal: the scored context itself is the next observation (the reset moves on); else the next image's
        next_obs, reward, info = self.core.step(tensordict.get("action"), advance_terminal=False)
        out: dict[str, Any] = {"observation": next_obs, "reward": reward.unsqueeze(-1)}  # (B, 1)  Eq. 15
        if self.reward_info:
            out["info"] = self._info_out(info)  # (B, 1) per scalar, (B, h, w) per map
        if self._with_logits:
            out["logits"] = info["logits"]  # (B, K, H, W), with graph
        return self._fill(out, done=bool(info["terminated"]))

    def _set_seed(self, seed: Union[int, None]) -> None:
        self.core.seed(seed)

    def close(self, *, raise_if_closed: bool = True) -> None:
        self.core.close()
        self.is_closed = True


class SegPixelBanditTorchEnv(SegBanditTorchEnv):
    """``SegPixelBandit-v0`` for TorchRL: observation (B, 3, H, W) images, action a ``Categorical(n=K)`` label map
    (B, H/f, W/f) int64, reward (B, 1); every step is done.

    Args:
        num_envs: B, the batch size of the env.
        reward_info: also return ``("info", "pixel_reward")`` (B, h, w) float32 and ``("info", "valid")`` (B, h, w)
            bool (``reward_level="pixel"``; the image level has no diagnostics).
        **kwargs: the fields of :class:`envs.pixel.SegPixelBanditConfig` (``array_type`` is ignored).
    """

    config_cls = SegPixelBanditConfig
    core_cls = SegPixelBanditCore

    def _config_defaults(self) -> dict[str, Any]:
        return {}

    def _action_spec(self):
        b, dev = self.core.num_envs, self.device
        return Categorical(n=self.core.num_classes, shape=(b, *self.core.action_shape), dtype=torch.int64, device=dev)

    @property
    def _with_logits(self) -> bool:
        return False  # the agent is the segmentor: the env has no logits


__all__ = ["SegBanditTorchEnv", "SegPixelBanditTorchEnv"]
