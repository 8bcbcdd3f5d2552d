"""Modulation modules: how the policy signal ``s`` enters the latent ``z`` (paper Eq. 13-14, 20-22).

Every module maps ``(z, s) -> m`` with ``z``, ``s`` and ``m`` all ``(B, d, h, w)``. The segmentor feeds
the decoder ``concat(z, alpha * m)``, so every variant uses the same decoder slot (parameter-fair ablations).
No policy means a zero signal: ``s=None`` is read as ``torch.zeros_like(z)``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Modulation",
    "AttentionModulation",
    "SelfAttentionModulation",
    "AddModulation",
    "MulModulation",
    "ConcatModulation",
    "MODULATIONS",
    "MODULATION_NAMES",
    "SIGNAL_NORMS",
    "make_modulation",
    "signal_projection",
    "needs_signal",
]


def _check_latent(z: Tensor, channels: int) -> None:
    """Raise ValueError unless ``z`` is ``(B, channels, h, w)``."""
    if z.ndim != 4 or z.shape[1] != channels:
        raise ValueError(f"expected z of shape (B, {channels}, h, w), got {tuple(z.shape)}")


def _signal_or_zeros(z: Tensor, s: Optional[Tensor]) -> Tensor:
    """Return ``s`` checked against ``z``'s shape, or a zero signal when ``s`` is None (no policy = zero signal)."""
    if s is None:
        return torch.zeros_like(z)  # (B, d, h, w)
    if s.shape != z.shape:
        raise ValueError(f"signal s must have the shape of z {tuple(z.shape)}, got s of shape {tuple(s.shape)}")
    return s


class Modulation(nn.Module):
    """Base class: ``forward(z, s) -> m``, all ``(B, d, h, w)``; ``s=None`` means a zero signal."""

    needs_signal: bool = True

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels}")
        self.channels = channels

    def _inputs(self, z: Tensor, s: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        _check_latent(z, self.channels)
        return z, _signal_or_zeros(z, s)


SIGNAL_NORMS: tuple[str, ...] = ("batch", "group", "none")


def signal_projection(channels: int, norm: str = "batch") -> nn.Sequential:
    """``s' = ReLU(N(Conv1x1(s)))`` (Eq. 13), N = BatchNorm (the paper), GroupNorm, or none.

    In training the batch-norm sees sampled signals ``s = mu + sigma * eps`` and normalises them to unit scale
    whatever sigma is, while evaluation feeds ``s = mu`` through the running statistics: the decoder then reads a
    signal of another scale than it was trained on.  ``"group"`` (8 groups, or 1 when ``d`` is not a multiple of 8)
    normalises each image by its own statistics in training and evaluation alike; ``"none"`` keeps the action's
    scale as it is (the conv then has a bias).
    """
    if norm not in SIGNAL_NORMS:
        raise ValueError(f"unknown signal_norm {norm!r}; valid names: {', '.join(SIGNAL_NORMS)}")
    conv = nn.Conv2d(channels, channels, kernel_size=1, bias=norm == "none")
    if norm == "batch":
        return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())
    if norm == "group":
        return nn.Sequential(conv, nn.GroupNorm(8 if channels % 8 == 0 else 1, channels), nn.ReLU())
    return nn.Sequential(conv, nn.ReLU())


