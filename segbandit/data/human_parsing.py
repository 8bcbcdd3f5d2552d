"""Human parsing, 20 classes: LIP (single person) and CIHP (instance-level, multi-person) in their release layouts.

Both datasets share the label set and its left/right pairs: a horizontal flip must swap left-arm / right-arm,
left-leg / right-leg and left-shoe / right-shoe (``FLIP_PAIRS``, ``FLIP_LUT``; applied by
:class:`~segbandit.data.transforms.RandomHorizontalFlipSwap` in :func:`~segbandit.data.transforms.human_parsing_preset`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segbandit.data.files import VOID, SegmentationFiles, check_values, root_folder, valid_values
from segbandit.errors import DataError

# LIP / CIHP label indices 0..19 (the order of the LIP and CIHP releases and of SCHP's dataset settings)
HUMAN_PARSING_CLASSES: tuple[str, ...] = (
    "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks", "pants",
    "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg", "right-leg", "left-shoe",
    "right-shoe",
)  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "val")

FLIP_PAIRS: tuple[tuple[int, int], ...] = ((14, 15), (16, 17), (18, 19))
"""Labels a horizontal flip exchanges: (left-arm, right-arm), (left-leg, right-leg), (left-shoe, right-shoe)."""


def _flip_lut() -> np.ndarray:
    lut = np.arange(256, dtype=np.int64)
    for left, right in FLIP_PAIRS:
        lut[left], lut[right] = right, left
    lut.setflags(write=False)
    return lut


FLIP_LUT: np.ndarray = _flip_lut()
"""(256,) int64 lookup table: ``FLIP_LUT[mask]`` is the label of each pixel's mirror image (255 = void kept)."""

_VALID = valid_values(len(HUMAN_PARSING_CLASSES))

_LIP_LAYOUT_HINT = (
    "expected <root>/TrainVal_images/{train,val}_images/<id>.jpg and "
    "<root>/TrainVal_parsing_annotations/{train,val}_segmentations/<id>.png, with optional id lists "
    "<root>/{train,val}_id.txt (or <root>/TrainVal_images/{train,val}_id.txt); TrainVal_images.zip and "
    "TrainVal_parsing_annotations.zip of the LIP single-person release; the root is that folder or its parent "
    "with LIP/"
)
_CIHP_LAYOUT_HINT = (
    "expected <root>/{Training,Validation}/Images/<id>.jpg and <root>/{Training,Validation}/Category_ids/<id>.png, "
    "with optional id lists <root>/Training/train_id.txt and <root>/Validation/val_id.txt; the CIHP "
    "(instance-level human parsing) release; the root is that folder or its parent with "
    "instance-level_human_parsing/ or CIHP/"
)


def find_lip(root: str | Path | None) -> Path:
    """Resolve ``root`` (the folder holding ``TrainVal_images`` and ``TrainVal_parsing_annotations``, or its parent
    with ``LIP/``)."""
    root = root_folder(root, "LIP", _LIP_LAYOUT_HINT)
    for cand in (root, root / "LIP"):
        if (cand / "TrainVal_images").is_dir() and (cand / "TrainVal_parsing_annotations").is_dir():
            return cand
    raise DataError(
        f"{root}: no TrainVal_images and TrainVal_parsing_annotations folders found (nor in {root / 'LIP'}); "
        f"{_LIP_LAYOUT_HINT}"
    )


def find_cihp(root: str | Path | None) -> Path:
    """Resolve ``root`` (the folder holding ``Training`` and ``Validation``, or its parent with
    ``instance-level_human_parsing/`` or ``CIHP/``)."""
    root = root_folder(root, "CIHP", _CIHP_LAYOUT_HINT)
    cands = (root, root / "instance-level_human_parsing", root / "CIHP")
    for cand in cands:
        if (cand / "Training").is_dir() or (cand / "Validation").is_dir():
            return cand
    raise DataError(
        f"{root}: no Training or Validation folder found (nor in {cands[1]} or {cands[2]}); {_CIHP_LAYOUT_HINT}"
    )


def _read_ids(list_file: Path) -> list[str]:
    """Ids of a ``{train,val}_id.txt``: one ``<id>`` (or ``<id>.jpg``) a line, blank lines skipped."""
    ids: list[str] = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 1:
            raise DataError(f"{list_file}:{lineno}: expected one '<id>' a line, got {line.strip()!r}")
        ids.append(parts[0][: -len(".jpg")] if parts[0].endswith(".jpg") else parts[0])
    if not ids:
        raise DataError(f"{list_file}: id list is empty")
    return ids


