"""``ImageStream``: the seeded stream of ``(image, mask)`` batches that every segbandit env draws from, written once.

It resolves the dataset (``"digits"``, ``"voc"`` or a map-style torch ``Dataset``), checks its first sample, and
serves batches of ``batch_size`` images from a torch ``DataLoader`` (``drop_last=True``) whose shuffling order is
fixed by :meth:`ImageStream.seed`; the iterator persists across batches and restarts with the next epoch when the
data run out. The embedded digit scenes (without augmentation) are loaded as raw uint8 and normalised here, on the
whole batch on ``device``.

Both :class:`envs.core.SegBanditCore` (``SegBandit-v0``) and :class:`envs.pixel.SegPixelBanditCore`
(``SegPixelBandit-v0``) hold one.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from segbandit.constants import IMAGENET_MEAN, IMAGENET_STD
from segbandit.data import make_dataset
from segbandit.errors import DataError

RENDER_MODES: tuple[str, ...] = ("rgb_array",)
ARRAY_TYPES: tuple[str, ...] = ("numpy", "torch")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """ValueError naming ``value`` and the valid choices unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")


def check_stream_fields(config: Any) -> None:
    """Validate the fields every env config shares: ``array_type``, ``num_workers``, ``render_mode``."""
    check_choice("array_type", config.array_type, ARRAY_TYPES)
    if isinstance(config.num_workers, bool) or not isinstance(config.num_workers, int) or config.num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative int, got {config.num_workers!r}")
    if config.render_mode is not None:
        check_choice("render_mode", config.render_mode, RENDER_MODES)


def resolve_device(device: Union[str, torch.device, None], default: Union[torch.device, None] = None) -> torch.device:
    """``device`` as a ``torch.device`` (``"cuda"`` pinned to the current index); None gives ``default`` or CPU."""
    if device is None:
        return default if default is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_dataset(config: Any) -> tuple[Dataset, bool]:
    """The dataset, and whether it yields raw uint8 images that the stream normalises itself, batched on device.

    ``config`` has the fields ``dataset``, ``data_root``, ``split``, ``image_size``, ``augment``, ``dataset_kwargs``.
    The digit scenes are rendered at their final size, so without augmentation their transform is only
    "to float, normalise": done on the whole batch on ``device`` it costs nothing, where per image in the loader
    it costs ~30% of the data time (and moves 4x the bytes to a GPU).
    """
    kwargs = dict(config.dataset_kwargs or {})
    if isinstance(config.dataset, str):
        raw = config.dataset == "digits" and not config.augment and "transforms" not in kwargs
        if raw:
            kwargs["transforms"] = None  # uint8 (3, H, W) images, int64 (H, W) masks
        dataset = make_dataset(
            config.dataset, config.split, root=config.data_root, image_size=config.image_size,
            train=config.augment, **kwargs,
        )
        return dataset, raw
    if not hasattr(config.dataset, "__getitem__") or not hasattr(config.dataset, "__len__"):
        raise ValueError(
            "dataset must be 'digits', 'voc' or a map-style torch Dataset (with __getitem__ and __len__), "
            f"got {type(config.dataset).__name__}"
        )
    return config.dataset, False


def check_sample(dataset: Dataset, raw: bool = False) -> tuple[int, int]:
    """(H, W) of the dataset's images, from its first sample; DataError if it is not an (image, mask) pair.

    ``raw``: the images are expected as uint8 (normalised later by the stream) instead of float.
    """
    if len(dataset) == 0:
        raise DataError(f"dataset {type(dataset).__name__} is empty")
    sample = dataset[0]
    if not isinstance(sample, (tuple, list)) or len(sample) < 2:
        raise DataError(f"dataset {type(dataset).__name__}: items must be (image, mask) pairs, got {type(sample).__name__}")
    image, mask = torch.as_tensor(sample[0]), torch.as_tensor(sample[1])
    if image.dim() != 3 or image.shape[0] != 3 or image.is_floating_point() == raw:
        raise DataError(
            f"dataset {type(dataset).__name__}: expected a float image of shape (3, H, W), "
            f"got shape {tuple(image.shape)} dtype {image.dtype} (pass normalising transforms)"
        )
    if mask.shape != image.shape[1:] or mask.is_floating_point() or mask.dtype == torch.bool:
        raise DataError(
            f"dataset {type(dataset).__name__}: expected an integer mask of shape {tuple(image.shape[1:])}, "
            f"got shape {tuple(mask.shape)} dtype {mask.dtype}"
        )
    return int(image.shape[1]), int(image.shape[2])


