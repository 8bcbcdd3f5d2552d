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
"""
from __future__ import annotations

from typing import Any, Union

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from envs.core import DEFAULT_ACTION_BOUND, REWARD_TERMS, SegBanditConfig, SegBanditCore


class SegBanditTorchEnv(EnvBase):
    """Semantic segmentation as a contextual bandit for TorchRL, ``num_envs`` images per step.

    Args:
        num_envs: B, the batch size of the env.
        reward_info: also return each reward term under ``("info", term)`` (B, 1).
        **kwargs: the fields of :class:`envs.core.SegBanditConfig` (``array_type`` is ignored: TorchRL is torch);
            ``action_bound`` defaults to :data:`envs.core.DEFAULT_ACTION_BOUND` (``None`` explicitly: unbounded).
    """

    def __init__(self, num_envs: int = 1, reward_info: bool = False, **kwargs: Any) -> None:
        kwargs.pop("array_type", None)
        kwargs.setdefault("action_bound", DEFAULT_ACTION_BOUND)
        config = SegBanditConfig(array_type="torch", **kwargs)
        core = SegBanditCore(num_envs, config)
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

    def _make_specs(self) -> None:
        b, dev = self.core.num_envs, self.device
        obs: dict[str, Any] = {
            "observation": Unbounded(shape=(b, *self.core.observation_shape), dtype=torch.float32, device=dev)
        }
        if self.reward_info:
            obs["info"] = Composite(
                {k: Unbounded(shape=(b, 1), dtype=torch.float32, device=dev) for k in self._info_keys()},
                shape=(b,), device=dev,
            )
        if self.config.differentiable:
            h, w = self.core.image_size
            obs["logits"] = Unbounded(shape=(b, self.core.num_classes, h, w), dtype=torch.float32, device=dev)
        self.observation_spec = Composite(obs, shape=(b,), device=dev)
        bound = self.config.action_bound
        shape = (b, *self.core.action_shape)
        self.action_spec = (
            Unbounded(shape=shape, dtype=torch.float32, device=dev)
            if bound is None
            else Bounded(low=-float(bound), high=float(bound), shape=shape, dtype=torch.float32, device=dev)
        )
        self.reward_spec = Unbounded(shape=(b, 1), dtype=torch.float32, device=dev)
        self.done_spec = Composite(
            done=Categorical(2, shape=(b, 1), dtype=torch.bool, device=dev),
            terminated=Categorical(2, shape=(b, 1), dtype=torch.bool, device=dev),
            shape=(b,),
            device=dev,
        )

    def _info_keys(self) -> tuple[str, ...]:
        return (*REWARD_TERMS, "reward_zero") if self.config.paired_reward else REWARD_TERMS

    def _fill(self, out: dict[str, Any], done: bool) -> TensorDict:
        b = self.core.num_envs
        flag = torch.full((b, 1), done, dtype=torch.bool, device=self.device)
        out["done"], out["terminated"] = flag, flag.clone()
        return TensorDict(out, batch_size=self.batch_size, device=self.device)

    def _reset(self, tensordict: Union[TensorDictBase, None] = None, **kwargs: Any) -> TensorDictBase:
        rows = None if tensordict is None else tensordict.get("_reset", None)
        if rows is not None and self.config.episode_length > 1 and not bool(rows.all()):
            raise ValueError("a partial reset needs episode_length=1 (the sub-envs' episodes run in lockstep)")
        self.core.steps_in_episode = 0
        obs = self.core.advance() if rows is None else self.core.reset_rows(rows)
        b = self.core.num_envs
        out: dict[str, Any] = {"observation": obs}
        if self.reward_info:
            out["info"] = {k: torch.zeros(b, 1, dtype=torch.float32, device=self.device) for k in self._info_keys()}
        if self.config.differentiable:
            out["logits"] = torch.zeros(b, self.core.num_classes, *self.core.image_size, device=self.device)
        return self._fill(out, done=False)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        # terminal: the scored context itself is the next observation (the reset moves on); else the next image's
        next_obs, reward, info = self.core.step(tensordict.get("action"), advance_terminal=False)
        out: dict[str, Any] = {"observation": next_obs, "reward": reward.unsqueeze(-1)}  # (B, 1)  Eq. 15
        if self.reward_info:
            out["info"] = {k: info[k].unsqueeze(-1) for k in self._info_keys()}  # (B, 1) each
        if self.config.differentiable:
            out["logits"] = info["logits"]  # (B, K, H, W), with graph
        return self._fill(out, done=bool(info["terminated"]))

    def _set_seed(self, seed: Union[int, None]) -> None:
        self.core.seed(seed)

    def close(self, *, raise_if_closed: bool = True) -> None:
        self.core.close()
        self.is_closed = True


__all__ = ["SegBanditTorchEnv"]
