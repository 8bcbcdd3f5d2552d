"""segbandit: semantic segmentation as a contextual bandit for latent-space policy-gradient RL.

``import segbandit`` registers the Gymnasium environments ``SegBandit-v0`` (the paper's dense latent bandit) and
``SegBanditPooled-v0`` (pooled latents, bounded channel actions), both on the shipped co-trained segmentor, and
``SegPixelBandit-v0`` (reward-only segmentation: images in, label maps out);
``REFERENCE_SCORES`` and ``normalized_score`` put a policy's mean reward on their reference scale.
"""
from segbandit._registration import ENV_ID, ENV_KWARGS, PIXEL_ENV_ID, POOLED_ENV_ID, register_envs
from segbandit.reference_scores import REFERENCE_SCORES, normalized_score

__version__ = "0.1.0"

register_envs()

__all__ = ["ENV_ID", "ENV_KWARGS", "PIXEL_ENV_ID", "POOLED_ENV_ID", "REFERENCE_SCORES", "__version__", "normalized_score"]
