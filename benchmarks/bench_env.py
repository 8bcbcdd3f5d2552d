"""What does ``SegBandit-v0`` cost on top of the work it wraps, and what does native batching buy?

Measured in one process, on the same segmentor (fcn_resnet18, random weights: timing does not depend on them):

1. overhead: one ``SegBanditVectorEnv.step`` (B = 16 digit scenes, 64 px) against the bare work it wraps --
   decode + reward of the current batch and encode of a batch of images -- timed alternately with the same
   tensors. Goal: ratio <= 1.15.
2. batching: images per second of the native vector env against ``gymnasium.vector.SyncVectorEnv`` over 16
   single ``SegBanditEnv`` (same-step autoreset, so neither wastes steps). Goal: >= 3x.
3. a cost table against batch size (1..64, 64 px) and image size (64..512 px).
4. the registered ids on the shipped segmentor (``segbandit.ENV_KWARGS``): per-image step cost at B = 1, 16, 64
   relative to ``SegBandit-v0`` at B = 16, and for ``SegBanditPooled-v0`` the speed-up of ``cache_latents`` once
   the cache is warm (``--only-ids`` runs just this part).

Ratios are printed; absolute times only on GPU (on a shared CPU they say little). Everything, absolute times
included, goes to ``benchmarks/results/bench_env.json``.

    python benchmarks/bench_env.py            # full
    python benchmarks/bench_env.py --quick    # fewer points and repetitions
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
from gymnasium.vector import AutoresetMode  # noqa: E402

from envs import SegBanditEnv, SegBanditVectorEnv  # noqa: E402
from segbandit.models import Segmentor, build_segmentor  # noqa: E402
from segbandit.policy import broadcast_action  # noqa: E402

from _common import timed  # noqa: E402  (benchmarks/ is on sys.path when a script here runs)

NUM_CLASSES = 11


def _actions(space: gym.spaces.Box, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(space.shape).astype(np.float32)


def step_vs_bare(env: SegBanditVectorEnv, steps: int, warmup: int, seed: int = 0) -> dict[str, float]:
    """Median env.step time and median bare-work time, measured alternately on the same tensors."""
    core, device = env.core, env.core.device
    env.reset(seed=seed)
    action = _actions(env.action_space, seed)
    action_t = torch.from_numpy(action).to(device)
    if env.array_type == "torch":
        action = action_t

    def bare() -> None:
        with torch.no_grad():
            s = broadcast_action(action_t, core.latent_shape[1:])  # (B, d, h, w)
            logits = core.segmentor.decode(core.latents, s, out_size=core.image_size)  # (B, K, H, W)
            core.reward_fn(logits, core.masks)  # Eq. 15
            core.segmentor.encode(core.images)  # the next batch's encode (same-size images)

    loader = torch.utils.data.DataLoader(core.dataset, batch_size=core.num_envs, shuffle=True, drop_last=True)
    batches = iter(loader)

    def fetch() -> None:  # what producing the next images costs on its own (in this process)
        nonlocal batches
        try:
            images, masks = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, masks = next(batches)
        images.to(device), masks.to(device)

    env_t, bare_t, data_t = [], [], []
    for i in range(warmup + steps):
        e = timed(lambda: env.step(action), device)
        b = timed(bare, device)
        d = timed(fetch, device)
        if i >= warmup:
            env_t.append(e)
            bare_t.append(b)
            data_t.append(d)
    med_env, med_bare, med_data = (statistics.median(t) for t in (env_t, bare_t, data_t))
    return {"env_s": med_env, "bare_s": med_bare, "data_s": med_data, "ratio": med_env / med_bare,
            "ratio_with_data": med_env / (med_bare + med_data)}


def sync_vs_native(segmentor: Segmentor, num_envs: int, image_size: int, steps: int, warmup: int,
                   num_workers: int) -> dict[str, float]:
    """Seconds per image of the native vector env and of SyncVectorEnv over ``num_envs`` single envs."""
    device = next(segmentor.parameters()).device
    common = dict(model=segmentor, image_size=image_size)
    native = SegBanditVectorEnv(num_envs=num_envs, num_workers=num_workers, **common)
    sync = gym.vector.SyncVectorEnv(
        [lambda: SegBanditEnv(**common) for _ in range(num_envs)], autoreset_mode=AutoresetMode.SAME_STEP
    )
    out: dict[str, float] = {}
    for name, env in (("native", native), ("sync", sync)):
        env.reset(seed=0)
        action = _actions(env.action_space, 0)
        times = []
        for i in range(warmup + steps):
            t = timed(lambda: env.step(action), device)
            if i >= warmup:
                times.append(t)
        out[f"{name}_s_per_image"] = statistics.median(times) / num_envs
        env.close()
    out["speedup"] = out["sync_s_per_image"] / out["native_s_per_image"]
    # the ceiling batching can reach: the bare model work per image at B=1 against B=num_envs
    per_image = {}
    for b in (1, num_envs):
        env = SegBanditVectorEnv(num_envs=b, model=segmentor, image_size=image_size)
        per_image[b] = step_vs_bare(env, steps, warmup)["bare_s"] / b
        env.close()
    out["bare_s_per_image_b1"], out["bare_s_per_image_bn"] = per_image[1], per_image[num_envs]
    out["bare_speedup"] = per_image[1] / per_image[num_envs]
    return out


def cost_table(segmentor: Segmentor, batch_sizes: list[int], image_sizes: list[int], table_batch: int,
               steps: int, warmup: int, num_workers: int) -> dict[str, list[dict[str, float]]]:
    rows_b, rows_s = [], []
    for b in batch_sizes:
        env = SegBanditVectorEnv(num_envs=b, model=segmentor, image_size=64, num_workers=num_workers,
                                 dataset_kwargs={"num_samples": max(2000, 4 * b)})
        r = step_vs_bare(env, steps, warmup)
        env.close()
        rows_b.append({"batch": b, "image": 64, **r, "env_s_per_image": r["env_s"] / b})
    for size in image_sizes:
        env = SegBanditVectorEnv(num_envs=table_batch, model=segmentor, image_size=size, num_workers=num_workers)
        r = step_vs_bare(env, steps, warmup)
        env.close()
        rows_s.append({"batch": table_batch, "image": size, **r, "env_s_per_image": r["env_s"] / table_batch})
    return {"by_batch": rows_b, "by_image_size": rows_s}


def ids_table(batch_sizes: list[int], steps: int, device: torch.device, num_images: int = 64) -> list[dict[str, Any]]:
    """Per-image step time of each registered id at each B (with and without cache_latents where the id caches)."""
    from segbandit import ENV_KWARGS

    rows = []
    for env_id, kwargs in ENV_KWARGS.items():
        for b in batch_sizes:
            for cache in ((False, True) if kwargs.get("cache_latents") else (False,)):
                env = SegBanditVectorEnv(num_envs=b, **{**kwargs, "cache_latents": cache, "device": device,
                                                        "dataset_kwargs": {"num_samples": num_images}})
                env.reset(seed=0)
                action = np.zeros(env.action_space.shape, np.float32)
                for _ in range(num_images // b + 1):  # one epoch: every image encoded (and cached) once
                    env.step(action)
                times = [timed(lambda: env.step(action), device) for _ in range(steps)]
                rows.append({"id": env_id, "batch": b, "cache_latents": cache,
                             "s_per_image": statistics.median(times) / b})
                env.close()
    return rows


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="SegBandit-v0 overhead and batching benchmark")
    p.add_argument("--quick", action="store_true", help="fewer points and repetitions")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers in parts 2 and 3 (part 1 runs 0 and 1)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--skip-table", action="store_true")
    p.add_argument("--only-ids", action="store_true", help="run only part 4 (the registered ids)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_env.json"))
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    steps = args.steps or (5 if args.quick else 20)
    warmup = 2
    torch.manual_seed(0)
    segmentor = build_segmentor("fcn_resnet18", NUM_CLASSES).to(device).eval()

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if gpu else f"cpu ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "num_envs": args.num_envs,
        "num_workers": args.num_workers,
        "steps": steps,
    }

    if args.only_ids:
        return _ids_part(results, steps, device, gpu, args.out)

    # 1. overhead of env.step over the bare work (numpy = Gymnasium default; torch = no conversions)
    overhead = {}
    for array_type in ("numpy", "torch"):
        for workers in (0, 1):
            env = SegBanditVectorEnv(num_envs=args.num_envs, model=segmentor, image_size=64,
                                     array_type=array_type, num_workers=workers)
            overhead[f"{array_type}_workers{workers}"] = step_vs_bare(env, steps, warmup)
            env.close()
    fastest = min(r["bare_s"] for r in overhead.values())
    for r in overhead.values():  # the same bare work got much slower: other processes were competing for the CPU
        r["contended"] = r["bare_s"] > 1.5 * fastest
    results["overhead"] = overhead
    print(f"device: {results['device']}, torch threads {results['torch_threads']}, load average {results['load_average']}")
    print(f"1. env.step / bare work (decode + reward + encode), B={args.num_envs}, 64 px (goal <= 1.15):")
    print("   setting            env/bare   data/bare   env/(bare+data)")
    for k, r in overhead.items():
        extra = f"   (env {r['env_s'] * 1e3:.1f} ms, bare {r['bare_s'] * 1e3:.1f} ms)" if gpu else ""
        flag = "   (CONTENDED: bare work ran >1.5x slower than in another row; CPU shared, ratio unreliable)" \
            if r["contended"] else ""
        print(f"   {k:18s} {r['ratio']:8.3f}   {r['data_s'] / r['bare_s']:9.3f}   {r['ratio_with_data']:15.3f}{extra}{flag}")

    # 2. native batching vs SyncVectorEnv over single envs
    batching = sync_vs_native(segmentor, args.num_envs, 64, steps, warmup, args.num_workers)
    results["batching"] = batching
    extra = (f"   (native {batching['native_s_per_image'] * 1e3:.2f} ms/img, sync {batching['sync_s_per_image'] * 1e3:.2f} ms/img)"
             if gpu else "")
    print(f"2. per-image throughput, native vector env / SyncVectorEnv of {args.num_envs} single envs (goal >= 3): "
          f"{batching['speedup']:.2f}x{extra}")
    print(f"   ceiling from the model alone: bare work per image at B=1 / at B={args.num_envs}: "
          f"{batching['bare_speedup']:.2f}x")

    # 3. cost table
    if not args.skip_table:
        batch_sizes = [1, 4, 16, 64] if args.quick else [1, 2, 4, 8, 16, 32, 64]
        image_sizes = [64, 128] if args.quick else [64, 128, 256, 512]
        table = cost_table(segmentor, batch_sizes, image_sizes, 4 if not gpu else 16,
                           max(3, steps // 3), 1, args.num_workers)
        results["table"] = table
        base = table["by_batch"][0]["env_s_per_image"]
        print("3a. by batch size (64 px): per-image step cost relative to B=1, and env/bare ratio")
        for r in table["by_batch"]:
            extra = f"   {r['env_s_per_image'] * 1e3:.2f} ms/img" if gpu else ""
            print(f"   B={r['batch']:3d}  cost/img {r['env_s_per_image'] / base:.3f}  env/bare {r['ratio']:.3f}{extra}")
        base = table["by_image_size"][0]["env_s_per_image"]
        print(f"3b. by image size (B={table['by_image_size'][0]['batch']}): per-image step cost relative to 64 px, "
              "and env/bare ratio")
        for r in table["by_image_size"]:
            extra = f"   {r['env_s_per_image'] * 1e3:.2f} ms/img" if gpu else ""
            print(f"   {r['image']:4d} px  cost/img {r['env_s_per_image'] / base:8.2f}  env/bare {r['ratio']:.3f}{extra}")

    return _ids_part(results, steps, device, gpu, args.out)


def _ids_part(results: dict[str, Any], steps: int, device: torch.device, gpu: bool, out: str) -> dict[str, Any]:
    rows = ids_table([1, 16, 64], steps, device)
    results["ids"] = rows
    ref = next(r["s_per_image"] for r in rows if r["id"] == "SegBandit-v0" and r["batch"] == 16)
    print("4. registered ids (shipped segmentor, 64 px): per-image step cost relative to SegBandit-v0 at B=16")
    for r in rows:
        extra = f"   {r['s_per_image'] * 1e3:.2f} ms/img" if gpu else ""
        print(f"   {r['id']:20s} B={r['batch']:3d} cache_latents={str(r['cache_latents']):5s} "
              f"cost/img {r['s_per_image'] / ref:.3f}{extra}")
    for b in sorted({r["batch"] for r in rows}):
        pair = {r["cache_latents"]: r["s_per_image"] for r in rows if r["id"] == "SegBanditPooled-v0" and r["batch"] == b}
        if len(pair) == 2:
            print(f"   SegBanditPooled-v0 B={b:3d}: cache_latents speed-up {pair[False] / pair[True]:.2f}x")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
