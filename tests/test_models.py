"""Specification of the segmentors split at the latent (encode / decode with a policy signal)."""

import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.segmentation import fcn_resnet50

from segbandit.models import SEGMENTORS, Segmentor, build_segmentor

K = 5


def _seg(modulation: str = "attention", name: str = "fcn_resnet18", seed: int = 0, **kw) -> Segmentor:
    torch.manual_seed(seed)
    return build_segmentor(name, K, modulation=modulation, attn_dim=32, num_heads=4, **kw)


def _x(b: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_fcn_resnet18_encodes_at_stride_8_and_decodes_to_input_size():
    seg = _seg().eval()
    x = _x()
    with torch.no_grad():
        feats = seg.features(x)
        z = seg.encode(x)
        logits = seg.decode(z, torch.randn_like(z), out_size=(64, 64))
        low = seg.decode(z)
    assert z.shape == (2, 512, 8, 8)
    assert feats["aux"].shape == (2, 256, 8, 8)
    assert logits.shape == (2, K, 64, 64)
    assert low.shape == (2, K, 8, 8)
    assert seg.decoder_input(z).shape == (2, 1024, 8, 8)


def test_forward_returns_out_and_aux_logits_at_input_size():
    seg = _seg().eval()
    with torch.no_grad():
        out = seg(_x(size=48))
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, K, 48, 48)


def test_without_aux_loss_forward_has_only_out_and_decode_aux_refuses():
    seg = _seg(aux_loss=False).eval()
    assert seg.aux_classifier is None
    with torch.no_grad():
        out = seg(_x(size=32))
    assert set(out) == {"out"}
    with pytest.raises(ValueError, match="no aux head"):
        seg.decode_aux(torch.zeros(1, 256, 4, 4), (32, 32))


def test_fcn_resnet18_layer3_and_layer4_are_dilated_not_strided():
    seg = _seg()
    layer3, layer4 = seg.backbone.layer3, seg.backbone.layer4
    assert layer3[0].conv1.stride == (1, 1) and layer3[0].downsample[0].stride == (1, 1)
    assert layer4[0].conv1.stride == (1, 1) and layer4[0].downsample[0].stride == (1, 1)
    assert {blk.conv2.dilation for blk in layer3} == {(2, 2)} and {blk.conv1.padding for blk in layer4} == {(4, 4)}


def test_fcn_resnet50_latent_has_2048_channels_at_stride_8():
    seg = _seg("add", name="fcn_resnet50").eval()
    with torch.no_grad():
        out = seg(_x(b=1, size=32))
        z = seg.encode(_x(b=1, size=32))
    assert seg.latent_channels == 2048
    assert z.shape == (1, 2048, 4, 4)
    assert out["out"].shape == (1, K, 32, 32)
    assert seg.classifier[0].in_channels == 4096


def test_deeplabv3_resnet50_widens_every_aspp_input_conv_and_decodes_with_modulation():
    seg = _seg("attention", name="deeplabv3_resnet50").eval()
    aspp_convs = [m for m in seg.classifier[0].convs.modules() if isinstance(m, nn.Conv2d)]
    assert len(aspp_convs) == 5 and all(c.in_channels == 4096 for c in aspp_convs)
    assert seg.classifier[0].project[0].in_channels == 5 * 256  # later stages unchanged
    x = _x(b=2, size=32)
    with torch.no_grad():
        z = seg.encode(x)
        logits = seg.decode(z, torch.randn_like(z), out_size=(32, 32))
    assert logits.shape == (2, K, 32, 32)


