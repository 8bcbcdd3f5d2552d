"""Cityscapes semantic segmentation (fine annotations, the 19 evaluation classes) in the standard release layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segbandit.data.files import VOID, SegmentationFiles, check_values, root_folder, valid_values
from segbandit.errors import DataError

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_ID_SUFFIX = "_gtFine_labelIds.png"
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"

# cityscapesScripts helpers/labels.py: labelId -> trainId of the 19 evaluated classes; every other labelId
# (0-6 void, 9 parking, 10 rail track, 14-16 guard rail/bridge/tunnel, 18 polegroup, 29 caravan, 30 trailer,
# -1 license plate, stored as 255 in an 8-bit PNG) has trainId 255 (ignored)
_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
    28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
NUM_LABEL_IDS = 34  # labelIds 0..33 (plus -1 = license plate)


def _label_id_lut() -> np.ndarray:
    lut = np.full(256, VOID, dtype=np.int64)
    for label_id, train_id in _ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    lut.setflags(write=False)
    return lut


LABEL_ID_TO_TRAIN_ID: np.ndarray = _label_id_lut()
"""(256,) int64 lookup table: ``LABEL_ID_TO_TRAIN_ID[ids]`` maps a uint8 labelIds map to train ids (255 = void)."""

_VALID_LABEL_IDS = valid_values(NUM_LABEL_IDS)  # and 255: -1 (license plate) as an 8-bit value
_VALID_TRAIN_IDS = valid_values(len(CITYSCAPES_CLASSES))

_LAYOUT_HINT = (
    "expected <root>/leftImg8bit/{train,val,test}/<city>/<stem>_leftImg8bit.png and "
    "<root>/gtFine/{train,val,test}/<city>/<stem>_gtFine_labelIds.png (or _gtFine_labelTrainIds.png from "
    "cityscapesScripts' createTrainIdLabelImgs); leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "cityscapes-dataset.com"
)


def find_cityscapes(root: str | Path | None) -> Path:
    """Resolve ``root`` (the folder holding ``leftImg8bit`` and ``gtFine``, or its parent with ``cityscapes/``)."""
    root = root_folder(root, "Cityscapes", _LAYOUT_HINT)
    for cand in (root, root / "cityscapes"):
        if (cand / "leftImg8bit").is_dir() and (cand / "gtFine").is_dir():
            return cand
    raise DataError(f"{root}: no leftImg8bit and gtFine folders found (nor in {root / 'cityscapes'}); {_LAYOUT_HINT}")


def pick_label(label_dir: Path, present: set[str], stem: str, suffixes: tuple[str, ...], image: Path,
               hint: str, named: int = 0) -> Path:
    """The label file of ``image``: ``label_dir / (stem + suffix)`` for the first suffix in ``present``, else a
    one-line DataError naming candidate ``suffixes[named]`` (the release's own file), the image and the others."""
    for suffix in suffixes:
        if stem + suffix in present:
            return label_dir / (stem + suffix)
    rest = [stem + x for i, x in enumerate(suffixes) if i != named]
    others = f" (nor {', '.join(rest)})" if rest else ""
    raise DataError(f"{label_dir / (stem + suffixes[named])}: label file of image {image} not found{others}; {hint}")


def list_grouped(image_dir: Path, label_dir: Path, image_suffix: str, label_suffixes: tuple[str, ...], group: str,
                 split: str, hint: str, named: int = 0) -> tuple[list[str], list[Path], list[Path]]:
    """Stems, image paths and label paths of a Cityscapes-style split: one sub-folder per ``group`` (city, sequence)
    under both folders, sorted by group then stem (a directory listing per group)."""
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder of split {split!r} not found; {hint}")
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: label folder of split {split!r} not found; {hint}")
    ids: list[str] = []
    images: list[Path] = []
    masks: list[Path] = []
    for name in sorted(e.name for e in os.scandir(image_dir) if e.is_dir()):
        stems = sorted(n[: -len(image_suffix)] for n in os.listdir(image_dir / name) if n.endswith(image_suffix))
        if not stems:
            continue
        labels = label_dir / name
        if not labels.is_dir():
            raise DataError(
                f"{labels}: label folder of {group} {name!r} not found (its images are in {image_dir / name}); {hint}"
            )
        present = set(os.listdir(labels))
        for stem in stems:
            image = image_dir / name / (stem + image_suffix)
            masks.append(pick_label(labels, present, stem, label_suffixes, image, hint, named))
            ids.append(stem)
            images.append(image)
    if not ids:
        raise DataError(f"{image_dir}: split {split!r} has no <{group}>/*{image_suffix} images; {hint}")
    return ids, images, masks


class CityscapesSegmentation(SegmentationFiles):
    """Cityscapes fine annotations, 19 classes; ``__getitem__(i) -> (image, mask)``.

    Without ``transforms``: image tv_tensors.Image uint8 ``(3, H, W)`` (1024 x 2048 in the release), mask
    tv_tensors.Mask int64 ``(H, W)`` of train ids 0..18 with 255 = void. With ``transforms(image, mask)``
    whatever it returns (the presets give float32 ``(3, h, w)`` normalised and int64 ``(h, w)``). Labels:
    ``<stem>_gtFine_labelTrainIds.png`` when present (used as is), else ``<stem>_gtFine_labelIds.png`` mapped to
    train ids by the cityscapesScripts table (``LABEL_ID_TO_TRAIN_ID``). Samples are sorted by city then stem;
    the split is listed when the dataset is built (a missing label file fails then), the files are decoded and
    checked when a sample is read. ``list_file`` is the split's image folder (the listing the paths come from).
    """

    name: str = "Cityscapes"
    splits: tuple[str, ...] = SPLITS
    find_root = staticmethod(find_cityscapes)
    num_classes: int = len(CITYSCAPES_CLASSES)
    class_names: tuple[str, ...] = CITYSCAPES_CLASSES
    layout_hint: str = _LAYOUT_HINT
    mask_format: str = "a single-channel ('L') PNG of labelIds or labelTrainIds (not the *_gtFine_color.png)"

    def list_split(self) -> tuple[Path, list[str], list[Path], list[Path]]:
        image_dir = self.root / "leftImg8bit" / self.split
        return (image_dir, *list_grouped(image_dir, self.root / "gtFine" / self.split, IMAGE_SUFFIX,
                                         (TRAIN_ID_SUFFIX, LABEL_ID_SUFFIX), "city", self.split, _LAYOUT_HINT,
                                         named=1))  # a missing file is named as the release's labelIds

    def labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """(H, W) int64 train ids from a ``*_labelTrainIds.png`` (as is) or ``*_labelIds.png`` (the official table);
        the Cityscapes-labelled night sets (Dark Zurich, Nighttime Driving) read theirs here too."""
        if path.name.endswith("_labelTrainIds.png"):
            ids = check_values(raw, _VALID_TRAIN_IDS, path, "a Cityscapes train id (0..18, or 255)", self._hint)
            return ids.astype(np.int64)
        ids = check_values(raw, _VALID_LABEL_IDS, path, "a Cityscapes labelId (0..33, or 255)", self._hint)
        return LABEL_ID_TO_TRAIN_ID[ids]  # (H, W) int64, one vectorised lookup
