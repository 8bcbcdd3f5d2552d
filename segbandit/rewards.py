"""Composite segmentation reward, per image, every term in [0, 1] (paper Eq. 15).

    r = λ_IoU r_IoU + λ_Dice r_Dice + λ_CE r_CE + λ_Bnd r_Bnd                      # Eq. 15

All terms are batched over images and classes (no Python loop over either) and computed in
float32 with autocast disabled. Labels are int maps ``(B, H, W)`` with ``ignore_index`` (255) = void:
void pixels never count, and an image with no valid pixel gets 0.0 for every term (no evidence,
no reward).

Conventions
-----------
- IoU and Dice are averaged, per image, over the classes present in the prediction OR the target
  on the non-void pixels (the "samplewise" convention of torchmetrics' ``mean_iou`` /
  ``dice_score(..., aggregation_level="samplewise")`` with ``input_format="index"``).
- ``r_CE = exp(-CE)`` with CE the mean cross-entropy over the image's non-void pixels: 1 for a
  perfect confident prediction, 1/K for uniform logits, monotone decreasing in CE, no tuning
  constant (alternatives such as 1/(1+CE) behave alike).
- ``r_Bnd`` is a boundary F-score with a pixel tolerance (Chebyshev distance), built from pooling ops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from segbandit.constants import IGNORE_INDEX

__all__ = [
    "REWARD_TERMS",
    "CompositeReward",
    "boundary_map",
    "boundary_reward",
    "ce_reward",
    "confusion_per_image",
    "dice_reward",
    "iou_reward",
    "parse_reward_weights",
    "target_iou_reward",
]

REWARD_TERMS: tuple[str, ...] = ("iou", "dice", "ce", "boundary")  # the terms of Eq. 15, in order

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

WeightsLike = Union[Sequence[float], Mapping[str, float]]


# ----------------------------------------------------------------------------- validation


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def _check_label_map(name: str, labels: Tensor) -> None:
    """A label map must be an integer tensor of shape (B, H, W)."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, H, W), got {type(labels).__name__}")
    if labels.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must have an integer dtype (int64 labels, void = ignore_index), got {labels.dtype}")
    if labels.dim() != 3:
        raise ValueError(f"{name} must have shape (B, H, W), got {tuple(labels.shape)}")


def _check_label_range(name: str, labels: Tensor, num_classes: int, ignore_index: int) -> None:
    """Every label that is not ``ignore_index`` must lie in [0, K)."""
    bad = ((labels < 0) | (labels >= num_classes)) & (labels != ignore_index)
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(
            f"{name} holds label {value}, expected values in [0, {num_classes - 1}] or ignore_index={ignore_index} "
            f"(num_classes={num_classes})"
        )


