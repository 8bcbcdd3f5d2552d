"""PASCAL VOC 2012 semantic segmentation (and the SBD-augmented ``trainaug`` split) in the standard VOCdevkit layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segbandit.data.files import VOID, SegmentationFiles, root_folder
from segbandit.errors import DataError

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "val", "trainval", "trainaug")
_AUG_LISTS: tuple[str, ...] = ("trainaug.txt", "train_aug.txt", "aug.txt")

_LAYOUT_HINT = (
    "expected VOCdevkit/VOC2012/{JPEGImages,SegmentationClass[Aug],ImageSets/Segmentation} "
    "(the PASCAL VOC 2012 devkit from the official site host.robots.ox.ac.uk; SegmentationClassAug from the SBD "
    "augmented set); without --data-root the embedded digits dataset is used"
)


def find_voc2012(root: str | Path | None) -> Path:
    """Resolve ``root`` (the folder containing ``VOCdevkit``, ``VOCdevkit`` itself, or ``VOC2012``) to VOC2012."""
    root = root_folder(root, "PASCAL VOC", _LAYOUT_HINT)
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "JPEGImages").is_dir() and (cand / "ImageSets" / "Segmentation").is_dir():
            return cand
    raise DataError(f"{root}: no VOC2012 folder with JPEGImages and ImageSets/Segmentation found; {_LAYOUT_HINT}")


def _parse_list(list_file: Path, voc: Path, label_dir: str) -> tuple[list[str], list[Path], list[Path]]:
    """Split-list lines ``<id>`` or ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` -> ids, images, masks."""
    ids: list[str] = []
    images: list[Path] = []
    masks: list[Path] = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 1:
            stem = Path(parts[0]).stem if "/" in parts[0] or parts[0].endswith(".jpg") else parts[0]
            ids.append(stem)
            images.append(voc / "JPEGImages" / f"{stem}.jpg")
            masks.append(voc / label_dir / f"{stem}.png")
        elif len(parts) == 2:
            ids.append(Path(parts[0]).stem)
            images.append(voc / parts[0].lstrip("/"))
            masks.append(voc / parts[1].lstrip("/"))
        else:
            raise DataError(f"{list_file}:{lineno}: expected '<id>' or '<image> <mask>', got {line.strip()!r}")
    if not ids:
        raise DataError(f"{list_file}: split list is empty")
    return ids, images, masks


class VOCSegmentation(SegmentationFiles):
    """PASCAL VOC 2012 segmentation; ``__getitem__(i) -> (image, mask)``.

    Without ``transforms``: image tv_tensors.Image uint8 ``(3, H, W)``, mask tv_tensors.Mask int64 ``(H, W)`` of
    palette indices 0..20 with 255 = void. With ``transforms(image, mask)`` whatever it returns (the presets give
    float32 ``(3, h, w)`` normalised and int64 ``(h, w)``). Splits: train / val / trainval use
    ``SegmentationClass`` (palette PNGs); trainaug uses ``SegmentationClassAug`` (index PNGs) and the list
    ``ImageSets/Segmentation/{trainaug,train_aug,aug}.txt``. Files are checked lazily, when a sample is read.
    """

    name: str = "VOC"
    splits: tuple[str, ...] = SPLITS
    find_root = staticmethod(find_voc2012)
    num_classes: int = len(VOC_CLASSES)
    class_names: tuple[str, ...] = VOC_CLASSES
    mask_format: str = "a palette ('P') or index ('L') PNG"

    def list_split(self) -> tuple[Path, list[str], list[Path], list[Path]]:
        seg_dir = self.root / "ImageSets" / "Segmentation"
        if self.split == "trainaug":
            label_dir = "SegmentationClassAug"
            found = [seg_dir / n for n in _AUG_LISTS if (seg_dir / n).is_file()]
            if not found:
                raise DataError(
                    f"{seg_dir / _AUG_LISTS[0]}: trainaug split list not found (also tried "
                    f"{', '.join(_AUG_LISTS[1:])}); it ships with the SBD augmented set (SegmentationClassAug)"
                )
            list_file = found[0]
        else:
            label_dir = "SegmentationClass"
            list_file = seg_dir / f"{self.split}.txt"
            if not list_file.is_file():
                raise DataError(f"{list_file}: split file for {self.split!r} not found; {_LAYOUT_HINT}")
        if not (self.root / label_dir).is_dir():
            raise DataError(f"{self.root / label_dir}: label folder not found; {_LAYOUT_HINT}")
        return (list_file, *_parse_list(list_file, self.root, label_dir))

    def labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Palette / index values (H, W) -> int64, refusing values that are neither a class nor 255."""
        bad = (raw >= self.num_classes) & (raw != VOID)
        if bad.any():
            values = np.unique(raw[bad]).tolist()
            raise DataError(
                f"{path}: label value {values[0]} is neither < {self.num_classes} nor {VOID} (bad values {values[:8]})"
            )
        return raw.astype(np.int64)
