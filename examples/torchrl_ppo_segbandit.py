"""TorchRL's PPO tutorial pattern on ``SegBanditPooled-v0``: ``Collector``, ``ProbabilisticActor`` + ``TanhNormal``, ``GAE``,
``ClipPPOLoss`` and a replay buffer on the natively batched :class:`envs.SegBanditTorchEnv`.

The env is the RL-ready id (pooled latents (64,), channel actions in the bound, the shipped
``fcn_resnet_tiny``, frozen), natively batched as a TorchRL ``EnvBase``, with the paired reward
``r(s) - r(0)``; the agent is scored on the first 256 val scenes with its normalised score (``agents.clients``).

    python examples/torchrl_ppo_segbandit.py --seed 0      # minutes on 2 CPU cores
    python examples/torchrl_ppo_segbandit.py --quick        # seconds (used by the tests)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agents.clients import client_parser, run_client, train_torchrl_ppo  # noqa: E402


def main(argv: Optional[list[str]] = None) -> dict:
    return run_client(client_parser(__doc__.split("\n")[0]).parse_args(argv), train_torchrl_ppo)


if __name__ == "__main__":
    main()
