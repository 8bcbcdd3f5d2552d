"""Datasets (PASCAL VOC 2012, embedded digit scenes) and joint image/mask transforms.

Every dataset returns ``(image, mask)``; through the preset transforms image float32 ``(3, H, W)`` normalised and
mask int64 ``(H, W)`` with 255 = void, so ``torch.utils.data.default_collate`` batches them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from segbandit.data.digits import DIGIT_CLASSES, DigitScenes
from segbandit.data.transforms import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomRescale,
    SegmentationTransform,
    digits_preset,
    eval_transforms,
    train_transforms,
    voc_aug_preset,
)
from segbandit.data.voc import VOC_CLASSES, VOCSegmentation, find_voc2012
from segbandit.errors import DataError

_TRAIN_SPLITS = ("train", "trainaug")
_DEFAULT = object()


def _make_digits(
    split: str, *, root: str | Path | None, seed: int, image_size: int | None, train: bool, transforms: Any, **kw: Any
) -> DigitScenes:
    size = 64 if image_size is None else int(image_size)
    if transforms is _DEFAULT:
        train_tf, eval_tf = digits_preset(size)
        transforms = train_tf if train else eval_tf
    return DigitScenes(split, seed=seed, size=size, transforms=transforms, **kw)


def _make_voc(
    split: str,
    *,
    root: str | Path | None,
    seed: int,
    image_size: int | None,
    train: bool,
    transforms: Any,
    eval_size: int | tuple[int, int] | None = None,
    **kw: Any,
) -> VOCSegmentation:
    find_voc2012(root)  # a missing root raises the DataError describing the expected layout, before any work
    crop = 512 if image_size is None else int(image_size)
    if transforms is _DEFAULT:
        # fixed square eval by default so that eval batches collate; pass eval_size=crop for the short-side protocol
        train_tf, eval_tf = voc_aug_preset(crop, eval_size=(crop, crop) if eval_size is None else eval_size)
        transforms = train_tf if train else eval_tf
    return VOCSegmentation(root, split, transforms=transforms, **kw)


DATASETS = {"digits": _make_digits, "voc": _make_voc}


def make_dataset(
    name: str,
    split: str,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    image_size: int | None = None,
    train: bool | None = None,
    transforms: Any = _DEFAULT,
    **kw: Any,
) -> Dataset:
    """Build dataset ``name`` (``DATASETS``) with its preset transforms.

    ``train`` None picks train transforms for the train/trainaug splits and eval transforms otherwise.
    ``image_size``: digits scene size (default 64; also the crop), VOC crop size (default 512; eval resize to
    ``(image_size, image_size)`` unless ``eval_size=`` is given). ``transforms=`` overrides the preset (None = raw).
    Other keywords go to the dataset class (e.g. ``num_samples`` for digits).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    is_train = split in _TRAIN_SPLITS if train is None else bool(train)
    return DATASETS[name](split, root=root, seed=seed, image_size=image_size, train=is_train, transforms=transforms, **kw)


__all__ = [
    "DATASETS",
    "DIGIT_CLASSES",
    "DataError",
    "DigitScenes",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomRescale",
    "SegmentationTransform",
    "VOCSegmentation",
    "VOC_CLASSES",
    "digits_preset",
    "eval_transforms",
    "find_voc2012",
    "make_dataset",
    "train_transforms",
    "voc_aug_preset",
]
