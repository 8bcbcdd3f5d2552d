"""Registers ``SegBandit-v0`` and ``SegBanditPooled-v0`` with Gymnasium by entry-point strings (no import of ``envs``).

``ENV_KWARGS`` holds each id's keyword arguments (what ``gymnasium.make(id)`` passes on; the caller's override them).
"""
from __future__ import annotations

from typing import Any

from segbandit.constants import DEFAULT_ACTION_BOUND

ENV_ID = "SegBandit-v0"
POOLED_ENV_ID = "SegBanditPooled-v0"
# id -> the env's keyword arguments: the paper's dense latent bandit, and an RL-ready variant for MLP clients
# (pooled observation, bounded channel action, the paired reward r(s) - r(0), episodes of 16 images so that a
# NEXT_STEP-autoreset client spends 1/17 of its steps on resets, latents cached after an image's first encoding)
ENV_KWARGS: dict[str, dict[str, Any]] = {
    ENV_ID: {},
    POOLED_ENV_ID: {"obs_mode": "pooled", "action_mode": "channel", "action_bound": DEFAULT_ACTION_BOUND,
                    "paired_reward": True, "episode_length": 16, "cache_latents": True},
}


def register_envs() -> None:
    """Register every id of ``ENV_KWARGS`` (single and vector entry points) once; silently skip without gymnasium."""
    try:
        import gymnasium
    except ImportError:  # the core works without gymnasium
        return
    for env_id, kwargs in ENV_KWARGS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(
            id=env_id,
            entry_point="envs.single:SegBanditEnv",
            vector_entry_point="envs.vector:SegBanditVectorEnv",
            kwargs=dict(kwargs),
        )
