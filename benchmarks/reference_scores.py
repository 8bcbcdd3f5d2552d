"""Reference scores of SegBandit-v0 and SegBanditPooled-v0 and the headroom an action has (issue 14).

    python benchmarks/reference_scores.py            # 256 val scenes, writes benchmarks/results/reference_scores.json

For each id (its ``segbandit.ENV_KWARGS``, the shipped segmentor): the mean reward on the first 256 val scenes of
the zero action, uniform random actions in the bound, the shipped policy at its mean and sampled, and the
label-aware oracle; the std of the reward across images; and the headroom (policy at its mean - zero, oracle -
zero) in units of that spread.  The dict it prints is what ``segbandit.reference_scores.REFERENCE_SCORES`` holds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._common import RESULTS, finish, machine  # noqa: E402
from envs.evaluation import evaluate  # noqa: E402
from segbandit._registration import ENV_ID, ENV_KWARGS, POOLED_ENV_ID  # noqa: E402
from segbandit.reference_scores import REFERENCE_POLICIES  # noqa: E402


def policy_stats(kwargs: dict, n: int) -> dict:
    """mean |mu|, max |mu|, mean sigma and the mean over channels of mu's std across images, on n val scenes."""
    from envs.core import SegBanditConfig, SegBanditCore

    core = SegBanditCore(n, SegBanditConfig(**{**kwargs, "split": "val", "shuffle": False, "cache_latents": False}))
    core.reset(0)
    with torch.no_grad():
        mu, log_std = core.policy(core.latents)  # (n, d) each
    return {"mu_abs_mean": round(float(mu.abs().mean()), 3), "mu_abs_max": round(float(mu.abs().max()), 3),
            "sigma_mean": round(float(log_std.exp().mean()), 3), "mu_std_images": round(float(mu.std(0).mean()), 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "reference_scores.json"))
    parser.add_argument("--segmentor", default="auto", help="weights to score (default: the shipped ones)")
    parser.add_argument("--ids", default=f"{ENV_ID},{POOLED_ENV_ID}", help="comma list of latent-bandit env ids")
    parser.add_argument("--policies", default=",".join(REFERENCE_POLICIES), help="comma list of reference policies")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    info = machine(torch.device("cpu"))
    results: dict[str, dict] = {}
    for env_id in args.ids.split(","):
        kwargs = {**ENV_KWARGS[env_id], "segmentor": args.segmentor}
        rows = {name: evaluate(name, num_images=args.num_images, batch_size=args.batch_size, **kwargs)
                for name in args.policies.split(",")}
        spread = rows["zero"]["reward_std_images"]
        results[env_id] = {"scores": {k: r["reward"] for k, r in rows.items()}, "rows": rows,
                           "reward_std_images_zero": spread,
                           **{f"headroom_{k}_over_spread": rows[k]["gain"] / spread for k in ("policy_mean", "oracle")
                              if k in rows},
                           "policy_stats": policy_stats(kwargs, args.batch_size)}
        print(f"\n{env_id} ({kwargs}), {args.num_images} val scenes; reward std across images {spread:.4f}; "
              f"policy on {args.batch_size} val scenes: {results[env_id]['policy_stats']}")
        print("| policy | mean reward | paired gain over zero (± s.e.) | gain / image spread |")
        print("| --- | ---: | ---: | ---: |")
        for name, r in rows.items():
            print(f"| {name} | {r['reward']:.4f} | {r['gain']:+.4f} ± {r['gain_se']:.4f} | {r['gain'] / spread:+.3f} |")
    scores = {env_id: {k: round(v, 4) for k, v in r["scores"].items()} for env_id, r in results.items()}
    print("\nREFERENCE_SCORES =", json.dumps(scores, indent=4))
    payload = {"command": "python benchmarks/reference_scores.py " + " ".join(argv or sys.argv[1:]),
               "wall_s": time.time() - t0, **info, "results": results, "reference_scores": scores}
    print(f"wall {time.time() - t0:.0f} s")
    finish(payload, args.out)
    return payload


if __name__ == "__main__":
    main()
