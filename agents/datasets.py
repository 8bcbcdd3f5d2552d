"""The data of a co-training run: its datasets, resumable loaders, and the checks that stop bad data up front."""
from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from agents.config import TrainConfig
from agents.trainer import IterationBatchSampler
from segbandit.data import make_dataset
from segbandit.distributed import SINGLE, DistInfo
from segbandit.errors import DataError


# the training split a config names, per dataset: VOC trainaug / train / trainval; Cityscapes and ADE20K have one
_TRAIN_SPLIT_ALIASES: dict[str, dict[str, str]] = {
    "cityscapes": {"trainaug": "train"},
    "ade20k": {"trainaug": "train"},
    "lip": {"trainaug": "train"},
    "cihp": {"trainaug": "train"},
}


def build_datasets(cfg: TrainConfig, **dataset_kw: Any) -> tuple[Dataset, Dataset, int, tuple[str, ...]]:
    """(train, val, num_classes, class_names) for ``cfg``: DigitScenes, VOC (trainaug/val), Cityscapes or ADE20K
    (train/val; the default train split ``trainaug`` means ``train`` for them).  ``dataset_kw`` go to both
    datasets' classes (e.g. ``reduce_zero_label=False`` for ADE20K's class-incremental layout)."""
    if cfg.dataset == "digits":
        train_kw = {"num_samples": cfg.train_size} if cfg.train_size else {}
        val_kw = {"num_samples": cfg.val_size} if cfg.val_size else {}
        train = make_dataset("digits", cfg.train_split, seed=cfg.seed, image_size=cfg.crop_size, cache=True,
                             train=cfg.augment, **train_kw)
        # the validation scenes do not depend on the run's seed: runs with different seeds are compared on one set
        val = make_dataset("digits", cfg.val_split, seed=0, image_size=cfg.crop_size, cache=True, **val_kw)
        names = tuple(train.class_names)
    else:
        train_split = _TRAIN_SPLIT_ALIASES.get(cfg.dataset, {}).get(cfg.train_split, cfg.train_split)
        train = make_dataset(cfg.dataset, train_split, root=cfg.data_root, image_size=cfg.crop_size,
                             train=cfg.augment, **dataset_kw)
        val = make_dataset(cfg.dataset, cfg.val_split, root=cfg.data_root, image_size=cfg.crop_size, train=False,
                           **dataset_kw)
        names = tuple(train.class_names)
        if cfg.val_size:
            val = Subset(val, range(min(cfg.val_size, len(val))))
    return train, val, len(names), names


# --eval-domains: a target domain's (dataset, split, dataset keywords).  A name not listed evaluates that DATASETS
# entry's val split.  The digit domains are the val scenes (seed 0, as the run's own val set) in another style.
EVAL_DOMAINS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "digits": ("digits", "val", {}),
    "digits_night": ("digits", "val", {"style": "night"}),
    "digits_texture": ("digits", "val", {"style": "texture"}),
    "dark_zurich": ("dark_zurich", "val", {}),
    "nighttime_driving": ("nighttime_driving", "test", {}),
}


def parse_domains(text: str) -> list[tuple[str, str | None]]:
    """``"digits_night,dark_zurich=/data/dz"`` -> ``[("digits_night", None), ("dark_zurich", "/data/dz")]``."""
    out: list[tuple[str, str | None]] = []
    for item in (t.strip() for t in text.split(",")):
        if item:
            name, _, root = item.partition("=")
            out.append((name.strip(), root.strip() or None))
    return out


def make_domain(name: str, root: str | None, cfg: TrainConfig) -> tuple[str, Dataset]:
    """(split, eval dataset) of target domain ``name`` (:data:`EVAL_DOMAINS`, or any ``DATASETS`` name's val split)."""
    from segbandit.data import DATASETS

    dataset, split, kw = EVAL_DOMAINS.get(name, (name, "val", {}))
    if dataset not in DATASETS:
        valid = sorted(set(EVAL_DOMAINS) | set(DATASETS))
        raise ValueError(f"unknown evaluation domain {name!r}; valid names: {', '.join(valid)}")
    if dataset == "digits":
        val_kw = {"num_samples": cfg.val_size} if cfg.val_size else {}
        return split, make_dataset("digits", split, seed=0, image_size=cfg.crop_size, cache=True, **val_kw, **kw)
    return split, make_dataset(dataset, split, root=root, image_size=cfg.crop_size, train=False, **kw)


