"""ADE20K semantic segmentation, 150 classes, in the MIT Scene Parsing layout (``ADEChallengeData2016``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from segbandit.data.files import VOID, SegmentationFiles, check_values, root_folder, valid_values
from segbandit.errors import DataError

# mmsegmentation ADE20KDataset.METAINFO["classes"], in that order (mmseg spells class 7 'bed ' with a trailing space)
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "val")
_SPLIT_DIRS: dict[str, str] = {"train": "training", "val": "validation"}


def _reduce_zero_lut() -> np.ndarray:
    lut = np.arange(256, dtype=np.int64) - 1  # k -> k - 1
    lut[0] = VOID  # 0 = "other" / unlabelled -> ignored
    lut[VOID] = VOID
    lut.setflags(write=False)
    return lut


REDUCE_ZERO_LABEL: np.ndarray = _reduce_zero_lut()
"""(256,) int64 lookup table, mmseg's ``reduce_zero_label``: 0 -> 255, k -> k - 1 (k = 1..150), 255 -> 255."""

_VALID = valid_values(len(ADE20K_CLASSES) + 1)  # 0..150

_LAYOUT_HINT = (
    "expected ADEChallengeData2016/images/{training,validation}/<id>.jpg and "
    "ADEChallengeData2016/annotations/{training,validation}/<id>.png (ADEChallengeData2016.zip of the MIT Scene "
    "Parsing benchmark, sceneparsing.csail.mit.edu); the root is the folder containing ADEChallengeData2016 or "
    "that folder itself"
)


def find_ade20k(root: str | Path | None) -> Path:
    """Resolve ``root`` (the folder containing ``ADEChallengeData2016``, or that folder) to ADEChallengeData2016."""
    root = root_folder(root, "ADE20K", _LAYOUT_HINT)
    for cand in (root / "ADEChallengeData2016", root):
        if (cand / "images").is_dir() and (cand / "annotations").is_dir():
            return cand
    raise DataError(f"{root}: no ADEChallengeData2016 folder with images and annotations found; {_LAYOUT_HINT}")


def _list_split(ade: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    """Ids, image paths and annotation paths of ``split``, sorted by id (one directory listing per folder)."""
    image_dir, label_dir = ade / "images" / _SPLIT_DIRS[split], ade / "annotations" / _SPLIT_DIRS[split]
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder of split {split!r} not found; {_LAYOUT_HINT}")
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: annotation folder of split {split!r} not found; {_LAYOUT_HINT}")
    ids = sorted(n[: -len(".jpg")] for n in os.listdir(image_dir) if n.endswith(".jpg"))
    if not ids:
        raise DataError(f"{image_dir}: split {split!r} has no *.jpg images; {_LAYOUT_HINT}")
    present = set(os.listdir(label_dir))
    for i in ids:
        if f"{i}.png" not in present:
            raise DataError(
                f"{label_dir / f'{i}.png'}: annotation of image {image_dir / f'{i}.jpg'} not found; {_LAYOUT_HINT}"
            )
    return ids, [image_dir / f"{i}.jpg" for i in ids], [label_dir / f"{i}.png" for i in ids]


class ADE20KSegmentation(SegmentationFiles):
    """ADE20K (SceneParsing, 150 classes); ``__getitem__(i) -> (image, mask)``.

    Without ``transforms``: image tv_tensors.Image uint8 ``(3, H, W)``, mask tv_tensors.Mask int64 ``(H, W)`` of
    class indices 0..149 with 255 = void: the annotation PNGs store 0 = unlabelled and 1..150 = classes, mapped by
    mmseg's ``reduce_zero_label`` (``REDUCE_ZERO_LABEL``: 0 -> 255, k -> k - 1); values 151..254 are a DataError.
    With ``transforms(image, mask)`` whatever it returns (the presets give float32 ``(3, h, w)`` normalised and
    int64 ``(h, w)``). Splits: train = ``training``, val = ``validation``; samples sorted by id. The split is listed
    when the dataset is built (a missing annotation fails then), files are decoded and checked when a sample is
    read. ``list_file`` is the split's image folder (the listing the paths come from).
    """

    name: str = "ADE20K"
    splits: tuple[str, ...] = SPLITS
    find_root = staticmethod(find_ade20k)
    num_classes: int = len(ADE20K_CLASSES)
    class_names: tuple[str, ...] = ADE20K_CLASSES
    layout_hint: str = _LAYOUT_HINT
    mask_word: str = "annotation"

    def __init__(self, root: str | Path | None, split: str = "train", transforms: Any = None,
                 reduce_zero_label: bool = True) -> None:
        super().__init__(root, split, transforms)
        self.reduce_zero_label = bool(reduce_zero_label)
        if not self.reduce_zero_label:  # PLOP's class-incremental ADE20K: 0 = background, classes 1..150
            self.num_classes = len(ADE20K_CLASSES) + 1
            self.class_names = ("background", *ADE20K_CLASSES)

    def list_split(self) -> tuple[Path, list[str], list[Path], list[Path]]:
        return (self.root / "images" / _SPLIT_DIRS[self.split], *_list_split(self.root, self.split))

    def labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """(H, W) int64 class indices 0..149 / 255 from annotation values 0..150 (mmseg's ``reduce_zero_label``);
        with ``reduce_zero_label=False`` the values themselves, 0 = background (PLOP's continual protocol)."""
        expected = f"an ADE20K annotation value (0 = unlabelled, 1..{len(ADE20K_CLASSES)} = classes, or {VOID})"
        ids = check_values(raw, _VALID, path, expected, self._hint)
        return REDUCE_ZERO_LABEL[ids] if self.reduce_zero_label else ids.astype(np.int64)  # one vectorised lookup
