"""Colours and pictures of label maps: the VOC palette, colourised masks, overlays, side-by-side panels.

Plain numpy / torch (no plotting library): the main job's overlay PNGs (``agents.reporting``) and the env's
``render()`` (``envs``) both draw with these.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from segbandit.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

VOID_COLOUR: tuple[int, int, int] = (255, 255, 255)


def voc_palette(num_colours: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (num_colours, 3) uint8 (class 0 black, 1 dark red, 2 dark green, ...)."""
    idx = np.arange(num_colours)
    palette = np.zeros((num_colours, 3), dtype=np.int64)
    c = idx.copy()
    for j in range(8):  # the 8 bit-planes of the label index (not a data loop)
        for ch in range(3):
            palette[:, ch] |= ((c >> ch) & 1) << (7 - j)
        c >>= 3
    return palette.astype(np.uint8)


def colorize(mask: torch.Tensor | np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Label map (H, W) -> RGB (H, W, 3) uint8 with the VOC palette; void drawn white."""
    m = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = m.astype(np.int64)
    rgb = voc_palette(256)[np.clip(m, 0, 255)]  # (H, W, 3)
    rgb[m == ignore_index] = VOID_COLOUR
    return rgb


def denormalize(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo the ImageNet normalisation: (B, 3, H, W) -> float in [0, 1]."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (images.float() * s + m).clamp(0.0, 1.0)


def overlay(image: np.ndarray, mask: torch.Tensor | np.ndarray, alpha: float = 0.6, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Blend a colourised label map onto image (H, W, 3) float [0, 1]; background (0) and void stay see-through."""
    m = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    colour = colorize(m, ignore_index).astype(np.float32) / 255.0
    a = np.where((m == 0) | (m == ignore_index), 0.0, alpha)[..., None]
    return image * (1 - a) + colour * a


def side_by_side(images: torch.Tensor, masks: torch.Tensor, preds: torch.Tensor | None,
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Frames (B, H, 3W, 3) uint8: image | truth overlay | prediction overlay, for normalised images (B, 3, H, W).

    ``preds`` (B, H, W) int, or None for an empty (black) prediction panel.
    """
    if images.dim() != 4 or images.shape[1] != 3 or masks.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"expected images (B, 3, H, W) and masks (B, H, W), got {tuple(images.shape)} and "
                         f"{tuple(masks.shape)}")
    imgs = denormalize(images).permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) in [0, 1]
    frames = []
    for i in range(imgs.shape[0]):  # one frame per sub-env (a handful of panels, not a pixel loop)
        pred = np.zeros_like(imgs[i]) if preds is None else overlay(imgs[i], preds[i], ignore_index=ignore_index)
        frames.append(np.concatenate([imgs[i], overlay(imgs[i], masks[i], ignore_index=ignore_index), pred], axis=1))
    return (np.stack(frames) * 255.0).round().astype(np.uint8)  # (B, H, 3W, 3)


__all__ = ["VOID_COLOUR", "colorize", "denormalize", "overlay", "side_by_side", "voc_palette"]
