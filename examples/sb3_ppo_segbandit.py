"""Pure-RL use of ``SegBandit-v0``: Stable-Baselines3 PPO learns a channel modulation for a frozen segmentor.

1. Train ``fcn_resnet18`` briefly with plain cross-entropy on the embedded digit scenes (no download).
   The segmentor's modulation is attention (Eq. 13-14), so the decoder reads a signal. The CE phase feeds it
   random per-channel signals ``s ~ N(0, 1)`` (broadcast over space, like the env's channel actions), NOT the
   zero signal: trained only on ``s = 0``, the BatchNorm of the signal projection (Eq. 13) sees zero variance,
   its running variance decays to ~0, and in eval mode ANY non-zero action is then amplified ~1/sqrt(eps) =
   316x -- measured here: every action, even N(0, 0.1) noise, gave the same collapsed reward. With random
   signals the modulation path is trained on the range of actions PPO will later send (bounded to [-1, 1]).
2. Freeze it and build the env with ``obs_mode="pooled"`` (d = 512 features) and ``action_mode="channel"``
   (one signal value per latent channel, broadcast over space), sharing the segmentor object.
3. Train SB3 ``PPO("MlpPolicy", SB3VecEnv(...))`` and print the val mean reward (Eq. 15) and val mIoU with
   the zero signal, with PPO's deterministic action before training, and after -- all as measured.

    python examples/sb3_ppo_segbandit.py            # a few minutes on 2 CPU cores
    python examples/sb3_ppo_segbandit.py --quick    # seconds, tiny (used by the tests)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from envs import SB3VecEnv, SegBanditVectorEnv  # noqa: E402
from segbandit.data import make_dataset  # noqa: E402
from segbandit.metrics import SegmentationMetric  # noqa: E402
from segbandit.models import Segmentor, build_segmentor  # noqa: E402
from segbandit.policy import broadcast_action  # noqa: E402


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--ce-steps", type=int, default=300, help="cross-entropy iterations before freezing")
    p.add_argument("--ce-batch", type=int, default=8)
    p.add_argument("--ce-lr", type=float, default=1e-3, help="Adam learning rate of the CE phase")
    p.add_argument("--ce-signal-std", type=float, default=1.0,
                   help="std of the random channel signals of the CE phase (0 = zero signal; see the docstring)")
    p.add_argument("--num-envs", type=int, default=16, help="images per env step")
    p.add_argument("--ppo-steps", type=int, default=4096, help="PPO total timesteps (images scored)")
    p.add_argument("--n-steps", type=int, default=16, help="PPO rollout length per sub-env")
    p.add_argument("--ppo-lr", type=float, default=3e-4)
    p.add_argument("--log-std-init", type=float, default=-1.0, help="initial log std of PPO's Gaussian")
    p.add_argument("--no-normalize-obs", action="store_true",
                   help="feed PPO the raw pooled latents instead of running-normalised ones (SB3 VecNormalize)")
    p.add_argument("--reward-weights", default="1,1,1,1", help="lambda of Eq. 15: iou,dice,ce,boundary")
    p.add_argument("--val-samples", type=int, default=256)
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None,
                   help="segmentor weights: loaded if the file exists (skipping the CE phase), else written after it")
    p.add_argument("--quick", action="store_true", help="a tiny run (seconds) to check that everything works")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.ce_steps, args.ce_batch = 32, 3, 4
        args.num_envs, args.n_steps, args.ppo_steps = 4, 8, 64
        args.val_samples, args.train_samples = 8, 32
    return args


def train_ce(segmentor: Segmentor, args: argparse.Namespace) -> tuple[float, float]:
    """Cross-entropy (+ 0.4 aux) under random channel signals; returns the mean loss of the first and last tenth."""
    data = make_dataset(
        "digits", "train", image_size=args.image_size, train=False, num_samples=args.train_samples, seed=args.seed
    )
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.ce_batch, shuffle=True, drop_last=True, num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = torch.optim.Adam(segmentor.parameters(), lr=args.ce_lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    segmentor.train()
    losses: list[float] = []
    while len(losses) < args.ce_steps:
        for images, masks in loader:
            b = images.shape[0]
            h, w = images.shape[-2] // 8, images.shape[-1] // 8  # fcn_resnet18 latents: output stride 8
            s = args.ce_signal_std * torch.randn(b, segmentor.latent_channels, generator=gen)  # (B, d)
            out = segmentor(images, broadcast_action(s, (h, w)))  # (B, d, h, w) signal, as the env broadcasts
            loss = F.cross_entropy(out["out"], masks, ignore_index=255)
            loss = loss + segmentor.aux_weight * F.cross_entropy(out["aux"], masks, ignore_index=255)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) % 50 == 0:
                print(f"  CE step {len(losses)}/{args.ce_steps}: loss {np.mean(losses[-50:]):.3f}", flush=True)
            if len(losses) == args.ce_steps:
                break
    tenth = max(1, len(losses) // 10)
    return float(np.mean(losses[:tenth])), float(np.mean(losses[-tenth:]))


@torch.no_grad()
def evaluate(env: SegBanditVectorEnv, act: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """Mean reward and mIoU over the env's whole (unshuffled) dataset with actions ``act(obs)``."""
    core = env.core
    metric = SegmentationMetric(core.num_classes)
    rewards = []
    obs = core.reset(seed=0)
    num_batches = len(core.dataset) // core.num_envs
    for i in range(num_batches):
        scored = core.score(torch.as_tensor(act(obs.cpu().numpy())))  # decode + reward (Eq. 15), batch stays
        metric.update(scored["logits"], core.masks)
        rewards.append(scored["reward"])
        if i + 1 < num_batches:
            obs = core.advance()
    return float(torch.cat(rewards).mean()), metric.compute()["miou"]


