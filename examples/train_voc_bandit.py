"""The main job: co-train a segmentor and a latent-space policy with Eq. 6 (CE + clipped PPO + KL to an EMA reference).

With no arguments it trains on the embedded digit scenes (no download; a few minutes on a CPU):

    python examples/train_voc_bandit.py

On PASCAL VOC 2012 (trainaug for training, val for evaluation), the paper's FCN-R50 setting:

    python examples/train_voc_bandit.py --data-root /data --preset voc-fcn-r50      # /data/VOCdevkit/VOC2012/...

Every knob is a flag (``--help``); a preset supplies the defaults and explicit flags override them.  Results go to
``--out`` (default ``runs/<preset>-<timestamp>``): ``config.json``, ``metrics.csv`` (training, one row per logged
iteration), ``eval.csv``, ``curves.png``, ``overlays.png``, ``final.md`` (val mIoU and per-class IoU),
``ckpt_*.pt`` checkpoints, and TensorBoard events in ``tb/`` when TensorBoard is installed.  ``--resume``
continues from the newest checkpoint in ``--out``.
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from agents.checkpoint import checkpoint_name, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from agents.config import (
    ACTION_MODES,
    LOGPROB_REDUCTIONS,
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    TrainConfig,
    config_from_args,
    from_dict,
    save_config,
)
from agents.objective import ALGOS
from agents.reporting import (
    CSVLogger,
    format_final_table,
    log_scalars,
    make_tensorboard,
    read_csv,
    save_curves,
    save_overlays,
)
from agents.trainer import REWARD_TERMS, CoTrainer, IterationBatchSampler, resolve_device
from segbandit.baselines import BASELINES
from segbandit.data import make_dataset
from segbandit.errors import DataError
from segbandit.models import SEGMENTORS
from segbandit.modulation import MODULATION_NAMES
from segbandit.rewards import parse_reward_weights

DIGITS_NOTICE = (
    "No --data-root given: training on the embedded DigitScenes (11 classes, built from scikit-learn's digits, "
    "no download); pass --data-root /path/containing/VOCdevkit to train on PASCAL VOC 2012 trainaug "
    "(--preset voc-fcn-r50 is the paper's FCN setting)."
)
TRAIN_KEYS: tuple[str, ...] = (
    "loss", "loss_ce", "loss_aux", "loss_policy", "loss_kl", "loss_critic", "loss_entropy",
    *(f"reward_{k}" for k in REWARD_TERMS),
    "ratio", "clip_fraction", "kl", "approx_kl", "entropy", "advantage", "baseline", "log_ratio_max", "nonfinite_ratio",
    "grad_norm", "lr", "skipped",
)  # fmt: skip


def _reward_weights(text: str) -> dict[str, float]:
    try:
        return parse_reward_weights(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The main job's flags.  Every default is None: the preset fills in what is not given."""
    p = argparse.ArgumentParser(
        prog="train_voc_bandit.py",
        description="Co-train a segmentor and a latent-space Gaussian policy (Eq. 6). No arguments: digits on CPU.",
        epilog="Unset flags take the preset's value (agents.config.PRESETS).",
    )
    add = p.add_argument
    g = p.add_argument_group("run")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="defaults for every knob (digits without --data-root, voc-fcn-r50 with it)")
    g.add_argument("--out", default=None, help="output folder (default runs/<preset>-<timestamp>)")
    g.add_argument("--resume", action="store_true", default=None,
                   help="continue from the newest checkpoint in --out (default: the newest runs/<preset>-* run)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="bf16 autocast on CUDA")
    g.add_argument("--max-iters", type=int, default=None)
    g.add_argument("--eval-every", type=int, default=None)
    g.add_argument("--save-every", type=int, default=None)
    g.add_argument("--log-every", type=int, default=None)
    g.add_argument("--num-overlays", type=int, default=None)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=None, help="folder containing VOCdevkit (switches the dataset to VOC)")
    g.add_argument("--train-split", default=None, help="VOC: trainaug (default), train, trainval")
    g.add_argument("--crop-size", type=int, default=None, help="train crop / digits scene size")
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--eval-batch-size", type=int, default=None)
    g.add_argument("--train-size", type=int, default=None, help="digits: number of distinct training scenes")
    g.add_argument("--val-size", "--eval-samples", dest="val_size", type=int, default=None,
                   help="evaluate on the first N val images")
    g.add_argument("--num-workers", type=int, default=None)
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=sorted(SEGMENTORS), default=None)
    g.add_argument("--pretrained-backbone", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--modulation", choices=list(MODULATION_NAMES), default=None)
    g.add_argument("--attn-dim", type=int, default=None)
    g.add_argument("--num-heads", type=int, default=None)
    g.add_argument("--aux-weight", type=float, default=None)
    g.add_argument("--policy-hidden", type=int, default=None)
    g.add_argument("--policy-blocks", type=int, default=None)
    g.add_argument("--logstd-bound", type=float, default=None)
    g.add_argument("--action-mode", choices=list(ACTION_MODES), default=None)
    g = p.add_argument_group("RL objective")
    g.add_argument("--algo", choices=list(ALGOS), default=None)
    g.add_argument("--schedule", choices=list(SCHEDULES), default=None)
    g.add_argument("--lambda-policy", type=float, default=None)
    g.add_argument("--lambda-kl", type=float, default=None)
    g.add_argument("--clip-eps", type=float, default=None)
    g.add_argument("--tau", type=float, default=None, help="EMA baseline momentum (Eq. 16)")
    g.add_argument("--eta", type=float, default=None, help="EMA reference momentum (Eq. 19)")
    g.add_argument("--a-min", type=float, default=None)
    g.add_argument("--a-max", type=float, default=None)
    g.add_argument("--baseline", choices=sorted(BASELINES), default=None)
    g.add_argument("--reward-weights", type=_reward_weights, default=None,
                   help="lambda for iou,dice,ce,boundary, e.g. 1,1,1,1 (Eq. 15)")
    g.add_argument("--logprob-reduction", choices=list(LOGPROB_REDUCTIONS), default=None)
    g.add_argument("--entropy-coef", type=float, default=None)
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=list(OPTIMIZERS), default=None)
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--policy-lr", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--grad-clip", type=float, default=None, help="max global gradient norm (off by default)")
    g.add_argument("--max-nonfinite", type=int, default=None)
    del add
    return p


