"""Segmentors split at the latent the head reads: ``x -> encode -> z -> decode(z, s) -> logits``.

Backbones and heads are torchvision's (FCN / DeepLabV3 on ResNet, a ResNet-18 FCN at output stride 8, and
``fcn_resnet_tiny``: ResNet ``BasicBlock`` stages at reduced width with an output stride of 4, the CPU testbed). With a modulation, the decoder reads ``concat(z, alpha * modulation(z, s))``
(paper Sec. 3.2, Eq. 13-14), so the head's input convolutions are widened from ``d`` to ``2d``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights, ResNet101_Weights, WeightsEnum, resnet18
from torchvision.models import segmentation as tv_seg
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.fcn import FCNHead

from segbandit.modulation import MODULATION_NAMES, make_modulation

__all__ = ["Segmentor", "SegmentorParts", "SEGMENTORS", "aux_heads", "build_segmentor", "fcn_head", "widen_head_input"]


class SegmentorParts(NamedTuple):
    """What a registry builder returns: the pieces a :class:`Segmentor` wraps."""

    backbone: nn.Module  # x -> {"out": (B, d, h, w), "aux": (B, c_aux, h, w) if aux}
    classifier: nn.Module  # (B, d, h, w) -> (B, K, h, w), before widening
    aux_classifier: Optional[nn.Module]
    latent_channels: int
    skip_keys: tuple[str, ...] = ()  # backbone features the head reads beside z, unchanged (Segformer's stages 1-3)


def _load_weights(weights: Optional[WeightsEnum], build: Callable[[], nn.Module]) -> nn.Module:
    """Run ``build``; if it needed ``weights`` and fetching them failed, raise a one-line RuntimeError."""
    if weights is None:
        return build()
    try:
        return build()
    except Exception as err:  # URLError, OSError, hash mismatch: all mean "no usable weights file"
        fname = os.path.basename(weights.url)
        cause = " ".join(f"{type(err).__name__}: {err}".split())
        raise RuntimeError(
            f"pretrained backbone weights {weights} could not be downloaded ({cause}); "
            f"place {fname} in {os.path.join(torch.hub.get_dir(), 'checkpoints')} or use pretrained_backbone=False"
        ) from err


def _dilate_basic_layer(layer: nn.Sequential, dilation: int) -> None:
    """Turn a strided ResNet BasicBlock stage into a dilated stride-1 stage, in place (all 3x3 convs dilated)."""
    first = layer[0]
    first.stride = 1
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    for block in layer:
        for conv in (block.conv1, block.conv2):  # 3x3: padding = dilation keeps the size
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation, dilation)


def _fcn_resnet18(num_classes: int, pretrained_backbone: bool, aux_loss: bool) -> SegmentorParts:
    weights = ResNet18_Weights.IMAGENET1K_V1 if pretrained_backbone else None
    net = _load_weights(weights, lambda: resnet18(weights=weights))
    _dilate_basic_layer(net.layer3, 2)  # output stride 32 -> 8, like the D8 ResNets
    _dilate_basic_layer(net.layer4, 4)
    return_layers = {"layer4": "out", "layer3": "aux"} if aux_loss else {"layer4": "out"}
    backbone = IntermediateLayerGetter(net, return_layers=return_layers)
    aux = FCNHead(256, num_classes) if aux_loss else None
    return SegmentorParts(backbone, FCNHead(512, num_classes), aux, 512)


# fcn_resnet_tiny: (planes, stride, dilation) of its BasicBlock stages after a stride-2 stem of TINY_STEM channels.
# Two stages at stride 2 (32 x 32 for a 64 px scene: cheap on a CPU, and where the strokes of a 15 px digit are still
# resolved), then one stage down to output stride 4 and one dilated stage there: a 16 x 16 latent (a stride-8 latent
# caps DigitScenes mIoU at ~0.59 even with perfect latent logits, stride 4 at ~0.92).  The attention modulation
# adds the global context a larger dilation would (dilation 4 and 8 stages read mostly padding on a 16 x 16 map and
# learnt slower, docs/embedded.md).
TINY_STEM = 32
TINY_STAGES: tuple[tuple[int, int, int], ...] = ((32, 1, 1), (32, 1, 1), (64, 2, 1), (64, 1, 2))


def _basic_stage(inplanes: int, planes: int, stride: int = 1, dilation: int = 1, blocks: int = 1) -> nn.Sequential:
    """A ResNet stage of torchvision ``BasicBlock``s (like ``ResNet._make_layer``), its 3x3 convs dilated in place."""
    layers = []
    for i in range(blocks):
        s = stride if i == 0 else 1
        c_in = inplanes if i == 0 else planes
        down = None
        if s != 1 or c_in != planes:
            down = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride=s, bias=False), nn.BatchNorm2d(planes))
        block = BasicBlock(c_in, planes, stride=s, downsample=down)  # BasicBlock refuses dilation > 1 itself
        for conv in (block.conv1, block.conv2):
            conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
        layers.append(block)
    return nn.Sequential(*layers)


def fcn_head(
    in_channels: int, num_classes: int, inter_channels: Optional[int] = None, dropout: float = 0.1
) -> FCNHead:
    """torchvision's ``FCNHead`` (conv3x3-BN-ReLU-dropout-conv1x1) with an inner width of ``inter_channels``.

    ``None`` keeps torchvision's ``in_channels // 4`` (512 for ResNet-50's 2048).  At ``in_channels = 64`` that would
    be a 16-channel bottleneck for 11 classes, so the tiny model sets it to ``in_channels``.  ``dropout`` is
    torchvision's 0.1 by default; the tiny model, which underfits its 5-minute budget, uses 0 (the module stays, so
    the layout and indices are torchvision's).
    """
    head = FCNHead(in_channels, num_classes)
    head[3] = nn.Dropout(dropout)
    if inter_channels is not None:
        head[0] = nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False)
        head[1] = nn.BatchNorm2d(inter_channels)
        head[4] = nn.Conv2d(inter_channels, num_classes, 1)
    return head


def _fcn_resnet_tiny(num_classes: int, pretrained_backbone: bool, aux_loss: bool) -> SegmentorParts:
    """ResNet ``BasicBlock`` stages at widths 32-64 with an output stride of 4 and FCN heads: the CPU testbed."""
    if pretrained_backbone:
        raise ValueError("fcn_resnet_tiny has no pretrained weights: it trains from scratch (pretrained_backbone=False)")
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(  # (B, 3, H, W) -> (B, TINY_STEM, H/2, W/2)
            nn.Conv2d(3, TINY_STEM, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(TINY_STEM), nn.ReLU(inplace=True)
        )
    )
    channels = TINY_STEM
    for i, (planes, stride, dilation) in enumerate(TINY_STAGES, start=1):
        stages[f"layer{i}"] = _basic_stage(channels, planes, stride, dilation)
        channels = planes
    body = nn.Sequential(stages)
    for m in body.modules():  # torchvision ResNet's initialisation (its zero_init_residual=False); 0.9 points better here
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    n = len(TINY_STAGES)
    return_layers = {f"layer{n}": "out", f"layer{n - 1}": "aux"} if aux_loss else {f"layer{n}": "out"}
    backbone = IntermediateLayerGetter(body, return_layers=return_layers)
    aux_channels = TINY_STAGES[-2][0]
    aux = fcn_head(aux_channels, num_classes, aux_channels, dropout=0.0) if aux_loss else None
    return SegmentorParts(backbone, fcn_head(channels, num_classes, channels, dropout=0.0), aux, channels)


def _torchvision_builder(fn: Callable[..., nn.Module], backbone_weights: WeightsEnum):
    """Registry builder taking backbone, head and aux head from a torchvision segmentation builder."""

    def build(num_classes: int, pretrained_backbone: bool, aux_loss: bool) -> SegmentorParts:
        weights = backbone_weights if pretrained_backbone else None
        model = _load_weights(
            weights, lambda: fn(weights=None, weights_backbone=weights, num_classes=num_classes, aux_loss=aux_loss)
        )
        return SegmentorParts(model.backbone, model.classifier, model.aux_classifier, 2048)

    build.__name__ = f"_{fn.__name__}"
    return build


def _segformer_builder(encoder: str):
    """Registry builder of a Segformer on MiT ``encoder`` (``transformers``, the ``[transformers]`` extra)."""

    def build(num_classes: int, pretrained_backbone: bool, aux_loss: bool) -> SegmentorParts:
        from segbandit.segformer import SKIP_KEYS, segformer_parts

        backbone, head, d = segformer_parts(encoder, num_classes, pretrained_backbone)
        return SegmentorParts(backbone, head, None, d, SKIP_KEYS)  # SegFormer trains without an auxiliary head

    build.__name__ = f"_segformer_{encoder}"
    return build


def _setr_builder(vit: str):
    """Registry builder of SETR-Naive on ViT ``vit`` (``timm``, the ``[transformers]`` extra)."""

    def build(num_classes: int, pretrained_backbone: bool, aux_loss: bool) -> SegmentorParts:
        from segbandit.setr import setr_parts

        return SegmentorParts(*setr_parts(vit, num_classes, pretrained_backbone, aux_loss))

    build.__name__ = f"_setr_{vit}"
    return build


SEGMENTORS: dict[str, Callable[[int, bool, bool], SegmentorParts]] = {
    "fcn_resnet_tiny": _fcn_resnet_tiny,
    "fcn_resnet18": _fcn_resnet18,
    "fcn_resnet50": _torchvision_builder(tv_seg.fcn_resnet50, ResNet50_Weights.IMAGENET1K_V1),
    "fcn_resnet101": _torchvision_builder(tv_seg.fcn_resnet101, ResNet101_Weights.IMAGENET1K_V1),
    "deeplabv3_resnet50": _torchvision_builder(tv_seg.deeplabv3_resnet50, ResNet50_Weights.IMAGENET1K_V1),
    "segformer_mit_b1": _segformer_builder("mit_b1"),
    "segformer_mit_b3": _segformer_builder("mit_b3"),
    "segformer_mit_b0": _segformer_builder("mit_b0"),  # CPU-sized: the transformer path of the tests
    "setr_naive_vit_l16": _setr_builder("vit_large_patch16"),
    "setr_naive_vit_tiny": _setr_builder("vit_tiny_patch8"),  # CPU-sized
}


def _widened(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A freshly initialised Conv2d like ``conv`` but reading ``in_channels`` channels."""
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


