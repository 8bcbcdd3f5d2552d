"""Registers ``SegBandit-v0``, ``SegBanditPooled-v0`` and ``SegPixelBandit-v0`` with Gymnasium by entry-point strings
(no import of ``envs``).

``ENV_KWARGS`` holds each id's keyword arguments (what ``gymnasium.make(id)`` passes on; the caller's override them),
``ENTRY_POINTS`` each id's single and vector entry points.
"""
from __future__ import annotations

from typing import Any

from segbandit.constants import DEFAULT_ACTION_BOUND

ENV_ID = "SegBandit-v0"
POOLED_ENV_ID = "SegBanditPooled-v0"
PIXEL_ENV_ID = "SegPixelBandit-v0"
# id -> the env's keyword arguments: the paper's dense latent bandit, and an RL-ready variant for MLP clients
# (pooled observation, bounded channel action, the paired reward r(s) - r(0), episodes of 16 images so that a
# NEXT_STEP-autoreset client spends 1/17 of its steps on resets, latents cached after an image's first encoding)
ENV_KWARGS: dict[str, dict[str, Any]] = {
    ENV_ID: {},
    POOLED_ENV_ID: {"obs_mode": "pooled", "action_mode": "channel", "action_bound": DEFAULT_ACTION_BOUND,
                    "paired_reward": True, "episode_length": 16, "cache_latents": True},
    # reward-only segmentation: the agent is the segmentor (observes the image, acts with a label map)
    PIXEL_ENV_ID: {},
}
_LATENT_ENTRY_POINTS = ("envs.single:SegBanditEnv", "envs.vector:SegBanditVectorEnv")
# id -> (entry_point, vector_entry_point)
ENTRY_POINTS: dict[str, tuple[str, str]] = {
    ENV_ID: _LATENT_ENTRY_POINTS,
    POOLED_ENV_ID: _LATENT_ENTRY_POINTS,
    PIXEL_ENV_ID: ("envs.pixel:SegPixelBanditEnv", "envs.pixel:SegPixelBanditVectorEnv"),
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
        entry_point, vector_entry_point = ENTRY_POINTS[env_id]
        gymnasium.register(
            id=env_id,
            entry_point=entry_point,
            vector_entry_point=vector_entry_point,
            kwargs=dict(kwargs),
        )
