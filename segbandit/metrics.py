"""Streaming semantic-segmentation evaluation: a global K x K confusion matrix over a dataset.

mIoU follows mmsegmentation: the mean over classes that appear in the target or the prediction
anywhere in the evaluated set (classes never seen are NaN in ``per_class_iou`` and excluded,
like ``nanmean``). Void pixels (``ignore_index``) never count.

Counts are int64; ratios are computed in float64 because dataset-scale pixel counts exceed the
2**24 integers float32 represents exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from segbandit.constants import IGNORE_INDEX
from segbandit.distributed import SINGLE, DistInfo, all_reduce_sum
from segbandit.rewards import _check_logits_target, _check_num_classes, _check_pair, _confusion

__all__ = ["SegmentationMetric"]


class SegmentationMetric(nn.Module):
    """Accumulates a global confusion matrix (rows = target, cols = pred) over batches.

    Args:
        num_classes: K.
        ignore_index: void label in targets.
        device: where the confusion matrix lives (inputs are counted on their own device and moved).

    ``update(pred_or_logits, target)`` takes (B, K, H, W) logits (argmax over K) or (B, H, W) labels
    with (B, H, W) integer targets. ``compute()`` returns ``miou``, ``pixel_acc``, ``mean_dice``
    (python floats, NaN before any valid pixel), ``per_class_iou`` and ``per_class_dice`` ((K,)
    float64, NaN for absent classes) and ``confusion`` ((K, K) int64). Built with the job's ``dist_info`` (several
    processes), ``compute()`` sums a copy of the confusion over the ranks first.
    The confusion is a persistent buffer, so ``state_dict()`` / ``load_state_dict()`` carry it.
    """

    confusion: Tensor

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        device: torch.device | str | None = None,
        dist_info: DistInfo = SINGLE,
    ) -> None:
        super().__init__()
        self.dist_info = dist_info
        self.num_classes = _check_num_classes(num_classes)
        self.ignore_index = int(ignore_index)
        self.register_buffer(
            "confusion", torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device), persistent=True
        )

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, ignore_index={self.ignore_index}"

    def reset(self) -> None:
        """Zero the confusion matrix."""
        self.confusion.zero_()

    @torch.no_grad()
    def update(self, pred_or_logits: Tensor, target: Tensor) -> None:
        """Add a batch: pred_or_logits (B, K, H, W) float logits or (B, H, W) int labels; target (B, H, W) int."""
        if not isinstance(pred_or_logits, Tensor):
            raise ValueError(
                "pred_or_logits must be a torch.Tensor, (B, K, H, W) logits or (B, H, W) labels, "
                f"got {type(pred_or_logits).__name__}"
            )
        if pred_or_logits.dim() == 4:
            _check_logits_target(pred_or_logits, target, self.num_classes, self.ignore_index)
            pred = pred_or_logits.max(1).indices  # (B, H, W); = argmax(1), faster on CPU (see rewards.py)
        elif pred_or_logits.dim() == 3:
            _check_pair(pred_or_logits, target, self.num_classes, self.ignore_index)
            pred = pred_or_logits
        else:
            raise ValueError(
                "pred_or_logits must have shape (B, K, H, W) (logits) or (B, H, W) (labels), "
                f"got {tuple(pred_or_logits.shape)}"
            )
        conf = _confusion(pred, target, self.num_classes, self.ignore_index).sum(0)  # (K, K)
        self.confusion += conf.to(self.confusion.device)

    @torch.no_grad()
    def compute(self) -> dict[str, object]:
        """Metrics from the (all-reduced, if distributed) confusion matrix."""
        conf = all_reduce_sum(self.confusion.clone(), self.dist_info)  # (K, K)
        c = conf.double()
        tp = torch.diagonal(c)  # (K,)
        fp = c.sum(0) - tp  # (K,)
        fn = c.sum(1) - tp  # (K,)
        union = tp + fp + fn  # (K,)
        nan = torch.full_like(tp, float("nan"))
        per_class_iou = torch.where(union > 0, tp / union.clamp(min=1), nan)  # (K,)
        per_class_dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), nan)  # (K,)
        total = c.sum()
        pixel_acc = float(tp.sum() / total) if total > 0 else float("nan")
        return {
            "miou": float(torch.nanmean(per_class_iou)),
            "per_class_iou": per_class_iou,
            "pixel_acc": pixel_acc,
            "mean_dice": float(torch.nanmean(per_class_dice)),
            "per_class_dice": per_class_dice,
            "confusion": conf,
        }
