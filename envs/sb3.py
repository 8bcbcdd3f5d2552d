"""``SB3VecEnv``: a Stable-Baselines3 ``VecEnv`` over one natively batched :class:`SegBanditVectorEnv`.

Stable-Baselines3 has no adapter for Gymnasium's ``VectorEnv``; this is it. Its contract: numpy arrays,
``dones`` (True at every step of one-step episodes, every K-th with ``episode_length=K``), the scored observation
in each done sub-env's info as ``terminal_observation``, and ``reset()`` returning only observations. The ``B`` sub-envs are one object, so
``get_attr`` / ``env_method`` read or call the shared vector env once and report the result per sub-env.

Stable-Baselines3's ``check_env`` refuses action Boxes without finite bounds and recommends [-1, 1]: when the
adapter builds the vector env itself, ``action_bound`` defaults to 1.0.
"""
from __future__ import annotations

import warnings
from typing import Any, Union

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from envs.core import REWARD_TERMS
from envs.vector import SegBanditVectorEnv


class SB3VecEnv(VecEnv):
    """Stable-Baselines3 view of ``SegBandit-v0``.

    Args:
        env: an existing ``SegBanditVectorEnv`` with ``array_type="numpy"``; or None to build one from
            ``num_envs`` and ``**kwargs`` (the fields of :class:`envs.core.SegBanditConfig`).
    """

    def __init__(self, env: Union[SegBanditVectorEnv, None] = None, num_envs: int = 1, **kwargs: Any) -> None:
        if env is None:
            kwargs.setdefault("action_bound", 1.0)
            env = SegBanditVectorEnv(num_envs=num_envs, **kwargs)
        elif kwargs:
            raise TypeError(f"pass either an env or keyword arguments to build one, not both (got {sorted(kwargs)})")
        if not isinstance(env, SegBanditVectorEnv):
            raise ValueError(f"expected a SegBanditVectorEnv, got {type(env).__name__}")
        if env.array_type != "numpy":
            raise ValueError(f"Stable-Baselines3 needs array_type='numpy', got array_type={env.array_type!r}")
        self.venv = env
        self._actions: Union[np.ndarray, None] = None
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

    # ------------------------------------------------------------------ stepping
    def reset(self) -> VecEnvObs:
        """Reset with the seed given to :meth:`seed` (the first sub-env's; used once), or continue the image stream."""
        seed = self._seeds[0]
        obs, _ = self.venv.reset(seed=seed, options=self._options[0] or None)
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        actions, self._actions = self._actions, None
        obs, reward, terminated, truncated, info = self.venv.step(actions)
        dones = np.logical_or(terminated, truncated)
        infos: list[dict[str, Any]] = []
        keys = [k for k in (*REWARD_TERMS, "reward_zero") if k in info]
        for i in range(self.num_envs):  # SB3 wants one dict per sub-env
            env_info = {k: float(info[k][i]) for k in keys}
            if dones[i]:  # the last image of an episode (every step with episode_length 1)
                env_info["terminal_observation"] = info["final_obs"][i]
                env_info["TimeLimit.truncated"] = bool(truncated[i]) and not bool(terminated[i])
            infos.append(env_info)
        return obs, np.asarray(reward, dtype=np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    # ------------------------------------------------------------------ attribute plumbing
    def _indices(self, indices: VecEnvIndices) -> list[int]:
        return list(self._get_indices(indices))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The shared vector env's attribute, once per requested sub-env."""
        value = getattr(self.venv, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute of the shared vector env: the sub-envs are one object, so all of them at once."""
        if sorted(self._indices(indices)) != list(range(self.num_envs)):
            raise ValueError(
                f"the {self.num_envs} sub-envs share one SegBanditVectorEnv: set_attr must address all of them, "
                f"got indices {self._indices(indices)}"
            )
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        """Call a method of the shared vector env once; its result is reported for each requested sub-env."""
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """The sub-envs are not Gymnasium envs and carry no wrappers."""
        return [False for _ in self._indices(indices)]

    def seed(self, seed: Union[int, None] = None) -> list[Union[int, None]]:
        """Seed the next reset (the image order); returns per-sub-env seeds as SB3 does."""
        return list(super().seed(seed))

    def get_images(self) -> list[None]:
        warnings.warn("SegBandit-v0 does not render")
        return [None for _ in range(self.num_envs)]


__all__ = ["SB3VecEnv"]
