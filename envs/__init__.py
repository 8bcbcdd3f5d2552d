"""``SegBandit-v0``: semantic segmentation as a contextual bandit for Gymnasium, TorchRL and Stable-Baselines3.

- :class:`SegBanditVectorEnv` — the natively batched Gymnasium vector env (same-step autoreset);
- :class:`SegBanditEnv` — the single env, a ``num_envs=1`` view of it;
- :class:`SegBanditTorchEnv` — a TorchRL ``EnvBase`` with ``batch_size=[B]``;
- :class:`SB3VecEnv` — a Stable-Baselines3 ``VecEnv`` adapter.

All share :class:`envs.core.SegBanditCore`. ``gymnasium.make_vec(..., vectorization_mode="sync")`` builds Gymnasium's
``SyncVectorEnv`` of single envs, whose default NEXT_STEP autoreset spends every other step on a reset here
(every step terminates): pass ``vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}``, or use the native
``vectorization_mode="vector_entry_point"``. Importing this package imports ``segbandit``, which registers
``SegBandit-v0`` and ``SegPixelBandit-v0`` with Gymnasium (``gymnasium.make`` / ``gymnasium.make_vec``).

``SegPixelBandit-v0`` (reward-only segmentation: the agent is the segmentor, observing images and acting with label
maps) has the same front ends as thin subclasses (:class:`SegPixelBanditVectorEnv`, :class:`SegPixelBanditEnv` in
``envs.pixel``, :class:`SegPixelBanditTorchEnv` in ``envs.torchrl_env``) over :class:`envs.pixel.SegPixelBanditCore`;
both cores draw their images from one :class:`envs.stream.ImageStream`.
"""
import segbandit  # noqa: F401  (registers SegBandit-v0 and SegPixelBandit-v0)
from envs.core import ACTION_MODES, ARRAY_TYPES, OBS_MODES, REWARD_TERMS, SegBanditConfig, SegBanditCore
from envs.pixel import SegPixelBanditConfig, SegPixelBanditCore, SegPixelBanditEnv, SegPixelBanditVectorEnv
from envs.single import SegBanditEnv
from envs.stream import ImageStream
from envs.vector import SegBanditVectorEnv

_LAZY = {"SegBanditTorchEnv": "envs.torchrl_env", "SegPixelBanditTorchEnv": "envs.torchrl_env", "SB3VecEnv": "envs.sb3"}


def __getattr__(name: str):
    """Import the TorchRL and Stable-Baselines3 front ends on first use (they pull in heavy libraries)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")


__all__ = [
    "ACTION_MODES",
    "ARRAY_TYPES",
    "ImageStream",
    "OBS_MODES",
    "REWARD_TERMS",
    "SB3VecEnv",
    "SegBanditConfig",
    "SegBanditCore",
    "SegBanditEnv",
    "SegBanditTorchEnv",
    "SegBanditVectorEnv",
    "SegPixelBanditConfig",
    "SegPixelBanditCore",
    "SegPixelBanditEnv",
    "SegPixelBanditTorchEnv",
    "SegPixelBanditVectorEnv",
]
