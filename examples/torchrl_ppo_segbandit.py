"""TorchRL's PPO tutorial pattern on ``SegBanditPooled-v0``: ``Collector``, ``ProbabilisticActor`` + ``TanhNormal``, ``GAE``,
``ClipPPOLoss`` and a replay buffer on the natively batched :class:`envs.SegBanditTorchEnv`.

The env is the RL-ready id (pooled latents (64,), channel actions in the bound, the shipped co-trained
``fcn_resnet_tiny``, frozen), natively batched as a TorchRL ``EnvBase``, with the paired reward
``r(s) - r(0)``; the agent is scored on the first 256 val scenes with its normalised score (``agents.clients``).

    python examples/torchrl_ppo_segbandit.py --seed 0      # minutes on 2 CPU cores
    python examples/torchrl_ppo_segbandit.py --quick        # seconds (used by the tests)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from agents.clients import ClientConfig, print_result, train_torchrl_ppo  # noqa: E402


def main(argv: Optional[list[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in dataclasses.fields(ClientConfig):  # one flag per field, so none goes missing
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true")
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = ClientConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ClientConfig)})
    if cfg.quick:
        cfg = dataclasses.replace(cfg, timesteps=64, num_envs=4, val_images=8, train_images=64)
    result = train_torchrl_ppo(cfg)
    print_result(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
