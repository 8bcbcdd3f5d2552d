"""How much of a digits run's val mIoU gap is memorised scenes, how much unseen handwriting?

For each run folder of the main job (``examples/train_voc_bandit.py --out DIR`` on the embedded digits), the newest
checkpoint is evaluated with the deterministic action s = mu on three sets of ``--n`` scenes each:

- ``train``: the first training scenes of the run itself (seen during training: same seed, layouts and glyphs);
- ``fresh``: new scenes drawn from the training glyphs (seed ``--fresh-seed``): unseen layouts, seen handwriting;
- ``val``: the run's validation scenes (val glyphs, the 20 % of scikit-learn's digits no training scene uses).

``train - fresh`` is what memorising scenes buys, ``fresh - val`` what unseen glyphs cost.

    python benchmarks/train_val_gap.py runs/digits-*            # one line per run, medians over runs at the end
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from _common import RESULTS, finish, machine  # noqa: E402
from agents.checkpoint import latest_complete_checkpoint  # noqa: E402
from agents.config import load_config  # noqa: E402
from agents.trainer import CoTrainer  # noqa: E402
from segbandit.data import make_dataset  # noqa: E402

SETS: tuple[str, ...] = ("train", "fresh", "val")


def gap(run: Path, n: int = 256, fresh_seed: int = 10_007) -> dict[str, Any]:
    """mIoU of the newest checkpoint in ``run`` on its training scenes, fresh train-glyph scenes and val scenes."""
    cfg = load_config(run / "config.json")
    if cfg.dataset != "digits":
        raise ValueError(f"{run}: a digits run is needed, got dataset {cfg.dataset!r}")
    ckpt, state = latest_complete_checkpoint(run)
    if ckpt is None:
        raise ValueError(f"{run}: no complete checkpoint")
    trainer = CoTrainer.from_config(cfg, 11, device="cpu")
    trainer.load_state_dict(state, restore_rng=False)
    data = {
        "train": make_dataset("digits", "train", seed=cfg.seed, image_size=cfg.crop_size, train=False, num_samples=n),
        "fresh": make_dataset("digits", "train", seed=fresh_seed, image_size=cfg.crop_size, train=False, num_samples=n),
        "val": make_dataset("digits", cfg.val_split, seed=0, image_size=cfg.crop_size, train=False,
                            num_samples=min(n, cfg.val_size or n)),
    }
    out: dict[str, Any] = {"run": str(run), "checkpoint": ckpt.name, "iteration": trainer.iteration, "seed": cfg.seed}
    for name in SETS:
        res = trainer.evaluate(DataLoader(data[name], batch_size=32), deterministic=True)
        out[name] = res["miou"]
    return out


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description="train / fresh-scene / val mIoU of digits runs (memorisation vs glyphs)")
    p.add_argument("runs", nargs="+", type=Path, help="run folders of examples/train_voc_bandit.py")
    p.add_argument("--n", type=int, default=256, help="scenes per set")
    p.add_argument("--fresh-seed", type=int, default=10_007)
    p.add_argument("--out", default=str(RESULTS / "train_val_gap.json"))
    args = p.parse_args(argv)
    rows = []
    print(f"{'run':40s} {'iter':>5s} {'train':>7s} {'fresh':>7s} {'val':>7s}  (mIoU %, s = mu, {args.n} scenes each)")
    for run in args.runs:
        r = gap(run, args.n, args.fresh_seed)
        rows.append(r)
        print(f"{str(run)[-40:]:40s} {r['iteration']:5d} " + " ".join(f"{100 * r[k]:7.2f}" for k in SETS))
    med = {k: statistics.median(r[k] for r in rows) for k in SETS}
    print(f"{'median':40s} {'':5s} " + " ".join(f"{100 * med[k]:7.2f}" for k in SETS))
    print(f"train - val {100 * (med['train'] - med['val']):.2f} points: memorised scenes (train - fresh) "
          f"{100 * (med['train'] - med['fresh']):.2f}, unseen glyphs (fresh - val) {100 * (med['fresh'] - med['val']):.2f}")
    results = {"machine": machine(torch.device("cpu")), "n": args.n, "rows": rows, "median": med}
    finish(results, args.out)
    return results


if __name__ == "__main__":
    main()
