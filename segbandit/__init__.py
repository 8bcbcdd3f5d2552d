"""segbandit: semantic segmentation as a contextual bandit for latent-space policy-gradient RL.

``import segbandit`` registers the Gymnasium environment ``SegBandit-v0``.
"""
from segbandit._registration import ENV_ID, register_envs

__version__ = "0.1.0"

register_envs()

__all__ = ["ENV_ID", "__version__"]
