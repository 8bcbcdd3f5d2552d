"""Datasets (PASCAL VOC 2012, Cityscapes, ADE20K, embedded digit scenes; cross-domain: Dark Zurich and Nighttime
Driving night-time driving, LIP and CIHP human parsing) and joint image/mask transforms.

Every dataset returns ``(image, mask)``; through the preset transforms image float32 ``(3, H, W)`` normalised and
mask int64 ``(H, W)`` with 255 = void, so ``torch.utils.data.default_collate`` batches them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from segbandit.data.ade20k import ADE20K_CLASSES, ADE20KSegmentation, find_ade20k
from segbandit.data.cityscapes import CITYSCAPES_CLASSES, CityscapesSegmentation, find_cityscapes
from segbandit.data.dark_zurich import DarkZurichSegmentation, find_dark_zurich
from segbandit.data.digits import DIGIT_CLASSES, DigitScenes
from segbandit.data.human_parsing import (
    FLIP_LUT,
    FLIP_PAIRS,
    HUMAN_PARSING_CLASSES,
    CIHPSegmentation,
    LIPSegmentation,
    find_cihp,
    find_lip,
)
from segbandit.data.nighttime_driving import NighttimeDrivingSegmentation, find_nighttime_driving
from segbandit.data.transforms import (
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomHorizontalFlipSwap,
    RandomRescale,
    SegmentationTransform,
    cityscapes_preset,
    digits_preset,
    eval_transforms,
    human_parsing_preset,
    train_transforms,
    voc_aug_preset,
)
from segbandit.data.voc import VOC_CLASSES, VOCSegmentation, find_voc2012
from segbandit.errors import DataError

_TRAIN_SPLITS = ("train", "trainaug")  # "train" of every dataset, VOC's SBD-augmented one
_DEFAULT = object()


def _make_digits(
    split: str, *, root: str | Path | None, seed: int, image_size: int | None, train: bool, transforms: Any, **kw: Any
) -> DigitScenes:
    size = 64 if image_size is None else int(image_size)
    if transforms is _DEFAULT:
        train_tf, eval_tf = digits_preset(size)
        transforms = train_tf if train else eval_tf
    return DigitScenes(split, seed=seed, size=size, transforms=transforms, **kw)


def _square(crop: int) -> tuple[int, int]:
    return (crop, crop)


def _files_builder(cls: type, find: Callable[[Any], Path], preset: Callable[..., Any],
                   eval_shape: Callable[[int], tuple[int, int]]) -> Callable[..., Dataset]:
    """The ``make_dataset`` builder of an on-disk dataset: check the root, pick the preset transforms, build ``cls``.

    ``image_size`` is the crop (its short side for Cityscapes; default 512); eval resizes to the fixed
    ``eval_shape(crop)`` so that eval batches collate, unless ``eval_size=`` is given (e.g. ``crop`` for VOC's
    short-side protocol, ``(1024, 2048)`` for mmsegmentation's Cityscapes test size).
    """

    def make(split: str, *, root: str | Path | None, seed: int, image_size: int | None, train: bool,
             transforms: Any, eval_size: int | tuple[int, int] | None = None, **kw: Any) -> Dataset:
        find(root)  # a missing root raises the DataError describing the expected layout, before any work
        crop = 512 if image_size is None else int(image_size)
        if transforms is _DEFAULT:
            train_tf, eval_tf = preset(crop, eval_size=eval_shape(crop) if eval_size is None else eval_size)
            transforms = train_tf if train else eval_tf
        return cls(root, split, transforms=transforms, **kw)

    make.__name__ = f"_make_{cls.__name__}"
    return make


DATASETS = {
    "digits": _make_digits,
    "voc": _files_builder(VOCSegmentation, find_voc2012, voc_aug_preset, _square),
    # crops (crop, 2 crop) of the 1024 x 2048 images; eval at a fixed (crop, 2 crop)
    "cityscapes": _files_builder(CityscapesSegmentation, find_cityscapes, cityscapes_preset, lambda c: (c, 2 * c)),
    # mmseg's ADE20K pipeline is its VOC-aug one (base (512, 2048), ratio 0.5-2, crop 512, flip, photometric)
    "ade20k": _files_builder(ADE20KSegmentation, find_ade20k, voc_aug_preset, _square),
    # evaluation-only night-time sets (val / test split only) for Cityscapes-trained models: the Cityscapes preset,
    # eval at the fixed (crop, 2 crop) of Cityscapes (the releases' 1080 x 1920 frames are 16:9; eval_size= overrides)
    "dark_zurich": _files_builder(DarkZurichSegmentation, find_dark_zurich, cityscapes_preset, lambda c: (c, 2 * c)),
    "nighttime_driving": _files_builder(
        NighttimeDrivingSegmentation, find_nighttime_driving, cityscapes_preset, lambda c: (c, 2 * c)
    ),
    # human parsing: square crops, flips that swap left/right parts (FLIP_PAIRS), square eval
    "lip": _files_builder(LIPSegmentation, find_lip, human_parsing_preset, _square),
    "cihp": _files_builder(CIHPSegmentation, find_cihp, human_parsing_preset, _square),
}


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
    ``image_size``: digits scene size (default 64; also the crop); VOC, ADE20K, LIP and CIHP crop size (default 512;
    eval resize to ``(image_size, image_size)``); Cityscapes, Dark Zurich and Nighttime Driving crop short side
    (default 512: crop and eval resize ``(image_size, 2 * image_size)``). The on-disk datasets take ``eval_size=``
    (an int: short side, keep ratio, batch 1; ``(h, w)``: fixed). ``transforms=`` overrides the preset (None = raw).
    Other keywords go to the dataset class (e.g. ``num_samples`` for digits).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    is_train = split in _TRAIN_SPLITS if train is None else bool(train)
    return DATASETS[name](split, root=root, seed=seed, image_size=image_size, train=is_train, transforms=transforms, **kw)


__all__ = [
    "ADE20KSegmentation",
    "ADE20K_CLASSES",
    "CIHPSegmentation",
    "CITYSCAPES_CLASSES",
    "CityscapesSegmentation",
    "DATASETS",
    "DIGIT_CLASSES",
    "DarkZurichSegmentation",
    "DataError",
    "DigitScenes",
    "FLIP_LUT",
    "FLIP_PAIRS",
    "HUMAN_PARSING_CLASSES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LIPSegmentation",
    "NighttimeDrivingSegmentation",
    "RandomHorizontalFlipSwap",
    "RandomRescale",
    "SegmentationTransform",
    "VOCSegmentation",
    "VOC_CLASSES",
    "cityscapes_preset",
    "digits_preset",
    "eval_transforms",
    "find_ade20k",
    "find_cihp",
    "find_cityscapes",
    "find_dark_zurich",
    "find_lip",
    "find_nighttime_driving",
    "find_voc2012",
    "human_parsing_preset",
    "make_dataset",
    "train_transforms",
    "voc_aug_preset",
]
