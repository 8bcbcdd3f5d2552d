"""Baselines (Eq. 16-18, Table 5b) and the EMA reference (Eq. 19)."""
import pytest
import torch
import torch.nn as nn

from segbandit.baselines import BatchMeanBaseline, EMABaseline, ZeroBaseline, make_baseline
from segbandit.ema import EMAReference


def test_ema_baseline_first_update_takes_the_batch_mean():
    b = EMABaseline(tau=0.9)
    b.update(torch.tensor([1.0, 3.0]))
    assert b.value.item() == pytest.approx(2.0)


def test_ema_baseline_follows_eq_16():
    b = EMABaseline(tau=0.9)
    b.update(torch.tensor([2.0]))
    b.update(torch.tensor([0.0, 1.0]))
    assert b.value.item() == pytest.approx(0.9 * 2.0 + 0.1 * 0.5)


def test_advantage_is_clamped_difference_eq_17_18():
    b = EMABaseline(tau=0.5)
    b.update(torch.tensor([1.0]))
    adv = b.advantage(torch.tensor([0.0, 1.2, 5.0]), a_min=-0.5, a_max=2.0)
    assert torch.allclose(adv, torch.tensor([-0.5, 0.2, 2.0]))


def test_batch_mean_baseline_centres_the_batch():
    b = BatchMeanBaseline()
    r = torch.tensor([0.2, 0.4, 0.9])
    b.update(r)
    assert b.advantage(r).sum().abs().item() < 1e-6


def test_zero_baseline_keeps_rewards_as_advantages():
    b = ZeroBaseline()
    r = torch.tensor([0.2, 0.4])
    b.update(r)
    assert torch.equal(b.advantage(r), r)


def test_baseline_state_round_trips_through_state_dict():
    b = EMABaseline(tau=0.8)
    b.update(torch.tensor([0.7]))
    b.update(torch.tensor([0.1]))
    c = EMABaseline(tau=0.8)
    c.load_state_dict(b.state_dict())
    c.update(torch.tensor([0.5]))
    b.update(torch.tensor([0.5]))
    assert c.value.item() == pytest.approx(b.value.item())


def test_make_baseline_lists_valid_names_on_error():
    assert isinstance(make_baseline("ema", tau=0.5), EMABaseline)
    with pytest.raises(ValueError, match="batch_mean.*ema.*zero"):
        make_baseline("median")


def test_rewards_of_wrong_shape_raise():
    with pytest.raises(ValueError, match=r"\(B,\)"):
        EMABaseline().update(torch.zeros(2, 2))


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_reference_starts_equal_and_is_frozen():
    net = _net()
    ref = EMAReference(net, eta=0.9)
    for p, q in zip(net.parameters(), ref.module.parameters()):
        assert torch.equal(p, q) and not q.requires_grad


def test_ema_reference_update_follows_eq_19():
    net = _net()
    ref = EMAReference(net, eta=0.9)
    before = ref.module[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ref.update(net)
    assert torch.allclose(ref.module[0].weight, 0.9 * before + 0.1 * net[0].weight)


def test_ema_reference_takes_no_gradient():
    ref = EMAReference(_net(), eta=0.9)
    out = ref(torch.randn(4, 3))
    assert not out.requires_grad


def test_ema_reference_state_dict_round_trip():
    net = _net()
    ref = EMAReference(net, eta=0.9)
    with torch.no_grad():
        net[0].weight.mul_(2.0)
    ref.update(net)
    other = EMAReference(_net(), eta=0.9)
    other.load_state_dict(ref.state_dict())
    assert torch.equal(other.module[0].weight, ref.module[0].weight)


def test_rloo_baseline_is_the_mean_of_the_other_samples_of_the_same_image():
    from segbandit.baselines import per_image_baseline

    r = torch.tensor([[1.0, 0.0], [2.0, 4.0], [3.0, 8.0]])  # (K=3, B=2)
    torch.testing.assert_close(per_image_baseline("rloo", r), torch.tensor([[2.5, 6.0], [2.0, 4.0], [1.5, 2.0]]))
    torch.testing.assert_close(per_image_baseline("group_mean", r), torch.tensor([[2.0, 4.0]] * 3))
    greedy = torch.tensor([0.5, 1.5])
    torch.testing.assert_close(per_image_baseline("greedy", r, greedy), greedy.expand(3, 2))
    with pytest.raises(ValueError, match="K >= 2"):
        per_image_baseline("rloo", r[:1])
