"""Joint image/mask transforms on torchvision.transforms.v2 (tv_tensors.Image + tv_tensors.Mask).

Every pipeline here is a :class:`SegmentationTransform`: ``transform(image, mask) -> (image, mask)`` that takes
a raw sample (uint8 image ``(3, H, W)`` as tv_tensors.Image / tensor / PIL, mask ``(H, W)`` int) and returns plain
tensors: image float32 ``(3, h, w)`` normalised, mask int64 ``(h, w)`` with 255 = void. Geometric ops resize masks
with NEAREST (tv_tensors.Mask is coerced to nearest by v2) and pad them with 255. Horizontal flips of datasets
with left/right classes (human parsing) swap those labels on the mask (:class:`RandomHorizontalFlipSwap`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from segbandit.constants import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from segbandit.data.human_parsing import FLIP_PAIRS

_PAD_FILL = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
_TO_FLOAT = v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True)


class RandomRescale(v2.Transform):
    """Random keep-aspect rescale by a ratio ``r ~ U(scale_range)`` (mmsegmentation ``RandomResize`` rule).

    With ``base_size=(a, b)`` the target is the box ``(max(a,b)·r, min(a,b)·r)`` and the image is scaled by
    ``min(long_target / long_side, short_target / short_side)`` (mmseg ``keep_ratio=True``), so the rule is the
    same for portrait and landscape images. With ``base_size=None`` the factor is ``r`` itself (relative to the
    image's own size). ``v2.ScaleJitter`` was not used: it divides the *width* target by the image width, so with
    a non-square base like (512, 2048) it fits landscape and portrait images differently and matches mmseg only
    approximately. Masks are resized with NEAREST (v2 coerces tv_tensors.Mask to nearest).
    """

    def __init__(
        self,
        scale_range: tuple[float, float] = (0.5, 2.0),
        base_size: tuple[int, int] | None = None,
        interpolation: v2.InterpolationMode = v2.InterpolationMode.BILINEAR,
        antialias: bool = True,
    ) -> None:
        super().__init__()
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        if base_size is not None and (len(base_size) != 2 or min(base_size) <= 0):
            raise ValueError(f"base_size must be two positive ints (h, w) or None, got {base_size}")
        self.scale_range = (lo, hi)
        self.base_size = None if base_size is None else (int(base_size[0]), int(base_size[1]))
        self.interpolation = interpolation
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        sized = [x for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask, PIL.Image.Image))]
        if not sized:
            raise TypeError("RandomRescale needs a tv_tensors.Image, tv_tensors.Mask or PIL image in the sample")
        h, w = F.get_size(sized[0])
        lo, hi = self.scale_range
        r = lo + float(torch.rand(())) * (hi - lo)
        if self.base_size is None:
            factor = r
        else:
            long_t, short_t = max(self.base_size) * r, min(self.base_size) * r
            factor = min(long_t / max(h, w), short_t / min(h, w))
        return dict(size=[max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            F.resize, inpt, size=params["size"], interpolation=self.interpolation, antialias=self.antialias
        )


class RandomHorizontalFlipSwap(v2.Transform):
    """Horizontal flip with probability ``p`` that also exchanges paired labels on the mask (left <-> right).

    One random draw per sample: the image, the mask (and any boxes...) are all flipped or none is. On
    tv_tensors.Mask inputs only, each label ``a`` of a pair ``(a, b)`` in ``flip_pairs`` becomes ``b`` and vice
    versa (a left arm seen in a mirror is a right arm); other values, 255 = void included, are kept. With
    ``flip_pairs=()`` it is ``v2.RandomHorizontalFlip(p)``.
    """

    def __init__(self, p: float = 0.5, flip_pairs: Sequence[tuple[int, int]] = FLIP_PAIRS) -> None:
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        pairs = tuple((int(a), int(b)) for a, b in flip_pairs)
        seen = [v for pair in pairs for v in pair]
        if any(not 0 <= v < 256 for v in seen) or len(set(seen)) != len(seen):
            raise ValueError(f"flip_pairs must be pairs of distinct labels 0..255, each in one pair; got {flip_pairs}")
        self.p = float(p)
        self.flip_pairs = pairs
        lut = torch.arange(256, dtype=torch.int64)
        for a, b in pairs:
            lut[a], lut[b] = b, a
        self._lut = lut  # (256,) label -> the label of its mirror image

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return dict(flip=bool(torch.rand(()) < self.p))

    def _swap(self, mask: torch.Tensor) -> torch.Tensor:
        """Paired labels of ``mask`` (any shape, integer) exchanged; values outside 0..255 kept."""
        plain = mask.as_subclass(torch.Tensor)
        values = plain.to(torch.int64)
        inside = (values >= 0) & (values < 256)
        swapped = torch.where(inside, self._lut.to(plain.device)[values.clamp(0, 255)], values).to(plain.dtype)
        return tv_tensors.wrap(swapped, like=mask)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["flip"]:
            return inpt
        out = self._call_kernel(F.horizontal_flip, inpt)
        if isinstance(inpt, tv_tensors.Mask) and self.flip_pairs:
            out = self._swap(out)
        return out

    def extra_repr(self) -> str:
        return f"p={self.p}, flip_pairs={self.flip_pairs}"


def _as_image(image: Any) -> tv_tensors.Image:
    """PIL / ndarray (H,W,3) / tensor (3,H,W) -> tv_tensors.Image (3,H,W)."""
    if isinstance(image, tv_tensors.Image):
        out = image
    elif isinstance(image, PIL.Image.Image):
        out = tv_tensors.Image(F.pil_to_tensor(image.convert("RGB")))
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy image must be (H, W, 3), got {tuple(image.shape)}")
        out = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    elif isinstance(image, torch.Tensor):
        out = tv_tensors.Image(image)
    else:
        raise TypeError(f"image must be a tensor, tv_tensors.Image, PIL image or ndarray, got {type(image).__name__}")
    if out.ndim != 3 or out.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(out.shape)}")
    return out


def _as_mask(mask: Any) -> tv_tensors.Mask:
    """PIL / ndarray / tensor (H,W) or (1,H,W) -> tv_tensors.Mask int64 (H,W)."""
    if isinstance(mask, PIL.Image.Image):
        mask = np.array(mask)
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a tensor, tv_tensors.Mask, PIL image or ndarray, got {type(mask).__name__}")
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got {tuple(mask.shape)}")
    return tv_tensors.Mask(mask.as_subclass(torch.Tensor).to(torch.int64))


class SegmentationTransform:
    """A joint v2 pipeline: ``(image, mask) -> (image float32 (3,H,W), mask int64 (H,W))`` as plain tensors."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.pipeline = v2.Compose(list(transforms))

    def __call__(self, image: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = _as_image(image), _as_mask(mask)
        if image.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"image and mask sizes differ: image {tuple(image.shape)} vs mask {tuple(mask.shape)} (expected (3,H,W), (H,W))"
            )
        image, mask = self.pipeline(image, mask)
        image = image.as_subclass(torch.Tensor)  # (3, h, w)
        mask = mask.as_subclass(torch.Tensor)
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]  # (h, w)
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline!r})"


