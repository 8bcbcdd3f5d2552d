"""RL clients on ``SegBanditPooled-v0``, as their libraries' users write them: Stable-Baselines3 (PPO, SAC, A2C on
:class:`envs.SB3VecEnv`) and TorchRL's PPO tutorial pattern (``Collector``, ``ProbabilisticActor`` + ``TanhNormal``,
``GAE``, ``ClipPPOLoss``, a replay buffer) on :class:`envs.SegBanditTorchEnv`.

Each trains on the paired reward ``r(s) - r(0)`` of the shipped co-trained segmentor (frozen), records its training
curve (mean paired reward per rollout against scored images), and is scored before and after on the first val scenes
by :func:`envs.evaluation.evaluate` with its normalised score (zero action 0, the shipped policy 100).
``examples/sb3_ppo_segbandit.py`` and ``examples/torchrl_ppo_segbandit.py`` run them; ``benchmarks/clients.py``
runs them for several seeds beside CleanRL's own script.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn

from envs import SB3VecEnv, SegBanditTorchEnv
from envs.evaluation import evaluate
from segbandit import ENV_KWARGS, POOLED_ENV_ID

SB3_ALGOS: tuple[str, ...] = ("ppo", "sac", "a2c")


@dataclass
class ClientConfig:
    """One client run: its budget (scored training images), batch of images per env step, seed, learning rate and the
    val scenes it is scored on; ``train_images`` distinct training scenes."""

    timesteps: int = 20_000
    num_envs: int = 16
    seed: int = 0
    lr: float = 3e-4
    val_images: int = 256
    train_images: int = 8000
    quick: bool = False  # tiny rollouts (tests)


def quick_config(cfg: ClientConfig) -> ClientConfig:
    """``cfg`` as a seconds-long smoke run when ``cfg.quick`` (64 images, 4 envs, 8 val scenes), else ``cfg``."""
    return dataclasses.replace(cfg, timesteps=64, num_envs=4, val_images=8, train_images=64) if cfg.quick else cfg


def env_kwargs(cfg: ClientConfig) -> dict[str, Any]:
    """The pooled id's keywords (paired reward, episodes of 16 images) with the run's training scenes."""
    return {**ENV_KWARGS[POOLED_ENV_ID], "dataset_kwargs": {"num_samples": cfg.train_images, "seed": cfg.seed}}


def score_on_val(act: Callable[[np.ndarray], np.ndarray], cfg: ClientConfig) -> dict[str, Any]:
    return evaluate(act, num_images=cfg.val_images, batch_size=min(64, cfg.val_images), **ENV_KWARGS[POOLED_ENV_ID])


def client_result(name: str, cfg: ClientConfig, before: dict, after: dict, frames: int, seconds: float,
            curve: list[tuple[int, float]]) -> dict[str, Any]:
    return {"client": name, "seed": cfg.seed, "timesteps": int(frames), "train_s": seconds,
            "reward_zero": after["reward_zero"], "reward_before": before["reward"], "reward_after": after["reward"],
            "gain_before": before["gain"], "gain_after": after["gain"], "gain_se": after["gain_se"],
            "score_before": before["normalized_score"], "score_after": after["normalized_score"], "curve": curve}


def train_sb3(algo: str, cfg: ClientConfig) -> dict[str, Any]:
    """Stable-Baselines3 ``algo`` (one of :data:`SB3_ALGOS`) with its MlpPolicy; gamma = 0 (a bandit)."""
    from stable_baselines3 import A2C, PPO, SAC
    from stable_baselines3.common.callbacks import BaseCallback

    if algo not in SB3_ALGOS:
        raise ValueError(f"unknown algo {algo!r}; valid names: {', '.join(SB3_ALGOS)}")
    venv = SB3VecEnv(num_envs=cfg.num_envs, **env_kwargs(cfg))
    venv.seed(cfg.seed)
    common = dict(learning_rate=cfg.lr, seed=cfg.seed, device="cpu", verbose=0)
    if algo == "ppo":
        n_steps = 8 if cfg.quick else 64
        model = PPO("MlpPolicy", venv, n_steps=n_steps, batch_size=min(256, n_steps * cfg.num_envs), n_epochs=10,
                    gamma=0.0, gae_lambda=0.0, policy_kwargs={"net_arch": [64, 64], "log_std_init": -1.0}, **common)
    elif algo == "sac":
        model = SAC("MlpPolicy", venv, gamma=0.0, learning_starts=min(1000, cfg.timesteps // 4), batch_size=256,
                    policy_kwargs={"net_arch": [64, 64]}, **common)
    else:
        model = A2C("MlpPolicy", venv, n_steps=8, gamma=0.0, gae_lambda=1.0,
                    policy_kwargs={"net_arch": [64, 64], "log_std_init": -1.0}, **common)
    curve: list[tuple[int, float]] = []

    chunk = max(cfg.num_envs, min(1024, cfg.timesteps // 8))

    class Curve(BaseCallback):  # the mean paired reward of every env step, averaged per chunk (1,024) scored images
        def __init__(self) -> None:
            super().__init__()
            self.buffer: list[float] = []

        def _on_step(self) -> bool:
            self.buffer.append(float(np.mean(self.locals["rewards"])))
            if len(self.buffer) * cfg.num_envs >= chunk:
                curve.append((int(self.num_timesteps), float(np.mean(self.buffer))))
                self.buffer = []
            return True

    def act(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    before = score_on_val(act, cfg)
    t0 = time.perf_counter()
    model.learn(total_timesteps=cfg.timesteps, callback=Curve())
    seconds = time.perf_counter() - t0
    after = score_on_val(act, cfg)
    venv.close()
    return client_result(f"sb3_{algo}", cfg, before, after, model.num_timesteps, seconds, curve)


# TanhNormal's initial pre-tanh scale: 3 tanh(x) near 0 moves by 3 sigma_x, so 0.12 explores with sigma ~0.37 in
# action units, SB3 PPO's exp(log_std_init = -1) (TorchRL's default, 1.0, explores nearly uniformly over the bound)
TORCHRL_INIT_SCALE = 0.12


def train_torchrl_ppo(cfg: ClientConfig, frames_per_batch: int = 1024, epochs: int = 10,
                      minibatch: int = 256) -> dict[str, Any]:
    """TorchRL's PPO tutorial pattern on the natively batched TorchRL env (gamma = 0: a bandit)."""
    from torchrl.collectors import Collector
    from torchrl.data import LazyTensorStorage, ReplayBuffer
    from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement
    from torchrl.envs.utils import ExplorationType, set_exploration_type
    from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
    from torchrl.objectives import ClipPPOLoss
    from torchrl.objectives.value import GAE

    if cfg.quick:
        frames_per_batch, epochs, minibatch = 32, 2, 16
    torch.manual_seed(cfg.seed)
    env = SegBanditTorchEnv(num_envs=cfg.num_envs, **env_kwargs(cfg))
    env.set_seed(cfg.seed)
    d = env.observation_spec["observation"].shape[-1]
    spec = env.action_spec
    actor_net = nn.Sequential(MLP(in_features=d, out_features=2 * d, num_cells=[64, 64], activation_class=nn.Tanh),
                              NormalParamExtractor(scale_mapping=f"biased_softplus_{TORCHRL_INIT_SCALE}"))
    actor = ProbabilisticActor(
        TensorDictModule(actor_net, in_keys=["observation"], out_keys=["loc", "scale"]),
        spec=spec, in_keys=["loc", "scale"], distribution_class=TanhNormal,
        distribution_kwargs={"low": spec.space.low[0], "high": spec.space.high[0]}, return_log_prob=True,
    )
    critic = ValueOperator(MLP(in_features=d, out_features=1, num_cells=[64, 64], activation_class=nn.Tanh),
                           in_keys=["observation"])
    collector = Collector(env, actor, frames_per_batch=frames_per_batch, total_frames=cfg.timesteps)
    advantage = GAE(gamma=0.0, lmbda=0.95, value_network=critic, average_gae=True)
    loss_module = ClipPPOLoss(actor, critic, clip_epsilon=0.2, entropy_coeff=1e-4, critic_coeff=1.0)
    buffer = ReplayBuffer(storage=LazyTensorStorage(frames_per_batch), sampler=SamplerWithoutReplacement(),
                          batch_size=minibatch)
    optim = torch.optim.Adam(loss_module.parameters(), lr=cfg.lr)

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            td = actor(TensorDict({"observation": torch.as_tensor(obs)}, batch_size=[obs.shape[0]]))
        return td["action"].numpy()

    before = score_on_val(act, cfg)
    t0, frames, curve = time.perf_counter(), 0, []
    for data in collector:  # frames_per_batch scored images
        frames += data.numel()
        curve.append((frames, float(data["next", "reward"].mean())))
        for _ in range(epochs):
            advantage(data)
            buffer.extend(data.reshape(-1))
            for _ in range(frames_per_batch // minibatch):
                out = loss_module(buffer.sample())
                loss = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
                optim.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(loss_module.parameters(), 1.0)
                optim.step()
    collector.shutdown()
    seconds = time.perf_counter() - t0
    after = score_on_val(act, cfg)
    env.close()
    return client_result("torchrl_ppo", cfg, before, after, frames, seconds, curve)


def client_parser(description: str) -> argparse.ArgumentParser:
    """A client script's flags: one per :class:`ClientConfig` field (so none goes missing), ``--threads``, ``--json``."""
    p = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(ClientConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true")
        else:
            p.add_argument(flag, type=type(f.default), default=f.default)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the result here")
    return p


def run_client(args: argparse.Namespace, train: Callable[[ClientConfig], dict[str, Any]]) -> dict[str, Any]:
    """Set the threads, build the :class:`ClientConfig` (``--quick``: a tiny run), train, print, write ``--json``."""
    torch.set_num_threads(args.threads)
    cfg = quick_config(ClientConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ClientConfig)}))
    result = train(cfg)
    print_result(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_result(result: dict[str, Any]) -> None:
    """The run's before / after lines."""
    print(f"{result['client']} seed {result['seed']}: {result['timesteps']} scored images in {result['train_s']:.0f} s")
    print("val scenes       mean reward (Eq. 15, max 4)  gain over s = 0  normalised score")
    for name in ("before", "after"):
        score = result[f"score_{name}"]
        gain = result[f"gain_{name}"]
        print(f"  {name:6s} training  {result[f'reward_{name}']:10.4f}   {gain:+.4f}   "
              f"{'-' if score is None else f'{score:.1f}'}")


__all__ = ["ClientConfig", "SB3_ALGOS", "TORCHRL_INIT_SCALE", "client_parser", "client_result", "env_kwargs",
           "print_result", "quick_config", "run_client", "score_on_val", "train_sb3", "train_torchrl_ppo"]