def _list_pairs(image_dir: Path, label_dir: Path, list_files: tuple[Path, ...], split: str,
                hint: str) -> tuple[Path, list[str], list[Path], list[Path]]:
    """(list file or image folder, ids, images, masks): the first existing id list, else the sorted ``*.jpg``."""
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: image folder of split {split!r} not found; {hint}")
    if not label_dir.is_dir():
        raise DataError(f"{label_dir}: annotation folder of split {split!r} not found; {hint}")
    images_present = set(os.listdir(image_dir))
    found = [f for f in list_files if f.is_file()]
    if found:
        list_file = found[0]
        ids = _read_ids(list_file)
        for i in ids:
            if f"{i}.jpg" not in images_present:
                raise DataError(f"{image_dir / f'{i}.jpg'}: image listed in {list_file} not found; {hint}")
    else:
        list_file = image_dir
        ids = sorted(n[: -len(".jpg")] for n in images_present if n.endswith(".jpg"))
        if not ids:
            raise DataError(f"{image_dir}: split {split!r} has no *.jpg images; {hint}")
    present = set(os.listdir(label_dir))
    for i in ids:
        if f"{i}.png" not in present:
            raise DataError(f"{label_dir / f'{i}.png'}: annotation of image {image_dir / f'{i}.jpg'} not found; {hint}")
    return list_file, ids, [image_dir / f"{i}.jpg" for i in ids], [label_dir / f"{i}.png" for i in ids]


class _HumanParsing(SegmentationFiles):
    """The 20 human-parsing classes: label PNG values 0..19 used as is, 255 = void, anything else a DataError."""

    splits: tuple[str, ...] = SPLITS
    num_classes: int = len(HUMAN_PARSING_CLASSES)
    class_names: tuple[str, ...] = HUMAN_PARSING_CLASSES
    mask_word: str = "annotation"
    flip_pairs: tuple[tuple[int, int], ...] = FLIP_PAIRS

    def labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """(H, W) int64 class indices 0..19 / 255 of an annotation PNG (used as is)."""
        expected = f"a {self.name} class index (0..{self.num_classes - 1}, or {VOID})"
        return check_values(raw, _VALID, path, expected, self._hint).astype(np.int64)


class LIPSegmentation(_HumanParsing):
    """LIP (Look Into Person, single-person human parsing, 20 classes); ``__getitem__(i) -> (image, mask)``.

    Without ``transforms``: image tv_tensors.Image uint8 ``(3, H, W)``, mask tv_tensors.Mask int64 ``(H, W)`` of
    class indices 0..19 (``HUMAN_PARSING_CLASSES``) with 255 = void. With ``transforms(image, mask)`` whatever it
    returns (``human_parsing_preset`` gives float32 ``(3, h, w)`` normalised and int64 ``(h, w)``, flipping with
    the left/right swap of ``FLIP_PAIRS``). Samples follow ``{train,val}_id.txt`` (at the root, else in
    ``TrainVal_images``) when present, else a sorted listing of the split's ``*.jpg``; ``list_file`` is the list
    (or the image folder). The split is listed when the dataset is built (a missing file fails then), the files
    are decoded and checked when a sample is read.
    """

    name: str = "LIP"
    find_root = staticmethod(find_lip)
    layout_hint: str = _LIP_LAYOUT_HINT

    def list_split(self) -> tuple[Path, list[str], list[Path], list[Path]]:
        image_dir = self.root / "TrainVal_images" / f"{self.split}_images"
        label_dir = self.root / "TrainVal_parsing_annotations" / f"{self.split}_segmentations"
        lists = (self.root / f"{self.split}_id.txt", self.root / "TrainVal_images" / f"{self.split}_id.txt")
        return _list_pairs(image_dir, label_dir, lists, self.split, _LIP_LAYOUT_HINT)


_CIHP_SPLIT_DIRS: dict[str, str] = {"train": "Training", "val": "Validation"}


class CIHPSegmentation(_HumanParsing):
    """CIHP (Crowd Instance-level Human Parsing, semantic part labels, 20 classes); ``__getitem__(i) -> (image, mask)``.

    Without ``transforms``: image tv_tensors.Image uint8 ``(3, H, W)``, mask tv_tensors.Mask int64 ``(H, W)`` of
    class indices 0..19 (``HUMAN_PARSING_CLASSES``, from ``Category_ids``; the instance maps are not read) with
    255 = void. With ``transforms(image, mask)`` whatever it returns (``human_parsing_preset`` as for LIP).
    Splits: train = ``Training``, val = ``Validation``; samples follow ``Training/train_id.txt`` /
    ``Validation/val_id.txt`` when present, else a sorted listing of ``Images/*.jpg``; ``list_file`` is the list
    (or the image folder). The split is listed when the dataset is built (a missing file fails then), the files
    are decoded and checked when a sample is read.
    """

    name: str = "CIHP"
    find_root = staticmethod(find_cihp)
    layout_hint: str = _CIHP_LAYOUT_HINT

    def list_split(self) -> tuple[Path, list[str], list[Path], list[Path]]:
        split_dir = self.root / _CIHP_SPLIT_DIRS[self.split]
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: folder of split {self.split!r} not found; {_CIHP_LAYOUT_HINT}")
        lists = (split_dir / f"{self.split}_id.txt",)
        return _list_pairs(split_dir / "Images", split_dir / "Category_ids", lists, self.split, _CIHP_LAYOUT_HINT)