def build_domains(cfg: TrainConfig, num_classes: int) -> list[tuple[str, str, Dataset]]:
    """The (name, split, dataset) of each ``cfg.eval_domains`` entry; a domain with other classes is a ValueError."""
    domains = []
    for name, root in parse_domains(cfg.eval_domains):
        split, ds = make_domain(name, root, cfg)
        k = int(getattr(ds, "num_classes", num_classes))
        if k != num_classes:
            raise ValueError(f"evaluation domain {name} has {k} classes, the run's model {num_classes}")
        domains.append((name, split, ds))
    return domains


def shard(n: int, info: DistInfo) -> range:
    """This rank's share of ``n`` items, without padding or repeats: ``range(rank, n, world_size)``."""
    return range(info.rank, n, info.world_size)


def build_loaders(cfg: TrainConfig, train: Dataset, val: Dataset, start: int, device: torch.device,
                  info: DistInfo = SINGLE) -> tuple[DataLoader, DataLoader, IterationBatchSampler]:
    """Train loader (endless, resumable at batch ``start``; this rank's share of the global batch), val loader (this
    rank's share of the val images, no padding), and the train batch sampler."""
    workers = int(cfg.num_workers)
    common: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        common["persistent_workers"] = True
    per_rank = cfg.batch_size // info.world_size
    sampler = IterationBatchSampler(len(train), per_rank, seed=cfg.seed, start_iteration=start,
                                    num_replicas=info.world_size, rank=info.rank)
    # worker seeds; keeps the global torch RNG untouched (rank 0 keeps the single-process seed)
    gen = torch.Generator().manual_seed(cfg.seed + 100_003 * info.rank)
    train_loader = DataLoader(train, batch_sampler=sampler, generator=gen, **common)
    return train_loader, eval_loader(cfg, val, info, **common), sampler


def eval_loader(cfg: TrainConfig, dataset: Dataset, info: DistInfo = SINGLE, **loader_kw: Any) -> DataLoader:
    """An evaluation loader: this rank's share of ``dataset`` (no padding), in order, at the eval batch size."""
    part = dataset if not info.enabled else Subset(dataset, list(shard(len(dataset), info)))
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    return DataLoader(part, batch_size=max(1, eval_bs // info.world_size), shuffle=False,
                      generator=torch.Generator().manual_seed(cfg.seed), **loader_kw)


def one_line(err: BaseException) -> str:
    """The message of a user error on one line (a DataLoader worker wraps it in a traceback: keep its last line)."""
    text = str(err)
    if "Traceback" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        text = lines[-1] if lines else text
        for prefix in ("segbandit.errors.DataError: ", "DataError: "):
            if text.startswith(prefix):
                text = text[len(prefix):]
    return " ".join(text.split())


def _check_files(ds: Dataset) -> None:
    """Every image and mask file a split lists exists (a stat each: cheap, and names the first missing one)."""
    base = ds.dataset if isinstance(ds, Subset) else ds
    for kind in ("images", "masks"):
        for path in getattr(base, kind, []):
            if not os.path.isfile(path):
                raise DataError(f"{path}: {kind[:-1]} file listed in {getattr(base, 'list_file', 'the split')} not found")


def _discard(batch: list[Any]) -> None:
    return None


def validate_data(cfg: TrainConfig, train: Dataset, val: Dataset, first_batch: list[int], full: bool = False) -> None:
    """Raise DataError (one line naming the file) on bad data before training writes anything.

    Always: every listed file exists, the samples of the first training batch and the first val image decode
    with matching mask size and valid labels.  ``full``: every train and val sample is read.
    """
    _check_files(train)
    _check_files(val)
    for i in first_batch:
        train[i]
    if len(val):
        val[0]
    if full:
        for ds in (train, val):
            loader = DataLoader(ds, batch_size=1, num_workers=int(cfg.num_workers), collate_fn=_discard)
            try:
                for _ in loader:
                    pass
            except DataError as err:
                raise DataError(one_line(err)) from None


__all__ = ["build_datasets", "build_loaders", "one_line", "shard", "validate_data"]
