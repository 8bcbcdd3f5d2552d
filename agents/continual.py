"""Class-incremental training: fine-tuning, PLOP and PLOP + latent-space RL over the steps of a task (Table 3).

Each step is one main-job run (:func:`agents.fit.fit`) on that step's data (:func:`step_datasets`: PLOP's image
filter and label masking), with the number of classes seen so far:

- step 0 trains as the main job does (CE only for ``finetune`` / ``plop``, Eq. 6 for ``plop+rl``);
- a later step starts from the previous step's weights, its classifier grown to the new classes
  (:func:`segbandit.continual.expand_classifier`; background-initialised for PLOP), at ``lr * step_lr_mult`` for
  ``step_iters`` iterations (PLOP: lr 0.01 -> 0.001, 30 -> 10 epochs), and PLOP's :class:`PLOPDistiller` relabels each
  batch with the frozen old model's confident predictions, scales each image's CE by the adaptive factor and adds
  Local POD (``loss_pod``).  With ``plop+rl`` the same step also carries the latent policy's terms of Eq. 6, and the
  policy, its EMA reference and baseline continue from the previous step.

After every step the model is evaluated on every class seen so far: mIoU over the initial classes (background
included, as PLOP's code counts), the added ones and all (``continual.json`` / ``continual.md`` in ``cfg.out``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from agents.atomic import atomic_write
from agents.config import TrainConfig
from agents.datasets import build_datasets
from agents.fit import fit
from agents.trainer import CoTrainer
from segbandit.continual import (
    DEFAULT_TASKS,
    TASKS,
    Task,
    continual_miou,
    entropy_histogram,
    entropy_thresholds,
    eval_lut,
    expand_classifier,
    keep_for_eval,
    keep_for_training,
    make_task,
    max_pseudo_entropy,
    pod_loss,
    pseudo_labels,
    training_lut,
)
from segbandit.data import ADE20K_CLASSES, DIGIT_CLASSES, VOC_CLASSES
from segbandit.errors import DataError


@dataclass(frozen=True)
class ContinualMethod:
    """What a method adds to plain fine-tuning: PLOP's distillation, the latent policy of Eq. 6."""

    plop: bool
    rl: bool


# The continual methods (read at use time: a registered name reaches the script and the benchmark).
METHODS: dict[str, ContinualMethod] = {
    "finetune": ContinualMethod(plop=False, rl=False),
    "finetune+rl": ContinualMethod(plop=False, rl=True),
    "plop": ContinualMethod(plop=True, rl=False),
    "plop+rl": ContinualMethod(plop=True, rl=True),
}
# A method without RL is the capacity control of the main job: no modulation, no policy terms.
NO_RL: dict[str, Any] = {"lambda_policy": 0.0, "lambda_kl": 0.0, "modulation": "none"}


def make_method(name: str) -> ContinualMethod:
    """The continual method ``name`` (:data:`METHODS`)."""
    if name not in METHODS:
        raise ValueError(f"unknown continual method {name!r}; valid names: {', '.join(METHODS)}")
    return METHODS[name]


# -- data


class MaskedSubset(Dataset):
    """``dataset`` restricted to ``indices``, each mask (H, W) int64 passed through the label table ``lut`` (256,)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], lut: np.ndarray) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.lut = torch.as_tensor(lut, dtype=torch.int64)
        self.class_names = getattr(dataset, "class_names", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        image, mask = self.dataset[self.indices[i]]
        return image, self.lut[mask]  # void (255) stays void


def _raw_mask(dataset: Dataset, i: int) -> np.ndarray:
    if isinstance(dataset, Subset):
        return _raw_mask(dataset.dataset, dataset.indices[i])
    if not hasattr(dataset, "raw_mask"):
        raise TypeError(f"{type(dataset).__name__} has no raw_mask(i): the class filter cannot read its labels")
    return dataset.raw_mask(i)


def class_presence(dataset: Dataset) -> list[np.ndarray]:
    """The label values (sorted unique, void included) of every sample's untransformed mask."""
    return [np.unique(_raw_mask(dataset, i)) for i in range(len(dataset))]


def step_datasets(
    task: Task, step: int, train: Dataset, val: Dataset, train_present: Sequence[np.ndarray],
    val_present: Sequence[np.ndarray], overlap: bool = True,
) -> tuple[MaskedSubset, MaskedSubset]:
    """(train, val) of ``step``: PLOP's filter and masking of the training images, MiB's of the evaluation ones."""
    keep = [i for i, p in enumerate(train_present) if keep_for_training(p, task, step, overlap)]
    if not keep:
        raise DataError(f"task {task.name} step {step}: no training image shows a class of {task.new(step)}")
    shown = [i for i, p in enumerate(val_present) if keep_for_eval(p, task, step)]
    return MaskedSubset(train, keep, training_lut(task, step)), MaskedSubset(val, shown, eval_lut(task, step))


