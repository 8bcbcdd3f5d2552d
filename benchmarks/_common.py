"""Shared helpers of the speed benchmarks: machine facts, synchronised timers, interleaved repeats, JSON output.

Timings on a shared CPU say little in absolute terms, so the benchmarks compare two things *side by side*: each
repeat runs every contender once, in turn, and the medians (and minima) over repeats are compared.  The machine's
load average is recorded before and after, so a reader can tell a quiet run from a contended one.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the benchmarks run as scripts
    sys.path.insert(0, str(ROOT))

from agents.atomic import atomic_write  # noqa: E402
RESULTS = ROOT / "benchmarks" / "results"
# a benchmark's --smoke run on the digit scenes: 32 px, 64 scenes, batch 4 (a check that it runs, not a result)
SMOKE: dict[str, Any] = dict(crop_size=32, train_size=64, val_size=16, batch_size=4, policy_hidden=16, attn_dim=32)


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, synchronised on CUDA."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run every function once per repeat, in turn (so slow phases of a shared machine hit all alike).

    Returns {name: [seconds per repeat]} without the warm-up rounds.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            t = timed(fn, device)
            if i >= warmup:
                times[name].append(t)
    return times


def summary(times: list[float]) -> dict[str, float]:
    """Median, minimum and the number of repeats of a list of seconds."""
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": len(times)}


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: device, threads, load average, versions."""
    gpu = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if gpu else f"cpu ({os.cpu_count()} cores)",
        "torch_threads": torch.get_num_threads(),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def finish(results: dict[str, Any], out: str | os.PathLike) -> None:
    """Record the closing load average and write ``results`` as indented JSON (atomically)."""
    results["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    path = atomic_write(out, lambda fh: fh.write(json.dumps(results, indent=2) + "\n"), binary=False)
    print(f"wrote {path}")


def load_note(results: dict[str, Any]) -> str:
    """One line on the machine's load while measuring."""
    start = results.get("load_average_start")
    if start is None:
        return "load average: unavailable"
    return f"load average (1/5/15 min) at start {start[0]:.2f}/{start[1]:.2f}/{start[2]:.2f} on {os.cpu_count()} cores"


def paired_t(mean: float | None, std: float | None, n: int) -> float | None:
    """The paired t statistic mean / (std / sqrt(n)) of per-seed deltas (None when undefined)."""
    if mean is None or std is None or n < 2 or not math.isfinite(mean) or not math.isfinite(std):
        return None
    if std == 0.0:
        return math.inf if mean != 0 else 0.0
    return mean / (std / math.sqrt(n))


def load_cache(path: str | os.PathLike, budget: str) -> dict[str, Any]:
    """A resumable benchmark's cache ``{"_budget": budget, "runs": {...}}`` at ``path`` (empty when absent); a cache of
    another budget is a SystemExit naming it, so runs of two budgets never mix."""
    path = Path(path)
    cache = json.loads(path.read_text()) if path.exists() else {}
    if cache.get("_budget", budget) != budget:
        raise SystemExit(f"{path} holds runs of another budget ({cache['_budget']}); pass another --cache")
    cache["_budget"] = budget
    cache.setdefault("runs", {})
    return cache


def save_cache(path: str | os.PathLike, cache: dict[str, Any]) -> None:
    atomic_write(path, lambda fh: fh.write(json.dumps(cache, indent=1, default=float)), binary=False)
