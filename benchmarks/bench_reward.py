"""How much faster is the batched composite reward than a per-image torchmetrics loop, and where does its time go?

Measured side by side in one process, on the same logits and labels (B = 16 images, K = 21 classes as on VOC):

1. ``CompositeReward`` (Eq. 15: IoU, Dice, CE and boundary terms, batched over images and classes) against a
   Python loop over the images calling torchmetrics' ``mean_iou`` and ``dice_score`` (``input_format="index"``,
   samplewise, the same convention as the reward) -- the obvious way to write a per-image reward.  Goal: >= 5x.
   Because the loop computes only 2 of the 4 terms, the like-for-like row (batched IoU + Dice alone: argmax,
   one ``bincount`` confusion, IoU and Dice from it) is printed as well, and the values are checked to agree.
2. Each term's share of the composite's time: argmax, confusion, IoU + Dice from the confusion, CE, boundary.
   The composite takes its argmax as ``logits.max(1).indices`` (the same first maximal index): torch's CPU
   ``argmax(1)`` over the class dim of a (B, K, H, W) tensor is markedly slower; the ratio is printed too.

Every repeat runs every contender once, in turn; medians over repeats are compared.  Ratios are printed;
absolute times only on GPU (on a shared CPU they say little); everything goes to
``benchmarks/results/bench_reward.json`` with the machine's load average.

Labels have no void pixels here because torchmetrics' functional metrics take no ``ignore_index``; the reward's
void handling is a ``torch.where`` and costs nothing measurable.

    python benchmarks/bench_reward.py                  # 128 and 512 px, ~1 min on 2 CPU cores
    python benchmarks/bench_reward.py --device cuda    # on a GPU (absolute times printed too)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchmetrics.functional.segmentation import dice_score, mean_iou  # noqa: E402

from segbandit.constants import IGNORE_INDEX  # noqa: E402
from _common import RESULTS, finish, interleaved, load_note, machine, summary  # noqa: E402
from segbandit.rewards import (  # noqa: E402
    CompositeReward,
    _boundary_reward,
    _ce_reward,
    _confusion,
    _dice_from_confusion,
    _iou_from_confusion,
)



def make_batch(batch: int, num_classes: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K, H, W) float32 and labels (B, H, W) int64 that look like segmentation outputs.

    Each image holds background and 3 object classes in 16x16-pixel blocks; the logits favour the true class by 2
    (so about two thirds of the pixels are right and several classes are present in prediction and target).
    """
    g = torch.Generator().manual_seed(seed)
    cells = max(size // 16, 1)
    objects = torch.randint(1, num_classes, (batch, 3), generator=g)  # (B, 3)
    palette = torch.cat([torch.zeros(batch, 1, dtype=torch.int64), objects], 1)  # (B, 4)
    pick = torch.randint(0, 4, (batch, cells, cells), generator=g)  # (B, c, c)
    coarse = palette.gather(1, pick.flatten(1)).view(batch, 1, cells, cells).float()  # (B, 1, c, c)
    target = F.interpolate(coarse, size=(size, size), mode="nearest").squeeze(1).long()  # (B, H, W)
    logits = torch.randn(batch, num_classes, size, size, generator=g)  # (B, K, H, W)
    logits += 2.0 * F.one_hot(target, num_classes).permute(0, 3, 1, 2).float()
    return logits.to(device), target.to(device)


def torchmetrics_loop(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-image baseline: for each image, argmax, torchmetrics mean_iou and dice_score. Returns (B,), (B,)."""
    ious, dices = [], []
    for i in range(logits.shape[0]):  # the loop the batched reward replaces
        pred = logits[i : i + 1].argmax(1)  # (1, H, W)
        t = target[i : i + 1]  # (1, H, W)
        ious.append(mean_iou(pred, t, num_classes=num_classes, input_format="index"))
        dices.append(dice_score(pred, t, num_classes=num_classes, input_format="index",
                                aggregation_level="samplewise", average="macro"))
    return torch.cat(ious).float(), torch.cat(dices).float()


def batched_iou_dice(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The like-for-like batched work: argmax, one bincount confusion, IoU and Dice from it. Returns (B,), (B,)."""
    with torch.no_grad():
        conf = _confusion(logits.max(1).indices, target, num_classes, IGNORE_INDEX)  # (B, K, K)
        return _iou_from_confusion(conf), _dice_from_confusion(conf)


def term_fns(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, Callable[[], Any]]:
    """The composite's parts in isolation (the inputs the composite would hand each part precomputed)."""
    pred = logits.max(1).indices  # (B, H, W), what the composite uses for argmax
    conf = _confusion(pred, target, num_classes, IGNORE_INDEX)  # (B, K, K)
    return {
        "argmax": lambda: logits.max(1).indices,
        "confusion": lambda: _confusion(pred, target, num_classes, IGNORE_INDEX),
        "iou+dice from confusion": lambda: (_iou_from_confusion(conf), _dice_from_confusion(conf)),
        "ce": lambda: _ce_reward(logits, target, num_classes, IGNORE_INDEX),
        "boundary": lambda: _boundary_reward(pred, target, IGNORE_INDEX, 2),
    }


def bench_size(size: int, batch: int, num_classes: int, device: torch.device, repeats: int) -> dict[str, Any]:
    logits, target = make_batch(batch, num_classes, size, device)
    reward = CompositeReward(num_classes)
    # the two computations agree (same convention): a benchmark of different answers would mean nothing
    loop_iou, loop_dice = torchmetrics_loop(logits, target, num_classes)
    out = reward(logits, target)
    agree = max(float((out["iou"] - loop_iou.to(device)).abs().max()), float((out["dice"] - loop_dice.to(device)).abs().max()))
    with torch.no_grad():
        times = interleaved(
            {
                "composite": lambda: reward(logits, target),
                "batched iou+dice": lambda: batched_iou_dice(logits, target, num_classes),
                "torchmetrics loop": lambda: torchmetrics_loop(logits, target, num_classes),
            },
            device,
            repeats,
        )
        parts = interleaved(term_fns(logits, target, num_classes), device, repeats)
        arg = interleaved({"argmax(1)": lambda: logits.argmax(1), "max(1).indices": lambda: logits.max(1).indices},
                          device, repeats)
    res: dict[str, Any] = {"size": size, "batch": batch, "num_classes": num_classes, "max_abs_diff_vs_torchmetrics": agree}
    res["times"] = {k: summary(v) for k, v in times.items()}
    res["parts"] = {k: summary(v) for k, v in parts.items()}
    res["argmax_variants"] = {k: summary(v) for k, v in arg.items()}
    res["argmax_over_max_indices"] = res["argmax_variants"]["argmax(1)"]["median_s"] / res["argmax_variants"]["max(1).indices"]["median_s"]
    loop = res["times"]["torchmetrics loop"]["median_s"]
    res["speedup_composite"] = loop / res["times"]["composite"]["median_s"]
    res["speedup_iou_dice"] = loop / res["times"]["batched iou+dice"]["median_s"]
    total = sum(p["median_s"] for p in res["parts"].values())
    res["shares"] = {k: p["median_s"] / total for k, p in res["parts"].items()}
    res["parts_sum_over_composite"] = total / res["times"]["composite"]["median_s"]
    return res


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="Batched CompositeReward vs a per-image torchmetrics loop")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--sizes", default="128,512", help="image sizes, comma-separated")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--repeats", type=int, default=7, help="timed repeats (after one warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default=str(RESULTS / "bench_reward.json"))
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"error: --device {args.device} asked for CUDA but torch.cuda.is_available() is False on this machine")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    results: dict[str, Any] = {**machine(device), "command": "python benchmarks/bench_reward.py " + " ".join(argv or sys.argv[1:])}
    print(f"device: {results['device']}, torch threads {results['torch_threads']}; {load_note(results)}")
    rows = [bench_size(int(s), args.batch, args.num_classes, device, args.repeats) for s in args.sizes.split(",")]
    results["rows"] = rows

    print(f"1. batched reward vs per-image torchmetrics loop (mean_iou + dice_score), B={args.batch}, K={args.num_classes} "
          f"(goal >= 5x); median of {args.repeats} interleaved repeats")
    print("   size   loop/composite (4 terms)   loop/batched iou+dice (same 2 terms)   max |diff| vs torchmetrics")
    for r in rows:
        extra = ""
        if gpu:
            t = r["times"]
            extra = (f"   (loop {t['torchmetrics loop']['median_s'] * 1e3:.2f} ms, composite {t['composite']['median_s'] * 1e3:.2f} ms, "
                     f"iou+dice {t['batched iou+dice']['median_s'] * 1e3:.2f} ms)")
        print(f"   {r['size']:4d}   {r['speedup_composite']:24.1f}x   {r['speedup_iou_dice']:36.1f}x   "
              f"{r['max_abs_diff_vs_torchmetrics']:.1e}{extra}")
    print("2. share of each part of the composite's time (parts timed in isolation)")
    names = list(rows[0]["shares"])
    print("   size   " + "   ".join(f"{n:>23s}" for n in names) + "   sum of parts / composite")
    for r in rows:
        print(f"   {r['size']:4d}   " + "   ".join(f"{100 * r['shares'][n]:22.1f}%" for n in names)
              + f"   {r['parts_sum_over_composite']:.2f}")
    print("3. argmax(1) / max(1).indices over the class dim (same result): "
          + ", ".join(f"{r['size']} px {r['argmax_over_max_indices']:.2f}x" for r in rows))
    finish(results, args.out)
    return results


if __name__ == "__main__":
    main()
