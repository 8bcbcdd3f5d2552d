"""What every on-disk segmentation dataset shares: reading an RGB image and a label PNG, and one sample.

:class:`SegmentationFiles` is the base of :class:`~segbandit.data.voc.VOCSegmentation`,
:class:`~segbandit.data.cityscapes.CityscapesSegmentation` and :class:`~segbandit.data.ade20k.ADE20KSegmentation`:
a subclass lists its split (:meth:`SegmentationFiles.list_split`) and says how raw label values become class indices
(:meth:`SegmentationFiles.labels`); reading, the checks and their one-line errors are written here once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors

from segbandit.errors import DataError

VOID = 255

__all__ = ["SegmentationFiles", "VOID", "check_values", "find_release", "one_line", "root_folder", "valid_values"]


def valid_values(n: int) -> np.ndarray:
    """(256,) bool read-only table for :func:`check_values`: the values 0..n-1 and void (255)."""
    table = np.zeros(256, dtype=bool)
    table[:n] = True
    table[VOID] = True
    table.setflags(write=False)
    return table


def one_line(exc: BaseException) -> str:
    """``"Type: message"`` of an exception on one line."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def check_values(mask: np.ndarray, valid: np.ndarray, path: Path, expected: str, hint: str = "") -> np.ndarray:
    """Raise DataError unless every value of ``mask`` (H, W) is flagged in ``valid`` (256,); -> the mask as uint8.

    16/32-bit PNGs ('I;16', 'I') pass when their values fit the 8-bit table.  ``hint`` ends the message.
    """
    if mask.dtype != np.uint8:
        bad = (mask < 0) | (mask > 255)
        if not bad.any():
            mask = mask.astype(np.uint8)
    if mask.dtype == np.uint8:
        bad = ~valid[mask]
    if bad.any():
        values = np.unique(mask[bad]).tolist()
        raise DataError(f"{path}: label value {values[0]} is not {expected} (bad values {values[:8]}){hint}")
    return mask


def root_folder(root: str | Path | None, what: str, hint: str) -> Path:
    """``root`` as an existing folder, or a one-line DataError naming it (or its absence) and the expected layout."""
    if root is None or str(root) == "":
        raise DataError(f"<no data root>: no {what} root given (--data-root); {hint}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: {what} root does not exist or is not a folder; {hint}")
    return path


def find_release(root: str | Path | None, what: str, release_dir: str, folders: tuple[str, ...], hint: str) -> Path:
    """``root`` itself or ``root / release_dir``, whichever holds every one of ``folders``; else a one-line DataError."""
    root = root_folder(root, what, hint)
    for cand in (root, root / release_dir):
        if all((cand / f).is_dir() for f in folders):
            return cand
    names = " and ".join(folders)
    raise DataError(f"{root}: no {names} folders found (nor in {root / release_dir}); {hint}")


class SegmentationFiles(torch.utils.data.Dataset):
    """Image / label-PNG pairs; ``__getitem__(i) -> (image, mask)``.

    Without ``transforms``: image tv_tensors.Image uint8 ``(3, H, W)``, mask tv_tensors.Mask int64 ``(H, W)`` of
    class indices with 255 = void; with ``transforms(image, mask)`` whatever it returns.  Subclasses set
    ``root``, ``split``, ``ids``, ``images``, ``masks`` (and ``list_file``, where the paths were listed), the class
    attributes below, and :meth:`labels`.
    """

    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int = VOID
    layout_hint: str = ""  # appended to every read error ("; expected ...")
    mask_word: str = "mask"  # how the label files are called in messages
    mask_format: str = "a single-channel ('L') PNG"

    name: str  # the dataset's name in messages ("VOC", "Cityscapes", ...)
    splits: tuple[str, ...]
    find_root: Callable[[str | Path | None], Path]  # a staticmethod: the user's root -> the dataset folder

    def __init__(self, root: str | Path | None, split: str = "train",
                 transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None) -> None:
        if split not in self.splits:
            raise ValueError(f"unknown {self.name} split {split!r}; valid splits: {', '.join(self.splits)}")
        self.root = self.find_root(root)
        self.split = split
        self.transforms = transforms
        self.list_file, self.ids, self.images, self.masks = self.list_split()

    def list_split(self) -> tuple[Path, list[str], list[Path], list[Path]]:
        """(where the paths were listed, ids, image paths, label paths) of ``self.split`` under ``self.root``."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def _hint(self) -> str:
        return f"; {self.layout_hint}" if self.layout_hint else ""

    def labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Class indices (H, W) int64 (255 = void) of the raw label PNG values (H, W) read from ``path``."""
        raise NotImplementedError

    def read_image(self, path: Path) -> np.ndarray:
        """(H, W, 3) uint8 RGB (greyscale and palette images converted)."""
        try:
            with PIL.Image.open(path) as im:
                return np.array(im.convert("RGB"))  # writable
        except FileNotFoundError:
            raise DataError(f"{path}: image file not found{self._hint}") from None
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... on corrupt files
            raise DataError(f"{path}: cannot read image ({one_line(exc)}){self._hint}") from exc

    def read_mask(self, path: Path) -> np.ndarray:
        """(H, W) raw values of a single-channel label PNG (palette indices for mode 'P')."""
        try:
            with PIL.Image.open(path) as im:
                im.load()
                mode = im.mode
                arr = np.array(im)
        except FileNotFoundError:
            raise DataError(f"{path}: {self.mask_word} file not found{self._hint}") from None
        except Exception as exc:
            raise DataError(f"{path}: cannot read {self.mask_word} ({one_line(exc)}){self._hint}") from exc
        if arr.ndim != 2:
            raise DataError(
                f"{path}: {self.mask_word} has mode {mode!r} shape {arr.shape}; expected {self.mask_format}{self._hint}"
            )
        return arr

    def raw_mask(self, index: int) -> np.ndarray:
        """The class map (H, W) int64 of sample ``index`` (255 = void), without transforms (for filtering by class)."""
        return self.labels(self.read_mask(self.masks[index]), self.masks[index])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        img_path, mask_path = self.images[index], self.masks[index]
        image = self.read_image(img_path)  # (H, W, 3)
        raw = self.read_mask(mask_path)  # (H, W)
        if image.shape[:2] != raw.shape:
            raise DataError(
                f"{mask_path}: {self.mask_word} size {raw.shape[1]}x{raw.shape[0]} (WxH) differs from image "
                f"{img_path} size {image.shape[1]}x{image.shape[0]}{self._hint}"
            )
        mask = self.labels(raw, mask_path)  # (H, W) int64
        img_t = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))  # (3, H, W) uint8
        mask_t = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)))  # (H, W) int64
        if self.transforms is not None:
            return self.transforms(img_t, mask_t)
        return img_t, mask_t

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
