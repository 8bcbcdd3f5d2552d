"""Registers ``SegBandit-v0`` with Gymnasium by entry-point strings (no import of ``envs`` here)."""
from __future__ import annotations

ENV_ID = "SegBandit-v0"


def register_envs() -> None:
    """Register ``SegBandit-v0`` (single and vector entry points) once; silently skip without gymnasium."""
    try:
        import gymnasium
    except ImportError:  # the core works without gymnasium
        return
    if ENV_ID in gymnasium.registry:
        return
    gymnasium.register(
        id=ENV_ID,
        entry_point="envs.single:SegBanditEnv",
        vector_entry_point="envs.vector:SegBanditVectorEnv",
    )
