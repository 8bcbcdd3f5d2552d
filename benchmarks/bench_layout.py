"""What does the channels-last memory format buy a co-training step and an evaluation of the digits preset?

``TrainConfig.channels_last`` (default on) stores the segmentor's and the policy's 4-D weights in channels-last
(NHWC) order, so every convolution runs oneDNN's (CPU) or cuDNN's (CUDA) NHWC kernels and its output stays NHWC; the
decoder hands back NCHW logits, so the losses', rewards' and metrics' softmaxes over the class dimension do not copy.
Measured side by side in one process on the ``digits`` preset (its model, batch and data), both layouts built from
the same seed, each repeat running every contender once, in turn, on the same batches:

1. ``CoTrainer.train_step`` (Eq. 6: forward, reward, losses, backward, optimiser step), NCHW against NHWC;
2. ``CoTrainer.predict`` on a val batch (``s = mu``, no graph), NCHW against NHWC.

It also checks the two layouts compute the same function: the logits of the freshly built models agree to float
rounding (max |difference| printed).

    python benchmarks/bench_layout.py                    # ~1 min on 2 quiet cores
    python benchmarks/bench_layout.py --repeats 10 --steps 10
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from _common import RESULTS, finish, interleaved, load_note, machine, summary  # noqa: E402
from agents.config import make_config  # noqa: E402
from agents.datasets import build_datasets  # noqa: E402
from agents.trainer import CoTrainer  # noqa: E402

LAYOUTS: dict[str, bool] = {"NCHW": False, "NHWC (channels_last)": True}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=6, help="timed rounds (each runs every contender once)")
    p.add_argument("--steps", type=int, default=8, help="train steps per contender per round")
    p.add_argument("--out", default=str(RESULTS / "bench_layout.json"))
    args = p.parse_args(argv)

    cfg = make_config("digits")
    train, val, num_classes, _ = build_datasets(cfg)
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = [b for _, b in zip(range(args.steps), loader)]
    val_x = torch.stack([val[i][0] for i in range(min(64, len(val)))])  # (64, 3, H, W)
    device = torch.device("cpu")
    trainers = {name: CoTrainer.from_config(make_config("digits", channels_last=cl), num_classes, device=device)
                for name, cl in LAYOUTS.items()}  # fmt: skip
    a, b = (t.predict(val_x).float() for t in trainers.values())
    max_diff = float((a - b).abs().max())

    def steps(trainer: CoTrainer):
        return lambda: [trainer.train_step(x, y) for x, y in batches]

    train_t = interleaved({n: steps(t) for n, t in trainers.items()}, device, args.repeats)
    eval_t = interleaved({n: (lambda t=t: t.predict(val_x)) for n, t in trainers.items()}, device, args.repeats)
    results: dict[str, Any] = {"machine": machine(device), "batch_size": cfg.batch_size, "steps": args.steps,
                               "max_abs_logit_difference": max_diff, "rows": {}}  # fmt: skip
    base = next(iter(LAYOUTS))
    for what, times, per in (("train_step", train_t, args.steps), ("predict (64 val scenes)", eval_t, 1)):
        ref = statistics.median(times[base])
        for name, ts in times.items():
            row = {k: v / per if k != "repeats" else v for k, v in summary(ts).items()}
            row["ratio_to_nchw"] = statistics.median(ts) / ref
            results["rows"][f"{what} / {name}"] = row
    print(f"digits preset ({cfg.model}, batch {cfg.batch_size}, {cfg.crop_size} px), "
          f"{torch.get_num_threads()} threads; {load_note(results['machine'])}")
    print(f"logits of the two layouts at init: max |difference| {max_diff:.2e}")
    print("| what / layout | median ms | min ms | time / NCHW |")
    print("| --- | ---: | ---: | ---: |")
    for name, row in results["rows"].items():
        print(f"| {name} | {1e3 * row['median_s']:.1f} | {1e3 * row['min_s']:.1f} | {row['ratio_to_nchw']:.3f} |")
    finish(results, args.out)
    return results


if __name__ == "__main__":
    main()
