"""Specification of the modulation modules (paper Eq. 13-14, 20-22)."""

import math

import pytest
import torch

from segbandit.modulation import (
    MODULATION_NAMES,
    MODULATIONS,
    AttentionModulation,
    SelfAttentionModulation,
    make_modulation,
    needs_signal,
)

D, H, W = 32, 4, 5


def _zs(seed: int = 0, b: int = 2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, D, H, W, generator=g), torch.randn(b, D, H, W, generator=g)


@pytest.mark.parametrize("name", sorted(MODULATIONS))
def test_every_modulation_returns_the_latent_shape(name):
    torch.manual_seed(0)
    mod = make_modulation(name, D, **({"attn_dim": 16, "num_heads": 4} if "attention" in name else {}))
    z, s = _zs()
    assert mod(z, s).shape == (2, D, H, W)
    assert mod(z, None).shape == (2, D, H, W)


def test_add_is_z_plus_s():
    z, s = _zs()
    torch.testing.assert_close(make_modulation("add", D)(z, s), z + s)


def test_mul_is_z_times_one_plus_tanh_s():
    z, s = _zs()
    expected = z * (1 + (torch.exp(2 * s) - 1) / (torch.exp(2 * s) + 1))  # tanh written out
    torch.testing.assert_close(make_modulation("mul", D)(z, s), expected)


def test_concat_returns_the_raw_signal():
    z, s = _zs()
    assert torch.equal(make_modulation("concat", D)(z, s), s)


def test_missing_signal_is_a_zero_signal():
    torch.manual_seed(0)
    z, _ = _zs()
    for name in ("add", "mul", "concat", "attention"):
        mod = make_modulation(name, D, **({"attn_dim": 16} if name == "attention" else {})).eval()
        torch.testing.assert_close(mod(z, None), mod(z, torch.zeros_like(z)))


def _reference_attention(mod: AttentionModulation, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Eq. 13-14 by hand: conv1x1 as einsum, eval BN formula, per-head softmax(q k^T / sqrt(dh)) v."""
    conv, bn = mod.signal_proj[0], mod.signal_proj[1]
    s1 = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], s)
    s1 = (s1 - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    s_prime = torch.relu(s1 * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
    b, d, h, w = z.shape
    tq = (z - s_prime).reshape(b, d, h * w).permute(0, 2, 1)  # (B, N, d)
    tkv = z.reshape(b, d, h * w).permute(0, 2, 1)
    q = tq @ mod.q_proj.weight.T + mod.q_proj.bias
    k = tkv @ mod.k_proj.weight.T + mod.k_proj.bias
    v = tkv @ mod.v_proj.weight.T + mod.v_proj.bias
    dh = mod.attn_dim // mod.num_heads
    heads = []
    for i in range(mod.num_heads):  # the reference may loop; the module may not
        sl = slice(i * dh, (i + 1) * dh)
        att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh), dim=-1)
        heads.append(att @ v[..., sl])
    out = torch.cat(heads, dim=-1) @ mod.out_proj.weight.T + mod.out_proj.bias  # (B, N, d)
    return out.permute(0, 2, 1).reshape(b, d, h, w)


def test_attention_matches_hand_written_multihead_attention_eq14():
    torch.manual_seed(0)
    mod = AttentionModulation(D, attn_dim=16, num_heads=4)
    bn = mod.signal_proj[1]
    with torch.no_grad():  # non-trivial BN statistics and affine
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    mod.eval()
    z, s = _zs(1)
    torch.testing.assert_close(mod(z, s), _reference_attention(mod, z, s), rtol=1e-4, atol=1e-5)


def test_attention_dim_defaults_to_latent_channels():
    mod = AttentionModulation(D)
    assert mod.attn_dim == D and mod.num_heads == 8
    assert mod.q_proj.weight.shape == (D, D)


def test_self_attention_has_the_same_parameter_count_as_attention():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert count(SelfAttentionModulation(D, attn_dim=16, num_heads=4)) == count(
        AttentionModulation(D, attn_dim=16, num_heads=4)
    )


def test_self_attention_ignores_the_signal():
    torch.manual_seed(0)
    mod = SelfAttentionModulation(D, attn_dim=16, num_heads=4).eval()
    z, s = _zs()
    out = mod(z, s)
    torch.testing.assert_close(mod(z, 5 * torch.randn_like(s)), out)
    torch.testing.assert_close(mod(z, None), out)
    torch.testing.assert_close(out, mod.attend(z, z))


def test_attention_output_depends_on_the_signal():
    torch.manual_seed(0)
    mod = AttentionModulation(D, attn_dim=16, num_heads=4).eval()
    z, s = _zs()
    assert not torch.allclose(mod(z, s), mod(z, -s))


def test_attention_backward_reaches_signal_projection_and_projections():
    torch.manual_seed(0)
    mod = AttentionModulation(D, attn_dim=16, num_heads=4)
    z, s = _zs()
    s.requires_grad_(True)
    mod(z, s).square().mean().backward()
    for p in (mod.signal_proj[0].weight, mod.q_proj.weight, mod.k_proj.weight, mod.v_proj.weight, mod.out_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_needs_signal_is_false_only_for_none_and_self_attention():
    assert {n: needs_signal(n) for n in MODULATION_NAMES} == {
        "add": True,
        "attention": True,
        "concat": True,
        "mul": True,
        "none": False,
        "self_attention": False,
    }


def test_make_modulation_none_gives_no_module():
    assert make_modulation("none", D) is None


def test_unknown_modulation_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: add, attention, concat, mul, none, self_attention"):
        make_modulation("film", D)
    with pytest.raises(ValueError, match="valid names"):
        needs_signal("film")


def test_attn_dim_not_divisible_by_heads_is_refused():
    with pytest.raises(ValueError, match="attn_dim=30, num_heads=8"):
        make_modulation("attention", D, attn_dim=30, num_heads=8)


@pytest.mark.parametrize("name", ["add", "mul", "concat", "attention"])
def test_signal_with_wrong_shape_names_both_shapes(name):
    mod = make_modulation(name, D, **({"attn_dim": 16} if name == "attention" else {}))
    z, _ = _zs()
    with pytest.raises(ValueError, match=r"\(2, 32, 4, 5\).*\(2, 32, 4, 4\)"):
        mod(z, torch.zeros(2, D, H, H))


def test_latent_with_wrong_channels_is_refused():
    with pytest.raises(ValueError, match=r"expected z of shape \(B, 32, h, w\), got \(2, 16, 4, 5\)"):
        make_modulation("add", D)(torch.zeros(2, 16, H, W), None)
