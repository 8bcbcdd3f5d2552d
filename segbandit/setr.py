"""SETR-Naive (a plain ViT encoder + the naive upsampling head) split at the last block, on ``timm``.

The latent is the LayerNorm'd last block's patch tokens as a map, ``z`` (B, 1024, H/16, W/16) for ViT-L/16 (32 x 32 at
512 px).  The naive head (SETR's and mmsegmentation's ``SETRUPHead`` with one 1x1 conv: conv 1024 -> 256, BN, ReLU,
x4 bilinear up, 1x1 classifier) reads ``concat(z, alpha * modulation(z, s))``, its first conv widened to 2048.
Three auxiliary naive heads, each with its own LayerNorm, read blocks 10, 15 and 20 (CE weight 0.4 each, as
mmsegmentation's SETR configs); their logits come as one (B, 3, K, H, W) tensor.

The encoder is timm's ``VisionTransformer`` (``forward_intermediates`` returns the blocks as maps) with
``dynamic_img_size``: the position embedding, learnt at 384 px for ``vit_large_patch16_384``, is interpolated to
the input size at every forward, so the same model runs at the 512 crop, at a sliding window or at 64 px.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from segbandit.extras import require

__all__ = ["VIT_CONFIGS", "SETRAuxHeads", "SETRBackbone", "naive_head", "setr_parts"]

# timm model name, its constructor arguments, and the 0-based blocks the auxiliary heads read (SETR: 10, 15, 20 of 24)
VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_large_patch16": dict(timm_name="vit_large_patch16_384", kw={}, aux_blocks=(9, 14, 19)),
    # the CPU testbed: 8 px patches (an 8 x 8 latent at 64 px), width 64, 4 blocks, aux heads on blocks 1-3
    "vit_tiny_patch8": dict(
        timm_name="vit_tiny_patch16_224", kw=dict(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4),
        aux_blocks=(0, 1, 2),
    ),
}
HEAD_CHANNELS = 256  # the naive head's width (mmsegmentation's SETR configs)


def naive_head(in_channels: int, num_classes: int, channels: int = HEAD_CHANNELS, up_scale: int = 4) -> nn.Sequential:
    """SETR's naive head: conv1x1 -> BN -> ReLU -> x``up_scale`` bilinear -> conv1x1 (B, K, ``up_scale`` h, ``up_scale`` w)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Upsample(scale_factor=up_scale, mode="bilinear", align_corners=False),
        nn.Conv2d(channels, num_classes, 1),
    )


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a map (B, C, h, w) (the head-side norm of mmsegmentation's ``SETRUPHead``)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SETRAuxHeads(nn.Module):
    """One LayerNorm + naive head per auxiliary block: aux (B, A, C, h, w) -> logits (B, A, K, 4h, 4w)."""

    def __init__(self, num_heads: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(_ChannelLayerNorm(in_channels, eps=1e-6), naive_head(in_channels, num_classes))
            for _ in range(num_heads)
        )

    def forward(self, aux: Tensor) -> Tensor:
        if aux.dim() != 5 or aux.shape[1] != len(self.heads):
            raise ValueError(f"expected aux features (B, {len(self.heads)}, C, h, w), got {tuple(aux.shape)}")
        return torch.stack([head(aux[:, i]) for i, head in enumerate(self.heads)], dim=1)  # (B, A, K, 4h, 4w)


class SETRBackbone(nn.Module):
    """x (B, 3, H, W) -> {"out": LN(last block) (B, C, H/p, W/p), "aux": blocks ``aux_blocks`` (B, A, C, H/p, W/p)}."""

    def __init__(self, vit: nn.Module, aux_blocks: tuple[int, ...], with_aux: bool) -> None:
        super().__init__()
        self.vit = vit
        self.aux_blocks = tuple(aux_blocks) if with_aux else ()
        self.last = len(vit.blocks) - 1

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        maps = self.vit.forward_intermediates(
            x, indices=[*self.aux_blocks, self.last], norm=False, output_fmt="NCHW", intermediates_only=True
        )  # [(B, C, H/p, W/p)] per requested block, prefix (class) tokens dropped
        z = self.vit.norm(maps[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # the ViT's final LayerNorm, (B, C, h, w)
        feats = {"out": z.contiguous()}
        if self.aux_blocks:
            feats["aux"] = torch.stack(maps[:-1], dim=1)  # (B, A, C, h, w)
        return feats


def _create_vit(name: str, pretrained: bool) -> nn.Module:
    timm = require("timm", "SETR")
    spec = VIT_CONFIGS[name]
    kw = dict(spec["kw"], num_classes=0, dynamic_img_size=True)
    if not pretrained:
        return timm.create_model(spec["timm_name"], pretrained=False, **kw)
    if spec["kw"]:
        raise ValueError(f"ViT {name!r} has no pretrained weights; pretrained_backbone=False")
    try:
        return timm.create_model(spec["timm_name"], pretrained=True, **kw)
    except Exception as err:  # offline: huggingface_hub / URL errors
        cause = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise RuntimeError(
            f"pretrained ViT {spec['timm_name']} could not be loaded ({cause}); put it in the Hugging Face cache or use "
            f"pretrained_backbone=False"
        ) from err


def setr_parts(name: str, num_classes: int, pretrained_backbone: bool, aux_loss: bool):
    """(backbone, naive head, aux heads or None, latent channels) of SETR-Naive on ViT ``name`` (:data:`VIT_CONFIGS`)."""
    if name not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT {name!r}; valid names: {', '.join(sorted(VIT_CONFIGS))}")
    vit = _create_vit(name, pretrained_backbone)
    d = int(vit.embed_dim)
    aux_blocks = VIT_CONFIGS[name]["aux_blocks"]
    aux = SETRAuxHeads(len(aux_blocks), d, num_classes) if aux_loss else None
    return SETRBackbone(vit, aux_blocks, aux_loss), naive_head(d, num_classes), aux, d

