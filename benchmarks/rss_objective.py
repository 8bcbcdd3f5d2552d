"""Does the reward reach the pixels?  The RSS objectives' credit assignment, measured on DigitScenes masks.

The policy here is a free logit map per val scene (no network): each variant of ``segbandit.rss.rss_loss`` —
pixel-level reward, image-level reward (``--reward``, an ``IMAGE_REWARDS`` name) with the group baseline, with PSD,
each without PSR and with the PSR schedule over factors 8 -> 4 -> 2 -> 1 in its grid form (1/8 -> 1/4 -> 1/2 -> 1/1
logit grids) and, at the image level, its window form (8 x 8 -> 4 x 4 -> 2 x 2 tilings -> the whole image) —
optimises the same logits from zero with Adam for ``--iters`` steps, and the mIoU of argmax(logits) against the
masks is reported (mean ± std over ``--seeds``), beside predicting background everywhere.  It isolates the objective from the segmentor: it says how well each reward's gradient finds the
right label per pixel, not how well a network generalises from it (that is the main job's measurement).

    python benchmarks/rss_objective.py                          # 3 seeds, 16 scenes of 32 px, 300 steps, the miou reward
    python benchmarks/rss_objective.py --reward miou_target --out benchmarks/results/rss_objective_miou_target.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from _common import RESULTS, finish, machine  # noqa: E402
from segbandit.data import make_dataset  # noqa: E402
from segbandit.metrics import SegmentationMetric  # noqa: E402
from segbandit.rss import RSSConfig, ScaleSchedule, rss_loss  # noqa: E402

VARIANTS: dict[str, dict] = {
    "pixel": dict(level="pixel"),
    "image, group baseline": dict(level="image", psd=False),
    "image, PSD": dict(level="image", psd=True),
}


def masks(n: int, size: int) -> torch.Tensor:
    """The first ``n`` val masks of DigitScenes at ``size`` px: (n, size, size) int64."""
    ds = make_dataset("digits", "val", image_size=size, num_samples=n)
    return torch.stack([torch.as_tensor(ds[i][1]).long() for i in range(n)])


def miou(pred: torch.Tensor, target: torch.Tensor, k: int) -> float:
    metric = SegmentationMetric(k)
    metric.update(pred, target)
    return float(metric.compute()["miou"])


# PSR: None (full size only) or a PSR_MODES name; the pixel level has only the grid form.
PSR_FORMS: tuple[str | None, ...] = (None, "grid", "window")


def run(target: torch.Tensor, k: int, variant: dict, psr: str | None, iters: int, seed: int, samples: int,
        reward: str = "miou") -> float:  # fmt: skip
    torch.manual_seed(seed)
    logits = torch.zeros(target.shape[0], k, *target.shape[1:], requires_grad=True)  # (B, K, H, W)
    opt = torch.optim.Adam([logits], lr=0.1)
    step = iters // 4
    sched = ScaleSchedule(factors=(8, 4, 2, 1), milestones=(step, 2 * step, 3 * step)) if psr else None
    cfg = RSSConfig(num_samples=samples, reward=reward, psr_mode=psr or "grid", **variant)
    for it in range(iters):
        loss, _ = rss_loss(logits, target, cfg, factors=sched.active() if sched else (1,), num_classes=k)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched:
            sched.step(it)
    return miou(logits.detach().argmax(1), target, k)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--samples", type=int, default=4, help="G sampled maps per scene")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reward", default="miou", help="the image-level reward (segbandit.rss.IMAGE_REWARDS)")
    p.add_argument("--out", default=str(RESULTS / "rss_objective.json"))
    a = p.parse_args()
    torch.set_num_threads(1)
    k = 11
    target = masks(a.scenes, a.size)
    background = miou(torch.zeros_like(target), target, k)
    results: dict = {"machine": machine(torch.device("cpu")), "args": vars(a), "background_miou": background, "rows": {}}
    print(f"background everywhere: mIoU {100 * background:.2f}")
    for name, variant in VARIANTS.items():
        for psr in PSR_FORMS:
            if psr == "window" and variant["level"] == "pixel":
                continue
            scores = [run(target, k, variant, psr, a.iters, s, a.samples, a.reward) for s in range(a.seeds)]
            label = f"{name}{'' if psr is None else ', PSR' if psr == 'grid' else ', PSR (window)'}"
            results["rows"][label] = scores
            sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
            print(f"{label:36s} mIoU {100 * statistics.mean(scores):6.2f} ± {100 * sd:.2f}")
    finish(results, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