def widen_head_input(head: nn.Module, in_channels: int, new_in_channels: int) -> None:
    """Replace, in place, the convs of ``head``'s first stage reading ``in_channels`` by ones reading ``new_in_channels``.

    FCNHead (and SETR's naive head): its first conv. DeepLabHead: every ASPP branch conv (the 1x1, the atrous 3x3s,
    the pooling 1x1).  A head with a ``widen_input(in_channels, new_in_channels)`` method (Segformer's stage-4
    projection) widens itself.
    """
    if hasattr(head, "widen_input"):
        head.widen_input(in_channels, new_in_channels)
        return
    if not isinstance(head, nn.Sequential) or len(head) == 0:
        raise TypeError(f"cannot widen the input of head {type(head).__name__}: expected an FCNHead or a DeepLabHead")
    if isinstance(head[0], ASPP):
        targets = [
            (parent, name)
            for parent in head[0].convs.modules()
            for name, child in parent.named_children()
            if isinstance(child, nn.Conv2d) and child.in_channels == in_channels
        ]
    elif isinstance(head[0], nn.Conv2d) and head[0].in_channels == in_channels:
        targets = [(head, "0")]
    else:
        targets = []
    if not targets:
        raise ValueError(f"no conv reading {in_channels} channels in the first stage of {type(head).__name__}")
    for parent, name in targets:
        setattr(parent, name, _widened(getattr(parent, name), new_in_channels))


