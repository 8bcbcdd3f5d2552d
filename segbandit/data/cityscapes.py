"""Cityscapes semantic segmentation (fine annotations, the 19 evaluation classes) in the standard release layout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segbandit.data.files import VOID, SegmentationFiles, root_folder, check_values
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

_VALID_LABEL_IDS = np.zeros(256, dtype=bool)
_VALID_LABEL_IDS[:NUM_LABEL_IDS] = True
_VALID_LABEL_IDS[VOID] = True  # -1 (license plate) as an 8-bit value
_VALID_TRAIN_IDS = np.zeros(256, dtype=bool)
_VALID_TRAIN_IDS[: len(CITYSCAPES_CLASSES)] = True
_VALID_TRAIN_IDS[VOID] = True

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


def _list_split(root: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    """Stems, image paths and label paths of ``split``, sorted by city then stem (a directory listing per city)."""
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder of split {split!r} not found; {_LAYOUT_HINT}")
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: label folder of split {split!r} not found; {_LAYOUT_HINT}")
    ids: list[str] = []
    images: list[Path] = []
    masks: list[Path] = []
    for city in sorted(e.name for e in os.scandir(image_dir) if e.is_dir()):
        stems = sorted(n[: -len(IMAGE_SUFFIX)] for n in os.listdir(image_dir / city) if n.endswith(IMAGE_SUFFIX))
        if not stems:
            continue
        city_labels = label_dir / city
        if not city_labels.is_dir():
            raise DataError(
                f"{city_labels}: label folder of city {city!r} not found (its images are in {image_dir / city}); "
                f"{_LAYOUT_HINT}"
            )
        present = set(os.listdir(city_labels))
        for stem in stems:
            if stem + TRAIN_ID_SUFFIX in present:
                mask = city_labels / (stem + TRAIN_ID_SUFFIX)
            elif stem + LABEL_ID_SUFFIX in present:
                mask = city_labels / (stem + LABEL_ID_SUFFIX)
            else:
                image = image_dir / city / (stem + IMAGE_SUFFIX)
                raise DataError(
                    f"{city_labels / (stem + LABEL_ID_SUFFIX)}: label file of image {image} not found "
                    f"(nor {stem + TRAIN_ID_SUFFIX}); {_LAYOUT_HINT}"
                )
            ids.append(stem)
            images.append(image_dir / city / (stem + IMAGE_SUFFIX))
            masks.append(mask)
    if not ids:
        raise DataError(f"{image_dir}: split {split!r} has no <city>/*{IMAGE_SUFFIX} images; {_LAYOUT_HINT}")
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
        return (self.root / "leftImg8bit" / self.split, *_list_split(self.root, self.split))

    def labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """(H, W) int64 train ids from a labelTrainIds (as is) or labelIds (the official table) PNG."""
        if path.name.endswith(TRAIN_ID_SUFFIX):
            ids = check_values(raw, _VALID_TRAIN_IDS, path, "a Cityscapes train id (0..18, or 255)", self._hint)
            return ids.astype(np.int64)
        ids = check_values(raw, _VALID_LABEL_IDS, path, "a Cityscapes labelId (0..33, or 255)", self._hint)
        return LABEL_ID_TO_TRAIN_ID[ids]  # (H, W) int64, one vectorised lookup
