"""The smallest shim that runs CleanRL's ``ppo_continuous_action.py`` (written for gymnasium 0.29) under gymnasium 1.x.

CleanRL builds ``gym.wrappers.TransformObservation(env, f)``; gymnasium 1.x wants the observation space as a third
argument (``TypeError: TransformObservation.__init__() missing 1 required positional argument:
'observation_space'``).  :func:`apply` gives it a default, the wrapped env's own space (CleanRL's clip keeps it).
Nothing else in the script is changed; the env is reached through ``gym.make("segbandit:SegBanditPooled-v0")``.
"""
from __future__ import annotations

import gymnasium as gym


def apply() -> None:
    """Make ``TransformObservation``'s ``observation_space`` optional (default: the env's), once."""
    cls = gym.wrappers.TransformObservation
    if getattr(cls, "_segbandit_shim", False):
        return
    original = cls.__init__

    def __init__(self, env, func, observation_space=None):  # noqa: N807 (the wrapper's own signature)
        original(self, env, func, env.observation_space if observation_space is None else observation_space)

    cls.__init__ = __init__
    cls._segbandit_shim = True