def _photometric(mild: bool) -> v2.RandomPhotometricDistort:
    """v2's photometric distortion (brightness/contrast/saturation/hue, plus a channel shuffle, each with p=0.5)."""
    if mild:
        return v2.RandomPhotometricDistort(
            brightness=(0.9, 1.1), contrast=(0.8, 1.2), saturation=(0.8, 1.2), hue=(-0.02, 0.02), p=0.5
        )
    return v2.RandomPhotometricDistort()


def train_transforms(
    crop_size: int | tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    base_size: tuple[int, int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    photometric: bool = True,
    *,
    flip: bool = True,
    mild_photometric: bool = False,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
) -> SegmentationTransform:
    """Random rescale -> random crop (pad image 0 / mask 255) -> h-flip -> photometric -> float -> normalise.

    Returns image float32 ``(3, *crop)`` and mask int64 ``crop``. mmseg's ``cat_max_ratio`` crop retry is not done.
    The flip is ``v2.RandomHorizontalFlip`` when ``flip_pairs`` is None, else :class:`RandomHorizontalFlipSwap`
    exchanging those labels on the mask (human parsing's left/right parts); ``flip=False`` drops it either way.
    """
    steps: list[Any] = [
        RandomRescale(scale_range, base_size),
        v2.RandomCrop(crop_size, pad_if_needed=True, fill=_PAD_FILL),
    ]
    if flip:
        flipper = v2.RandomHorizontalFlip() if flip_pairs is None else RandomHorizontalFlipSwap(flip_pairs=flip_pairs)
        steps.append(flipper)
    if photometric:
        steps.append(_photometric(mild_photometric))
    steps += [_TO_FLOAT, v2.Normalize(mean=list(mean), std=list(std))]
    return SegmentationTransform(steps)


def eval_transforms(
    size: int | tuple[int, int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    max_size: int | None = None,
) -> SegmentationTransform:
    """Optional resize (image bilinear, mask nearest) -> float -> normalise.

    ``size`` None keeps the image size; an int resizes the SHORT side to ``size`` (long side capped at ``max_size``,
    the mmseg keep-ratio test rule; batch 1); ``(h, w)`` resizes to exactly that (fixed-size batches).
    """
    steps: list[Any] = []
    if size is not None:
        if isinstance(size, int):
            steps.append(v2.Resize(size, max_size=max_size, antialias=True))
        else:
            if len(size) != 2:
                raise ValueError(f"size must be an int or (h, w), got {size}")
            steps.append(v2.Resize((int(size[0]), int(size[1])), antialias=True))
    steps += [_TO_FLOAT, v2.Normalize(mean=list(mean), std=list(std))]
    return SegmentationTransform(steps)


def voc_aug_preset(
    crop_size: int = 512,
    *,
    eval_size: int | tuple[int, int] | None = None,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
) -> tuple[SegmentationTransform, SegmentationTransform]:
    """The mmsegmentation / SSSegmentation VOC-aug recipe -> ``(train_tf, eval_tf)``.

    Train: rescale 0.5-2 of base ``(crop, 4·crop)`` = (512, 2048) at the default, crop ``crop_size``, flip,
    photometric distortion, ImageNet normalisation. Eval: short side to ``crop_size`` with the long side capped at
    ``4·crop_size`` (mmseg's keep-ratio (2048, 512) test resize; batch 1), or ``eval_size`` when given — pass
    ``(crop_size, crop_size)`` for fixed-size eval batches. ``flip_pairs``: see :func:`train_transforms`.
    """
    train_tf = train_transforms(
        crop_size, scale_range=(0.5, 2.0), base_size=(crop_size, 4 * crop_size), flip_pairs=flip_pairs
    )
    if eval_size is None:
        eval_tf = eval_transforms(crop_size, max_size=4 * crop_size)
    else:
        eval_tf = eval_transforms(eval_size)
    return train_tf, eval_tf


def cityscapes_preset(
    crop_size: int = 512,
    *,
    eval_size: int | tuple[int, int] | None = None,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
) -> tuple[SegmentationTransform, SegmentationTransform]:
    """The mmsegmentation Cityscapes recipe -> ``(train_tf, eval_tf)``; ``crop_size`` is the crop's short side.

    Train: rescale 0.5-2 of base ``(2·crop, 4·crop)`` = (1024, 2048) at the default (mmseg's scale (2048, 1024),
    keep ratio), crop ``(crop, 2·crop)`` = 512 x 1024, flip, photometric distortion, ImageNet normalisation. Eval:
    short side to ``2·crop`` with the long side capped at ``4·crop`` (mmseg's whole-image (2048, 1024) test resize:
    the release's 1024 x 2048 images at the default), or ``eval_size`` when given (``(h, w)`` for a fixed size).
    ``flip_pairs``: see :func:`train_transforms`.
    """
    crop = int(crop_size)
    train_tf = train_transforms(
        (crop, 2 * crop), scale_range=(0.5, 2.0), base_size=(2 * crop, 4 * crop), flip_pairs=flip_pairs
    )
    if eval_size is None:
        eval_tf = eval_transforms(2 * crop, max_size=4 * crop)
    else:
        eval_tf = eval_transforms(eval_size)
    return train_tf, eval_tf


def human_parsing_preset(
    crop_size: int = 473,
    *,
    eval_size: int | tuple[int, int] | None = None,
    flip_pairs: Sequence[tuple[int, int]] | None = FLIP_PAIRS,
) -> tuple[SegmentationTransform, SegmentationTransform]:
    """A LIP / CIHP recipe after SCHP (473 x 473 input) -> ``(train_tf, eval_tf)``.

    Train: keep-ratio rescale of the long side to ``crop·r``, ``r ~ U(0.75, 1.25)`` (SCHP's scale factor 0.25),
    crop ``crop_size`` square (pad image 0 / mask 255), horizontal flip swapping the left/right labels of
    ``flip_pairs`` (default ``FLIP_PAIRS``: arms, legs, shoes), no photometric distortion (SCHP uses none),
    ImageNet normalisation. SCHP's random rotation (+-30 degrees) and person-box affine warp are not done. Eval:
    resize to ``(crop_size, crop_size)`` (SCHP's test input size; the aspect is not kept), or ``eval_size`` when
    given (an int: short side, keep ratio, batch 1).
    """
    crop = int(crop_size)
    train_tf = train_transforms(
        crop, scale_range=(0.75, 1.25), base_size=(crop, crop), photometric=False, flip_pairs=flip_pairs
    )
    eval_tf = eval_transforms((crop, crop) if eval_size is None else eval_size)
    return train_tf, eval_tf


def digits_preset(size: int = 64) -> tuple[SegmentationTransform, SegmentationTransform]:
    """Light augmentation for digit scenes -> ``(train_tf, eval_tf)``.

    Train: rescale 0.75-1.25 (relative), crop ``size`` (pad 0 / 255), NO flip (digits are not mirror-symmetric),
    mild photometric distortion, ImageNet normalisation. Eval: normalisation only (scenes are rendered at ``size``,
    so a resize to ``(size, size)`` would be a no-op that costs as much as the rest of the transform).
    """
    train_tf = train_transforms(size, scale_range=(0.75, 1.25), base_size=None, flip=False, mild_photometric=True)
    eval_tf = eval_transforms(None)
    return train_tf, eval_tf
