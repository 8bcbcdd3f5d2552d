"""Specification of the streaming segmentation metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist

from segbandit.metrics import SegmentationMetric

K = 4
VOID = 255


def _batches(n: int = 3, b: int = 2, h: int = 12, w: int = 12, k: int = K, void_frac: float = 0.2):
    """n (pred, target) label batches; targets have void pixels."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        pred = torch.randint(0, k, (b, h, w), generator=g)
        target = torch.randint(0, k, (b, h, w), generator=g)
        target[torch.rand(b, h, w, generator=g) < void_frac] = VOID
        out.append((pred, target))
    return out


def _numpy_confusion(batches, k: int = K) -> np.ndarray:
    conf = np.zeros((k, k), dtype=np.int64)
    for pred, target in batches:
        for p, t in zip(pred.numpy().ravel(), target.numpy().ravel()):
            if t != VOID:
                conf[t, p] += 1
    return conf


def test_miou_over_three_batches_equals_numpy_confusion_by_hand():
    batches = _batches()
    metric = SegmentationMetric(K)
    for pred, target in batches:
        metric.update(pred, target)
    conf = _numpy_confusion(batches)
    tp = np.diag(conf)
    iou = tp / (conf.sum(0) + conf.sum(1) - tp)
    result = metric.compute()
    np.testing.assert_array_equal(result["confusion"].numpy(), conf)
    assert isinstance(result["miou"], float)
    assert result["miou"] == pytest.approx(float(iou.mean()), abs=1e-12)
    dice = 2 * tp / (conf.sum(0) + conf.sum(1))
    assert result["mean_dice"] == pytest.approx(float(dice.mean()), abs=1e-12)


def test_pixel_acc_equals_correct_over_non_void_pixels():
    batches = _batches()
    metric = SegmentationMetric(K)
    correct = total = 0
    for pred, target in batches:
        metric.update(pred, target)
        keep = target != VOID
        correct += int((pred[keep] == target[keep]).sum())
        total += int(keep.sum())
    assert metric.compute()["pixel_acc"] == pytest.approx(correct / total, abs=1e-12)


def test_void_pixels_are_ignored():
    pred, target = _batches(n=1)[0]
    metric = SegmentationMetric(K)
    metric.update(pred, target)
    other = torch.where(target == VOID, (pred + 1) % K, pred)
    metric_other = SegmentationMetric(K)
    metric_other.update(other, target)
    assert int(metric.confusion.sum()) == int((target != VOID).sum())
    assert torch.equal(metric.confusion, metric_other.confusion)


def test_per_class_iou_is_nan_for_absent_classes_and_they_leave_miou():
    target = torch.tensor([[[0, 0], [1, 1]]])
    pred = torch.tensor([[[0, 0], [1, 0]]])
    metric = SegmentationMetric(K)
    metric.update(pred, target)
    result = metric.compute()
    per_class = result["per_class_iou"]
    assert per_class.shape == (K,)
    assert per_class[:2].tolist() == pytest.approx([2 / 3, 1 / 2])
    assert math.isnan(per_class[2]) and math.isnan(per_class[3])
    assert result["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_logits_are_reduced_by_argmax():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, K, 8, 8, generator=g)
    target = torch.randint(0, K, (2, 8, 8), generator=g)
    from_logits, from_labels = SegmentationMetric(K), SegmentationMetric(K)
    from_logits.update(logits, target)
    from_labels.update(logits.argmax(1), target)
    assert torch.equal(from_logits.confusion, from_labels.confusion)


def test_reset_zeroes_the_confusion():
    metric = SegmentationMetric(K)
    for pred, target in _batches():
        metric.update(pred, target)
    metric.reset()
    assert int(metric.confusion.sum()) == 0
    result = metric.compute()
    assert math.isnan(result["miou"]) and math.isnan(result["pixel_acc"])


def test_state_dict_round_trip_restores_the_confusion():
    metric = SegmentationMetric(K)
    for pred, target in _batches():
        metric.update(pred, target)
    restored = SegmentationMetric(K)
    restored.load_state_dict(metric.state_dict())
    assert torch.equal(restored.confusion, metric.confusion)
    assert restored.compute()["miou"] == metric.compute()["miou"]


def test_compute_all_reduces_a_copy_under_torch_distributed(tmp_path):
    metric = SegmentationMetric(K)
    for pred, target in _batches():
        metric.update(pred, target)
    local = metric.confusion.clone()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        result = metric.compute()
    finally:
        dist.destroy_process_group()
    assert torch.equal(result["confusion"], local)  # world of one: SUM is the identity
    assert result["confusion"].data_ptr() != metric.confusion.data_ptr()
    assert torch.equal(metric.confusion, local)


def test_update_rejects_label_out_of_range():
    metric = SegmentationMetric(K)
    target = torch.zeros(1, 4, 4, dtype=torch.int64)
    target[0, 1, 1] = K
    with pytest.raises(ValueError, match=rf"label {K}"):
        metric.update(torch.zeros(1, 4, 4, dtype=torch.int64), target)


def test_update_rejects_mismatched_shapes():
    metric = SegmentationMetric(K)
    with pytest.raises(ValueError, match=r"same shape.*\(1, 4, 4\).*\(1, 4, 5\)"):
        metric.update(torch.zeros(1, 4, 4, dtype=torch.int64), torch.zeros(1, 4, 5, dtype=torch.int64))


def test_update_rejects_wrong_rank_prediction():
    metric = SegmentationMetric(K)
    with pytest.raises(ValueError, match=r"\(B, K, H, W\).*\(B, H, W\).*got \(4, 4\)"):
        metric.update(torch.zeros(4, 4, dtype=torch.int64), torch.zeros(1, 4, 4, dtype=torch.int64))