def main(argv: Optional[list[str]] = None) -> dict[str, float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t0 = time.perf_counter()

    segmentor = build_segmentor("fcn_resnet18", 11)
    if args.checkpoint and Path(args.checkpoint).exists():
        segmentor.load_state_dict(torch.load(args.checkpoint, weights_only=True))
        loss_first = loss_last = float("nan")
        print(f"segmentor loaded from {args.checkpoint} (CE phase skipped)", flush=True)
    else:
        loss_first, loss_last = train_ce(segmentor, args)
        print(f"CE phase: {args.ce_steps} steps of {args.ce_batch} digit scenes ({args.image_size} px, "
              f"signals N(0, {args.ce_signal_std:g}^2)) "
              f"in {time.perf_counter() - t0:.0f} s; loss {loss_first:.3f} -> {loss_last:.3f}", flush=True)
        if args.checkpoint:
            torch.save(segmentor.state_dict(), args.checkpoint)
    segmentor.eval().requires_grad_(False)  # frozen: only the policy learns from here on

    common = dict(model=segmentor, image_size=args.image_size, obs_mode="pooled", action_mode="channel",
                  reward_weights=args.reward_weights, num_workers=args.num_workers)
    val_env = SegBanditVectorEnv(num_envs=args.num_envs, split="val", shuffle=False,
                                 dataset_kwargs={"num_samples": args.val_samples}, **common)
    venv = SB3VecEnv(num_envs=args.num_envs, action_bound=1.0,
                     dataset_kwargs={"num_samples": args.train_samples, "seed": args.seed}, **common)
    venv.seed(args.seed)
    policy_env = venv if args.no_normalize_obs else VecNormalize(venv, norm_obs=True, norm_reward=False)
    model = PPO(
        "MlpPolicy", policy_env, n_steps=args.n_steps, batch_size=min(64, args.n_steps * args.num_envs), n_epochs=10,
        learning_rate=args.ppo_lr, seed=args.seed, device="cpu", verbose=0,
        policy_kwargs={"net_arch": [64, 64], "log_std_init": args.log_std_init},
    )

    def ppo_act(obs: np.ndarray) -> np.ndarray:
        if isinstance(policy_env, VecNormalize):
            obs = policy_env.normalize_obs(obs)  # learn()'s running statistics (not updated here)
        return model.predict(obs, deterministic=True)[0]

    n_val = (args.val_samples // args.num_envs) * args.num_envs
    reward_zero, miou_zero = evaluate(val_env, lambda obs: np.zeros((obs.shape[0], segmentor.latent_channels), np.float32))
    reward_before, miou_before = evaluate(val_env, ppo_act)
    t1 = time.perf_counter()
    model.learn(total_timesteps=args.ppo_steps)
    t_ppo = time.perf_counter() - t1
    reward_after, miou_after = evaluate(val_env, ppo_act)

    print(f"val ({n_val} scenes)           mean reward (Eq. 15, max 4)   mIoU")
    print(f"  zero signal s = 0          {reward_zero:10.4f}              {miou_zero:.4f}")
    print(f"  before PPO (deterministic) {reward_before:10.4f}              {miou_before:.4f}")
    print(f"  after PPO  (deterministic) {reward_after:10.4f}              {miou_after:.4f}")
    print(f"PPO: {model.num_timesteps} scored images in {t_ppo:.0f} s; total {time.perf_counter() - t0:.0f} s")
    venv.close()
    val_env.close()
    return {
        "ce_loss_first": loss_first, "ce_loss_last": loss_last,
        "reward_zero": reward_zero, "miou_zero": miou_zero,
        "reward_before": reward_before, "miou_before": miou_before,
        "reward_after": reward_after, "miou_after": miou_after,
        "ppo_timesteps": float(model.num_timesteps),
    }


if __name__ == "__main__":
    main()
