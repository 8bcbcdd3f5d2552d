"""Nighttime Driving test (Dai & Van Gool 2018; coarse Cityscapes-style labels) in its release layout."""

from __future__ import annotations

import os
from pathlib import Path

from segbandit.data.cityscapes import CityscapesSegmentation, pick_label
from segbandit.data.files import find_release
from segbandit.errors import DataError

SPLITS: tuple[str, ...] = ("test",)
RELEASE_DIR = "NighttimeDrivingTest"
IMAGE_DIR = "leftImg8bit"
LABEL_DIR = "gtCoarse_daytime_trainvaltest"
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_ID_SUFFIX = "_gtCoarse_labelIds.png"
TRAIN_ID_SUFFIX = "_gtCoarse_labelTrainIds.png"
_CONDITION = "night"

_LAYOUT_HINT = (
    "expected <root>/leftImg8bit/test/night/<stem>_leftImg8bit.png and "
    "<root>/gtCoarse_daytime_trainvaltest/test/night/<stem>_gtCoarse_labelTrainIds.png (or _gtCoarse_labelIds.png); "
    "NighttimeDrivingTest.zip of Dai & Van Gool 2018; the root is NighttimeDrivingTest or the folder containing it"
)


def find_nighttime_driving(root: str | Path | None) -> Path:
    """Resolve ``root`` (``NighttimeDrivingTest``, or the folder containing it) to the folder with the images."""
    return find_release(root, "Nighttime Driving", RELEASE_DIR, (IMAGE_DIR, LABEL_DIR), _LAYOUT_HINT)


def _list_split(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    """Stems, image paths and label paths of ``split``, sorted by stem (one directory listing per folder)."""
    image_dir, label_dir = root / IMAGE_DIR / split / _CONDITION, root / LABEL_DIR / split / _CONDITION
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder of split {split!r} not found; {_LAYOUT_HINT}")
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: label folder of split {split!r} not found; {_LAYOUT_HINT}")
    stems = sorted(n[: -len(IMAGE_SUFFIX)] for n in os.listdir(image_dir) if n.endswith(IMAGE_SUFFIX))
    if not stems:
        raise DataError(f"{image_dir}: split {split!r} has no *{IMAGE_SUFFIX} images; {_LAYOUT_HINT}")
    present = set(os.listdir(label_dir))
    images = [image_dir / (s + IMAGE_SUFFIX) for s in stems]
    masks = [pick_label(label_dir, present, stem, (TRAIN_ID_SUFFIX, LABEL_ID_SUFFIX), image, _LAYOUT_HINT)
             for stem, image in zip(stems, images)]
    return stems, images, masks


class NighttimeDrivingSegmentation(CityscapesSegmentation):
    """Nighttime Driving test (50 night images, Cityscapes' 19 classes); ``__getitem__(i) -> (image, mask)``.

    Without ``transforms``: image tv_tensors.Image uint8 ``(3, H, W)`` (1080 x 1920 in the release), mask
    tv_tensors.Mask int64 ``(H, W)`` of Cityscapes train ids 0..18 with 255 = void. With ``transforms(image,
    mask)`` whatever it returns (the Cityscapes preset gives float32 ``(3, h, w)`` normalised and int64 ``(h, w)``).
    Labels: ``<stem>_gtCoarse_labelTrainIds.png`` when present (used as is), else ``<stem>_gtCoarse_labelIds.png``
    mapped by the cityscapesScripts table (``LABEL_ID_TO_TRAIN_ID``). An evaluation set: the only split is
    ``test``. Samples are sorted by stem; the split is listed when the dataset is built (a missing label file fails
    then), the files are decoded and checked when a sample is read. ``list_file`` is the split's image folder.
    """

    name: str = "Nighttime Driving"
    splits: tuple[str, ...] = SPLITS
    find_root = staticmethod(find_nighttime_driving)
    layout_hint: str = _LAYOUT_HINT
    mask_format: str = "a single-channel ('L') PNG of labelIds or labelTrainIds (not the *_gtCoarse_color.png)"

    def list_split(self) -> tuple[Path, list[str], list[Path], list[Path]]:
        return (self.root / IMAGE_DIR / self.split / _CONDITION, *_list_split(self.root, self.split))