# ----------------------------------------------------------------------------- data


def build_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset, int, tuple[str, ...]]:
    """(train, val, num_classes, class_names) for ``cfg``: DigitScenes or VOC (trainaug/val)."""
    if cfg.dataset == "digits":
        train_kw = {"num_samples": cfg.train_size} if cfg.train_size else {}
        val_kw = {"num_samples": cfg.val_size} if cfg.val_size else {}
        train = make_dataset("digits", cfg.train_split, seed=cfg.seed, image_size=cfg.crop_size, **train_kw)
        # the validation scenes do not depend on the run's seed: runs with different seeds are compared on one set
        val = make_dataset("digits", cfg.val_split, seed=0, image_size=cfg.crop_size, **val_kw)
        names = tuple(train.class_names)
    else:
        train = make_dataset("voc", cfg.train_split, root=cfg.data_root, image_size=cfg.crop_size)
        val = make_dataset("voc", cfg.val_split, root=cfg.data_root, image_size=cfg.crop_size)
        names = tuple(train.class_names)
        if cfg.val_size:
            val = Subset(val, range(min(cfg.val_size, len(val))))
    return train, val, len(names), names


def _loaders(cfg: TrainConfig, train: Dataset, val: Dataset, start: int, device: torch.device):
    workers = int(cfg.num_workers)
    common: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        common["persistent_workers"] = True
    sampler = IterationBatchSampler(len(train), cfg.batch_size, seed=cfg.seed, start_iteration=start)
    gen = torch.Generator().manual_seed(cfg.seed)  # worker seeds; keeps the global torch RNG untouched
    train_loader = DataLoader(train, batch_sampler=sampler, generator=gen, **common)
    val_loader = DataLoader(val, batch_size=cfg.eval_batch_size or cfg.batch_size, shuffle=False,
                            generator=torch.Generator().manual_seed(cfg.seed), **common)
    return train_loader, val_loader


