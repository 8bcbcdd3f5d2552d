"""Dark Zurich val (night-time driving, Cityscapes' 19 classes) in the standard ``Dark_Zurich_val_anon`` layout."""

from __future__ import annotations

from pathlib import Path

from segbandit.data.cityscapes import CityscapesSegmentation, list_grouped
from segbandit.data.files import find_release

SPLITS: tuple[str, ...] = ("val",)
RELEASE_DIR = "Dark_Zurich_val_anon"
IMAGE_SUFFIX = "_rgb_anon.png"
TRAIN_ID_SUFFIX = "_gt_labelTrainIds.png"
_CONDITION = "night"  # the val release holds the night-time frames only

_LAYOUT_HINT = (
    "expected <root>/rgb_anon/val/night/<sequence>/<stem>_rgb_anon.png and "
    "<root>/gt/val/night/<sequence>/<stem>_gt_labelTrainIds.png (Dark_Zurich_val_anon.zip from "
    "trace.ethz.ch/publications/2019/GCMA_UIoU); the root is Dark_Zurich_val_anon or the folder containing it"
)


def find_dark_zurich(root: str | Path | None) -> Path:
    """Resolve ``root`` (``Dark_Zurich_val_anon``, or the folder containing it) to the folder with rgb_anon and gt."""
    return find_release(root, "Dark Zurich", RELEASE_DIR, ("rgb_anon", "gt"), _LAYOUT_HINT)


class DarkZurichSegmentation(CityscapesSegmentation):
    """Dark Zurich val (night, Cityscapes' 19 classes); ``__getitem__(i) -> (image, mask)``.

    Without ``transforms``: image tv_tensors.Image uint8 ``(3, H, W)`` (1080 x 1920 in the release), mask
    tv_tensors.Mask int64 ``(H, W)`` of Cityscapes train ids 0..18 with 255 = void, read as is from
    ``<stem>_gt_labelTrainIds.png``. With ``transforms(image, mask)`` whatever it returns (the Cityscapes preset
    gives float32 ``(3, h, w)`` normalised and int64 ``(h, w)``). An evaluation set: the only split is ``val``.
    Samples are sorted by sequence then stem; the split is listed when the dataset is built (a missing label file
    fails then), the files are decoded and checked when a sample is read. ``list_file`` is the split's image folder.
    """

    name: str = "Dark Zurich"
    splits: tuple[str, ...] = SPLITS
    find_root = staticmethod(find_dark_zurich)
    layout_hint: str = _LAYOUT_HINT
    mask_format: str = "a single-channel ('L') PNG of labelTrainIds (not the *_gt_labelColor.png)"

    def list_split(self) -> tuple[Path, list[str], list[Path], list[Path]]:
        image_dir = self.root / "rgb_anon" / self.split / _CONDITION
        label_dir = self.root / "gt" / self.split / _CONDITION
        return (image_dir, *list_grouped(image_dir, label_dir, IMAGE_SUFFIX, (TRAIN_ID_SUFFIX,), "sequence",
                                         self.split, _LAYOUT_HINT))
