"""The deterministic half of one ``SegBandit-v0`` round, written once for every caller.

    context  z = encoder(x)                                  (B, d, h, w)
    logits   = decoder(z, s)  upsampled to the label size    (B, K, H, W)    s: (B, d, h, w) dense or (B, d)
    reward   r = sum_k lambda_k r_k(logits, y)               (B,)            # Eq. 15

:class:`~envs.core.SegBanditCore` (behind the Gymnasium, TorchRL and SB3 front ends) runs it under
``torch.no_grad()``; the co-trainer (``agents.trainer.CoTrainer``) runs it with the autograd graph on the segmentor
it shares, and adds cross-entropy on the very logits the reward scored.  Gradient mode is the caller's choice; the
autocast context is this object's, so the encoder and decoder of one round always run under the same one.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Union

import torch
from torch import Tensor

from segbandit.models import Segmentor
from segbandit.policy import broadcast_action
from segbandit.rewards import REWARD_TERMS

RewardFn = Callable[[Tensor, Tensor], dict[str, Tensor]]


class BanditTransition:
    """Encode, decode with an action, and score, for a batch of images: the bandit's transition and reward.

    Args:
        segmentor: the encoder / modulation / decoder (``features``, ``decode``, ``decode_aux``).
        reward_fn: ``(logits (B, K, H, W), masks (B, H, W)) -> {term: (B,)}`` with every term of
            :data:`segbandit.rewards.REWARD_TERMS` and ``"total"`` (a :class:`segbandit.rewards.CompositeReward`).
        autocast: the one autocast context both halves run under (e.g. ``torch.autocast("cuda", torch.bfloat16)``);
            None runs in the parameters' dtype.  Rewards are always computed in float32.
    """

    def __init__(self, segmentor: Segmentor, reward_fn: RewardFn, autocast: Union[Any, None] = None) -> None:
        self.segmentor = segmentor
        self.reward_fn = reward_fn
        self.autocast = autocast if autocast is not None else contextlib.nullcontext()

    def encode(self, images: Tensor) -> dict[str, Tensor]:
        """Backbone features of images (B, 3, H, W): ``{"out": z (B, d, h, w)[, "aux": (B, c, h, w)]}`` and the
        pass-through features the decoder reads beside z (``segmentor.skips(features)``; Segformer's stages 1-3)."""
        with self.autocast:
            return self.segmentor.features(images)

    def decode(self, z: Tensor, action: Tensor, out_size: tuple[int, int], skips: tuple[Tensor, ...] = ()) -> Tensor:
        """Logits (B, K, *out_size) float32 for latents z (B, d, h, w) and an action (B, d, h, w) or (B, d).

        ``skips``: the pass-through features of the same images (``segmentor.skips(features)``; () for most)."""
        signal = broadcast_action(action, (int(z.shape[-2]), int(z.shape[-1])))  # (B, d, h, w)
        with self.autocast:
            logits = self.segmentor.decode(z, signal, out_size=out_size, skips=skips)  # (B, K, H, W)
        return logits.float()

    def score(self, z: Tensor, action: Tensor, masks: Tensor, aux_features: Union[Tensor, None] = None,
              skips: tuple[Tensor, ...] = ()) -> dict[str, Tensor]:
        """One round: decode z (B, d, h, w) with ``action`` and reward the logits against masks (B, H, W) (Eq. 15).

        Returns ``logits`` (B, K, H, W) float32 (with graph when the caller's mode records one), ``reward`` (B,)
        (the weighted total), ``reward_<term>`` (B,) for each term, ``finite`` (0-d bool: every logit finite) and,
        when ``aux_features`` is given, ``logits_aux`` (B, K, H, W) from the auxiliary head ((B, A, K, H, W) for A
        heads).  ``skips``: as in :meth:`decode`.  Rewards never carry
        a graph.
        """
        if masks.dim() != 3 or masks.shape[0] != z.shape[0]:
            raise ValueError(f"expected masks of shape ({z.shape[0]}, H, W), got {tuple(masks.shape)}")
        out_size = (int(masks.shape[-2]), int(masks.shape[-1]))
        logits = self.decode(z, action, out_size, skips)  # (B, K, H, W)
        out: dict[str, Tensor] = {"logits": logits, "finite": torch.isfinite(logits.detach()).all()}
        if aux_features is not None:
            with self.autocast:
                out["logits_aux"] = self.segmentor.decode_aux(aux_features, out_size).float()  # (B, K, H, W)
        with torch.no_grad():
            terms = self.reward_fn(logits.detach(), masks)  # float32 (B,) each, Eq. 15
        out["reward"] = terms["total"]
        out.update({f"reward_{k}": terms[k] for k in REWARD_TERMS})
        return out


__all__ = ["BanditTransition", "RewardFn"]
