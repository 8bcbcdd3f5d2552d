"""``SegBanditEnv``: the single-image ``SegBandit-v0``, a ``num_envs=1`` view of :class:`SegBanditVectorEnv`.

No second implementation: ``step`` runs the vector env's (same-step autoreset) step on a batch of one,
returns the scored observation as the terminal observation, and keeps the next image's observation, which
the following ``reset()`` hands out without encoding anything again. ``reset(seed=...)`` re-seeds the
image order and draws afresh.

Every step terminates (a one-step episode, gamma = 1), or every K-th with ``episode_length=K`` (K images per
episode, the next image as the next observation). Stepping again after a terminal step without ``reset()``
continues on the next image, as the vector env's same-step autoreset does; call ``reset()`` to see its
observation first.

Generic over its vector env: ``vector_cls`` (a class attribute) names it; :class:`envs.pixel.SegPixelBanditEnv`
is the ``SegPixelBandit-v0`` subclass.
"""
from __future__ import annotations

from typing import Any, Union

import gymnasium as gym
import numpy as np
from torch import Tensor

from envs.vector import SegBanditVectorEnv
from segbandit.reference_scores import reference_table


def _item(value: Any) -> Any:
    """One sub-env's diagnostic: a Python float for a scalar, the array (or tensor) itself for a map."""
    return float(value) if getattr(value, "ndim", 0) == 0 else value


class SegBanditEnv(gym.Env):
    """One image per step. Keyword arguments: those of :class:`envs.core.SegBanditConfig` (not ``num_envs``).

    ## Description
    Semantic segmentation as a contextual bandit: an image's latent ``z`` (the frozen encoder's features) is the
    context, the action is the modulation signal ``s`` the decoder reads beside ``z``, the reward scores the decoded
    mask (Eq. 15). ``gym.make("SegBandit-v0")`` decodes with the shipped segmentor, whose decoder reads from ``s``
    which digits an image holds (the hint construction, docs/benchmark.md): a policy that infers it from ``z`` gains
    reward the zero action does not get.

    ## Observation space
    ``SegBandit-v0``: ``z``, ``Box(-inf, inf, (64, 16, 16), float32)``; ``SegBanditPooled-v0``: its spatial mean,
    ``Box(-inf, inf, (64,), float32)``.

    ## Action space
    ``SegBandit-v0``: a dense signal ``Box(-inf, inf, (64, 16, 16), float32)`` (the paper's Gaussian action);
    ``SegBanditPooled-v0``: one value per channel, ``Box(-3, 3, (64,), float32)``, broadcast over space (actions
    are clipped to the bound).

    ## Rewards
    Eq. 15, ``IoU + Dice + 1 / (1 + CE) + boundary F1`` of the decoded mask, in [0, 4] (each term in ``info``);
    ``SegBanditPooled-v0`` returns the paired gain ``r(s) - r(0)`` on the same image, in [-4, 4], with ``r(0)`` as
    ``info["reward_zero"]``.

    ## Starting state and episode end
    ``reset(seed=...)`` seeds the image order (deterministic without augmentation). Every step scores one image;
    ``SegBandit-v0`` terminates after each (a one-step bandit), ``SegBanditPooled-v0`` after 16 (``episode_length``).
    No truncation.

    ## Reference scores
    Mean reward (Eq. 15, the plain reward for both ids) on the first 256 val scenes
    (``segbandit.REFERENCE_SCORES``; ``segbandit.normalized_score``; ``python benchmarks/reference_scores.py``):

    {reference_table}

    ## Version history
    - v0: the digits at 64 px, ``fcn_resnet_tiny`` with the shipped segmentor of the hint construction
      (``segbandit/weights/digits_cotrained.pt``, ``python examples/make_pretrained.py``).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 4}
    vector_cls: type = SegBanditVectorEnv  # the vector env this is a num_envs=1 view of

    def __init__(self, **kwargs: Any) -> None:
        if "num_envs" in kwargs:
            raise TypeError(f"{type(self).__name__} is a single env; use {self.vector_cls.__name__} "
                            "(or gymnasium.make_vec) for num_envs")
        self.vector_env = self.vector_cls(num_envs=1, **kwargs)
        self.observation_space = self.vector_env.single_observation_space
        self.action_space = self.vector_env.single_action_space
        self.render_mode = self.vector_env.render_mode
        self.metadata = dict(type(self).metadata)
        if self.vector_env.array_type == "torch":
            self.metadata["torch"] = True  # lets gymnasium's check_env convert through TorchToNumpy
        self._next_obs: Union[np.ndarray, Tensor, None] = None

    @property
    def segmentor(self):
        """The segmentor the env decodes with."""
        return self.vector_env.segmentor

    @property
    def reward_fn(self):
        """The composite reward (Eq. 15)."""
        return self.vector_env.reward_fn

    @property
    def config(self):
        return self.vector_env.config

    def reset(
        self, *, seed: Union[int, None] = None, options: Union[dict[str, Any], None] = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None and self._next_obs is not None:
            obs = self._next_obs  # already encoded by the last step
        else:
            obs, _ = self.vector_env.reset(seed=seed, options=options)
        self._next_obs = None
        return obs[0], {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        batch = self.vector_env.core.check_action(action, batched=False)  # (1, *action_shape), errors name the single shape
        obs, reward, terminated, _, info = self.vector_env.step(batch)
        step_info = {k: _item(info[k][0]) for k in self.vector_env.core.info_keys if k in info}
        if not bool(terminated[0]):  # within an episode of several images: the next image is the next observation
            return obs[0], float(reward[0]), False, False, step_info
        self._next_obs = obs
        return info["final_obs"][0], float(reward[0]), True, False, step_info

    def render(self) -> Union[np.ndarray, None]:
        """With ``render_mode="rgb_array"``: image | truth | prediction (H, 3W, 3) uint8 of the last scored image."""
        frames = self.vector_env.render()
        return None if frames is None else frames[0]

    def close(self) -> None:
        if "vector_env" in self.__dict__:
            self.vector_env.close()
        super().close()


__all__ = ["SegBanditEnv"]


# the spec sheet's reference scores, from the one constant that holds them
if SegBanditEnv.__doc__:  # None under python -OO
    SegBanditEnv.__doc__ = SegBanditEnv.__doc__.format(reference_table=reference_table().replace("\n", "\n    "))
