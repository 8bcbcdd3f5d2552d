"""Reference scores of SegBandit-v0 and SegBanditPooled-v0 and the headroom an action has (issue 14).

    python benchmarks/reference_scores.py            # 256 val scenes, writes benchmarks/results/reference_scores.json

For each id (its ``segbandit.ENV_KWARGS``, the shipped segmentor): the mean reward on the first 256 val scenes of
the zero action, uniform random actions in the bound, the shipped co-trained policy at its mean and sampled, and the
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
from segbandit._registration import ENV_KWARGS  # noqa: E402
from segbandit.reference_scores import REFERENCE_POLICIES  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "reference_scores.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    info = machine(torch.device("cpu"))
    results: dict[str, dict] = {}
    for env_id, kwargs in ENV_KWARGS.items():
        rows = {name: evaluate(name, num_images=args.num_images, batch_size=args.batch_size, **kwargs)
                for name in REFERENCE_POLICIES}
        spread = rows["zero"]["reward_std_images"]
        results[env_id] = {"scores": {k: r["reward"] for k, r in rows.items()}, "rows": rows,
                           "reward_std_images_zero": spread,
                           "headroom_policy_over_spread": rows["policy_mean"]["gain"] / spread,
                           "headroom_oracle_over_spread": rows["oracle"]["gain"] / spread}
        print(f"\n{env_id} ({kwargs or 'defaults'}), {args.num_images} val scenes; reward std across images "
              f"{spread:.4f}")
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
