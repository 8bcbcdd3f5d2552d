"""Class-incremental segmentation as PLOP (Douillard et al., CVPR 2021) defines it: tasks, label masking, Local POD,
entropy pseudo-labels, the adaptive CE factor and the background-initialised classifier.

Everything here follows PLOP's official code (``arthurdouillard/CVPR2021_PLOP``: ``tasks.py``, ``dataset/utils.py``,
``train.py``, ``segmentation_module.py``); where this module departs from it, the docstring says so.

A task splits the classes by ascending index: ``15-5`` on VOC's 21 classes is step 0 = {0..15} (background and 15
objects), step 1 = {16..20}; ``15-1`` adds 16, 17, ... one per step.  At step t the training labels keep only that
step's classes (old and future ones become background, void stays void) and evaluation covers every class seen so
far (the others are void).  Background counts among the initial classes in the old / new / all split of the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from segbandit.constants import IGNORE_INDEX

__all__ = [
    "DEFAULT_TASKS",
    "POD_SCALES",
    "TASKS",
    "Task",
    "continual_miou",
    "entropy_histogram",
    "entropy_thresholds",
    "eval_lut",
    "expand_classifier",
    "keep_for_eval",
    "keep_for_training",
    "label_lut",
    "max_pseudo_entropy",
    "local_pod",
    "make_task",
    "pod_loss",
    "pseudo_entropy",
    "pseudo_labels",
    "training_lut",
]

POD_SCALES: tuple[int, ...] = (1, 2, 4)  # PLOP's spp_scales: windows of 1x1, 2x2 and 4x4 per feature map

# Each dataset's tasks as (classes of step 0 beside background, classes added per later step): PLOP's tasks.py for
# VOC and ADE20K (ascending class index), and the embedded digit scenes (background + digits 0-5, then 6-9).
TASKS: dict[str, dict[str, tuple[int, int]]] = {
    "voc": {"19-1": (19, 1), "15-5": (15, 5), "15-1": (15, 1), "10-1": (10, 1)},
    "ade20k": {"100-50": (100, 50), "100-10": (100, 10), "100-5": (100, 5), "50-50": (50, 50)},
    "digits": {"6-4": (6, 4), "6-2": (6, 2), "6-1": (6, 1)},
}

DEFAULT_TASKS: dict[str, str] = {"voc": "15-5", "ade20k": "100-50", "digits": "6-4"}  # a run without --task


@dataclass(frozen=True)
class Task:
    """The classes each step introduces: ``steps[0]`` = (0, 1, ..., n0), then contiguous runs of higher indices."""

    name: str
    steps: tuple[tuple[int, ...], ...]

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def _check(self, step: int) -> None:
        if not 0 <= step < self.num_steps:
            raise ValueError(f"task {self.name} has steps 0..{self.num_steps - 1}, got step {step}")

    def new(self, step: int) -> tuple[int, ...]:
        """Classes added at ``step`` (step 0: background and the initial classes)."""
        self._check(step)
        return self.steps[step]

    def seen(self, step: int) -> tuple[int, ...]:
        """Classes seen up to and including ``step``: 0 .. C_t - 1."""
        self._check(step)
        return tuple(c for s in self.steps[: step + 1] for c in s)

    def num_seen(self, step: int) -> int:
        return len(self.seen(step))

    @property
    def num_initial(self) -> int:
        """Classes of step 0, background included (the "old" classes of PLOP's tables)."""
        return len(self.steps[0])


def make_task(dataset: str, name: str, num_classes: int) -> Task:
    """Task ``name`` of ``dataset`` (:data:`TASKS`, read at call time) over ``num_classes`` classes (background = 0)."""
    if dataset not in TASKS:
        raise ValueError(f"no class-incremental tasks for dataset {dataset!r}; datasets with tasks: {', '.join(TASKS)}")
    if name not in TASKS[dataset]:
        raise ValueError(f"unknown {dataset} task {name!r}; valid names: {', '.join(TASKS[dataset])}")
    first, per_step = TASKS[dataset][name]
    if not 0 < first < num_classes - 1 or per_step < 1:
        raise ValueError(f"task {name} needs 1 <= {first} < {num_classes - 1} initial classes and >= 1 per step")
    steps = [tuple(range(first + 1))]
    for lo in range(first + 1, num_classes, per_step):
        steps.append(tuple(range(lo, min(lo + per_step, num_classes))))
    return Task(name, tuple(steps))


def label_lut(keep: Sequence[int], other: int) -> np.ndarray:
    """(256,) int64: classes in ``keep`` map to themselves, void to void, every other value to ``other``."""
    lut = np.full(256, other, dtype=np.int64)
    lut[list(keep)] = list(keep)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def training_lut(task: Task, step: int) -> np.ndarray:
    """Training labels of ``step``: its classes kept, old and future ones -> background (0), void kept (PLOP masking)."""
    return label_lut(task.new(step), 0)


def eval_lut(task: Task, step: int) -> np.ndarray:
    """Evaluation labels after ``step``: every seen class kept, unseen ones -> void (MiB / PLOP test masking)."""
    return label_lut(task.seen(step), IGNORE_INDEX)


def keep_for_training(present: np.ndarray, task: Task, step: int, overlap: bool) -> bool:
    """Whether an image whose label map holds the values ``present`` trains ``step`` (PLOP's ``filter_images``).

    Overlap (PLOP's scripts): the image shows a class of this step.  Disjoint: it also shows no future class.
    """
    current = set(task.new(step)) - {0}
    values = set(int(v) for v in present)
    if not values & current:
        return False
    return overlap or values <= set(task.seen(step)) | {0, IGNORE_INDEX}


def keep_for_eval(present: np.ndarray, task: Task, step: int) -> bool:
    """Whether an image is evaluated after ``step``: it shows a seen class other than background (MiB's test set)."""
    return bool(set(int(v) for v in present) & (set(task.seen(step)) - {0}))


# -- Local POD (PLOP Sec. 3.1, Eq. 1-4)


def local_pod(x: Tensor, scales: Sequence[int] = POD_SCALES) -> Tensor:
    """PLOP's Local POD embedding of features x (B, C, H, W) -> (B, N).

    At each scale s the map is cut into s x s windows (the last rows / columns that do not fill a window are left
    out, as in PLOP's slicing); each window contributes its width-pooled (C, h_s) and height-pooled (C, w_s) means.
    Scales whose windows would be empty (s > H or s > W) are skipped.  The element order differs from PLOP's loop,
    which no Frobenius distance sees.
    """
    if x.ndim != 4:
        raise ValueError(f"expected features of shape (B, C, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    parts = []
    for s in scales:
        hk, wk = h // s, w // s
        if hk == 0 or wk == 0:
            continue
        win = x[..., : s * hk, : s * wk].reshape(b, c, s, hk, s, wk)  # (B, C, s, hk, s, wk)
        parts.append(win.mean(dim=5).reshape(b, -1))  # width pooling: (B, C * s * hk * s)
        parts.append(win.mean(dim=3).reshape(b, -1))  # height pooling: (B, C * s * s * wk)
    if not parts:
        raise ValueError(f"features {tuple(x.shape)} are smaller than every POD scale {tuple(scales)}")
    return torch.cat(parts, dim=1)


def _sum_new_channels(new: Tensor, num_old: int) -> Tensor:
    """New logits (B, C_t, h, w) -> (B, C_old, h, w): the new classes' logits summed into background (PLOP's "sum")."""
    out = new[:, :num_old].clone()
    out[:, 0] = new[:, 0] + new[:, num_old:].sum(dim=1)
    return out


def pod_loss(
    old: Sequence[Tensor],
    new: Sequence[Tensor],
    *,
    num_old: int,
    num_seen: int,
    factor: float = 0.01,
    logits_factor: float = 0.0005,
    scales: Sequence[int] = POD_SCALES,
) -> Tensor:
    """PLOP's distillation loss between the old model's and the current model's feature maps; 0-d float32.

    ``old`` / ``new``: the same list of maps (B, C, H, W) of both models: every backbone stage, the latent and, last,
    the logits at the head's resolution (the new model's have C_t channels; its new classes are summed into
    background).  Each map is squared, embedded by :func:`local_pod` and compared with the Frobenius norm per image;
    the batch mean is weighted by ``factor`` (``logits_factor`` for the logits) and by
    ``sqrt(num_seen / (num_seen - num_old))`` (PLOP's pod schedule), and the layers are averaged.
    """
    if len(old) != len(new) or not old:
        raise ValueError(f"expected as many old as new feature maps (>= 1), got {len(old)} and {len(new)}")
    schedule = math.sqrt(num_seen / max(num_seen - num_old, 1))
    total = torch.zeros((), device=new[0].device)
    for i, (a, b) in enumerate(zip(old, new)):
        last = i == len(old) - 1
        a, b = a.float(), b.float()
        if last and b.shape[1] != a.shape[1]:
            b = _sum_new_channels(b, num_old)
        if a.shape != b.shape:
            raise ValueError(f"feature map {i}: old {tuple(a.shape)} and new {tuple(b.shape)} differ")
        dist = torch.linalg.vector_norm(local_pod(a.pow(2), scales) - local_pod(b.pow(2), scales), dim=-1)  # (B,)
        total = total + (logits_factor if last else factor) * schedule * dist.mean()
    return total / len(old)


# -- pseudo-labels (PLOP Sec. 3.2, Eq. 5-6)


def pseudo_entropy(probs: Tensor, num_seen: int) -> Tensor:
    """PLOP's per-pixel uncertainty of old-model probabilities (B, C_old, H, W) -> (B, H, W) float32.

    Exactly the official code's ``entropy(probs) / max_entropy``: ``-mean_c p log(p + 1e-8) / log(C_old)``, divided by
    ``log(C_t)`` (so a uniform old prediction scores ``1 / (C_old log C_t)``, not 1); the thresholds are medians of
    the same quantity, so only the floor ``threshold`` (0.001) depends on this scaling.
    """
    p = probs.float()
    c_old = p.shape[1]
    ent = -(p * torch.log(p + 1e-8)).mean(dim=1) / math.log(c_old + 1e-8)
    return ent / math.log(num_seen)


def max_pseudo_entropy(num_old: int, num_seen: int) -> float:
    """The largest value :func:`pseudo_entropy` takes (a uniform old prediction): ``1 / (C_old log C_t)``."""
    return 1.0 / (num_old * math.log(num_seen))


def entropy_thresholds(histogram: Tensor, top: float = 1.0, floor: float = 0.001) -> Tensor:
    """Per-class median uncertainty from a (C_old, bins) histogram over [0, ``top``] -> thresholds (C_old,) float32.

    PLOP approximates each class's median with a histogram (100 bins) and interpolates inside the median's bin; a class
    the old model never predicts gets 0; every threshold is then at least ``floor``.  PLOP's loop accumulates the
    bin *index* where it means the bin's *count*; this is the median it describes (cumulative counts).
    """
    hist = histogram.double()  # (C, bins)
    bins = hist.shape[1]
    total = hist.sum(dim=1, keepdim=True)  # (C, 1)
    cum = hist.cumsum(dim=1)  # (C, bins)
    half = total / 2
    idx = (cum < half).sum(dim=1, keepdim=True).clamp_max(bins - 1)  # the bin holding the median
    below = cum.gather(1, idx) - hist.gather(1, idx)  # counts before that bin
    frac = (half - below) / hist.gather(1, idx).clamp_min(1)
    median = (idx + frac.clamp(0, 1)) * (top / bins)  # (C, 1)
    median = torch.where(total > 0, median, torch.zeros_like(median)).squeeze(1)
    return median.clamp_min(floor).float()


def entropy_histogram(old_logits: Tensor, labels: Tensor, num_seen: int, bins: int = 100) -> Tensor:
    """One batch's (C_old, bins) counts of :func:`pseudo_entropy` per predicted old class over background pixels.

    The bins span [0, :func:`max_pseudo_entropy`], the values the uncertainty can take.  PLOP's span [0, 1], which
    its double normalisation squeezes into the first few bins (below 1 / (C_old log C_t): 0.057 for 8 old classes of
    9, 0.02 on VOC 15-5); there the within-bin interpolation put the digit scenes' background median below 90 % of
    the background pixels, voided nearly all background and collapsed it (docs/continual.md).
    """
    probs = torch.softmax(old_logits.float(), dim=1)  # (B, C_old, H, W)
    c_old = probs.shape[1]
    pred = probs.argmax(dim=1)  # (B, H, W)
    bg = labels == 0
    values = pseudo_entropy(probs, num_seen)[bg] / max_pseudo_entropy(c_old, num_seen)  # (P,) in [0, 1]
    cls = pred[bg]
    b = (values * bins).long().clamp(0, bins - 1)
    return torch.bincount(cls * bins + b, minlength=c_old * bins).reshape(c_old, bins)


def pseudo_labels(
    labels: Tensor, old_logits: Tensor, thresholds: Tensor, num_seen: int
) -> tuple[Tensor, Tensor]:
    """PLOP's entropy pseudo-labelling and adaptive CE factor for one batch.

    labels (B, H, W) of this step (old / future classes already background), old_logits (B, C_old, H, W) of the
    frozen old model, thresholds (C_old,).  Background pixels whose old prediction is certain enough
    (uncertainty < threshold of the predicted class) take that prediction, the uncertain ones become void; new-class
    and void pixels keep their label.  Returns (labels (B, H, W) int64, factor (B,) float32): the share of background
    pixels that were certain, by which PLOP scales each image's CE.
    """
    if old_logits.shape[0] != labels.shape[0] or old_logits.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"old logits {tuple(old_logits.shape)} do not match labels {tuple(labels.shape)} (B, H, W)")
    num_old = old_logits.shape[1]
    probs = torch.softmax(old_logits.float(), dim=1)  # (B, C_old, H, W)
    pred = probs.argmax(dim=1)  # (B, H, W)
    certain = pseudo_entropy(probs, num_seen) < thresholds[pred]  # (B, H, W)
    background = labels < num_old  # background (and, disjoint or not, every old class is background here)
    out = torch.where(background & certain, pred, labels)
    out = torch.where(background & ~certain, torch.full_like(labels, IGNORE_INDEX), out)
    num = (background & certain).float().sum(dim=(1, 2))
    den = background.float().sum(dim=(1, 2))
    return out, num / (den + 1e-6)


# -- the classifier of a grown model


def expand_classifier(
    old: Mapping[str, Tensor], new: Mapping[str, Tensor], num_old: int, balanced: bool = True
) -> dict[str, Tensor]:
    """The new model's state dict from the old model's, the classifiers grown from C_old to C_t classes.

    Every tensor of equal shape is copied.  A classifier weight (C_t, ...) / bias (C_t,) whose old tensor has C_old
    rows keeps the old rows; with ``balanced`` (PLOP's / MiB's ``init_balanced``) the new rows take background's
    weight and ``bias_bg - log(n_new + 1)``, and background's bias becomes that value too; otherwise the new model's
    own (random) rows stay.  Any other mismatch is a ValueError naming the tensor.
    """
    out = {k: v.clone() for k, v in new.items()}
    for key, value in old.items():
        if key not in new:
            raise ValueError(f"{key} is in the old model's state but not in the new one's")
        target = new[key]
        if target.shape == value.shape:
            out[key] = value.clone()
            continue
        if target.shape[0] <= value.shape[0] or value.shape[0] != num_old or target.shape[1:] != value.shape[1:]:
            raise ValueError(f"{key}: old shape {tuple(value.shape)} cannot grow into {tuple(target.shape)}")
        grown = target.clone()
        grown[:num_old] = value
        n_new = target.shape[0] - num_old
        if balanced:
            is_bias = value.ndim == 1
            if is_bias:
                bias = value[0] - math.log(n_new + 1)
                grown[num_old:] = bias
                grown[0] = bias
            else:
                grown[num_old:] = value[0]
        out[key] = grown
    return out


def continual_miou(per_class_iou: Sequence[float], num_initial: int) -> dict[str, float]:
    """``old`` (classes 0 .. num_initial - 1, background included), ``new`` (the rest) and ``all`` mean IoUs.

    NaN entries (a class absent from prediction and labels) are left out of the means, as the metrics do.
    """
    iou = np.asarray(per_class_iou, dtype=np.float64)
    if not 0 < num_initial <= len(iou):
        raise ValueError(f"num_initial must be in 1..{len(iou)}, got {num_initial}")

    def mean(x: np.ndarray) -> float:
        x = x[np.isfinite(x)]
        return float(x.mean()) if len(x) else math.nan

    return {"old": mean(iou[:num_initial]), "new": mean(iou[num_initial:]), "all": mean(iou)}
