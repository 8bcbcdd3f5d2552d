"""LatentPolicy and the Gaussian helpers follow Eq. 7-12."""
import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from segbandit.policy import (
    LatentPolicy,
    broadcast_action,
    gaussian_entropy,
    gaussian_kl,
    gaussian_log_prob,
    sample_action,
)


def _params(b=3, d=5):
    return torch.randn(b, d), 0.3 * torch.randn(b, d)


def test_forward_returns_per_channel_mean_and_log_std():
    policy = LatentPolicy(16, hidden_channels=8, num_blocks=4, pool_size=2)
    mu, log_std = policy(torch.randn(3, 16, 6, 7))
    assert mu.shape == (3, 16) and log_std.shape == (3, 16)


def test_log_std_is_bounded_by_four_tanh():
    policy = LatentPolicy(8, hidden_channels=8, pool_size=1)
    with torch.no_grad():
        policy.fc_log_std.bias.fill_(100.0)
    _, log_std = policy(torch.randn(2, 8, 4, 4))
    assert torch.allclose(log_std, torch.full_like(log_std, 4.0))


def test_unbounded_variant_passes_log_std_through():
    policy = LatentPolicy(8, hidden_channels=8, pool_size=1, logstd_bound=None)
    with torch.no_grad():
        policy.fc_log_std.bias.fill_(7.5)
    _, log_std = policy(torch.randn(2, 8, 4, 4))
    assert torch.allclose(log_std, torch.full_like(log_std, 7.5))


def test_dense_log_prob_sum_equals_torch_normal_over_h_w_d():
    mu, log_std = _params()
    s = sample_action(mu, log_std, (4, 6))
    expected = Normal(mu[:, :, None, None], log_std.exp()[:, :, None, None]).log_prob(s).sum((1, 2, 3))
    assert torch.allclose(gaussian_log_prob(s, mu, log_std, "sum"), expected, atol=1e-4)


def test_mean_reduction_is_sum_divided_by_element_count():
    mu, log_std = _params()
    s = sample_action(mu, log_std, (4, 6))
    total = gaussian_log_prob(s, mu, log_std, "sum")
    assert torch.allclose(gaussian_log_prob(s, mu, log_std, "mean"), total / (5 * 4 * 6), atol=1e-5)


def test_channel_action_shape_and_log_prob():
    mu, log_std = _params()
    s = sample_action(mu, log_std)
    assert s.shape == (3, 5)
    expected = Normal(mu, log_std.exp()).log_prob(s).sum(1)
    assert torch.allclose(gaussian_log_prob(s, mu, log_std), expected, atol=1e-5)


def test_sampling_is_reparameterised():
    mu, log_std = _params()
    mu.requires_grad_(True)
    log_std.requires_grad_(True)
    sample_action(mu, log_std, (2, 2)).sum().backward()
    assert mu.grad is not None and log_std.grad is not None and log_std.grad.abs().sum() > 0


def test_same_generator_seed_gives_same_sample():
    mu, log_std = _params()
    a = sample_action(mu, log_std, (3, 3), generator=torch.Generator().manual_seed(7))
    b = sample_action(mu, log_std, (3, 3), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_closed_form_kl_matches_torch_distributions():
    mu_p, ls_p = _params()
    mu_q, ls_q = _params()
    per_channel = kl_divergence(Normal(mu_p, ls_p.exp()), Normal(mu_q, ls_q.exp()))  # (B, d)
    assert torch.allclose(gaussian_kl(mu_p, ls_p, mu_q, ls_q, "sum", num_positions=12), per_channel.sum(1) * 12, atol=1e-4)
    assert torch.allclose(gaussian_kl(mu_p, ls_p, mu_q, ls_q, "mean"), per_channel.mean(1), atol=1e-5)


def test_kl_of_identical_policies_is_zero():
    mu, log_std = _params()
    assert torch.allclose(gaussian_kl(mu, log_std, mu, log_std), torch.zeros(3), atol=1e-6)


def test_entropy_matches_torch_normal():
    mu, log_std = _params()
    expected = Normal(mu, log_std.exp()).entropy().sum(1) * 4
    assert torch.allclose(gaussian_entropy(log_std, "sum", num_positions=4), expected, atol=1e-5)


def test_log_prob_is_float32_for_bfloat16_inputs():
    mu, log_std = _params()
    s = sample_action(mu, log_std, (2, 2)).bfloat16()
    assert gaussian_log_prob(s, mu.bfloat16(), log_std.bfloat16()).dtype == torch.float32


def test_deterministic_act_returns_the_mean_broadcast_over_space():
    policy = LatentPolicy(8, hidden_channels=8, pool_size=1).eval()
    z = torch.randn(2, 8, 3, 4)
    out = policy.act(z, "dense", deterministic=True)
    assert out["action"].shape == (2, 8, 3, 4)
    assert torch.equal(out["action"], broadcast_action(out["mu"], (3, 4)))


def test_channel_act_returns_per_channel_action():
    policy = LatentPolicy(8, hidden_channels=8, pool_size=1)
    assert policy.act(torch.randn(2, 8, 3, 4), "channel")["action"].shape == (2, 8)


def test_wrong_latent_channels_raise_naming_shapes():
    policy = LatentPolicy(8, hidden_channels=8)
    with pytest.raises(ValueError, match=r"\(B, 8, h, w\).*\(2, 4, 3, 3\)"):
        policy(torch.randn(2, 4, 3, 3))


def test_action_of_wrong_shape_raises():
    mu, log_std = _params()
    with pytest.raises(ValueError, match="action"):
        gaussian_log_prob(torch.randn(3, 4, 2, 2), mu, log_std)


def test_unknown_reduction_raises():
    mu, log_std = _params()
    with pytest.raises(ValueError, match="reduction"):
        gaussian_log_prob(sample_action(mu, log_std), mu, log_std, "max")


def test_log_prob_at_the_mean_with_unit_sigma_is_the_gaussian_constant():
    mu = torch.zeros(1, 4)
    log_std = torch.zeros(1, 4)
    value = gaussian_log_prob(mu, mu, log_std, "mean")
    assert math.isclose(value.item(), -0.5 * math.log(2 * math.pi), rel_tol=1e-6)
