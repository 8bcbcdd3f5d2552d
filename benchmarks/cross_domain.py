"""Does latent-space RL generalise better under domain shift?  CE vs CE + RL trained on the day digit scenes,
evaluated on the day val scenes and on two shifted domains of the same val glyphs (night; striped backgrounds),
over seeds, beside the paper's Table 4.

Each run is the main job (:func:`agents.fit.fit`) with ``--eval-domains digits_night,digits_texture``; the CE row is
the capacity control (``--lambda-policy 0 --lambda-kl 0 --modulation none``).  Runs are cached in ``--cache`` as they
complete, so an interrupted benchmark resumes.

    python benchmarks/cross_domain.py                      # 5 seeds x {CE, CE + RL}
    python benchmarks/cross_domain.py --seeds 0 --max-iters 200
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from agents.config import make_config  # noqa: E402
from agents.continual import NO_RL  # noqa: E402
from agents.fit import fit  # noqa: E402
from benchmarks._common import RESULTS, SMOKE, finish, load_cache, load_note, machine, paired_t, save_cache  # noqa: E402

DOMAINS = ("digits_night", "digits_texture")
# The paper's Table 4 (mIoU %): FCN vs FCN + latent-space RL, trained on Cityscapes (-> Dark Zurich val, Nighttime
# Driving test) and on LIP (-> CIHP).
PAPER_TABLE4: dict[str, tuple[float, float]] = {
    "Cityscapes -> Dark Zurich val": (10.7, 15.9),
    "Cityscapes -> Nighttime Driving test": (17.9, 26.1),
    "LIP -> CIHP": (27.2, 29.0),
}
METHODS: dict[str, dict[str, Any]] = {"ce": dict(NO_RL), "ce+rl": {}}




def run_one(seed: int, method: str, max_iters: int, overrides: dict[str, Any]) -> dict[str, float]:
    """One main-job run; -> mIoU (%) per domain (``source`` = the day val scenes)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = make_config("digits", seed=seed, max_iters=max_iters, eval_every=max_iters, save_every=max_iters,
                          num_overlays=0, eval_domains=",".join(DOMAINS), out=out,
                          **{**overrides, **METHODS[method]})  # fmt: skip
        res = fit(cfg, save_checkpoints=False, log=lambda s: None)
    rows = res["domains"]
    return {"source": 100 * rows[0]["miou"], **{r["domain"]: 100 * r["miou"] for r in rows[1:]},
            "wall_time_s": res["wall_time_s"]}  # fmt: skip


def _stats(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"mean": None, "std": None}
    return {"mean": statistics.mean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def summarise(runs: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    cols = ("source", *DOMAINS)
    out: dict[str, Any] = {"methods": {}, "paired": {}}
    for m in METHODS:
        vals = [runs[f"{s}/{m}"] for s in seeds if f"{s}/{m}" in runs]
        out["methods"][m] = {c: _stats([v[c] for v in vals]) for c in cols}
        out["methods"][m]["n"] = len(vals)
        out["methods"][m]["drop"] = {c: _stats([v[c] - v["source"] for v in vals]) for c in DOMAINS}
    both = [s for s in seeds if f"{s}/ce" in runs and f"{s}/ce+rl" in runs]
    for c in cols:
        d = _stats([runs[f"{s}/ce+rl"][c] - runs[f"{s}/ce"][c] for s in both])
        out["paired"][c] = {**d, "t": paired_t(d["mean"], d["std"], len(both)), "n": len(both)}
    return out


def _pm(s: dict[str, Any]) -> str:
    return "–" if s["mean"] is None else f"{s['mean']:.1f} ± {s['std']:.1f}"


def markdown(summary: dict[str, Any]) -> str:
    cols = ("source", *DOMAINS)
    lines = ["| method | seeds | day val (source) | night | texture | night - day | texture - day |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m, r in summary["methods"].items():
        lines.append(f"| {m} | {r['n']} | " + " | ".join(_pm(r[c]) for c in cols) + " | "
                     + " | ".join(_pm(r["drop"][c]) for c in DOMAINS) + " |")
    cells = []
    for c in cols:
        d = summary["paired"][c]
        t = "" if d.get("t") is None else (f", t = {d['t']:+.1f}" if math.isfinite(d["t"]) else ", t = ±inf")
        cells.append("–" if d["mean"] is None else f"{d['mean']:+.1f} ± {d['std']:.1f}{t}")
    lines.append(f"| CE + RL - CE (paired) | {summary['paired']['source']['n']} | " + " | ".join(cells) + " | | |")
    lines += ["", "The paper's Table 4 (mIoU %):", "", "| transfer | FCN | FCN + latent RL | gain |",
              "|---|---:|---:|---:|"]
    for k, (a, b) in PAPER_TABLE4.items():
        lines.append(f"| {k} | {a:.1f} | {b:.1f} | {b - a:+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--max-iters", type=int, default=700)
    p.add_argument("--smoke", action="store_true", help="32 px, 64 scenes, batch 4: a check that it runs, no result")
    p.add_argument("--cache", default=str(RESULTS / "cross_domain_runs.json"))
    p.add_argument("--out", default=str(RESULTS / "cross_domain.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    seeds = [int(s) for s in args.seeds.split(",")]
    key = f"max_iters={args.max_iters}" + (",smoke" if args.smoke else "")
    cache = load_cache(args.cache, key)
    runs = cache["runs"]
    results: dict[str, Any] = {"machine": machine(torch.device("cpu")), "budget": key}
    t0 = time.time()
    for seed in seeds:
        for m in METHODS:
            if f"{seed}/{m}" in runs:
                continue
            runs[f"{seed}/{m}"] = r = run_one(seed, m, args.max_iters, SMOKE if args.smoke else {})
            save_cache(args.cache, cache)
            print(f"seed {seed} {m}: day {r['source']:.2f} night {r['digits_night']:.2f} "
                  f"texture {r['digits_texture']:.2f} ({r['wall_time_s']:.0f} s)", flush=True)
    results["wall_time_s"] = time.time() - t0
    results["summary"] = summarise(runs, seeds)
    print(markdown(results["summary"]))
    print(load_note(results["machine"]))
    finish(results, args.out)


if __name__ == "__main__":
    main()
