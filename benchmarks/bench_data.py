"""What share of a co-training step goes to producing its data, for the ways the digit scenes can be served?

The scenes are drawn in numpy (~1 ms each); a training step of ``fcn_resnet_tiny`` costs ~0.1 s for 16 of them,
so rendering every batch afresh would be ~15% of a step.  Measured in one process, on the ``digits`` preset (its
model, batch and transforms), each variant in turn for ``--steps`` steps per round over ``--rounds`` rounds:

1. ``bank``: the preset's choice: ``DigitScenes(cache=True)``, every scene rendered once into an in-memory uint8 bank
   and then served from it (``num_workers=0``).  Its first epoch renders (``bank, first epoch``), later ones only
   index the bank (``bank, later epochs``).
2. ``render``: no bank, every batch rendered in the training process (``num_workers=0``).
3. ``worker``: no bank, one ``DataLoader`` worker process renders ahead while the step runs (it competes with the
   step's two threads for the two cores, so its cost shows up in the step time too).

Per variant: the median wait for a batch (``next(loader)``), the median ``train_step``, and the share
``wait / (wait + step)``.  For the bank, the share over a whole preset run is projected from its two phases
(``train_size / batch`` batches of the first epoch, the rest from the bank).  The main job measures the same
share on its real run and prints it in ``final.md`` (``data: ... % of the step time``).

    python benchmarks/bench_data.py                    # ~2 min on 2 cores
    python benchmarks/bench_data.py --rounds 3 --steps 30
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from _common import RESULTS, finish, machine  # noqa: E402
from agents.config import make_config  # noqa: E402
from agents.trainer import CoTrainer, IterationBatchSampler  # noqa: E402
from segbandit.data import make_dataset  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "bank": {"cache": True, "num_workers": 0},
    "render": {"cache": False, "num_workers": 0},
    "worker": {"cache": False, "num_workers": 1},
}


def _loader(cfg: Any, cache: bool, num_workers: int, start: int) -> DataLoader:
    """The main job's training loader for ``cfg`` (same dataset, transforms and batch sampler), bank or not."""
    train = make_dataset("digits", "train", seed=cfg.seed, image_size=cfg.crop_size, cache=cache,
                         train=cfg.augment, num_samples=cfg.train_size)
    sampler = IterationBatchSampler(len(train), cfg.batch_size, seed=cfg.seed, start_iteration=start)
    extra = {"persistent_workers": True} if num_workers else {}
    return DataLoader(train, batch_sampler=sampler, num_workers=num_workers, **extra)


def measure(rounds: int, steps: int, preset: str = "digits") -> dict[str, Any]:
    """Median batch wait and step time per variant; the bank also warm (every scene of its batches rendered)."""
    cfg = make_config(preset, device="cpu")
    trainer = CoTrainer.from_config(cfg, 11, device="cpu")
    iters = {name: iter(_loader(cfg, **kw, start=0)) for name, kw in VARIANTS.items()}
    # a warm bank: the same loader order, its scenes already rendered (what every epoch after the first sees)
    warm_loader = _loader(cfg, cache=True, num_workers=0, start=0)
    for i in range((rounds * steps + 1) * cfg.batch_size):
        warm_loader.dataset[warm_loader.batch_sampler.batch(i // cfg.batch_size)[i % cfg.batch_size]]
    iters["bank, later epochs"] = iter(warm_loader)
    for it in iters.values():  # start the worker and fill every pipeline once, outside the timing
        images, masks = next(it)
        trainer.train_step(images, masks)
    waits: dict[str, list[float]] = {k: [] for k in iters}
    steps_s: dict[str, list[float]] = {k: [] for k in iters}
    for _ in range(rounds):
        for name, it in iters.items():
            for _ in range(steps):
                t0 = time.perf_counter()
                images, masks = next(it)
                t1 = time.perf_counter()
                trainer.train_step(images, masks)
                t2 = time.perf_counter()
                waits[name].append(t1 - t0)
                steps_s[name].append(t2 - t1)
    rows = []
    for name in iters:
        wait, step = statistics.median(waits[name]), statistics.median(steps_s[name])
        label = "bank, first epoch" if name == "bank" else name
        rows.append({"variant": label, "wait_s": wait, "step_s": step, "share": wait / (wait + step),
                     "mean_wait_s": statistics.fmean(waits[name])})
    by = {r["variant"]: r for r in rows}
    first, later = by["bank, first epoch"], by["bank, later epochs"]
    n_first = min(cfg.max_iters, -(-int(cfg.train_size) // cfg.batch_size))  # batches until every scene is banked
    data = n_first * first["mean_wait_s"] + (cfg.max_iters - n_first) * later["mean_wait_s"]
    step = cfg.max_iters * statistics.fmean([first["step_s"], later["step_s"]])
    projected = {"max_iters": cfg.max_iters, "first_epoch_batches": n_first, "data_s": data, "step_s": step,
                 "share": data / (data + step)}
    return {"preset": preset, "batch_size": cfg.batch_size, "train_size": cfg.train_size, "rows": rows,
            "bank_whole_run": projected, "step_slowdown_with_worker": by["worker"]["step_s"] / by["render"]["step_s"]}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="Share of a co-training step spent producing data, per data variant")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=25, help="steps per variant per round")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default=str(RESULTS / "bench_data.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine(torch.device("cpu"))
    res = measure(args.rounds, args.steps)
    print(f"digits preset, batch {res['batch_size']}, {res['train_size']} distinct scenes; medians over "
          f"{args.rounds} x {args.steps} steps per variant")
    print(f"{'variant':22s} {'wait (ms)':>10s} {'step (ms)':>10s} {'data share':>11s}")
    for r in res["rows"]:
        print(f"{r['variant']:22s} {1e3 * r['wait_s']:10.1f} {1e3 * r['step_s']:10.1f} {100 * r['share']:10.1f}%")
    w = res["bank_whole_run"]
    print(f"bank over a whole preset run ({w['max_iters']} iterations, the first {w['first_epoch_batches']} render): "
          f"{100 * w['share']:.1f}% of the step time producing data")
    print(f"the worker slows the step itself {res['step_slowdown_with_worker']:.2f}x (it shares the two cores)")
    results = {"machine": info, **res}
    finish(results, args.out)
    return results


if __name__ == "__main__":
    main()
