"""Stable-Baselines3 on ``SegBanditPooled-v0``: PPO, SAC or A2C learns the channel modulation of the shipped segmentor.

The env is the RL-ready id (pooled latents (64,), channel actions in the bound, the shipped
``fcn_resnet_tiny``, frozen), natively batched behind :class:`envs.SB3VecEnv`, with the paired reward
``r(s) - r(0)``; the agent is scored on the first 256 val scenes with its normalised score (``agents.clients``).

    python examples/sb3_ppo_segbandit.py --algo ppo --seed 0      # minutes on 2 CPU cores
    python examples/sb3_ppo_segbandit.py --quick                  # seconds (used by the tests)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agents.clients import SB3_ALGOS, client_parser, run_client, train_sb3  # noqa: E402


def main(argv: Optional[list[str]] = None) -> dict:
    p = client_parser(__doc__.split("\n")[0])
    p.add_argument("--algo", choices=SB3_ALGOS, default="ppo")
    args = p.parse_args(argv)
    return run_client(args, lambda cfg: train_sb3(args.algo, cfg))


if __name__ == "__main__":
    main()