# ----------------------------------------------------------------------------- output folder


def _resolve_out(cfg: TrainConfig, parser: argparse.ArgumentParser) -> Path:
    if cfg.out is not None:
        out = Path(cfg.out)
    elif cfg.resume:
        runs = sorted(
            (p for p in Path("runs").glob(f"{cfg.preset}-*") if latest_checkpoint(p) is not None),
            key=lambda p: p.stat().st_mtime,
        )
        if not runs:
            parser.error(f"--resume without --out: no runs/{cfg.preset}-* folder with a checkpoint; pass --out")
        out = runs[-1]
    else:
        out = Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if cfg.resume and latest_checkpoint(out) is None:
        parser.error(f"--resume: no ckpt_*.pt in {out}")
    if not cfg.resume and list_checkpoints(out):
        parser.error(f"{out} already holds checkpoints; pass --resume to continue that run or choose another --out")
    return out


class _TqdmHandler(logging.Handler):
    """Route the trainer's warnings (skipped steps) through tqdm so they do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _install_log_handler() -> None:
    log = logging.getLogger("agents")
    if not any(isinstance(h, _TqdmHandler) for h in log.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ----------------------------------------------------------------------------- the job


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse flags, train, evaluate; returns the final metrics (val mIoU, per-class IoU, timings, paths)."""
    t_start = time.time()
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    out = _resolve_out(cfg, parser)
    state = None
    if cfg.resume:
        ckpt = latest_checkpoint(out)
        state = load_checkpoint(ckpt)
        explicit = {k: v for k, v in vars(args).items() if v is not None and k in cfg.to_dict()}
        if "reward_weights" in explicit:
            explicit["reward_weights"] = cfg.reward_weights
        cfg = from_dict({**state["config"], **explicit, "resume": True, "out": str(out)})
    else:
        cfg = from_dict({**cfg.to_dict(), "out": str(out)})
    if cfg.dataset == "digits" and not cfg.data_root:
        print(DIGITS_NOTICE, flush=True)
    _install_log_handler()
    device = resolve_device(cfg.device)

    train_ds, val_ds, num_classes, class_names = build_datasets(cfg)
    trainer = CoTrainer.from_config(cfg, num_classes, device=device)
    if state is not None:
        trainer.load_state_dict(state)
        tqdm.write(f"resumed from {latest_checkpoint(out)} at iteration {trainer.iteration}")
    start = trainer.iteration
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.json")
    train_loader, val_loader = _loaders(cfg, train_ds, val_ds, start, device)
    n_over = min(cfg.num_overlays, len(val_ds))
    overlay_batch = [val_ds[i] for i in range(n_over)]
    over_x = torch.stack([x for x, _ in overlay_batch]) if n_over else None
    over_y = torch.stack([y for _, y in overlay_batch]) if n_over else None

    metrics_log = CSVLogger(out / "metrics.csv", append=cfg.resume)
    eval_log = CSVLogger(out / "eval.csv", append=cfg.resume)
    train_rows: list[dict[str, Any]] = read_csv(out / "metrics.csv") if cfg.resume else []
    eval_rows: list[dict[str, Any]] = read_csv(out / "eval.csv") if cfg.resume else []
    tb = make_tensorboard(out / "tb")

    def run_eval(it: int) -> dict[str, Any]:
        res = trainer.evaluate(val_loader, deterministic=True)
        row = {"iteration": it, **{k: v for k, v in res.items() if k != "per_class_iou"}}
        row.update({f"iou_{name}": v for name, v in zip(class_names, res["per_class_iou"])})
        row["time_s"] = time.time() - t_start
        eval_log.log(row)
        eval_rows.append(row)
        log_scalars(tb, "val", row, it)
        save_curves(out / "curves.png", train_rows, eval_rows)
        if over_x is not None:
            preds = trainer.predict(over_x, deterministic=True).argmax(1)
            save_overlays(out / "overlays.png", over_x, over_y, preds, title=f"iteration {it}: val mIoU {res['miou']:.3f}")
        return res

    last_eval: dict[str, Any] | None = None
    loader_iter = iter(train_loader)
    bar = tqdm(total=cfg.max_iters, initial=start, desc=f"{cfg.algo}/{cfg.schedule}", dynamic_ncols=True,
               mininterval=1.0, file=sys.stderr)
    try:
        while trainer.iteration < cfg.max_iters:
            images, masks = next(loader_iter)
            stats = trainer.train_step(images, masks)
            it = int(stats["iteration"])
            bar.update(1)
            postfix = {"loss": f"{stats['loss']:.3f}", "reward": f"{stats['reward_total']:.3f}"}
            if last_eval is not None:
                postfix["val_mIoU"] = f"{last_eval['miou']:.3f}"
            bar.set_postfix(postfix, refresh=False)
            if it % cfg.log_every == 0 or it == cfg.max_iters or it == start + 1 or stats["skipped"]:
                row = {"iteration": it, "phase": stats["phase"], **{k: stats[k] for k in TRAIN_KEYS}}
                row["time_s"] = time.time() - t_start
                metrics_log.log(row)
                train_rows.append(row)
                log_scalars(tb, "train", row, it)
            if it % cfg.eval_every == 0 or it == cfg.max_iters:
                last_eval = run_eval(it)
                bar.set_postfix({**postfix, "val_mIoU": f"{last_eval['miou']:.3f}"})
            if it % cfg.save_every == 0 or it == cfg.max_iters:
                save_checkpoint(out / checkpoint_name(it), trainer.state_dict(), keep=cfg.keep_checkpoints)
    finally:
        bar.close()
    train_time = time.time() - t_start

    final = last_eval if last_eval is not None else run_eval(trainer.iteration)
    sampled = trainer.evaluate(val_loader, deterministic=False) if cfg.eval_stochastic else None
    title = (f"{cfg.preset}: {cfg.model}, {cfg.algo}, {cfg.schedule}, {trainer.iteration} iterations "
             f"({'digits' if cfg.dataset == 'digits' else 'VOC ' + cfg.val_split})")
    table = format_final_table(final, class_names, sampled, title=title)
    wall = time.time() - t_start
    rss = _peak_rss_mb()
    footer = (f"\nwall time {wall / 60:.2f} min (training loop and evals {train_time / 60:.2f} min), "
              f"peak RSS {rss:.0f} MB, device {device}, skipped steps {len(trainer.skipped_iterations)}\n")
    (out / "final.md").write_text(table + footer)
    print(table + footer, flush=True)
    if tb is not None:
        tb.close()
    result: dict[str, Any] = {
        "miou": final["miou"],
        "pixel_acc": final["pixel_acc"],
        "mean_dice": final["mean_dice"],
        "reward_total": final["reward_total"],
        "per_class_iou": dict(zip(class_names, final["per_class_iou"])),
        "iterations": trainer.iteration,
        "skipped_iterations": list(trainer.skipped_iterations),
        "wall_time_s": wall,
        "peak_rss_mb": rss,
        "out": str(out),
    }
    if sampled is not None:
        result["miou_sampled"] = sampled["miou"]
    return result


if __name__ == "__main__":
    try:
        main()
    except DataError as err:
        sys.exit(f"error: {err}")