class Indexed(Dataset):
    """``(image, mask, index)`` items of a dataset: the key of a per-image cache."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        item = self.dataset[index]
        return item[0], item[1], index


class ImageStream:
    """Batches of ``batch_size`` (image, mask) pairs on ``device``, in an order fixed by :meth:`seed`.

    Args:
        batch_size: B, the images per batch (the env's ``num_envs``); the dataset must hold at least B.
        config: any object with the fields ``dataset``, ``data_root``, ``split``, ``image_size``, ``augment``,
            ``dataset_kwargs``, ``shuffle``, ``num_workers`` (the env configs).
        device: where batches are delivered (and raw digit images normalised).
        indexed: also keep each batch's dataset indices (B,) in :attr:`batch_index` (for per-image caches).

    Attributes: ``dataset``, ``raw`` (uint8 images normalised here), ``image_size`` (H, W), ``batches_drawn``
    (batches taken since construction), ``batch_index`` (the last batch's indices, ``indexed`` only), ``seeded``.
    """

    def __init__(self, batch_size: int, config: Any, device: torch.device, indexed: bool = False) -> None:
        self.batch_size = batch_size
        self.device = device
        self.indexed = indexed
        self.dataset, self.raw = resolve_dataset(config)
        if len(self.dataset) < batch_size:
            raise ValueError(f"the dataset has {len(self.dataset)} samples, fewer than num_envs={batch_size}")
        self.image_size: tuple[int, int] = check_sample(self.dataset, self.raw)
        # x_norm = (x / 255 - mean) / std = (x - 255 mean) / (255 std), for raw uint8 batches
        self._raw_shift = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self._raw_scale = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
        self._generator = torch.Generator()
        self._loader = DataLoader(
            Indexed(self.dataset) if indexed else self.dataset,
            batch_size=batch_size,
            shuffle=config.shuffle,
            drop_last=True,
            num_workers=config.num_workers,
            pin_memory=device.type == "cuda",
            generator=self._generator,
        )
        self._iterator: Union[Iterator, None] = None
        self.seeded = False
        self.batches_drawn = 0
        self.batch_index: Union[Tensor, None] = None  # (B,) dataset indices of the last batch (indexed)

    def seed(self, seed: Union[int, None]) -> None:
        """Seed the image order: the next batch starts a fresh epoch drawn from ``seed`` (None = random)."""
        if seed is None:
            self._generator.seed()
        else:
            if isinstance(seed, bool) or int(seed) != seed:
                raise ValueError(f"seed must be an int or None, got {seed!r}")
            self._generator.manual_seed(int(seed))
        self._iterator = None  # a new iterator draws its permutation (and worker seeds) from the generator
        self.seeded = True

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """Next (images (B, 3, H, W) float32, masks (B, H, W) int64) on ``device``; a new epoch when exhausted.

        Seeds randomly first if :meth:`seed` was never called.
        """
        if not self.seeded:
            self.seed(None)
        if self._iterator is None:
            self._iterator = iter(self._loader)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self._iterator = iter(self._loader)
            batch = next(self._iterator)
        self.batches_drawn += 1
        images, masks = batch[0], batch[1]
        if self.indexed:
            self.batch_index = torch.as_tensor(batch[2], device=self.device)  # (B,)
        if images.shape[1:] != (3, *self.image_size) or masks.shape[1:] != self.image_size:
            raise DataError(
                f"dataset {type(self.dataset).__name__}: every image must be (3, {self.image_size[0]}, {self.image_size[1]}) "
                f"with a mask of the same size, got a batch of images {tuple(images.shape)} and masks {tuple(masks.shape)}"
            )
        images = images.as_subclass(Tensor).to(self.device, non_blocking=True)  # (B, 3, H, W), uint8 if raw
        images = images.float()
        if self.raw:
            images = images.sub_(self._raw_shift).div_(self._raw_scale)  # same normalisation as the eval preset
        masks = masks.as_subclass(Tensor).to(self.device, dtype=torch.int64, non_blocking=True)  # (B, H, W)
        return images, masks

    def close(self) -> None:
        """Drop the DataLoader iterator (stopping its worker processes, if any)."""
        self._iterator = None


__all__ = [
    "ARRAY_TYPES",
    "RENDER_MODES",
    "ImageStream",
    "Indexed",
    "check_choice",
    "check_sample",
    "check_stream_fields",
    "resolve_dataset",
    "resolve_device",
]