def _check_pair(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Validate a (pred, target) pair of label maps; pred is only checked on non-void target pixels."""
    _check_label_map("target", target)
    _check_label_map("pred", pred)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape (B, H, W), "
            f"got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    _check_label_range("target", target, num_classes, ignore_index)
    valid = target != ignore_index
    bad = ((pred < 0) | (pred >= num_classes)) & valid
    if bool(bad.any()):
        value = int(pred[bad][0])
        raise ValueError(f"pred holds label {value} on a non-void pixel, expected values in [0, {num_classes - 1}]")


def _check_logits_target(logits: Tensor, target: Tensor, num_classes: int | None, ignore_index: int) -> int:
    """Validate logits (B, K, H, W) against target (B, H, W); returns K."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"logits must be a torch.Tensor of shape (B, K, H, W), got {type(logits).__name__}")
    if logits.dim() != 4:
        raise ValueError(f"logits must have shape (B, K, H, W), got {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    _check_label_map("target", target)
    b, k, h, w = logits.shape
    if tuple(target.shape) != (b, h, w):
        raise ValueError(
            f"target must have shape (B, H, W) = {(b, h, w)} to match logits {tuple(logits.shape)}, "
            f"got {tuple(target.shape)}"
        )
    if num_classes is not None and k != num_classes:
        raise ValueError(
            f"logits must have num_classes={num_classes} channels (B, {num_classes}, H, W), got {tuple(logits.shape)}"
        )
    _check_label_range("target", target, k, ignore_index)
    return k


# ----------------------------------------------------------------------------- confusion


def confusion_per_image(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-image confusion matrices, rows = target, cols = pred; void target pixels are ignored.

    pred, target: (B, H, W) integer label maps. Returns (B, K, K) int64.
    Built with one ``torch.bincount`` over index ``b*K*K + t*K + p``; void pixels go to a spill bin.
    """
    num_classes = _check_num_classes(num_classes)
    _check_pair(pred, target, num_classes, ignore_index)
    return _confusion(pred, target, num_classes, ignore_index)


def _confusion(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Unchecked core of :func:`confusion_per_image`: (B, H, W) x2 -> (B, K, K) int64."""
    b = target.shape[0]
    k = num_classes
    t = target.long()  # (B, H, W)
    p = pred.long()  # (B, H, W)
    valid = t != ignore_index  # (B, H, W)
    img = torch.arange(b, device=t.device).view(b, 1, 1)  # (B, 1, 1)
    idx = img * (k * k) + t.clamp(0, k - 1) * k + p.clamp(0, k - 1)  # (B, H, W)
    spill = b * k * k
    idx = torch.where(valid, idx, torch.full_like(idx, spill))
    counts = torch.bincount(idx.reshape(-1), minlength=spill + 1)  # (B*K*K + 1,)
    return counts[:spill].view(b, k, k)


def _tp_fp_fn(conf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(..., K, K) confusion (rows target) -> tp, fp, fn each (..., K) float32."""
    conf = conf.float()
    tp = torch.diagonal(conf, dim1=-2, dim2=-1)  # (..., K)
    fp = conf.sum(-2) - tp  # predicted k, target not k
    fn = conf.sum(-1) - tp  # target k, predicted not k
    return tp, fp, fn


def _mean_over_present(score: Tensor, present: Tensor) -> Tensor:
    """Mean of (B, K) scores over present classes; 0.0 where no class is present (all-void image)."""
    n = present.sum(-1)  # (B,)
    total = torch.where(present, score, torch.zeros_like(score)).sum(-1)  # (B,)
    return torch.where(n > 0, total / n.clamp(min=1), torch.zeros_like(total))


def _iou_from_confusion(conf: Tensor, present: Tensor | None = None) -> Tensor:
    """Mean IoU per image over ``present`` (B, K) classes; by default those in the prediction or the target."""
    tp, fp, fn = _tp_fp_fn(conf)
    union = tp + fp + fn  # (B, K)
    return _mean_over_present(tp / union.clamp(min=1), union > 0 if present is None else present)


def _dice_from_confusion(conf: Tensor) -> Tensor:
    tp, fp, fn = _tp_fp_fn(conf)
    denom = 2 * tp + fp + fn  # (B, K)
    present = denom > 0
    return _mean_over_present(2 * tp / denom.clamp(min=1), present)


# ----------------------------------------------------------------------------- reward terms


def iou_reward(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-image mean IoU over classes present in pred or target (non-void pixels).

    pred, target: (B, H, W) integer. Returns (B,) float32 in [0, 1]; 0.0 for an all-void image.
    """
    conf = confusion_per_image(pred, target, num_classes, ignore_index)  # (B, K, K)
    return _iou_from_confusion(conf)


def target_iou_reward(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-image mean IoU over the classes present in the target only (non-void pixels).

    A class predicted but absent from the target adds no zero term of its own; its pixels still lower the IoU of the
    classes they were taken from.  pred, target: (B, H, W) integer.  Returns (B,) float32 in [0, 1]; 0.0 for an
    all-void image.
    """
    conf = confusion_per_image(pred, target, num_classes, ignore_index)  # (B, K, K)
    return _iou_from_confusion(conf, present=conf.sum(2) > 0)  # rows = target: its classes


def dice_reward(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Per-image mean Dice 2TP/(2TP+FP+FN) over classes present in pred or target (non-void pixels).

    pred, target: (B, H, W) integer. Returns (B,) float32 in [0, 1]; 0.0 for an all-void image.
    """
    conf = confusion_per_image(pred, target, num_classes, ignore_index)  # (B, K, K)
    return _dice_from_confusion(conf)


def ce_reward(logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Inverse cross-entropy reward exp(-CE), CE = mean over the image's non-void pixels.

    logits: (B, K, H, W) any float dtype (cast to float32, autocast off); target: (B, H, W) integer.
    Returns (B,) float32 in (0, 1]: 1 for a perfect confident prediction, 1/K for uniform logits,
    0.0 for an all-void image. Gradient-transparent (``CompositeReward`` calls it under no_grad).
    """
    k = _check_logits_target(logits, target, None, ignore_index)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return _ce_reward(logits, target, k, ignore_index)


def _ce_reward(logits: Tensor, target: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    logp = F.log_softmax(logits.float(), dim=1)  # (B, K, H, W)
    t = target.long()  # (B, H, W)
    valid = t != ignore_index  # (B, H, W)
    idx = torch.where(valid, t, torch.zeros_like(t)).clamp(0, num_classes - 1)
    nll = -logp.gather(1, idx.unsqueeze(1)).squeeze(1)  # (B, H, W)
    nll = torch.where(valid, nll, torch.zeros_like(nll))
    n = valid.flatten(1).sum(-1)  # (B,)
    ce = nll.flatten(1).sum(-1) / n.clamp(min=1)  # (B,)
    return torch.where(n > 0, torch.exp(-ce), torch.zeros_like(ce))


def _max_filter(x: Tensor, radius: int) -> Tensor:
    """(B, 1, H, W) float -> the max over each (2r+1)^2 window, outside the image = -inf.

    Equal to ``F.max_pool2d(x, 2r+1, stride=1, padding=r)`` (max is exact, so bit for bit), computed as two
    separable passes of 2r+1 shifted slices: torch's CPU stride-1 max_pool2d is 4-70x slower on these maps
    (measured, benchmarks/bench_reward.py). The loop runs over window offsets, never over pixels or images.
    """
    h, w = x.shape[-2:]
    xp = F.pad(x, (radius, radius, 0, 0), value=float("-inf"))  # (B, 1, H, W + 2r)
    rows = xp[..., 0:w]
    for i in range(1, 2 * radius + 1):
        rows = torch.maximum(rows, xp[..., i : i + w])  # (B, 1, H, W)
    xp = F.pad(rows, (0, 0, radius, radius), value=float("-inf"))  # (B, 1, H + 2r, W)
    out = xp[..., 0:h, :]
    for i in range(1, 2 * radius + 1):
        out = torch.maximum(out, xp[..., i : i + h, :])  # (B, 1, H, W)
    return out


def boundary_map(labels: Tensor, void: Tensor) -> Tensor:
    """Boundary pixels of a label map: label differs from one of its 8 neighbours.

    labels: (B, H, W) integer; void: (B, H, W) bool. Void pixels are neither boundaries nor
    neighbours (a transition into void is no boundary); image borders are no boundaries.
    Returns (B, H, W) bool.
    """
    y = labels.float().unsqueeze(1)  # (B, 1, H, W)
    v = void.unsqueeze(1)  # (B, 1, H, W)
    neg_inf = torch.full_like(y, float("-inf"))
    # the max filter pads with -inf, so the border behaves like replicate padding for max/min.
    hi = _max_filter(torch.where(v, neg_inf, y), 1)  # (B, 1, H, W)
    lo = -_max_filter(torch.where(v, neg_inf, -y), 1)  # (B, 1, H, W)
    return ((hi != lo) & ~v).squeeze(1)  # (B, H, W)


def _dilate(mask: Tensor, tolerance: int) -> Tensor:
    """(B, H, W) bool -> (B, H, W) bool dilated by a (2*tol+1)^2 square."""
    if tolerance == 0:
        return mask
    m = mask.float().unsqueeze(1)  # (B, 1, H, W)
    return (_max_filter(m, tolerance) > 0).squeeze(1)


def boundary_reward(pred: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX, tolerance: int = 2) -> Tensor:
    """Boundary F-score with a pixel tolerance (Chebyshev distance ``tolerance``).

    pred, target: (B, H, W) integer. precision = |Bp ∧ dil(Bt)| / |Bp|, recall = |Bt ∧ dil(Bp)| / |Bt|,
    F = 2PR/(P+R). Void target pixels are masked out of both maps and every count, and transitions
    into void are no boundary. Both maps without boundary -> 1.0; exactly one without -> 0.0;
    all-void image -> 0.0. Returns (B,) float32 in [0, 1].
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative int, got {tolerance!r}")
    _check_label_map("target", target)
    _check_label_map("pred", pred)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape (B, H, W), "
            f"got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    return _boundary_reward(pred, target, ignore_index, tolerance)


def _boundary_reward(pred: Tensor, target: Tensor, ignore_index: int, tolerance: int) -> Tensor:
    void = target == ignore_index  # (B, H, W)
    bp = boundary_map(pred, void)  # (B, H, W)
    bt = boundary_map(target, void)  # (B, H, W)
    n_p = bp.flatten(1).sum(-1).float()  # (B,)
    n_t = bt.flatten(1).sum(-1).float()  # (B,)
    hit_p = (bp & _dilate(bt, tolerance)).flatten(1).sum(-1).float()  # (B,)
    hit_t = (bt & _dilate(bp, tolerance)).flatten(1).sum(-1).float()  # (B,)
    precision = hit_p / n_p.clamp(min=1)
    recall = hit_t / n_t.clamp(min=1)
    f = 2 * precision * recall / (precision + recall).clamp(min=1e-12)  # (B,)
    none_p, none_t = n_p == 0, n_t == 0
    f = torch.where(none_p & none_t, torch.ones_like(f), f)
    f = torch.where(none_p ^ none_t, torch.zeros_like(f), f)
    has_valid = (~void).flatten(1).any(-1)  # (B,)
    return torch.where(has_valid, f, torch.zeros_like(f))


# ----------------------------------------------------------------------------- composite


def _weights_dict(weights: WeightsLike) -> dict[str, float]:
    """Normalise a 4-tuple or a (possibly partial) dict to {term: weight}; missing dict keys are 0."""
    if isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(REWARD_TERMS))
        if unknown:
            raise ValueError(f"unknown reward term(s) {unknown}; valid terms are {list(REWARD_TERMS)}")
        out = {t: float(weights.get(t, 0.0)) for t in REWARD_TERMS}
    else:
        values = list(weights)
        if len(values) != len(REWARD_TERMS):
            raise ValueError(f"weights must have {len(REWARD_TERMS)} values for {list(REWARD_TERMS)}, got {len(values)}: {values}")
        out = {t: float(w) for t, w in zip(REWARD_TERMS, values)}
    for t, w in out.items():
        if not (w == w and abs(w) != float("inf")):
            raise ValueError(f"reward weight for {t!r} must be finite, got {w}")
        if w < 0:
            raise ValueError(f"reward weight for {t!r} must be >= 0, got {w}")
    return out


def parse_reward_weights(s: str) -> dict[str, float]:
    """Parse ``"1,1,0,1"`` (λ_IoU, λ_Dice, λ_CE, λ_Bnd) into a weights dict keyed by ``REWARD_TERMS``.

    Example: ``"1,1,0,1"`` -> ``{"iou": 1.0, "dice": 1.0, "ce": 0.0, "boundary": 1.0}``.
    """
    message = f"reward weights must be {len(REWARD_TERMS)} comma-separated floats for {list(REWARD_TERMS)}, got {s!r}"
    parts = [p.strip() for p in str(s).split(",")]
    if len(parts) != len(REWARD_TERMS):
        raise ValueError(message)
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(message) from None
    return _weights_dict(values)


class CompositeReward:
    """Composite per-image segmentation reward r = Σ_k λ_k r_k (Eq. 15), unnormalised.

    Args:
        num_classes: K, the number of logits channels.
        weights: 4 floats for ``terms`` (λ_IoU, λ_Dice, λ_CE, λ_Bnd), or a dict keyed by term names
            (missing terms get weight 0). The paper uses all 1, so ``total`` lies in [0, 4].
        ignore_index: void label in targets.
        boundary_tolerance: pixel tolerance of the boundary F-score.

    ``__call__(logits (B, K, H, W), target (B, H, W))`` returns ``{"iou", "dice", "ce", "boundary",
    "total"}`` of (B,) float32 tensors, computed under ``torch.no_grad()`` in float32 with autocast
    disabled. Non-finite logits give a non-finite ``total`` (for a trainer's guard to catch), not an
    error. Every term is computed whatever its weight (so logs show all four); the weights only
    enter ``total``.
    """

    terms: tuple[str, ...] = REWARD_TERMS

    def __init__(
        self,
        num_classes: int,
        weights: WeightsLike = (1.0, 1.0, 1.0, 1.0),
        ignore_index: int = IGNORE_INDEX,
        boundary_tolerance: int = 2,
    ) -> None:
        self.num_classes = _check_num_classes(num_classes)
        self.weights: dict[str, float] = _weights_dict(weights)
        self.ignore_index = int(ignore_index)
        if isinstance(boundary_tolerance, bool) or not isinstance(boundary_tolerance, int) or boundary_tolerance < 0:
            raise ValueError(f"boundary_tolerance must be a non-negative int, got {boundary_tolerance!r}")
        self.boundary_tolerance = boundary_tolerance

    @classmethod
    def from_string(cls, num_classes: int, weights: str, **kwargs) -> "CompositeReward":
        """Build from a ``"1,1,0,1"`` weight string (see :func:`parse_reward_weights`)."""
        return cls(num_classes, parse_reward_weights(weights), **kwargs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_classes={self.num_classes}, weights={self.weights}, "
            f"ignore_index={self.ignore_index}, boundary_tolerance={self.boundary_tolerance})"
        )

    def __call__(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        _check_logits_target(logits, target, self.num_classes, self.ignore_index)
        with torch.no_grad(), torch.autocast(device_type=logits.device.type, enabled=False):
            x = logits.detach().float()  # (B, K, H, W)
            t = target.long()  # (B, H, W)
            # max(1).indices == argmax(1) (both the first maximal index, NaN propagated alike), but torch's CPU
            # argmax over a non-innermost dim is ~2.3x slower (measured, benchmarks/bench_reward.py)
            pred = x.max(1).indices  # (B, H, W)
            conf = _confusion(pred, t, self.num_classes, self.ignore_index)  # (B, K, K)
            out: dict[str, Tensor] = {
                "iou": _iou_from_confusion(conf),
                "dice": _dice_from_confusion(conf),
                "ce": _ce_reward(x, t, self.num_classes, self.ignore_index),
                "boundary": _boundary_reward(pred, t, self.ignore_index, self.boundary_tolerance),
            }
            total = torch.zeros_like(out["iou"])  # (B,)
            for term in self.terms:  # 4 terms, not a hot loop over data
                total = total + self.weights[term] * out[term]  # Eq. 15
            out["total"] = total
            return {k: out[k] for k in (*self.terms, "total")}
