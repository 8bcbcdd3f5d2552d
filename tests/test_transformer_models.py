"""Segformer (transformers) and SETR-Naive (timm) split at the latent: shapes, modulations, widening, the step."""
import importlib

import pytest
import torch

from agents.config import PRESETS, make_config
from agents.trainer import CoTrainer, segmentor_groups
from segbandit.models import MODULATION_NAMES, aux_heads, build_segmentor
from tests.conftest import toy_batch

pytestmark = pytest.mark.usefixtures("one_thread")

K = 11
TINY = ("segformer_mit_b0", "setr_naive_vit_tiny")


def _build(name, modulation="attention", **kw):
    kw.setdefault("attn_dim", 32 if modulation in ("attention", "self_attention") else None)
    kw.setdefault("num_heads", 4)
    return build_segmentor(name, K, modulation=modulation, **kw)


def _decode(seg, x, s_scale=1.0):
    feats = seg.features(x)
    z = feats["out"]
    return feats, seg.decode(z, s_scale * torch.randn_like(z), tuple(x.shape[-2:]), seg.skips(feats))


def test_segformer_latent_is_the_last_stage_at_stride_32_and_stages_1_to_3_pass_through():
    seg = _build("segformer_mit_b0")
    feats = seg.features(torch.randn(2, 3, 64, 64))
    assert tuple(feats["out"].shape) == (2, 256, 2, 2)  # stride 32
    assert [tuple(feats[k].shape) for k in seg.skip_keys] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 160, 4, 4)]
    assert seg.skip_keys == ("stage1", "stage2", "stage3")


