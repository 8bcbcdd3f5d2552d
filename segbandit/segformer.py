"""Segformer (Mix Transformer encoder + all-MLP decoder) split at its last stage, on Hugging Face ``transformers``.

The latent the policy reads is the last encoder stage, ``z`` (B, 512, H/32, W/32) for MiT-B1 / B3 (16 x 16 at
512 px).  Stages 1-3 (strides 4, 8, 16) pass through unchanged as skip features; the all-MLP decoder (transformers'
``SegformerDecodeHead``, the official NVIDIA design) reads them beside ``concat(z, alpha * modulation(z, s))``, its
stage-4 projection widened from 512 to 1024 input channels (:meth:`SegformerHead.widen_input`).

Why ``transformers`` and not ``segmentation-models-pytorch``: every MiT size, and the CPU-sized one the tests run, is
one ``SegformerConfig`` (widths, depths, heads, reduction ratios) of the same classes, with the decoder width as a
config field; the encoder's pretrained weights load with ``SegformerModel.from_pretrained("nvidia/mit-b1")``, the
library's own call.  smp builds the same encoders from a fixed table of sizes and adds its own decoder variant.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from segbandit.extras import require

__all__ = [
    "DECODER_WIDTHS", "MIT_CONFIGS", "SegformerBackbone", "SegformerHead", "segformer_config",
    "segformer_parts",
]  # fmt: skip

# Mix Transformer sizes (SegFormer paper, Table 6; NVIDIA's mit-b* configs); MiT-B0 shares B1's depths at half width.
MIT_CONFIGS: dict[str, dict[str, Any]] = {
    "mit_b1": dict(hidden_sizes=(64, 128, 320, 512), depths=(2, 2, 2, 2), num_attention_heads=(1, 2, 5, 8)),
    "mit_b3": dict(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 18, 3), num_attention_heads=(1, 2, 5, 8)),
    # MiT-B0, the CPU-sized one (3.7 M parameters): narrower or shallower MiTs did not even fit 64 digit scenes in
    # 150 steps (docs/transformers.md)
    "mit_b0": dict(hidden_sizes=(32, 64, 160, 256), depths=(2, 2, 2, 2), num_attention_heads=(1, 2, 5, 8)),
}
# all-MLP decoder width: 256 (SegFormer's for B0 / B1; SSSegmentation's setting for the paper's B1 and B3 baselines)
DECODER_WIDTHS: dict[str, int] = {"mit_b0": 256, "mit_b1": 256, "mit_b3": 256}
PRETRAINED_IDS = {"mit_b0": "nvidia/mit-b0", "mit_b1": "nvidia/mit-b1", "mit_b3": "nvidia/mit-b3"}
SKIP_KEYS = ("stage1", "stage2", "stage3")
MIN_SIZE = 32  # the smallest image side the MiT encoders take


def segformer_config(encoder: str, num_classes: int, decoder_width: int = 256) -> Any:
    """The ``transformers.SegformerConfig`` of MiT ``encoder`` (:data:`MIT_CONFIGS`) with a ``decoder_width`` decoder."""
    transformers = require("transformers", "Segformer")
    if encoder not in MIT_CONFIGS:
        raise ValueError(f"unknown MiT encoder {encoder!r}; valid names: {', '.join(sorted(MIT_CONFIGS))}")
    return transformers.SegformerConfig(
        **MIT_CONFIGS[encoder], num_labels=num_classes, decoder_hidden_size=decoder_width, drop_path_rate=0.1,
        classifier_dropout_prob=0.1, semantic_loss_ignore_index=255,
    )  # fmt: skip


class SegformerBackbone(nn.Module):
    """x (B, 3, H, W) -> {"out": stage 4 (B, c4, H/32, W/32), "stage1".."stage3": (B, c_i, H/2^(i+1), W/2^(i+1))}."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder  # transformers.SegformerModel

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if min(x.shape[-2:]) < MIN_SIZE:  # stage 1's sequence-reduction conv (kernel 8 at stride 4) needs H/4 >= 8
            raise ValueError(f"Segformer needs images of at least {MIN_SIZE} x {MIN_SIZE} px, got {tuple(x.shape[-2:])}")
        feats: dict[str, Tensor] = {}
        h = x
        for i, stage in enumerate(self.encoder.stages):  # OverlapPatchEmbed -> blocks -> LayerNorm, (B, c, h, w)
            h = stage(h)
            if i < len(SKIP_KEYS):
                feats[SKIP_KEYS[i]] = h
        feats["out"] = h  # (B, c4, H/32, W/32): the latent z
        return feats


class SegformerHead(nn.Module):
    """transformers' all-MLP ``SegformerDecodeHead`` called as ``head(z_in, stage1, stage2, stage3)`` -> (B, K, H/4, W/4)."""

    def __init__(self, decode_head: nn.Module) -> None:
        super().__init__()
        self.decode_head = decode_head

    def forward(self, z: Tensor, *skips: Tensor) -> Tensor:
        if len(skips) != len(SKIP_KEYS):
            raise ValueError(f"the Segformer decoder reads {len(SKIP_KEYS)} pass-through stages, got {len(skips)}")
        return self.decode_head([*skips, z])

    @property
    def in_channels(self) -> int:
        """Channels of the decoder input at the latent (stage 4): 512 plain, 1024 widened."""
        return int(self.decode_head.linear_projections[-1].proj.in_features)

    def widen_input(self, in_channels: int, new_in_channels: int) -> None:
        """Replace the stage-4 projection Linear(in_channels, D) by a fresh Linear(new_in_channels, D)."""
        mlp = self.decode_head.linear_projections[-1]
        if mlp.proj.in_features != in_channels:
            raise ValueError(f"the Segformer stage-4 projection reads {mlp.proj.in_features} channels, not {in_channels}")
        old = mlp.proj
        mlp.proj = nn.Linear(new_in_channels, old.out_features, device=old.weight.device, dtype=old.weight.dtype)


def _pretrained_encoder(encoder: str) -> nn.Module:
    transformers = require("transformers", "Segformer")
    if encoder not in PRETRAINED_IDS:
        raise ValueError(f"MiT encoder {encoder!r} has no pretrained weights; pretrained_backbone=False")
    repo = PRETRAINED_IDS[encoder]
    try:
        return transformers.SegformerModel.from_pretrained(repo)
    except Exception as err:  # offline: OSError / connection errors from huggingface_hub
        cause = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise RuntimeError(
            f"pretrained encoder {repo} could not be loaded ({cause}); put it in the Hugging Face cache "
            f"(huggingface-cli download {repo}) or use pretrained_backbone=False"
        ) from err


def segformer_parts(encoder: str, num_classes: int, pretrained_backbone: bool):
    """(backbone, head, latent channels) of a Segformer with MiT ``encoder``, ImageNet encoder weights if asked."""
    transformers = require("transformers", "Segformer")
    config = segformer_config(encoder, num_classes, DECODER_WIDTHS[encoder])
    model = transformers.SegformerForSemanticSegmentation(config)  # transformers' init: every conv / linear N(0, 0.02)
    enc = model.segformer
    if pretrained_backbone:
        enc = _pretrained_encoder(encoder)
    return SegformerBackbone(enc), SegformerHead(model.decode_head), int(config.hidden_sizes[-1])