class AttentionModulation(Modulation):
    """Policy-conditioned attention: ``m = MHA(z - s', z, z)`` with ``s' = ReLU(BN(Conv1x1(s)))`` (Eq. 13-14).

    Tokens are the ``h*w`` positions, each a ``d``-vector. ``q/k/v`` project ``d -> attn_dim``
    (``attn_dim=None`` means ``d``, the paper), split into ``num_heads`` heads, attend with
    ``scaled_dot_product_attention``, and ``out_proj`` maps ``attn_dim -> d``.  ``signal_norm`` replaces Eq. 13's
    batch-norm (:func:`signal_projection`).
    """

    def __init__(
        self,
        channels: int,
        attn_dim: Optional[int] = None,
        num_heads: int = 8,
        dropout: float = 0.0,
        signal_norm: str = "batch",
    ) -> None:
        super().__init__(channels)
        attn_dim = channels if attn_dim is None else attn_dim
        if num_heads < 1 or attn_dim < 1 or attn_dim % num_heads != 0:
            raise ValueError(
                f"attn_dim must be a positive multiple of num_heads, got attn_dim={attn_dim}, num_heads={num_heads}"
            )
        self.attn_dim = attn_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.signal_norm = signal_norm
        self.signal_proj = signal_projection(channels, signal_norm)  # Eq. 13: B(s) = ReLU(BN(Conv(s)))
        self.q_proj = nn.Linear(channels, attn_dim)
        self.k_proj = nn.Linear(channels, attn_dim)
        self.v_proj = nn.Linear(channels, attn_dim)
        self.out_proj = nn.Linear(attn_dim, channels)

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, N, attn_dim) -> (B, heads, N, attn_dim // heads)."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.attn_dim // self.num_heads).transpose(1, 2)

    def attend(self, query: Tensor, z: Tensor) -> Tensor:
        """Multi-head attention of ``query`` over ``z`` (keys = values = ``z``); both (B, d, h, w) -> (B, d, h, w)."""
        b, d, h, w = z.shape
        q_tok = query.flatten(2).transpose(1, 2)  # (B, h*w, d)
        kv_tok = z.flatten(2).transpose(1, 2)  # (B, h*w, d)
        q = self._split_heads(self.q_proj(q_tok))  # (B, H, h*w, dh)
        k = self._split_heads(self.k_proj(kv_tok))  # (B, H, h*w, dh)
        v = self._split_heads(self.v_proj(kv_tok))  # (B, H, h*w, dh)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, h*w, dh)
        out = out.transpose(1, 2).reshape(b, h * w, self.attn_dim)  # (B, h*w, attn_dim)
        return self.out_proj(out).transpose(1, 2).reshape(b, d, h, w)  # (B, d, h, w)

    def forward(self, z: Tensor, s: Optional[Tensor] = None) -> Tensor:
        z, s = self._inputs(z, s)
        s_prime = self.signal_proj(s.to(z.dtype))  # (B, d, h, w)  Eq. 13
        return self.attend(z - s_prime, z)  # (B, d, h, w)  Eq. 14


class SelfAttentionModulation(AttentionModulation):
    """Capacity control (Table 6 row 2): ``m = MHA(z, z, z)``; the signal is ignored.

    Same modules and parameters as :class:`AttentionModulation` (the Eq. 13 projection exists but is
    unused, so under DDP use ``find_unused_parameters=True``).
    """

    needs_signal = False

    def forward(self, z: Tensor, s: Optional[Tensor] = None) -> Tensor:
        _check_latent(z, self.channels)
        return self.attend(z, z)  # (B, d, h, w)


class AddModulation(Modulation):
    """``m = z + s`` (Eq. 20)."""

    def forward(self, z: Tensor, s: Optional[Tensor] = None) -> Tensor:
        z, s = self._inputs(z, s)
        return z + s  # Eq. 20


class MulModulation(Modulation):
    """``m = z * (1 + tanh(s))``: a spatially varying gain (Eq. 21)."""

    def forward(self, z: Tensor, s: Optional[Tensor] = None) -> Tensor:
        z, s = self._inputs(z, s)
        return z * (1.0 + torch.tanh(s))  # Eq. 21


class ConcatModulation(Modulation):
    """``m = s``, so the decoder reads ``concat(z, alpha * s)`` (Eq. 22)."""

    def forward(self, z: Tensor, s: Optional[Tensor] = None) -> Tensor:
        z, s = self._inputs(z, s)
        return s  # Eq. 22 (the concat happens in the segmentor)


MODULATIONS: dict[str, type[Modulation]] = {
    "attention": AttentionModulation,
    "self_attention": SelfAttentionModulation,
    "add": AddModulation,
    "mul": MulModulation,
    "concat": ConcatModulation,
}

# "none" is valid everywhere but has no module: the segmentor is then the plain model.
MODULATION_NAMES: tuple[str, ...] = tuple(sorted([*MODULATIONS, "none"]))


def _check_name(name: str) -> None:
    if name not in MODULATION_NAMES:
        raise ValueError(f"unknown modulation {name!r}; valid names: {', '.join(MODULATION_NAMES)}")


def make_modulation(name: str, channels: int, **kw) -> Optional[Modulation]:
    """Build the modulation module ``name`` for ``channels``-channel latents; ``"none"`` gives None.

    Keyword arguments go to the module (``attn_dim``, ``num_heads``, ``dropout`` for the attention kinds).
    """
    _check_name(name)
    if name == "none":
        return None
    return MODULATIONS[name](channels, **kw)


def needs_signal(name: str) -> bool:
    """Whether modulation ``name`` reads the policy signal (False for ``none`` and ``self_attention``)."""
    _check_name(name)
    return name != "none" and MODULATIONS[name].needs_signal
