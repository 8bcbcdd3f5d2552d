"""Do the RL libraries' own clients learn on SegBanditPooled-v0?  Seeds x clients, one budget, curves and scores.

    python benchmarks/clients.py --seeds 3 --timesteps 20000 \
        --cleanrl-script /path/to/cleanrl/cleanrl/ppo_continuous_action.py    # needs: pip install tyro tensorboard

Clients: Stable-Baselines3 PPO and SAC on ``envs.SB3VecEnv`` and TorchRL's PPO tutorial pattern
(``agents.clients``), and CleanRL's ``ppo_continuous_action.py`` run as it is through
``gym.make("segbandit:SegBanditPooled-v0")`` with the shim of ``benchmarks/cleanrl_shim.py`` and the flags
``--gamma 0 --no-cuda`` (the script is not part of this repository: pass its path).  Each run is scored on the first
256 val scenes before and after training (the paired gain over the zero action and the normalised score).  Writes
``benchmarks/results/clients.json`` and ``docs/img/benchmark_clients.png``; prints the markdown table of
docs/benchmark.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import runpy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.clients import ClientConfig, client_result, quick_config, score_on_val, train_sb3  # noqa: E402
from agents.clients import train_torchrl_ppo  # noqa: E402
from benchmarks import cleanrl_shim  # noqa: E402
from benchmarks._common import ROOT, RESULTS, finish, machine  # noqa: E402
from segbandit import POOLED_ENV_ID, REFERENCE_SCORES  # noqa: E402


def train_cleanrl(script: str, cfg: ClientConfig) -> dict[str, Any]:
    """CleanRL's ppo_continuous_action.py, unchanged but for the shim, on ``segbandit:SegBanditPooled-v0``."""
    import gymnasium as gym

    from envs.single import SegBanditEnv

    cleanrl_shim.apply()
    rewards: list[float] = []
    original_step = SegBanditEnv.step

    def recording_step(self, action):  # measurement only: the raw (paired) reward of every scored image
        out = original_step(self, action)
        rewards.append(out[1])
        return out

    argv = [script, "--env-id", f"segbandit:{POOLED_ENV_ID}", "--total-timesteps", str(cfg.timesteps),
            "--seed", str(cfg.seed + 1), "--gamma", "0", "--no-cuda", "--learning-rate", str(cfg.lr)]
    old_argv = sys.argv
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path.cwd()
        SegBanditEnv.step = recording_step
        try:
            import os

            os.chdir(tmp)  # CleanRL writes runs/<name> (TensorBoard) where it runs
            sys.argv = argv
            g = runpy.run_path(script, run_name="__main__")
        finally:
            sys.argv = old_argv
            SegBanditEnv.step = original_step
            os.chdir(cwd)
    seconds = time.perf_counter() - t0
    agent, vec = g["agent"], g["envs"]
    norm = next(w for w in _wrappers(vec.envs[0]) if isinstance(w, gym.wrappers.NormalizeObservation))
    low, high = vec.single_action_space.low, vec.single_action_space.high

    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        rms = norm.obs_rms
        x = np.clip((obs - rms.mean) / np.sqrt(rms.var + norm.epsilon), -10, 10)  # CleanRL's observation pipeline
        return np.clip(agent.actor_mean(torch.as_tensor(x, dtype=torch.float32)).numpy(), low, high)

    before = {"reward": float("nan"), "gain": float("nan"), "normalized_score": None}
    after = score_on_val(act, cfg)
    vec.close()
    per = 1024
    curve = [(i + per, float(np.mean(rewards[i:i + per]))) for i in range(0, len(rewards) - per + 1, per)]
    return client_result("cleanrl_ppo", cfg, before, after, len(rewards), seconds, curve)


def _wrappers(env) -> list:
    out = []
    while hasattr(env, "env"):
        out.append(env)
        env = env.env
    return out


CLIENTS = {
    "sb3_ppo": lambda cfg, args: train_sb3("ppo", cfg),
    "sb3_sac": lambda cfg, args: train_sb3("sac", cfg),
    "torchrl_ppo": lambda cfg, args: train_torchrl_ppo(cfg),
    "cleanrl_ppo": lambda cfg, args: train_cleanrl(args.cleanrl_script, cfg),
}