def aux_heads(logits_aux: Tensor) -> tuple[Tensor, ...]:
    """Each auxiliary head's logits (B, K, H, W) from ``decode_aux``'s (B, K, H, W) or (B, A, K, H, W) (SETR)."""
    return logits_aux.unbind(1) if logits_aux.dim() == 5 else (logits_aux,)


class Segmentor(nn.Module):
    """An encoder (backbone), an optional policy-signal modulation, and a decoder (head).

    ``encode(x)`` gives the latent ``z`` (B, d, h, w) the head reads; ``decode(z, s)`` gives logits. With a
    modulation the head reads ``concat(z, alpha * modulation(z, s))`` (2d channels), else ``z`` (d channels).
    """

    aux_weight: float = 0.4  # CE weight of the auxiliary head (mmsegmentation / SSSegmentation)

    def __init__(
        self,
        backbone: nn.Module,
        classifier: nn.Module,
        num_classes: int,
        latent_channels: int,
        aux_classifier: Optional[nn.Module] = None,
        modulation: str = "attention",
        alpha_init: float = 1.0,
        skip_keys: tuple[str, ...] = (),
        **modulation_kw,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.latent_channels = latent_channels
        self.skip_keys = tuple(skip_keys)  # features the head reads beside z (() for FCN / DeepLab / SETR)
        self.modulation_name = modulation
        self.backbone = backbone
        self.modulation = make_modulation(modulation, latent_channels, **modulation_kw)
        if self.modulation is not None:
            self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))  # learnable scale on z_mod (Sec. 3.2; 1 here)
            widen_head_input(classifier, latent_channels, 2 * latent_channels)
        else:
            self.alpha = None
        self.classifier = classifier
        self.aux_classifier = aux_classifier

    @property
    def decoder_channels(self) -> int:
        """Channels the head reads: 2d with a modulation, d without."""
        return self.latent_channels * (1 if self.modulation is None else 2)

    def _check_image(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(
                f"expected x of shape (B, 3, H, W) and floating dtype, got shape {tuple(x.shape)} dtype {x.dtype}"
            )

    def _check_latent(self, z: Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise ValueError(f"expected z of shape (B, {self.latent_channels}, h, w), got {tuple(z.shape)}")

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Backbone features of x (B, 3, H, W): {"out": z (B, d, h, w), "aux": (B, c_aux, h, w) if aux head}."""
        self._check_image(x)
        return dict(self.backbone(x))

    def encode(self, x: Tensor) -> Tensor:
        """Latent z (B, d, h, w) of images x (B, 3, H, W): the exact tensor the head reads."""
        return self.features(x)["out"]

    def decoder_input(self, z: Tensor, s: Optional[Tensor] = None) -> Tensor:
        """concat(z, alpha * modulation(z, s)) (B, 2d, h, w), or z (B, d, h, w) without modulation."""
        self._check_latent(z)
        if self.modulation is None:
            return z
        m = self.modulation(z, s)  # (B, d, h, w)
        return torch.cat([z, (self.alpha * m).to(z.dtype)], dim=1)  # (B, 2d, h, w)

    def skips(self, feats: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """The pass-through features of a :meth:`features` dict that :meth:`decode` needs beside z (() for most)."""
        return tuple(feats[k] for k in self.skip_keys)

    def decode(
        self,
        z: Tensor,
        s: Optional[Tensor] = None,
        out_size: Optional[tuple[int, int]] = None,
        skips: tuple[Tensor, ...] = (),
    ) -> Tensor:
        """Logits (B, K, H, W) at ``out_size`` ((h, w) when None) from z (B, d, h, w) and signal s (B, d, h, w).

        ``skips``: the pass-through features :meth:`skips` takes from :meth:`features` (Segformer's stages 1-3; the
        logits are then at their stride-4 size before ``out_size``); empty for every other segmentor.
        """
        if len(skips) != len(self.skip_keys):
            raise ValueError(
                f"this segmentor's decoder reads {len(self.skip_keys)} pass-through features {self.skip_keys} beside z, "
                f"got {len(skips)}: decode(z, s, skips=segmentor.skips(segmentor.features(x)))"
            )
        # contiguous (NCHW): under channels_last the loss, reward and metric softmaxes over dim 1 would each copy
        logits = self.classifier(self.decoder_input(z, s), *skips).contiguous()  # (B, K, h', w')
        if out_size is not None:
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
        return logits

    def decode_aux(self, aux_feat: Tensor, out_size: Optional[tuple[int, int]] = None) -> Tensor:
        """Aux-head logits (B, K, H, W) at ``out_size`` from the aux feature (B, c_aux, h, w).

        Several aux heads (SETR: A = 3) read aux features (B, A, c, h, w) and give logits (B, A, K, H, W).
        """
        if self.aux_classifier is None:
            raise ValueError("this segmentor has no aux head (built with aux_loss=False)")
        logits = self.aux_classifier(aux_feat).contiguous()  # (B, K, h, w) or (B, A, K, h, w); NCHW, as decode
        if out_size is not None:
            lead = logits.shape[:-3]
            logits = F.interpolate(logits.flatten(0, -4), size=tuple(out_size), mode="bilinear", align_corners=False)
            logits = logits.reshape(*lead, *logits.shape[-3:])
        return logits

    def forward(self, x: Tensor, s: Optional[Tensor] = None) -> dict[str, Tensor]:
        """torchvision-style {"out": (B, K, H, W), "aux": (B, K, H, W) if aux head}; s=None is a zero signal."""
        feats = self.features(x)
        size = (x.shape[-2], x.shape[-1])
        result = {"out": self.decode(feats["out"], s, size, self.skips(feats))}
        if self.aux_classifier is not None:
            result["aux"] = self.decode_aux(feats["aux"], size)
        return result


def build_segmentor(
    name: str,
    num_classes: int,
    modulation: str = "attention",
    pretrained_backbone: bool = False,
    aux_loss: bool = True,
    attn_dim: Optional[int] = None,
    num_heads: int = 8,
    signal_norm: str = "batch",
    alpha_init: float = 1.0,
) -> Segmentor:
    """Build segmentor ``name`` (see ``SEGMENTORS``) for ``num_classes`` classes with the given modulation.

    ``attn_dim`` / ``num_heads`` / ``signal_norm`` configure the attention modulations and are ignored by the
    others; ``alpha_init`` is the initial scale on the modulated latent (1; 0 starts as the plain model).
    ``pretrained_backbone=True`` loads ImageNet backbone weights through torchvision's weights API.
    """
    if name not in SEGMENTORS:
        raise ValueError(f"unknown segmentor {name!r}; valid names: {', '.join(sorted(SEGMENTORS))}")
    if modulation not in MODULATION_NAMES:
        raise ValueError(f"unknown modulation {modulation!r}; valid names: {', '.join(MODULATION_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    kw: dict = {"attn_dim": attn_dim, "num_heads": num_heads} if modulation in ("attention", "self_attention") else {}
    if modulation == "attention":
        kw["signal_norm"] = signal_norm
    parts = SEGMENTORS[name](num_classes, pretrained_backbone, aux_loss)
    return Segmentor(
        parts.backbone,
        parts.classifier,
        num_classes,
        parts.latent_channels,
        aux_classifier=parts.aux_classifier,
        modulation=modulation,
        alpha_init=alpha_init,
        skip_keys=parts.skip_keys,
        **kw,
    )
