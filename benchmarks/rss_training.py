"""Reward-only segmentation in the main job: which reward trains a real segmentor, from scratch and warm-started.

Every row is one ``agents.fit.fit`` run of the embedded ``digits`` preset (fcn_resnet_tiny, 64 px DigitScenes) at one
fixed budget of ``--iters`` iterations, evaluated on the val scenes (mIoU, %), mean ± std over ``--seeds``:

- ``CE (full labels)``: the supervised reference (``--lambda-policy 0 --lambda-kl 0 --modulation none``);
- ``pixel reward``: ``--objective rss --reward-level pixel`` (r_p = 1[a_p = y_p], baseline pi(y_p | x));
- ``image``, ``image + PSR``, ``image + PSD``, ``image + PSR + PSD``: ``--objective rss --reward-level image`` with
  the group baseline or PSD, at full resolution only or with the PSR schedule 1/16 -> 1/8 -> 1/4 -> 1/1 (the issue's
  grid form; moves at 1/8, 1/4 and 1/2 of the budget, coarser scales kept); ``image + PSR (window)`` and
  ``image + PSR (window) + PSD``: the window form over 8 x 8 -> 4 x 4 -> 2 x 2 tilings -> the whole image, same moves.
  The image rows use G = 16, lr 1e-3 and the ``miou_target`` reward (``IMAGE``);
- ``latent rl_only``: the latent-space method with no CE (``--schedule rl_only``, the paper's "only RL" row).

Each objective row runs twice: from scratch, and warm-started (``--init-from``) from a short CE run of ``--warm-iters``
iterations of the same seed (the CE row then continues CE).  Every row reports its mIoU as a fraction of the CE row of
the same start, and the paired difference to ``image + PSR (window) + PSD`` with its t statistic.  Runs are cached
(``benchmarks/results/rss_training/``) and the script resumes from the cache.

    python benchmarks/rss_training.py                   # 3 seeds x 17 runs + 3 warm starts; the time is in docs/rss.md
    python benchmarks/rss_training.py --seeds 0 --starts warm --rows "image + PSD" --set lr=0.001 --set rss_samples=16
    python benchmarks/rss_training.py --iters 16 --warm-iters 8 --seeds 0 --train-size 64 --val-size 32 --cache /tmp/rss --out /tmp/rss.json   # smoke
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import RESULTS, finish, machine  # noqa: E402
from ablations import _atomic_write_json, config_key, load_cached, paired_t, parse_sets, train_and_evaluate  # noqa: E402
from agents.checkpoint import checkpoint_name  # noqa: E402
from agents.config import make_config, to_dict  # noqa: E402

CE = dict(objective="latent_rl", lambda_policy=0.0, lambda_kl=0.0, modulation="none")
PSR_SCALES = {"grid": (16, 8, 4, 1), "window": (8, 4, 2, 1)}


def psr(iters: int, mode: str = "grid") -> dict[str, Any]:
    """The PSR schedule at a budget of ``iters``: three coarser scales until 1/8, 1/4, 1/2 of it, then full size.

    ``grid`` (the issue's form): actions on 1/16, 1/8, 1/4 average-pooled logit grids; ``window`` (our variant): the
    image reward scored on 8 x 8, 4 x 4, 2 x 2 tilings of full-size maps (8, 16, 32 px windows at 64 px).
    """
    return dict(psr_scales=PSR_SCALES[mode], psr_milestones=(iters // 8, iters // 4, iters // 2), psr_mode=mode)


# The image-level rows' recipe (docs/rss.md, "Probes of 2026-12-07"): G = 16 sampled maps, AdamW at 1e-3 and the
# per-image mIoU over the target's classes; the CE and pixel rows keep the preset's lr 3e-3 and G = 4.
IMAGE = dict(objective="rss", reward_level="image", rss_samples=16, lr=1e-3, rss_reward="miou_target",
             psr_scales=(1,), psr_milestones=None)  # fmt: skip


def rows(iters: int) -> dict[str, dict[str, Any]]:
    """Row label -> config overrides (the objective rows; ``latent rl_only`` is added from scratch only)."""
    return {
        "CE (full labels)": CE,
        "pixel reward": dict(objective="rss", reward_level="pixel", psr_scales=(1,), psr_milestones=None),
        "image": {**IMAGE, "psd": False},
        "image + PSR": {**IMAGE, "psd": False, **psr(iters)},
        "image + PSD": {**IMAGE, "psd": True},
        "image + PSR + PSD": {**IMAGE, "psd": True, **psr(iters)},
        "image + PSR (window)": {**IMAGE, "psd": False, **psr(iters, "window")},
        "image + PSR (window) + PSD": {**IMAGE, "psd": True, **psr(iters, "window")},
    }


REFERENCE = "image + PSR (window) + PSD"
RL_ONLY = "latent rl_only"


def run_config(overrides: dict[str, Any], seed: int, budget: dict[str, Any]) -> dict[str, Any]:
    return to_dict(make_config("digits", **budget, **overrides, seed=seed))


def cached_run(cfg: dict[str, Any], cache: Path, keep_in: Path | None = None, log=print) -> dict[str, Any]:
    """The cached result of ``cfg``, or a fresh run (written to the cache)."""
    hit = load_cached(cache, cfg)
    if hit is not None and (keep_in is None or (keep_in / checkpoint_name(cfg["max_iters"])).exists()):
        return hit
    t = time.perf_counter()
    res = train_and_evaluate(cfg, on_end=lambda *_: {}, keep_in=keep_in)
    res.update(key=config_key(cfg), config=cfg)
    _atomic_write_json(cache / f"{res['key']}.json", res)
    log(f"  {cfg['objective']:9s} seed {cfg['seed']} init {'warm' if cfg['init_from'] else 'scratch':7s} "
        f"mIoU {100 * res['miou']:.1f}  ({time.perf_counter() - t:.0f} s)")
    return res


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def measure(args: argparse.Namespace, log=print) -> dict[str, Any]:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    budget = dict(max_iters=args.iters, train_size=args.train_size, val_size=args.val_size,
                  warmup_iters=min(100, args.iters // 8))  # fmt: skip
    extra = parse_sets(args.set)
    table = {label: {**overrides, **extra} for label, overrides in rows(args.iters).items() if label in args.rows}
    starts = [s for s in ("scratch", "warm") if s in args.starts]
    results: dict[str, dict[str, dict[int, float]]] = {s: {} for s in starts}
    t0 = time.perf_counter()
    for seed in args.seeds:
        warm_dir = cache / "warm" / f"ce{args.warm_iters}-seed{seed}"
        warm_budget = {**budget, "max_iters": args.warm_iters, "warmup_iters": min(100, args.warm_iters // 8)}
        cached_run(run_config(CE, seed, warm_budget), cache, keep_in=warm_dir, log=log)
        warm_ckpt = str(warm_dir / checkpoint_name(args.warm_iters))
        for label, overrides in table.items():
            for start, init in (("scratch", None), ("warm", warm_ckpt)):
                if start in starts:
                    res = cached_run(run_config({**overrides, "init_from": init}, seed, budget), cache, log=log)
                    results[start].setdefault(label, {})[seed] = 100 * res["miou"]
        if RL_ONLY in args.rows and "scratch" in starts:
            res = cached_run(run_config({"schedule": "rl_only", **extra}, seed, budget), cache, log=log)
            results["scratch"].setdefault(RL_ONLY, {})[seed] = 100 * res["miou"]
    return {"results": results, "budget": budget, "warm_iters": args.warm_iters, "seeds": list(args.seeds),
            "seconds": time.perf_counter() - t0}  # fmt: skip


def summarize(measured: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per start: each row's mean ± std mIoU, fraction of CE, paired delta to the reference with its t."""
    out: dict[str, list[dict[str, Any]]] = {}
    for start, table in measured["results"].items():
        ce = table.get("CE (full labels)", {})
        ref = table.get(REFERENCE, {})
        out[start] = []
        for label, per_seed in table.items():
            seeds = sorted(per_seed)
            mean, std = _mean_std([per_seed[s] for s in seeds])
            fracs = [per_seed[s] / ce[s] for s in seeds if s in ce and ce[s] > 0]
            frac = statistics.fmean(fracs) if fracs else math.nan  # no CE row run: no fraction
            deltas = [per_seed[s] - ref[s] for s in seeds if s in ref]
            d_mean, d_std = _mean_std(deltas) if deltas and label != REFERENCE else (math.nan, math.nan)
            out[start].append({"row": label, "miou": mean, "std": std, "of_ce": frac, "delta": d_mean,
                               "delta_t": paired_t(d_mean, d_std, len(deltas)), "per_seed": [per_seed[s] for s in seeds]})
    return out


def markdown(summary: dict[str, list[dict[str, Any]]], measured: dict[str, Any], background: float) -> str:
    b = measured["budget"]
    lines = [f"Budget: {b['max_iters']} iterations at batch 16, {b['train_size']} training scenes, {b['val_size']} val "
             f"scenes, seeds {measured['seeds']}; warm start = {measured['warm_iters']} CE iterations. Predicting "
             f"background everywhere: {background:.1f} % mIoU.", ""]  # fmt: skip
    for start, title in (("scratch", "from scratch"), ("warm", f"warm-started from {measured['warm_iters']} CE iterations")):
        if start not in summary:
            continue
        lines += [f"**{title}**", "", f"| row | val mIoU (%) | of CE | Δ vs {REFERENCE} (t) | per seed |",
                  "|---|---:|---:|---:|---|"]  # fmt: skip
        for r in summary[start]:
            t = "" if r["delta_t"] is None else f" ({r['delta_t']:+.1f})"
            delta = "–" if not math.isfinite(r["delta"]) else f"{r['delta']:+.1f}{t}"
            seeds = ", ".join(f"{v:.1f}" for v in r["per_seed"])
            lines.append(f"| {r['row']} | {r['miou']:.1f} ± {r['std']:.1f} | {r['of_ce']:.2f} | {delta} | {seeds} |")
        lines.append("")
    return "\n".join(lines)


def background_miou(val_size: int) -> float:
    """The val mIoU (%) of predicting background everywhere on the scenes the runs evaluate."""
    import torch

    from segbandit.data import make_dataset
    from segbandit.metrics import SegmentationMetric

    ds = make_dataset("digits", "val", image_size=64)
    metric = SegmentationMetric(11)
    for i in range(min(val_size, len(ds))):
        mask = torch.as_tensor(ds[i][1]).long()[None]
        metric.update(torch.nn.functional.one_hot(torch.zeros_like(mask), 11).permute(0, 3, 1, 2).float(), mask)
    return 100 * float(metric.compute()["miou"])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=300, help="iterations of every row (the fixed budget)")
    p.add_argument("--warm-iters", type=int, default=200, help="CE iterations of the warm start")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-size", type=int, default=2000, help="distinct training scenes")
    p.add_argument("--val-size", type=int, default=256, help="val scenes")
    p.add_argument("--cache", default=str(RESULTS / "rss_training"), help="folder of the cached runs")
    p.add_argument("--out", default=str(RESULTS / "rss_training.json"))
    p.add_argument("--rows", type=_row_list, default=[*rows(300), RL_ONLY],
                   help="comma list of row labels to run (default all)")
    p.add_argument("--starts", type=lambda v: v.split(","), default=["scratch", "warm"],
                   help="comma list of scratch, warm (default both)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a TrainConfig field for every objective row (not the warm start), e.g. --set rss_samples=16")
    return p


def _row_list(value: str) -> list[str]:
    valid = [*rows(300), RL_ONLY]
    labels = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in labels if v not in valid]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown row(s) {bad}; valid labels: {', '.join(valid)}")
    return labels


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    measured = measure(args)
    summary = summarize(measured)
    text = markdown(summary, measured, background_miou(args.val_size))
    print(text)
    finish({"machine": machine(__import__("torch").device("cpu")), **measured, "summary": summary, "markdown": text},
           args.out)
    return summary


if __name__ == "__main__":
    main()