# -- PLOP's distillation from the old model


def _stage_modules(segmentor: nn.Module) -> list[nn.Module]:
    """The backbone stages Local POD reads: the ``layer<N>`` children of a ResNet-style backbone, in order."""
    named = [(n, m) for n, m in segmentor.backbone.named_children() if re.fullmatch(r"layer\d+", n)]
    return [m for _, m in sorted(named, key=lambda nm: int(nm[0][5:]))]


class FeatureTap:
    """Records the maps Local POD compares while a segmentor runs: each backbone stage, the latent z and the logits
    at the head's resolution (the classifier's output before upsampling); the first call of each module counts.

    For a backbone without ``layer<N>`` stages (Segformer, SETR) the stages are the pass-through features the decoder
    reads beside z (Segformer's stages 1-3; none for SETR).
    """

    def __init__(self, segmentor: nn.Module) -> None:
        self.segmentor = segmentor
        self.stages = _stage_modules(segmentor)
        self._seen: dict[str, Any] = {}

    def _hook(self, key: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._seen.setdefault(key, output)

        return hook

    @contextlib.contextmanager
    def record(self) -> Iterator["FeatureTap"]:
        self._seen = {}
        handles = [m.register_forward_hook(self._hook(f"stage{i}")) for i, m in enumerate(self.stages)]
        handles.append(self.segmentor.backbone.register_forward_hook(self._hook("backbone")))
        handles.append(self.segmentor.classifier.register_forward_hook(self._hook("logits")))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def maps(self) -> list[Tensor]:
        """[stage_1, ..., z, logits] of the last recorded forward (each (B, C, h, w))."""
        if "backbone" not in self._seen or "logits" not in self._seen:
            raise RuntimeError("FeatureTap.maps: nothing recorded (run the segmentor inside record())")
        feats = dict(self._seen["backbone"])
        z = feats["out"]
        stages = [self._seen[f"stage{i}"] for i in range(len(self.stages)) if f"stage{i}" in self._seen]
        if not self.stages:
            stages = [t for t in self.segmentor.skips(feats) if t.ndim == 4]
        return [*(t for t in stages if t is not z), z, self._seen["logits"]]


class PLOPDistiller:
    """PLOP at one step: pseudo-labels and the adaptive CE factor from the frozen old model, and Local POD.

    ``old`` is the previous step's trainer, used read-only (its deterministic prediction s = mu, eval mode, no
    gradient).  :meth:`calibrate` sets the per-class entropy thresholds from one pass over the step's training data
    (medians over background pixels of the old model's uncertainty, floor ``threshold``); the trainer then calls
    :meth:`targets` before and :meth:`loss` after each rollout, with :meth:`capture` around it.
    """

    def __init__(self, old: CoTrainer, num_seen: int, *, pod_factor: float = 0.01, pod_logits_factor: float = 0.0005,
                 pod_scales: Sequence[int] = (1, 2, 4), threshold: float = 0.001, bins: int = 100) -> None:
        self.old = old
        for p in (*old.segmentor.parameters(), *old.policy.parameters()):
            p.requires_grad_(False)
        self.num_old = int(old.num_classes)
        self.num_seen = int(num_seen)
        if self.num_seen <= self.num_old:
            raise ValueError(f"a step must add classes: {self.num_old} old, {self.num_seen} seen")
        self.pod_factor, self.pod_logits_factor = float(pod_factor), float(pod_logits_factor)
        self.pod_scales = tuple(int(s) for s in pod_scales)
        self.threshold, self.bins = float(threshold), int(bins)
        self.thresholds = torch.full((self.num_old,), self.threshold)  # until calibrated
        self._old_tap = FeatureTap(old.segmentor)
        self._new_tap: FeatureTap | None = None
        self._old_maps: list[Tensor] = []

    @torch.no_grad()
    def _old_forward(self, images: Tensor) -> Tensor:
        """Old logits (B, C_old, H, W) at the image size; records the old maps."""
        with self._old_tap.record():
            logits = self.old.predict(images, deterministic=True)
        self._old_maps = [t.detach() for t in self._old_tap.maps()]
        return logits

    @torch.no_grad()
    def calibrate(self, dataset: Dataset, batch_size: int, max_batches: int | None = None) -> Tensor:
        """Per-class thresholds (C_old,) from the old model's uncertainty on ``dataset`` (PLOP's ``find_median``)."""
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        hist = torch.zeros(self.num_old, self.bins, dtype=torch.long)
        for i, (images, masks) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            logits = self._old_forward(images)
            hist += entropy_histogram(logits, masks.to(logits.device), self.num_seen, self.bins).cpu()
        self.thresholds = entropy_thresholds(hist, max_pseudo_entropy(self.num_old, self.num_seen), self.threshold)
        self._old_maps = []
        return self.thresholds

    def targets(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """(labels with pseudo-labels (B, H, W), CE factor (B,)) of a batch; keeps the old maps for :meth:`loss`."""
        logits = self._old_forward(images)
        return pseudo_labels(masks, logits, self.thresholds.to(logits.device), self.num_seen)

    def capture(self, segmentor: nn.Module) -> contextlib.AbstractContextManager:
        """Record the current model's maps during the rollout that follows."""
        if self._new_tap is None or self._new_tap.segmentor is not segmentor:
            self._new_tap = FeatureTap(segmentor)
        return self._new_tap.record()

    def loss(self) -> dict[str, Tensor]:
        """``loss_pod``: Local POD between the old and the current maps of the last batch (weighted; with graph)."""
        if self._new_tap is None or not self._old_maps:
            raise RuntimeError("PLOPDistiller.loss before targets() and a captured rollout")
        new = self._new_tap.maps()
        old, self._old_maps = self._old_maps, []
        return {"loss_pod": pod_loss(old, new, num_old=self.num_old, num_seen=self.num_seen, factor=self.pod_factor,
                                     logits_factor=self.pod_logits_factor, scales=self.pod_scales)}  # fmt: skip


# -- one step, and the task


def step_config(cfg: TrainConfig, task: Task, step: int) -> TrainConfig:
    """The main-job config of ``step``: the method's RL switch, the classes seen, the step's budget, its run folder."""
    method = make_method(cfg.continual_method)
    over: dict[str, Any] = {} if method.rl else dict(NO_RL)
    if cfg.class_weights is not None:
        over["class_weights"] = tuple(cfg.class_weights[: task.num_seen(step)])
    if step > 0:
        iters = cfg.step_iters if cfg.step_iters is not None else max(1, cfg.max_iters // 3)
        over.update(max_iters=iters, lr=cfg.lr * cfg.step_lr_mult, warmup_iters=0, init_from=None,
                    eval_every=min(cfg.eval_every, iters), save_every=min(cfg.save_every, iters))  # fmt: skip
    out = Path(cfg.out) / f"step_{step}" if cfg.out else None
    # --eval-domains is the main job's: a step's model knows only the classes seen so far
    return dataclasses.replace(cfg, **over, out=str(out) if out else None, resume=False, eval_domains="")


def grow_from(trainer: CoTrainer, old: CoTrainer, balanced: bool) -> None:
    """Start ``trainer`` from ``old``: segmentor with its classifier grown, policy and objective (reference, baseline)."""
    trainer.segmentor.load_state_dict(
        expand_classifier(old.segmentor.state_dict(), trainer.segmentor.state_dict(), old.num_classes, balanced)
    )
    trainer.policy.load_state_dict(old.policy.state_dict())
    trainer.objective.load_state_dict(old.objective.state_dict())


def run_step(
    cfg: TrainConfig,
    task: Task,
    step: int,
    data: tuple[Dataset, Dataset],
    class_names: Sequence[str],
    old: CoTrainer | None,
    *,
    save_checkpoints: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[CoTrainer, dict[str, Any]]:
    """Train ``step`` of ``task`` (``old``: the previous step's trainer, None at step 0) -> (trainer, result row).

    The row holds ``step``, ``classes`` (the step's new classes), ``miou_old`` / ``miou_new`` / ``miou_all``,
    ``per_class_iou``, ``iterations`` and ``wall_time_s``.
    """
    method = make_method(cfg.continual_method)
    if (old is None) != (step == 0):
        raise ValueError(f"step {step} needs {'no' if step == 0 else 'the previous step'}'s trainer")
    step_cfg = step_config(cfg, task, step)
    kept: dict[str, CoTrainer] = {}

    def setup(trainer: CoTrainer, train_ds: Dataset) -> None:
        if old is None:
            return
        grow_from(trainer, old, balanced=method.plop)
        if method.plop:
            distiller = PLOPDistiller(old, task.num_seen(step), pod_factor=cfg.pod_factor,
                                      pod_logits_factor=cfg.pod_logits_factor, pod_scales=cfg.pod_scales,
                                      threshold=cfg.pseudo_threshold)  # fmt: skip
            distiller.calibrate(train_ds, cfg.eval_batch_size or cfg.batch_size)
            trainer.distiller = distiller

    def keep(trainer: CoTrainer, _loader: Any) -> Mapping[str, Any]:
        kept["trainer"] = trainer
        return {}

    seen = task.num_seen(step)
    res = fit(step_cfg, data=(data[0], data[1], seen, tuple(class_names[:seen])), setup=setup, on_end=keep,
              save_checkpoints=save_checkpoints, log=log)  # fmt: skip
    trainer = kept["trainer"]
    trainer.distiller = None  # the old model is released with the step
    iou = list(res["per_class_iou"].values())
    split = continual_miou(iou, task.num_initial)
    row = {"step": step, "classes": list(task.new(step)), "miou_old": split["old"],
           "miou_new": split["new"], "miou_all": split["all"], "per_class_iou": res["per_class_iou"],
           "iterations": res["iterations"], "wall_time_s": res["wall_time_s"]}  # fmt: skip
    return trainer, row


# the class count of each dataset with tasks (ADE20K with background), to check a task before reading data
TASK_CLASSES: dict[str, int] = {"digits": len(DIGIT_CLASSES), "voc": len(VOC_CLASSES), "ade20k": len(ADE20K_CLASSES) + 1}
# PLOP's ADE20K keeps 0 = background (unlabelled) beside classes 1..150 instead of mmseg's reduce_zero_label
DATASET_KW: dict[str, dict[str, Any]] = {"ade20k": {"reduce_zero_label": False}}


def prepare(cfg: TrainConfig) -> tuple[Task, Dataset, Dataset, tuple[str, ...], list[np.ndarray], list[np.ndarray]]:
    """(task, full train and val sets, class names, their class presence) of a continual run's ``cfg``."""
    if cfg.task is None and cfg.dataset not in DEFAULT_TASKS:
        raise ValueError(f"a continual run on {cfg.dataset} needs --task; datasets with tasks: {', '.join(TASKS)}")
    name = cfg.task if cfg.task is not None else DEFAULT_TASKS[cfg.dataset]
    kw = DATASET_KW.get(cfg.dataset, {})
    task = make_task(cfg.dataset, name, TASK_CLASSES.get(cfg.dataset, 0))  # a bad task fails before any data is read
    train, val, _, names = build_datasets(cfg, **kw)
    return task, train, val, names, class_presence(train), class_presence(val)


def train_continual(cfg: TrainConfig, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every step of ``cfg.task`` with ``cfg.continual_method``; writes ``continual.json`` / ``.md`` in ``cfg.out``.

    Returns ``task``, ``method``, ``steps`` (one row per step, see :func:`run_step`) and ``final`` (the last row).
    """
    make_method(cfg.continual_method)
    if cfg.out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg = dataclasses.replace(cfg, out=str(Path("runs") / f"continual-{cfg.preset}-{cfg.continual_method}-{stamp}"))
    task, train, val, names, train_present, val_present = prepare(cfg)
    rows: list[dict[str, Any]] = []
    old: CoTrainer | None = None
    for step in range(task.num_steps):
        data = step_datasets(task, step, train, val, train_present, val_present, cfg.overlap)
        old, row = run_step(cfg, task, step, data, names, old, log=log)
        rows.append(row)
        log(f"step {step} ({task.new(step)[0]}-{task.new(step)[-1]}): mIoU old {100 * row['miou_old']:.2f}, "
            f"new {100 * row['miou_new']:.2f}, all {100 * row['miou_all']:.2f}")  # fmt: skip
    result = {"task": task.name, "method": cfg.continual_method, "overlap": cfg.overlap, "steps": rows,
              "final": rows[-1]}  # fmt: skip
    if cfg.out:
        write_summary(Path(cfg.out), result, names[: task.num_initial])
    return result


def format_summary(result: Mapping[str, Any]) -> str:
    """The Markdown table of a continual run: one row per step, old / new / all mIoU in percent."""
    lines = [f"# {result['method']} on task {result['task']} ({'overlap' if result['overlap'] else 'disjoint'})", "",
             "| step | classes | iterations | mIoU old | mIoU new | mIoU all |", "|---|---|---|---|---|---|"]
    for r in result["steps"]:
        cls = r["classes"]
        pct = [("-" if math.isnan(r[k]) else f"{100 * r[k]:.2f}") for k in ("miou_old", "miou_new", "miou_all")]
        lines.append(f"| {r['step']} | {cls[0]}-{cls[-1]} | {r['iterations']} | " + " | ".join(pct) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, result: Mapping[str, Any], initial_names: Sequence[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "continual.json", lambda fh: fh.write(json.dumps(result, indent=2, default=float)), binary=False)
    atomic_write(out / "continual.md", lambda fh: fh.write(format_summary(result)), binary=False)


__all__ = ["ContinualMethod", "FeatureTap", "METHODS", "MaskedSubset", "NO_RL", "PLOPDistiller", "class_presence",
           "format_summary", "grow_from", "make_method", "prepare", "run_step", "step_config", "step_datasets",
           "train_continual", "write_summary"]  # fmt: skip
