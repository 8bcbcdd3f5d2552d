"""Eq. 6 in one module: the co-training loss over one bandit step's tensordict, TorchRL style.

    L = loss_ce + loss_aux + loss_policy + loss_kl + loss_critic + loss_entropy
      = L_CE(logits, y) + w_aux L_CE(aux, y) + lambda_P L_Policy + lambda_KL KL(pi_ref || pi_phi)     (Eq. 2, 4-6)

Every ``loss_*`` entry :class:`CoTrainingLoss` returns is already weighted and ``loss`` is their sum, as in
TorchRL's ``loss_*`` convention.  The weights live here and nowhere else: ``w_aux`` (``aux_weight``) scales the
auxiliary head's CE; ``lambda_P`` (``lambda_policy``) scales the clipped-PPO term (Eq. 4) of the policy loss;
``lambda_KL`` (``lambda_kl``) is the KL coefficient of the TorchRL loss this module builds (``LatentPPOLoss``'s
``lambda_kl``, ``KLPENPPOLoss``'s fixed beta, which that loss folds into its objective term), so ``loss_kl`` arrives
weighted.  A critic's value loss (``a2c``, ``reinforce``) and an entropy bonus, when the algorithm has them, are
added with the coefficients of their TorchRL loss.

It reads what one step of the bandit produced (:meth:`agents.trainer.CoTrainer.rollout`): ``observation`` (the
detached latents z), ``action`` s, ``loc`` / ``scale`` (the policy's parameters *with their graph*: the loss reuses
them instead of running the policy again), ``reward`` (B,), ``logits`` (and ``logits_aux``) (B, K, H, W) and
``mask`` (B, H, W).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from agents.objective import PolicyObjective
from segbandit.models import aux_heads
from segbandit.constants import IGNORE_INDEX
from segbandit.distributed import SINGLE, DistInfo, all_reduce_sum

POLICY_TERMS: tuple[str, ...] = ("loss_policy", "loss_kl", "loss_critic", "loss_entropy")
LOSS_KEYS: tuple[str, ...] = ("loss", "loss_ce", "loss_aux", *POLICY_TERMS)
OBJECTIVE_DIAGNOSTICS: tuple[str, ...] = (
    "ratio", "clip_fraction", "kl", "approx_kl", "entropy", "advantage", "baseline", "log_ratio_max", "nonfinite_ratio",
)  # fmt: skip


class CoTrainingLoss(nn.Module):
    """L_CE (+ w_aux L_CE(aux)) + lambda_P L_Policy + lambda_KL KL (Eq. 6) of one batch, as weighted ``loss_*`` terms.

    Args:
        objective: the policy objective (baseline, EMA reference, TorchRL loss with ``lambda_kl``), Eq. 3-5, 16-19.
        num_classes: K.
        lambda_policy: lambda_P of Eq. 6.
        aux_weight: weight of the auxiliary head's CE (0 = none).
        class_weight: per-class CE weights (K,), mmsegmentation's ``class_weight``; None = plain CE.
        dist_info: the job's processes.  With several, the CE is the sum over this rank's pixels divided by the
            global number of labelled pixels over the world size, so that DDP's gradient average equals the CE of
            the global batch.
    """

    def __init__(
        self,
        objective: PolicyObjective,
        num_classes: int,
        *,
        lambda_policy: float = 1.0,
        aux_weight: float = 0.0,
        class_weight: Tensor | None = None,
        dist_info: DistInfo = SINGLE,
    ) -> None:
        super().__init__()
        if class_weight is not None and tuple(class_weight.shape) != (num_classes,):
            raise ValueError(f"class_weight must have one value per class ({num_classes}), got {tuple(class_weight.shape)}")
        self.objective = objective
        self.num_classes = int(num_classes)
        self.lambda_policy = float(lambda_policy)
        self.aux_weight = float(aux_weight)
        self.dist_info = dist_info
        self.register_buffer("class_weight", class_weight, persistent=False)

    @property
    def lambda_kl(self) -> float:
        """lambda_KL of Eq. 6 (the objective's TorchRL loss applies it)."""
        return self.objective.lambda_kl

    def cross_entropy(self, logits: Tensor, masks: Tensor, image_weight: Tensor | None = None) -> Tensor:
        """L_CE (Eq. 2): mean over the labelled pixels (class-weighted when configured) of the global batch; 0-d.

        ``image_weight`` (B,) scales each image's pixel losses (PLOP's adaptive factor) without changing the
        denominator, as PLOP's ``classif_adaptive_factor * loss`` does.
        """
        weight = self.class_weight
        if not self.dist_info.enabled and image_weight is None:
            return F.cross_entropy(logits.float(), masks, weight=weight, ignore_index=IGNORE_INDEX)
        valid = masks != IGNORE_INDEX  # (B, H, W)
        count = (weight[masks.clamp_max(self.num_classes - 1)] * valid).sum() if weight is not None else valid.sum()
        total = all_reduce_sum(count.float().reshape(1), self.dist_info) if self.dist_info.enabled else count.float()
        denom = (total / self.dist_info.world_size).clamp_min(1e-6).reshape(())
        pixels = F.cross_entropy(logits.float(), masks, weight=weight, ignore_index=IGNORE_INDEX, reduction="none")
        if image_weight is not None:
            pixels = pixels * image_weight.float()[:, None, None]  # (B, H, W)
        return pixels.sum() / denom

    def forward(self, step: Mapping[str, Any], *, ce: bool = True, rl: bool = True,
                extra: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The weighted terms of Eq. 6 for one step; ``ce`` / ``rl`` switch the supervised and the policy halves.

        Returns ``loss`` (their sum, with graph), ``loss_ce``, ``loss_aux``, ``loss_policy``, ``loss_kl``,
        ``loss_critic``, ``loss_entropy`` (0-d; zero for a half that is off) and the objective's detached diagnostics
        :data:`OBJECTIVE_DIAGNOSTICS` (NaN when ``rl`` is off).  ``step["ce_weight"]`` (B,), when present, weights
        each image's CE; ``extra``: further weighted ``loss_*`` terms (a continual method's distillation) added to the
        sum and returned beside the others.
        """
        device = step["logits"].device
        zero = torch.zeros((), device=device)
        out: dict[str, Tensor] = {k: zero for k in LOSS_KEYS}
        out.update({k: torch.full((), math.nan, device=device) for k in OBJECTIVE_DIAGNOSTICS})
        if ce:
            w = step.get("ce_weight")
            out["loss_ce"] = self.cross_entropy(step["logits"], step["mask"], w)  # Eq. 2
            aux = step.get("logits_aux")
            if aux is not None and self.aux_weight > 0:  # (B, K, H, W), or (B, A, K, H, W): each of A heads weighted
                out["loss_aux"] = self.aux_weight * sum(self.cross_entropy(a, step["mask"], w) for a in aux_heads(aux))
        if rl:
            loc, scale = step["loc"], step["scale"]  # (B, d) each, with graph
            pol = self.objective(
                step["observation"], step["action"].detach(), step["reward"].detach(), loc.detach(), scale.detach(),
                current=(loc, scale), baseline_values=step.get("baseline_value"),
            )  # Eq. 3-5, 16-18; loss_kl carries lambda_KL
            out["loss_policy"] = self.lambda_policy * pol["loss_policy"]  # Eq. 6
            for k in ("loss_kl", "loss_critic", "loss_entropy"):
                out[k] = pol[k]
            for k in OBJECTIVE_DIAGNOSTICS:
                out[k] = pol[k].detach().float()
        loss = out["loss_ce"] + out["loss_aux"]
        for k in POLICY_TERMS:
            loss = loss + out[k]
        for k, v in (extra or {}).items():
            out[k] = v
            loss = loss + v
        out["loss"] = loss  # Eq. 6 (+ the extra terms)
        return out


__all__ = ["CoTrainingLoss", "LOSS_KEYS", "OBJECTIVE_DIAGNOSTICS", "POLICY_TERMS"]