def table(results: list[dict[str, Any]]) -> str:
    ref = REFERENCE_SCORES.get(POOLED_ENV_ID, {})
    lines = ["| client | seeds | scored images | val gain over s = 0 (mean ± seed std) | normalised score (mean ± std) |"
             " per seed |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name in dict.fromkeys(r["client"] for r in results):
        rs = [r for r in results if r["client"] == name]
        gains = [r["gain_after"] for r in rs]
        scores = [r["score_after"] for r in rs if r["score_after"] is not None]
        sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        ssd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        per = ", ".join(f"{s:.0f}" for s in scores) or "–"
        score = f"{statistics.fmean(scores):.1f} ± {ssd:.1f}" if scores else "–"
        lines.append(f"| {name} | {len(rs)} | {rs[0]['timesteps']} | {statistics.fmean(gains):+.4f} ± {sd:.4f} | "
                     f"{score} | {per} |")
    if ref:
        for k in ("random", "policy_sample", "policy_mean", "oracle"):
            gain = ref[k] - ref["zero"]
            lines.append(f"| reference: {k} | – | – | {gain:+.4f} | {100 * gain / (ref['policy_mean'] - ref['zero']):.1f}"
                         " | – |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, name in enumerate(dict.fromkeys(r["client"] for r in results)):
        for j, r in enumerate(r for r in results if r["client"] == name):
            if r["curve"]:
                x, y = zip(*r["curve"])
                ax.plot(x, y, color=f"C{i}", alpha=0.8, label=name if j == 0 else None)
    ax.axhline(0.0, color="k", lw=0.8, ls="--", label="zero action")
    ref = REFERENCE_SCORES.get(POOLED_ENV_ID)
    if ref:
        ax.axhline(ref["policy_mean"] - ref["zero"], color="grey", lw=0.8, ls=":", label="shipped policy (val)")
    ax.set_xlabel("scored training images")
    ax.set_ylabel("mean paired reward r(s) - r(0)")
    ax.set_title(f"{POOLED_ENV_ID}: training curves (one line per seed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--timesteps", type=int, default=20_000)
    p.add_argument("--clients", default="sb3_ppo,sb3_sac,torchrl_ppo,cleanrl_ppo")
    p.add_argument("--cleanrl-script", default=None, help="path to CleanRL's cleanrl/ppo_continuous_action.py")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "clients.json"))
    p.add_argument("--img", default=str(ROOT / "docs" / "img" / "benchmark_clients.png"))
    p.add_argument("--quick", action="store_true", help="seconds-long smoke runs (the tests)")
    p.add_argument("--replace", action="store_true",
                   help="keep the other clients' results in --out and replace only those of --clients (a rerun)")
    args = p.parse_args(argv)
    names = [c.strip() for c in args.clients.split(",") if c.strip()]
    bad = [c for c in names if c not in CLIENTS]
    if bad:
        p.error(f"unknown client(s) {bad}; valid names: {', '.join(CLIENTS)}")
    if "cleanrl_ppo" in names and not args.cleanrl_script:
        p.error("cleanrl_ppo needs --cleanrl-script (CleanRL's ppo_continuous_action.py)")
    torch.set_num_threads(args.threads)
    info = machine(torch.device("cpu"))
    t0 = time.time()
    results = []
    for name in names:
        for seed in range(args.seeds):
            cfg = quick_config(dataclasses.replace(ClientConfig(), timesteps=args.timesteps, seed=seed, quick=args.quick))
            r = CLIENTS[name](cfg, args)
            print(f"{name} seed {seed}: gain {r['gain_after']:+.4f} (score {r['score_after']}) in {r['train_s']:.0f} s",
                  flush=True)
            results.append(r)
    previous = json.loads(Path(args.out).read_text()) if args.replace and Path(args.out).exists() else {}
    earlier = [r for r in previous.get("results", []) if r["client"] not in names]
    results = earlier + results
    md = table(results)
    print(md)
    plot(results, Path(args.img))
    command = "python benchmarks/clients.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"command": command, "wall_s": time.time() - t0, **info, "results": results, "table": md}
    if earlier:
        payload["earlier"] = {k: previous.get(k) for k in ("command", "wall_s", "time", "earlier")}
    finish(payload, args.out)
    return payload


if __name__ == "__main__":
    main()
