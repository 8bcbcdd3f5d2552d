"""What does one forward of each segmentor cost, with the attention modulation and the latent policy?

Counted, not timed: floating-point operations of one forward per image, with
``torch.utils.flop_counter.FlopCounterMode`` on the meta device (shapes only, nothing is computed, so the count is
the same on any machine).  One forward is what evaluating an image costs: ``encode`` -> the policy's
``(mu, log sigma)`` -> ``decode(z, s)`` with the attention modulation (Eq. 13-14) -> logits at the image size, plus
the auxiliary head when the segmentor has one.  Training costs about three times that (forward + backward).

    python benchmarks/bench_model_cost.py                      # the digits preset's settings, 64 px
    python benchmarks/bench_model_cost.py --size 128 --models fcn_resnet_tiny,fcn_resnet18

Each model is counted with the attention width, heads and policy width of the preset that trains it
(``fcn_resnet_tiny``: the ``digits`` preset; ``fcn_resnet18``: ``digits-fcn-r18``); the latent shape, the
parameter count and the share of the modulation and the policy are printed beside the total.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from _common import RESULTS, finish, machine  # noqa: E402
from agents.config import PRESETS  # noqa: E402
from segbandit.models import build_segmentor  # noqa: E402
from segbandit.policy import LatentPolicy  # noqa: E402

MODEL_PRESETS: dict[str, str] = {"fcn_resnet_tiny": "digits", "fcn_resnet18": "digits-fcn-r18"}


def preset_model_kwargs(model: str) -> dict[str, Any]:
    """attn_dim, num_heads, policy_hidden, policy_blocks, policy_pool of the preset that trains ``model``."""
    preset = PRESETS[MODEL_PRESETS.get(model, "digits")]
    from agents.config import TrainConfig

    cfg = TrainConfig(**{**preset, "model": model})
    return {k: getattr(cfg, k) for k in ("attn_dim", "num_heads", "policy_hidden", "policy_blocks", "policy_pool")}


def forward_flops(
    model: str,
    num_classes: int = 11,
    image_size: int = 64,
    modulation: str = "attention",
    attn_dim: Optional[int] = None,
    num_heads: int = 8,
    policy_hidden: int = 256,
    policy_blocks: int = 4,
    policy_pool: int = 4,
    aux_loss: bool = True,
) -> dict[str, Any]:
    """FLOPs of one forward of ``model`` on one ``image_size``-px image with ``modulation`` and the latent policy.

    Returns ``total`` (encode + policy + decode + aux head), ``modulation``, ``policy`` (both FLOPs), ``params``
    (segmentor + policy) and ``latent`` (d, h, w).  Counted on the meta device: no weights are allocated.
    """
    with torch.device("meta"):
        seg = build_segmentor(model, num_classes, modulation=modulation, attn_dim=attn_dim, num_heads=num_heads,
                              aux_loss=aux_loss).eval()
        policy = LatentPolicy(seg.latent_channels, policy_hidden, policy_blocks, policy_pool).eval()
        x = torch.empty(1, 3, image_size, image_size)
        total, part = FlopCounterMode(display=False), FlopCounterMode(display=False)
        with torch.no_grad(), total:
            feats = seg.features(x)
            z = feats["out"]  # (1, d, h, w)
            with part:
                mu, _ = policy(z)  # (1, d)
            policy_flops = part.get_total_flops()
            s = mu[:, :, None, None].expand_as(z)  # s = mu, the deterministic action
            with part:
                m = seg.modulation(z, s) if seg.modulation is not None else None
            modulation_flops = part.get_total_flops() if m is not None else 0
            seg.decode(z, s, out_size=(image_size, image_size))  # runs the modulation again: subtracted below
            if seg.aux_classifier is not None:
                seg.decode_aux(feats["aux"], (image_size, image_size))
        params = sum(p.numel() for p in seg.parameters()) + sum(p.numel() for p in policy.parameters())
        return {
            "total": total.get_total_flops() - modulation_flops,
            "modulation": modulation_flops,
            "policy": policy_flops,
            "params": params,
            "latent": tuple(int(v) for v in z.shape[1:]),
        }


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="FLOPs of one forward per image with attention modulation and policy")
    p.add_argument("--size", type=int, default=64, help="image side in px")
    p.add_argument("--models", default="fcn_resnet_tiny,fcn_resnet18", help="comma-separated segmentor names")
    p.add_argument("--out", default=str(RESULTS / "bench_model_cost.json"))
    args = p.parse_args(argv)
    rows = []
    print(f"one forward per {args.size}x{args.size} image, attention modulation + latent policy (s = mu), aux head")
    print(f"{'model':18s} {'MFLOP':>8s} {'modulation':>11s} {'policy':>8s} {'params (M)':>11s}  latent (d, h, w)")
    for name in args.models.split(","):
        kw = preset_model_kwargs(name)
        r = forward_flops(name, image_size=args.size, **kw)
        rows.append({"model": name, "image_size": args.size, **kw, **r})
        print(f"{name:18s} {r['total'] / 1e6:8.0f} {r['modulation'] / 1e6:11.1f} {r['policy'] / 1e6:8.1f} "
              f"{r['params'] / 1e6:11.2f}  {r['latent']}")
    if len(rows) > 1:
        print(f"{rows[-1]['model']} / {rows[0]['model']}: {rows[-1]['total'] / rows[0]['total']:.1f}x the FLOPs")
    results = {"machine": machine(torch.device("cpu")), "rows": rows}
    finish(results, args.out)
    return results


if __name__ == "__main__":
    main()
