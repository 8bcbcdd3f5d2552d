"""Specification of the composite segmentation reward (paper Eq. 15)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.segmentation import dice_score, mean_iou

from segbandit.rewards import (
    CompositeReward,
    boundary_reward,
    ce_reward,
    confusion_per_image,
    dice_reward,
    iou_reward,
    parse_reward_weights,
    target_iou_reward,
)

K = 5
VOID = 255


def _labels(seed: int, b: int = 4, h: int = 16, w: int = 16, k: int = K) -> torch.Tensor:
    """Random (B, H, W) int64 label maps; image i only uses classes [0, 2 + i % (k - 1)) so some classes are absent."""
    g = torch.Generator().manual_seed(seed)
    highs = [2 + i % (k - 1) for i in range(b)]
    return torch.stack([torch.randint(0, hi, (h, w), generator=g) for hi in highs])


def _logits(seed: int, b: int = 4, k: int = K, h: int = 16, w: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, h, w, generator=g)


def _with_void(target: torch.Tensor, seed: int, frac: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    void = torch.rand(target.shape, generator=g) < frac
    return torch.where(void, torch.full_like(target, VOID), target)


def _square(size: int, top: int, left: int, side: int) -> torch.Tensor:
    y = torch.zeros(1, size, size, dtype=torch.int64)
    y[0, top : top + side, left : left + side] = 1
    return y


# ----------------------------------------------------------------------------- confusion


def test_confusion_per_image_rows_are_target_cols_are_pred_and_void_is_ignored():
    target = torch.tensor([[[0, 0], [1, VOID]]])
    pred = torch.tensor([[[0, 1], [1, 0]]])
    conf = confusion_per_image(pred, target, num_classes=2)
    assert conf.shape == (1, 2, 2)
    assert conf.dtype == torch.int64
    assert conf[0].tolist() == [[1, 1], [0, 1]]  # the void pixel (pred 0) is not counted


def test_confusion_per_image_matches_numpy_per_image():
    target = _with_void(_labels(0), seed=1)
    pred = _labels(2)
    conf = confusion_per_image(pred, target, num_classes=K)
    for i in range(target.shape[0]):
        t, p = target[i].numpy().ravel(), pred[i].numpy().ravel()
        keep = t != VOID
        ref = np.zeros((K, K), dtype=np.int64)
        np.add.at(ref, (t[keep], p[keep]), 1)
        np.testing.assert_array_equal(conf[i].numpy(), ref)


# ----------------------------------------------------------------------------- IoU / Dice against torchmetrics


def test_iou_reward_matches_torchmetrics_samplewise():
    # torchmetrics' mean_iou(input_format="index") averages per image over classes with union > 0,
    # i.e. present in pred or target: the same convention as iou_reward (checked with absent classes).
    target, pred = _labels(3), _labels(4)
    expected = mean_iou(pred, target, num_classes=K, input_format="index")
    got = iou_reward(pred, target, num_classes=K)
    assert got.shape == (4,)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), atol=1e-6, rtol=0)


def test_dice_reward_matches_torchmetrics_samplewise():
    # dice_score(samplewise, macro, index) gives NaN to classes absent in both and nan-averages them out.
    target, pred = _labels(5), _labels(6)
    expected = dice_score(
        pred, target, num_classes=K, input_format="index", aggregation_level="samplewise", average="macro"
    )
    got = dice_reward(pred, target, num_classes=K)
    assert got.shape == (4,)
    torch.testing.assert_close(got, expected.float(), atol=1e-6, rtol=0)


def test_iou_reward_counts_a_class_present_only_in_pred_as_zero():
    target = torch.zeros(1, 4, 4, dtype=torch.int64)
    pred = target.clone()
    pred[0, 0, 0] = 3  # a false positive of a class absent from the target
    # class 0: 15/16, class 3: 0/1 -> mean over the 2 present classes
    assert iou_reward(pred, target, num_classes=K).item() == pytest.approx((15 / 16 + 0.0) / 2)


def test_target_iou_reward_averages_over_the_targets_classes_only():
    target = torch.zeros(1, 4, 4, dtype=torch.int64)
    target[0, 0, :2] = 1
    pred = target.clone()
    pred[0, 3, 3] = 3  # a class absent from the target: costs class 0 one pixel, adds no term of its own
    assert target_iou_reward(pred, target, num_classes=K).item() == pytest.approx((13 / 14 + 1.0) / 2)


# ----------------------------------------------------------------------------- CE


def test_ce_reward_equals_exp_of_minus_per_image_cross_entropy():
    logits, target = _logits(7), _with_void(_labels(8), seed=9)
    expected = torch.stack(
        [torch.exp(-F.cross_entropy(logits[i : i + 1], target[i : i + 1], ignore_index=VOID)) for i in range(4)]
    )
    torch.testing.assert_close(ce_reward(logits, target), expected, atol=1e-6, rtol=1e-5)


def test_ce_reward_of_confident_correct_logits_is_near_one():
    target = _labels(10)
    logits = 50.0 * F.one_hot(target, K).permute(0, 3, 1, 2).float()
    assert torch.all(ce_reward(logits, target) > 0.9999)


def test_ce_reward_of_uniform_logits_is_one_over_k():
    target = _labels(11)
    logits = torch.zeros(4, K, 16, 16)
    torch.testing.assert_close(ce_reward(logits, target), torch.full((4,), 1.0 / K), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- properties of all terms


def test_perfect_prediction_gives_iou_dice_boundary_one():
    target = _with_void(_labels(12), seed=13)
    logits = 50.0 * F.one_hot(target.clamp(max=K - 1), K).permute(0, 3, 1, 2).float()
    out = CompositeReward(K)(logits, target)
    for term in ("iou", "dice", "boundary"):
        torch.testing.assert_close(out[term], torch.ones(4))
    assert torch.all(out["ce"] > 0.9999)
    assert torch.all(out["total"] > 3.999)


def test_every_term_lies_in_unit_interval_with_shape_b():
    out = CompositeReward(K)(_logits(14, b=3), _with_void(_labels(15, b=3), seed=16))
    assert set(out) == {"iou", "dice", "ce", "boundary", "total"}
    for term in CompositeReward.terms:
        assert out[term].shape == (3,)
        assert out[term].dtype == torch.float32
        assert torch.all((out[term] >= 0) & (out[term] <= 1)), term
    assert torch.all((out["total"] >= 0) & (out["total"] <= 4))


def test_changing_pred_at_void_pixels_changes_no_term():
    target = _with_void(_labels(17), seed=18, frac=0.4)
    logits = _logits(19)
    other = torch.where((target == VOID).unsqueeze(1), _logits(20), logits)
    assert not torch.equal(logits.argmax(1), other.argmax(1))
    a, b = CompositeReward(K)(logits, target), CompositeReward(K)(other, target)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_all_void_image_gives_finite_zero_terms():
    target = _labels(21, b=2)
    target[1] = VOID
    out = CompositeReward(K)(_logits(22, b=2), target)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
        assert value[1].item() == 0.0, key
    assert out["total"][0].item() > 0.0


def test_batch_result_equals_stacked_single_image_calls():
    reward = CompositeReward(K)
    logits, target = _logits(23, b=8), _with_void(_labels(24, b=8), seed=25)
    batched = reward(logits, target)
    singles = [reward(logits[i : i + 1], target[i : i + 1]) for i in range(8)]
    for key in batched:
        torch.testing.assert_close(batched[key], torch.cat([s[key] for s in singles]), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- boundary


def test_boundary_square_shifted_by_one_pixel_is_within_tolerance_two():
    target = _square(32, 8, 8, 12)
    pred = _square(32, 9, 9, 12)
    assert boundary_reward(pred, target, tolerance=2).item() == 1.0


def test_boundary_square_shifted_by_five_pixels_scores_below_one():
    target = _square(32, 8, 8, 12)
    pred = _square(32, 8, 13, 12)
    score = boundary_reward(pred, target, tolerance=2).item()
    assert 0.0 < score < 1.0


def test_boundary_without_edges_in_both_maps_is_one_and_in_one_map_is_zero():
    flat = torch.zeros(1, 16, 16, dtype=torch.int64)
    square = _square(16, 4, 4, 6)
    assert boundary_reward(flat, flat + 2).item() == 1.0  # no edges in either (labels differ, edges don't)
    assert boundary_reward(square, flat).item() == 0.0
    assert boundary_reward(flat, square).item() == 0.0


def test_boundary_ignores_transitions_into_void_and_image_borders():
    target = torch.zeros(1, 16, 16, dtype=torch.int64)
    target[0, 5:11, 5:11] = VOID  # a void hole: its rim is no boundary
    pred = torch.zeros(1, 16, 16, dtype=torch.int64)
    assert boundary_reward(pred, target).item() == 1.0


def test_boundary_rejects_negative_tolerance():
    y = torch.zeros(1, 8, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match="tolerance"):
        boundary_reward(y, y, tolerance=-1)


# ----------------------------------------------------------------------------- composite


def test_total_equals_weighted_sum_of_terms():
    weights = (0.5, 2.0, 1.5, 0.25)
    out = CompositeReward(K, weights=weights)(_logits(26), _with_void(_labels(27), seed=28))
    expected = sum(w * out[t] for w, t in zip(weights, CompositeReward.terms))
    torch.testing.assert_close(out["total"], expected, atol=1e-6, rtol=0)


def test_weights_dict_and_tuple_agree():
    as_tuple = CompositeReward(K, weights=(1.0, 0.5, 2.0, 0.0))
    as_dict = CompositeReward(K, weights={"iou": 1.0, "dice": 0.5, "ce": 2.0, "boundary": 0.0})
    assert as_tuple.weights == as_dict.weights == {"iou": 1.0, "dice": 0.5, "ce": 2.0, "boundary": 0.0}
    logits, target = _logits(29), _labels(30)
    a, b = as_tuple(logits, target), as_dict(logits, target)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_zero_weight_removes_term_from_total_but_still_reports_it():
    logits, target = _logits(31), _labels(32)
    full = CompositeReward(K)(logits, target)
    no_ce = CompositeReward(K, weights=(1, 1, 0, 1))(logits, target)
    assert set(no_ce) == set(full)
    torch.testing.assert_close(no_ce["ce"], full["ce"], atol=0, rtol=0)
    torch.testing.assert_close(no_ce["total"], full["total"] - full["ce"], atol=1e-6, rtol=0)


def test_partial_weight_dict_sets_missing_terms_to_zero():
    assert CompositeReward(K, weights={"iou": 2.0}).weights == {"iou": 2.0, "dice": 0.0, "ce": 0.0, "boundary": 0.0}


def test_reward_is_float32_under_bf16_autocast():
    logits, target = _logits(33).to(torch.bfloat16), _labels(34)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = CompositeReward(K)(logits, target)
    for key, value in out.items():
        assert value.dtype == torch.float32, key
    reference = CompositeReward(K)(logits.float(), target)
    for key in out:
        torch.testing.assert_close(out[key], reference[key], atol=0, rtol=0)


def test_reward_carries_no_gradient():
    logits = _logits(35).requires_grad_(True)
    out = CompositeReward(K)(logits, _labels(36))
    assert not any(v.requires_grad for v in out.values())


def test_parse_reward_weights_reads_four_comma_separated_floats():
    assert parse_reward_weights("1, 1,0,0.5") == {"iou": 1.0, "dice": 1.0, "ce": 0.0, "boundary": 0.5}
    assert CompositeReward.from_string(K, "1,0,0,0").weights == {"iou": 1.0, "dice": 0.0, "ce": 0.0, "boundary": 0.0}


@pytest.mark.parametrize("text", ["1,1,1", "1,1,1,1,1", "1,a,1,1", ""])
def test_parse_reward_weights_rejects_malformed_strings(text):
    with pytest.raises(ValueError, match="4 comma-separated floats"):
        parse_reward_weights(text)


# ----------------------------------------------------------------------------- bad input


def test_mismatched_target_shape_raises():
    with pytest.raises(ValueError, match=r"target must have shape \(B, H, W\) = \(4, 16, 16\).*got \(4, 16, 15\)"):
        CompositeReward(K)(_logits(40), torch.zeros(4, 16, 15, dtype=torch.int64))


def test_label_equal_to_num_classes_raises_naming_the_value():
    target = torch.zeros(2, 8, 8, dtype=torch.int64)
    target[1, 3, 3] = 21
    with pytest.raises(ValueError, match=r"label 21.*\[0, 20\]"):
        CompositeReward(21)(torch.zeros(2, 21, 8, 8), target)


def test_float_target_raises():
    with pytest.raises(ValueError, match="integer dtype.*torch.float32"):
        CompositeReward(K)(_logits(41), _labels(42).float())


def test_wrong_number_of_classes_in_logits_raises():
    with pytest.raises(ValueError, match=r"num_classes=5 channels.*got \(4, 3, 16, 16\)"):
        CompositeReward(K)(torch.zeros(4, 3, 16, 16), _labels(43))


def test_logits_not_4d_raises():
    with pytest.raises(ValueError, match=r"logits must have shape \(B, K, H, W\), got \(5, 16, 16\)"):
        CompositeReward(K)(torch.zeros(K, 16, 16), _labels(44, b=1)[0])


def test_non_finite_logits_give_non_finite_total_for_the_trainer_guard():
    logits = _logits(45)
    logits[0, :, 0, 0] = math.nan
    out = CompositeReward(K)(logits, _labels(46))
    assert not torch.isfinite(out["total"][0])
    assert torch.isfinite(out["total"][1:]).all()


def test_negative_weight_raises():
    with pytest.raises(ValueError, match=r"'dice' must be >= 0, got -1.0"):
        CompositeReward(K, weights=(1, -1, 1, 1))


def test_unknown_weight_key_raises_listing_valid_terms():
    with pytest.raises(ValueError, match=r"\['bogus'\].*\['iou', 'dice', 'ce', 'boundary'\]"):
        CompositeReward(K, weights={"bogus": 1.0})
