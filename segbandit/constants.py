"""Names the whole project shares, defined once: the void label, the ImageNet normalisation, the env's action bound."""
from __future__ import annotations

IGNORE_INDEX: int = 255  # the void label of VOC, Cityscapes-style masks and DigitScenes; ignored by CE, rewards, metrics
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # torchvision's normalisation of every backbone
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# The action bound of SegBandit's bounded front ends (TorchRL, SB3, SegBanditPooled-v0) and the magnitude of the
# shipped decoder's class-presence hint (agents.pretrain.presence_hint); the shipped policy's means can reach past it
# and are clipped.
DEFAULT_ACTION_BOUND: float = 3.0

__all__ = ["DEFAULT_ACTION_BOUND", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD"]