def test_setr_latent_is_the_layernormed_last_block_and_aux_reads_three_earlier_blocks():
    seg = _build("setr_naive_vit_tiny")
    x = torch.randn(2, 3, 64, 64)
    feats = seg.features(x)
    assert tuple(feats["out"].shape) == (2, 64, 8, 8)  # patch 8
    assert tuple(feats["aux"].shape) == (2, 3, 64, 8, 8)
    vit = seg.backbone.vit
    last = vit.forward_intermediates(x, indices=[3], output_fmt="NCHW", intermediates_only=True)[0]
    expected = vit.norm(last.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(feats["out"], expected)
    assert seg.skip_keys == ()


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("modulation", MODULATION_NAMES)
def test_tiny_transformers_decode_with_every_modulation_to_the_input_size_and_backpropagate(name, modulation):
    seg = _build(name, modulation)
    x = torch.randn(2, 3, 64, 64)
    feats, logits = _decode(seg, x)
    assert tuple(logits.shape) == (2, K, 64, 64)
    loss = logits.square().mean()
    if "aux" in feats:
        loss = loss + seg.decode_aux(feats["aux"], (64, 64)).square().mean()
    loss.backward()
    first_block = next(iter(seg.backbone.parameters()))
    assert first_block.grad is not None and first_block.grad.abs().sum() > 0


def test_segformer_widens_its_stage4_projection_from_d_to_2d_and_keeps_stages_1_to_3():
    plain, mod = _build("segformer_mit_b0", "none"), _build("segformer_mit_b0", "attention")
    proj_plain = [m.proj.in_features for m in plain.classifier.decode_head.linear_projections]
    proj_mod = [m.proj.in_features for m in mod.classifier.decode_head.linear_projections]
    assert proj_plain == [32, 64, 160, 256]
    assert proj_mod == [32, 64, 160, 512]
    assert mod.classifier.decode_head.linear_projections[-1].proj.out_features == 256  # the decoder's width


def test_setr_widens_the_naive_heads_first_conv_to_2d_and_not_the_aux_heads():
    seg = _build("setr_naive_vit_tiny", "attention")
    assert seg.classifier[0].in_channels == 2 * 64
    assert [h[1][0].in_channels for h in seg.aux_classifier.heads] == [64, 64, 64]


@pytest.mark.parametrize("name", TINY)
def test_capacity_control_has_the_parameter_count_of_the_attention_modulation(name):
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(_build(name, "self_attention")) == count(_build(name, "attention"))


def test_segformer_decode_without_its_pass_through_stages_names_what_it_needs():
    seg = _build("segformer_mit_b0")
    z = seg.encode(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"3 pass-through features \('stage1', 'stage2', 'stage3'\)"):
        seg.decode(z, torch.zeros_like(z))


def test_decode_of_features_equals_forward_in_eval_mode_for_both_transformers():
    for name in TINY:
        seg = _build(name).eval()
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            feats = seg.features(x)
            s = torch.zeros_like(feats["out"])
            torch.testing.assert_close(seg.decode(feats["out"], s, (64, 64), seg.skips(feats)), seg(x, s)["out"])


def test_setr_aux_logits_are_one_map_per_head_and_the_aux_loss_sums_them():
    from agents.cotraining import CoTrainingLoss

    seg = _build("setr_naive_vit_tiny")
    x, y = toy_batch(2, 64, num_classes=K)
    feats = seg.features(x)
    aux = seg.decode_aux(feats["aux"], (64, 64))
    assert tuple(aux.shape) == (2, 3, K, 64, 64)
    heads = aux_heads(aux)
    loss = CoTrainingLoss(None, K, aux_weight=0.4)
    logits = seg.decode(feats["out"], torch.zeros_like(feats["out"]), (64, 64))
    out = loss({"logits": logits, "logits_aux": aux, "mask": y}, rl=False)
    expected = 0.4 * sum(loss.cross_entropy(h, y) for h in heads)
    torch.testing.assert_close(out["loss_aux"], expected)


@pytest.mark.parametrize("preset", ["digits-segformer-b0", "digits-setr-tiny"])
def test_a_co_training_step_of_a_tiny_transformer_moves_encoder_modulation_decoder_and_policy(preset):
    cfg = make_config(preset, crop_size=32, batch_size=2, max_iters=3, policy_hidden=16, attn_dim=32, device="cpu",
                      num_workers=0)  # fmt: skip
    trainer = CoTrainer.from_config(cfg, K, device="cpu")
    before = {n: p.detach().clone() for n, p in trainer.segmentor.named_parameters()}
    pol_before = [p.detach().clone() for p in trainer.policy.parameters()]
    x, y = toy_batch(2, 32, num_classes=K)
    stats = trainer.train_step(x, y)
    assert all(map(lambda v: v == v, [stats["loss"], stats["loss_ce"], stats["loss_policy"]]))  # finite, not NaN
    moved = {n for n, p in trainer.segmentor.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("backbone.") for n in moved)
    assert any(n.startswith("modulation.") for n in moved)
    assert any(n.startswith("classifier.") for n in moved)
    assert any(not torch.equal(a, b) for a, b in zip(pol_before, trainer.policy.parameters()))


def test_segformer_recipe_gives_the_head_ten_times_the_lr_and_norms_no_weight_decay():
    cfg = make_config("voc-segformer-b1", model="segformer_mit_b0", pretrained_backbone=False)
    groups = {g["name"]: g for g in segmentor_groups(_build("segformer_mit_b0"), cfg)}
    assert set(groups) == {"backbone", "backbone_norm", "head", "head_norm"}
    assert groups["head"]["lr"] == pytest.approx(10 * groups["backbone"]["lr"]) == pytest.approx(6e-4)
    assert groups["backbone_norm"]["weight_decay"] == 0.0 and "weight_decay" not in groups["backbone"]


def test_setr_recipe_gives_the_encoder_a_tenth_of_the_lr():
    cfg = make_config("cityscapes-setr-vit-l", model="setr_naive_vit_tiny", pretrained_backbone=False)
    groups = {g["name"]: g for g in segmentor_groups(_build("setr_naive_vit_tiny"), cfg)}
    assert groups["backbone"]["lr"] == pytest.approx(0.001) and groups["head"]["lr"] == pytest.approx(0.01)


def test_the_plain_recipe_keeps_the_segmentor_in_one_group():
    groups = segmentor_groups(_build("fcn_resnet_tiny"), make_config("digits"))
    assert [g["name"] for g in groups] == ["segmentor"]


def test_every_transformer_preset_names_a_registered_model_and_the_papers_recipe():
    assert PRESETS["ade20k-segformer-b3"]["model"] == "segformer_mit_b3"
    assert PRESETS["ade20k-segformer-b3"]["max_iters"] == 160000
    seg = PRESETS["cityscapes-segformer-b1"]
    assert (seg["optimizer"], seg["lr"], seg["weight_decay"], seg["poly_power"], seg["warmup_iters"]) == (
        "adamw", 6e-5, 0.01, 1.0, 1500)
    setr = PRESETS["voc-setr-vit-l"]
    assert (setr["optimizer"], setr["lr"], setr["momentum"], setr["weight_decay"], setr["backbone_lr_mult"],
            setr["aux_weight"]) == ("sgd", 0.01, 0.9, 0.0, 0.1, 0.4)  # fmt: skip


def test_segformer_b1_and_b3_have_mit_widths_and_depths_and_a_256_wide_decoder():
    for name, depths in (("segformer_mit_b1", [2, 2, 2, 2]), ("segformer_mit_b3", [3, 4, 18, 3])):
        seg = build_segmentor(name, 19, modulation="attention", attn_dim=None)
        feats, logits = _decode(seg, torch.randn(1, 3, 64, 64))
        assert tuple(feats["out"].shape) == (1, 512, 2, 2) and tuple(logits.shape) == (1, 19, 64, 64)
        assert [len(st.blocks) for st in seg.backbone.encoder.stages] == depths
        head = seg.classifier.decode_head
        assert [m.proj.in_features for m in head.linear_projections] == [64, 128, 320, 1024]
        assert head.linear_fuse.out_channels == 256


@pytest.mark.slow
def test_setr_vit_large_latent_has_1024_channels_at_stride_16_and_a_2048_wide_head():
    seg = build_segmentor("setr_naive_vit_l16", 19, modulation="attention", attn_dim=None)
    feats, logits = _decode(seg, torch.randn(1, 3, 64, 64))
    assert tuple(feats["out"].shape) == (1, 1024, 4, 4) and tuple(feats["aux"].shape) == (1, 3, 1024, 4, 4)
    assert tuple(logits.shape) == (1, 19, 64, 64) and seg.classifier[0].in_channels == 2048
    assert seg.backbone.aux_blocks == (9, 14, 19) and len(seg.backbone.vit.blocks) == 24


def test_offline_pretrained_segformer_encoder_gives_one_line_runtime_error(monkeypatch):
    transformers = importlib.import_module("transformers")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'\nto load this file")

    monkeypatch.setattr(transformers.SegformerModel, "from_pretrained", offline)
    with pytest.raises(RuntimeError) as err:
        build_segmentor("segformer_mit_b1", 19, pretrained_backbone=True)
    assert "nvidia/mit-b1" in str(err.value) and "\n" not in str(err.value)


def test_offline_pretrained_vit_gives_one_line_runtime_error(monkeypatch):
    timm = importlib.import_module("timm")
    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("offline\nno network")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError) as err:
        build_segmentor("setr_naive_vit_l16", 19, pretrained_backbone=True)
    assert "vit_large_patch16_384" in str(err.value) and "\n" not in str(err.value)


def test_a_missing_extra_names_the_pip_extra_to_install(monkeypatch):
    real = importlib.import_module

    def no_transformers(name, *args):
        if name == "transformers":
            raise ImportError("No module named 'transformers'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_transformers)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[transformers\]"'):
        build_segmentor("segformer_mit_b0", K)


def test_segformer_refuses_images_smaller_than_its_first_reduction_in_one_line():
    with pytest.raises(ValueError, match=r"at least 32 x 32 px, got \(16, 32\)"):
        _build("segformer_mit_b0").features(torch.randn(1, 3, 16, 32))