def test_decode_of_encode_equals_forward_in_eval_mode():
    seg = _seg().eval()
    x = _x()
    s = torch.randn(2, 512, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        split = seg.decode(seg.encode(x), s, out_size=(64, 64))
        whole = seg(x, s)["out"]
    torch.testing.assert_close(split, whole)


def test_modulation_none_is_the_plain_torchvision_head_path():
    seg = _seg("none").eval()
    assert seg.modulation is None and seg.alpha is None
    assert seg.classifier[0].in_channels == 512
    x = _x()
    with torch.no_grad():
        z = seg.encode(x)
        expected = F.interpolate(seg.classifier(z), size=(64, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(seg.decode(z, out_size=(64, 64)), expected)
        torch.testing.assert_close(seg(x)["out"], expected)


def test_fcn_resnet50_without_modulation_equals_torchvision_model_with_same_seed():
    seg = _seg("none", name="fcn_resnet50", seed=7).eval()
    torch.manual_seed(7)
    ref = fcn_resnet50(weights=None, weights_backbone=None, num_classes=K, aux_loss=True).eval()
    x = _x(b=1, size=32)
    with torch.no_grad():
        ours, theirs = seg(x), ref(x)
    torch.testing.assert_close(ours["out"], theirs["out"])
    torch.testing.assert_close(ours["aux"], theirs["aux"])


def test_same_seed_builds_identical_segmentors():
    a, b = _seg(seed=3).state_dict(), _seg(seed=3).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_alpha_is_a_learnable_scalar_initialised_to_one():
    seg = _seg()
    assert isinstance(seg.alpha, nn.Parameter) and seg.alpha.shape == () and seg.alpha.item() == 1.0
    assert seg.aux_weight == 0.4


def test_signal_changes_attention_logits():
    seg = _seg().eval()
    with torch.no_grad():
        z = seg.encode(_x())
        a = seg.decode(z, torch.randn_like(z))
        b = seg.decode(z, torch.randn_like(z))
    assert not torch.allclose(a, b)


def test_self_attention_segmentor_ignores_the_signal():
    seg = _seg("self_attention").eval()
    with torch.no_grad():
        z = seg.encode(_x())
        torch.testing.assert_close(seg.decode(z, torch.randn_like(z)), seg.decode(z, torch.randn_like(z)))


def test_concat_decoder_input_is_z_and_alpha_times_signal():
    seg = _seg("concat")
    with torch.no_grad():
        seg.alpha.fill_(0.5)
    z, s = torch.randn(2, 512, 3, 3), torch.randn(2, 512, 3, 3)
    torch.testing.assert_close(seg.decoder_input(z, s), torch.cat([z, 0.5 * s], dim=1))


def test_unknown_segmentor_name_lists_sorted_valid_names():
    with pytest.raises(ValueError, match=", ".join(sorted(SEGMENTORS))):
        build_segmentor("unet", K)


def test_unknown_modulation_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: add, attention, concat, mul, none, self_attention"):
        build_segmentor("fcn_resnet18", K, modulation="film")


def test_attn_dim_not_divisible_by_heads_is_refused():
    with pytest.raises(ValueError, match="attn_dim=30, num_heads=8"):
        build_segmentor("fcn_resnet18", K, attn_dim=30, num_heads=8)


def test_signal_with_wrong_shape_names_both_shapes():
    seg = _seg().eval()
    z = torch.randn(2, 512, 8, 8)
    with pytest.raises(ValueError, match=r"\(2, 512, 8, 8\).*\(2, 512, 4, 4\)"):
        seg.decode(z, torch.zeros(2, 512, 4, 4))


def test_image_of_wrong_rank_or_dtype_is_refused():
    seg = _seg()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(3, 32, 32\)"):
        seg.encode(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="torch.uint8"):
        seg(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_latent_with_wrong_channels_is_refused():
    with pytest.raises(ValueError, match=r"\(B, 512, h, w\), got \(2, 256, 8, 8\)"):
        _seg().decode(torch.zeros(2, 256, 8, 8))


@pytest.mark.parametrize(
    ("name", "weights"),
    [("fcn_resnet18", "ResNet18_Weights.IMAGENET1K_V1"), ("fcn_resnet50", "ResNet50_Weights.IMAGENET1K_V1")],
)
def test_offline_pretrained_backbone_gives_one_line_runtime_error(monkeypatch, name, weights):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError) as info:
        build_segmentor(name, K, pretrained_backbone=True)
    msg = str(info.value)
    assert "\n" not in msg
    assert weights in msg and "could not be downloaded" in msg
    assert torch.hub.get_dir() in msg and "pretrained_backbone=False" in msg


def test_cross_entropy_gradient_reaches_backbone_modulation_alpha_and_heads():
    seg = _seg().train()
    x = _x()
    y = torch.randint(0, K, (2, 64, 64), generator=torch.Generator().manual_seed(2))
    y[:, :4] = 255  # void rows are ignored
    s = torch.randn(2, 512, 8, 8)
    out = seg(x, s)
    loss = F.cross_entropy(out["out"], y, ignore_index=255) + seg.aux_weight * F.cross_entropy(
        out["aux"], y, ignore_index=255
    )
    loss.backward()
    params = {
        "backbone.conv1": seg.backbone.conv1.weight,
        "backbone.layer4": seg.backbone.layer4[1].conv2.weight,
        "modulation.signal_proj": seg.modulation.signal_proj[0].weight,
        "modulation.q_proj": seg.modulation.q_proj.weight,
        "modulation.out_proj": seg.modulation.out_proj.weight,
        "alpha": seg.alpha,
        "classifier.first": seg.classifier[0].weight,
        "classifier.last": seg.classifier[4].weight,
        "aux_classifier": seg.aux_classifier[0].weight,
    }
    missing = [k for k, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert missing == []


# -- fcn_resnet_tiny: the CPU testbed ------------------------------------------------------------------------------


def _tiny(modulation: str = "attention", **kw) -> Segmentor:
    torch.manual_seed(0)
    return build_segmentor("fcn_resnet_tiny", K, modulation=modulation, num_heads=4, **kw)


def test_fcn_resnet_tiny_latent_has_64_channels_at_stride_4_and_logits_come_back_at_input_size():
    seg = _tiny().eval()
    with torch.no_grad():
        feats = seg.features(_x(size=64))
        out = seg(_x(size=64))
    assert feats["out"].shape == (2, 64, 16, 16) and seg.latent_channels == 64
    assert feats["aux"].shape[-2:] == (16, 16)
    assert out["out"].shape == out["aux"].shape == (2, K, 64, 64)


def test_fcn_resnet_tiny_is_built_of_torchvision_basic_blocks_and_fcn_heads():
    from torchvision.models.resnet import BasicBlock
    from torchvision.models.segmentation.fcn import FCNHead

    seg = _tiny()
    blocks = [m for m in seg.backbone.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) >= 3
    assert isinstance(seg.classifier, FCNHead) and isinstance(seg.aux_classifier, FCNHead)
    assert seg.classifier[0].in_channels == 2 * 64  # widened for concat(z, alpha * z_mod)
    assert any(b.conv1.dilation == (2, 2) for b in blocks)
    assert seg.classifier[3].p == 0.0 and seg.aux_classifier[3].p == 0.0  # no head dropout: the model underfits


@pytest.mark.parametrize("modulation", ["attention", "self_attention", "add", "mul", "concat", "none"])
def test_fcn_resnet_tiny_decodes_with_every_modulation(modulation):
    seg = _tiny(modulation).eval()
    with torch.no_grad():
        z = seg.encode(_x(size=32))
        logits = seg.decode(z, torch.randn_like(z), out_size=(32, 32))
    assert z.shape == (2, 64, 8, 8) and logits.shape == (2, K, 32, 32)
    assert seg.decoder_channels == (64 if modulation == "none" else 128)


def test_fcn_resnet_tiny_refuses_pretrained_weights_in_one_line():
    with pytest.raises(ValueError, match="no pretrained weights.*pretrained_backbone=False"):
        build_segmentor("fcn_resnet_tiny", K, pretrained_backbone=True)


def test_fcn_resnet_tiny_forward_with_attention_and_policy_costs_at_most_300_mflop_per_64px_image():
    from benchmarks.bench_model_cost import forward_flops, preset_model_kwargs

    tiny = forward_flops("fcn_resnet_tiny", image_size=64, **preset_model_kwargs("fcn_resnet_tiny"))
    r18 = forward_flops("fcn_resnet18", image_size=64, **preset_model_kwargs("fcn_resnet18"))
    assert tiny["modulation"] > 0 and tiny["policy"] > 0  # both are counted in the total
    assert tiny["total"] <= 300e6
    assert r18["total"] > 5 * tiny["total"]
    assert tiny["latent"] == (64, 16, 16)


def test_fcn_head_with_inner_width_keeps_torchvision_layout():
    from segbandit.models import fcn_head

    head = fcn_head(64, K, 48)
    assert [type(m).__name__ for m in head] == ["Conv2d", "BatchNorm2d", "ReLU", "Dropout", "Conv2d"]
    assert (head[0].in_channels, head[0].out_channels, head[4].in_channels, head[4].out_channels) == (64, 48, 48, K)
    assert fcn_head(64, K)[0].out_channels == 16  # torchvision's in_channels // 4


def test_add_and_concat_modulations_are_one_function_class_at_the_decoders_first_conv():
    # concat(z, a(z + s)) through W = [W1, W2] equals concat(z, a s) through [W1 + a W2, W2]: Table 7's Add and Concat
    # rows train the same function class (issue 13).
    torch.manual_seed(0)
    add = build_segmentor("fcn_resnet_tiny", K, modulation="add").eval()
    cat = build_segmentor("fcn_resnet_tiny", K, modulation="concat").eval()
    cat.load_state_dict(add.state_dict())
    d = add.latent_channels
    z, s = torch.randn(2, d, 16, 16), torch.randn(2, d, 16, 16)
    assert not torch.allclose(add.decode(z, s), cat.decode(z, s), atol=1e-3)  # same weights: different functions
    with torch.no_grad():
        w = add.classifier[0].weight  # (c, 2d, k, k)
        cat.classifier[0].weight[:, :d] = w[:, :d] + add.alpha * w[:, d:]
    torch.testing.assert_close(add.decode(z, s), cat.decode(z, s), rtol=1e-4, atol=1e-4)
