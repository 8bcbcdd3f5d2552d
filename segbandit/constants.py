"""Names the whole project shares, defined once: the void label and the ImageNet normalisation."""
from __future__ import annotations

IGNORE_INDEX: int = 255  # the void label of VOC, Cityscapes-style masks and DigitScenes; ignored by CE, rewards, metrics
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)  # torchvision's normalisation of every backbone
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

__all__ = ["IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD"]
