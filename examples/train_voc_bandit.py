"""The main job: co-train a segmentor and a latent-space policy with Eq. 6 (CE + clipped PPO + KL to an EMA reference).

With no arguments it trains on the embedded digit scenes (no download; a few minutes on a CPU):

    python examples/train_voc_bandit.py

On PASCAL VOC 2012 (trainaug for training, val for evaluation), the paper's FCN-R50 setting:

    python examples/train_voc_bandit.py --data-root /data --preset voc-fcn-r50      # /data/VOCdevkit/VOC2012/...

Every knob is a flag (``--help``); a preset supplies the defaults and explicit flags override them.  Results go to
``--out`` (default ``runs/<preset>-<timestamp>``): ``config.json``, ``metrics.csv`` (training, one row per logged
iteration), ``eval.csv``, ``curves.png``, ``overlays.png``, ``final.md`` (val mIoU and per-class IoU),
``ckpt_*.pt`` checkpoints, and TensorBoard events in ``tb/`` when TensorBoard is installed.  ``--resume``
continues from the newest complete checkpoint in ``--out`` (on a CPU with ``--num-workers 0`` bit-identically).

Several GPUs (or CPU processes, gloo) with PyTorch's own DDP:

    torchrun --nproc_per_node=4 examples/train_voc_bandit.py --data-root /data --preset voc-fcn-r50 --sync-bn

``--batch-size`` is the GLOBAL batch: each of N processes reads ``batch-size / N`` images per step.  Only rank 0
writes files.  Bad data (missing root or split file, corrupt image, mask size or label values wrong) stops with
one line ``error: <file>: <problem>`` and exit code 2 before anything is written; ``--max-nonfinite`` skipped
steps in a row stop with exit code 3.  See docs/reliability.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import logging
import os
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

from agents.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    latest_complete_checkpoint,
    list_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)
from agents.config import (
    ACTION_MODES,
    EXPLICIT_NONE,
    LOGPROB_REDUCTIONS,
    OPTIMIZERS,
    PRESETS,
    SCHEDULES,
    TrainConfig,
    config_from_args,
    from_dict,
    resume_config,
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
from agents.distributed import (
    SINGLE,
    DistInfo,
    any_rank,
    assert_ranks_in_sync,
    broadcast_object,
    dist_info_from_env,
    init_process_group,
    shard,
)
from agents.trainer import REWARD_TERMS, CoTrainer, IterationBatchSampler, NonFiniteError, resolve_device
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
    "grad_norm", "lr", "skipped", "data_time", "step_time",
)  # fmt: skip


def _reward_weights(text: str) -> dict[str, float]:
    try:
        return parse_reward_weights(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _or_none(kind: type, words: tuple[str, ...]) -> Any:
    """argparse type: a number of ``kind``, or one of ``words`` for the field's None (EXPLICIT_NONE)."""

    def parse(text: str) -> Any:
        if text.lower() in words:
            return EXPLICIT_NONE
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or one of {', '.join(words)}, got {text!r}") from None

    return parse


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
    g.add_argument("--keep-checkpoints", type=int, default=None, help="keep the newest N ckpt_*.pt")
    g.add_argument("--eval-stochastic", action=argparse.BooleanOptionalAction, default=None,
                   help="the final evaluation also reports the sampled-action mIoU")
    g.add_argument("--sync-bn", action="store_true", default=False,
                   help="under torchrun: batch-norm statistics over the global batch (SyncBatchNorm)")
    g.add_argument("--check-data", action="store_true", default=False,
                   help="read every train and val sample before training (bad files stop the run up front)")
    g.add_argument("--log-every", type=int, default=None)
    g.add_argument("--num-overlays", type=int, default=None)
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=None, help="folder containing VOCdevkit (switches the dataset to VOC)")
    g.add_argument("--train-split", default=None, help="VOC: trainaug (default), train, trainval")
    g.add_argument("--crop-size", type=int, default=None, help="train crop / digits scene size")
    g.add_argument("--batch-size", type=int, default=None,
                   help="global batch; under torchrun each of N processes reads batch-size / N images")
    g.add_argument("--eval-batch-size", type=int, default=None)
    g.add_argument("--train-size", type=int, default=None, help="digits: number of distinct training scenes")
    g.add_argument("--val-size", "--eval-samples", dest="val_size", type=int, default=None,
                   help="evaluate on the first N val images")
    g.add_argument("--num-workers", type=int, default=None)
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="train-time augmentation (the dataset preset's train transforms)")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=sorted(SEGMENTORS), default=None)
    g.add_argument("--pretrained-backbone", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--modulation", choices=list(MODULATION_NAMES), default=None)
    g.add_argument("--attn-dim", type=_or_none(int, ("d", "none")), default=None,
                   help="inner width of the attention modulation; 'd' = the latent width, the paper")
    g.add_argument("--num-heads", type=int, default=None)
    g.add_argument("--aux-weight", type=float, default=None)
    g.add_argument("--class-weights", type=_or_none(_floats, ("none",)), default=None,
                   help="per-class CE weights, K comma-separated floats; 'none' = plain CE")
    g.add_argument("--policy-hidden", type=int, default=None)
    g.add_argument("--policy-blocks", type=int, default=None)
    g.add_argument("--logstd-bound", type=_or_none(float, ("none",)), default=None,
                   help="log sigma = bound * tanh(.) (Eq. 10); 'none' = unbounded (Table 8)")
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
    g.add_argument("--warmup-iters", type=int, default=None)
    g.add_argument("--poly-power", type=float, default=None)
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
        train = make_dataset("digits", cfg.train_split, seed=cfg.seed, image_size=cfg.crop_size, cache=True,
                             train=cfg.augment, **train_kw)
        # the validation scenes do not depend on the run's seed: runs with different seeds are compared on one set
        val = make_dataset("digits", cfg.val_split, seed=0, image_size=cfg.crop_size, cache=True, **val_kw)
        names = tuple(train.class_names)
    else:
        train = make_dataset("voc", cfg.train_split, root=cfg.data_root, image_size=cfg.crop_size)
        val = make_dataset("voc", cfg.val_split, root=cfg.data_root, image_size=cfg.crop_size)
        names = tuple(train.class_names)
        if cfg.val_size:
            val = Subset(val, range(min(cfg.val_size, len(val))))
    return train, val, len(names), names


def _loaders(cfg: TrainConfig, train: Dataset, val: Dataset, start: int, device: torch.device,
             info: DistInfo = SINGLE) -> tuple[DataLoader, DataLoader, IterationBatchSampler]:
    """Train loader (endless, resumable at batch ``start``; this rank's share of the global batch), val loader (this
    rank's share of the val images, no padding), and the train batch sampler."""
    workers = int(cfg.num_workers)
    common: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers > 0:
        common["persistent_workers"] = True
    per_rank = cfg.batch_size // info.world_size
    sampler = IterationBatchSampler(len(train), per_rank, seed=cfg.seed, start_iteration=start,
                                    num_replicas=info.world_size, rank=info.rank)
    # worker seeds; keeps the global torch RNG untouched (rank 0 keeps the single-process seed)
    gen = torch.Generator().manual_seed(cfg.seed + 100_003 * info.rank)
    train_loader = DataLoader(train, batch_sampler=sampler, generator=gen, **common)
    val_part = val if not info.enabled else Subset(val, list(shard(len(val), info)))
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    val_loader = DataLoader(val_part, batch_size=max(1, eval_bs // info.world_size), shuffle=False,
                            generator=torch.Generator().manual_seed(cfg.seed), **common)
    return train_loader, val_loader, sampler


# ----------------------------------------------------------------------------- data checks


def _one_line(err: BaseException) -> str:
    """The message of a user error on one line (a DataLoader worker wraps it in a traceback: keep its last line)."""
    text = str(err)
    if "Traceback" in text:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        text = lines[-1] if lines else text
        for prefix in ("segbandit.errors.DataError: ", "DataError: "):
            if text.startswith(prefix):
                text = text[len(prefix):]
    return " ".join(text.split())


def _check_files(ds: Dataset) -> None:
    """Every image and mask file a VOC split lists exists (a stat each: cheap, and names the first missing one)."""
    base = ds.dataset if isinstance(ds, Subset) else ds
    for kind in ("images", "masks"):
        for path in getattr(base, kind, []):
            if not os.path.isfile(path):
                raise DataError(f"{path}: {kind[:-1]} file listed in {getattr(base, 'list_file', 'the split')} not found")


def _discard(batch: list[Any]) -> None:
    return None


def validate_data(cfg: TrainConfig, train: Dataset, val: Dataset, first_batch: list[int], full: bool = False) -> None:
    """Raise DataError (one line naming the file) on bad data before training writes anything.

    Always: every listed file exists, the samples of the first training batch and the first val image decode
    with matching mask size and valid labels.  ``full``: every train and val sample is read.
    """
    _check_files(train)
    _check_files(val)
    for i in first_batch:
        train[i]
    if len(val):
        val[0]
    if full:
        for ds in (train, val):
            loader = DataLoader(ds, batch_size=1, num_workers=int(cfg.num_workers), collate_fn=_discard)
            try:
                for _ in loader:
                    pass
            except DataError as err:
                raise DataError(_one_line(err)) from None


# ----------------------------------------------------------------------------- output folder


def truncate_csv(path: Path, last_iteration: int) -> None:
    """Keep the rows of ``path`` up to ``last_iteration`` (a resumed run re-logs the later ones) and drop a line a
    crash cut short; rewritten atomically."""
    if not path.is_file():
        return
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the last line was cut mid-write
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    col = header.index("iteration") if "iteration" in header else None
    keep = [r for r in body if len(r) == len(header) and (col is None or float(r[col]) <= last_iteration)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(keep)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


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
    """Parse flags, train, evaluate; returns the final metrics (val mIoU, per-class IoU, timings, paths).

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it joins the process group (NCCL on GPUs, gloo on
    CPUs) unless one is already initialised, trains with DDP, and leaves the group it joined at the end.
    User errors raise :class:`segbandit.errors.DataError` / :class:`agents.trainer.NonFiniteError`; :func:`cli`
    turns them into one line on stderr and an exit code.
    """
    t_start = time.time()
    parser = build_parser()
    args = parser.parse_args(argv)
    info = dist_info_from_env(os.environ)  # the script, not the library, reads torchrun's variables
    joined = False
    if info.enabled and not torch.distributed.is_initialized():
        want = resolve_device(args.device or "auto")
        if want.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        init_process_group(info, want.type)
        joined = True
    try:
        return _run(args, parser, info, t_start)
    finally:
        if joined and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser, info: DistInfo, t_start: float) -> dict[str, Any]:
    main_rank = info.is_main
    try:
        cfg = config_from_args(args)
    except ValueError as err:  # an invalid value (--batch-size 0, --max-iters -1, ...): one line, exit 2, no work
        parser.error(str(err))
    if cfg.out is None and not cfg.resume:  # one timestamped folder for every rank
        cfg = from_dict({**cfg.to_dict(), "out": broadcast_object(
            str(Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"), info)})
    out = _resolve_out(cfg, parser)
    state = None
    ckpt = None
    if cfg.resume:
        ckpt, state = latest_complete_checkpoint(out)
        if state is None:
            parser.error(f"--resume: no complete ckpt_*.pt in {out}")
        explicit = {k: v for k, v in vars(args).items() if v is not None and k in cfg.to_dict()}
        if "reward_weights" in explicit:
            explicit["reward_weights"] = cfg.reward_weights
        if args.data_root is not None:  # --data-root switches the dataset (config_from_args): compare that too
            explicit["dataset"] = cfg.dataset
        try:
            cfg = resume_config(state["config"], {**explicit, "resume": True, "out": str(out)})
        except ValueError as err:
            parser.error(str(err))
    else:
        cfg = from_dict({**cfg.to_dict(), "out": str(out)})
    if cfg.batch_size % info.world_size:
        parser.error(f"--batch-size {cfg.batch_size} (the global batch) must be divisible by the "
                     f"{info.world_size} processes")
    if cfg.dataset == "digits" and not cfg.data_root and main_rank:
        print(DIGITS_NOTICE, flush=True)
    _install_log_handler()
    device = resolve_device(cfg.device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)

    # data first: bad data stops here, before anything in --out is written or overwritten
    train_ds, val_ds, num_classes, class_names = build_datasets(cfg)
    start = int(state["iteration"]) if state is not None else 0
    train_loader, val_loader, sampler = _loaders(cfg, train_ds, val_ds, start, device, info)
    validate_data(cfg, train_ds, val_ds, sampler.batch(start), full=args.check_data)

    trainer = CoTrainer.from_config(cfg, num_classes, device=device, dist_info=info,
                                    sync_bn=bool(args.sync_bn or (state or {}).get("sync_bn", False)))
    if state is not None:
        trainer.load_state_dict(state)
        if "data" in state:
            sampler.load_state_dict(state["data"])
        if main_rank:
            tqdm.write(f"resumed from {ckpt} at iteration {trainer.iteration}")
    del state
    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        save_config(cfg, out / "config.json")
        if cfg.resume:
            truncate_csv(out / "metrics.csv", start)
            truncate_csv(out / "eval.csv", start)
    n_over = min(cfg.num_overlays, len(val_ds)) if main_rank else 0
    overlay_batch = [val_ds[i] for i in range(n_over)]
    over_x = torch.stack([x for x, _ in overlay_batch]) if n_over else None
    over_y = torch.stack([y for _, y in overlay_batch]) if n_over else None

    metrics_log = CSVLogger(out / "metrics.csv", append=cfg.resume) if main_rank else None
    eval_log = CSVLogger(out / "eval.csv", append=cfg.resume) if main_rank else None
    train_rows: list[dict[str, Any]] = read_csv(out / "metrics.csv") if cfg.resume and main_rank else []
    eval_rows: list[dict[str, Any]] = read_csv(out / "eval.csv") if cfg.resume and main_rank else []
    tb = make_tensorboard(out / "tb") if main_rank else None

    def run_eval(it: int) -> dict[str, Any]:
        res = trainer.evaluate(val_loader, deterministic=True)  # a collective under DDP
        if not main_rank:
            return res
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

    def save(it: int) -> None:
        ckpt_state = trainer.state_dict()  # a collective under DDP (every rank's RNG states)
        ckpt_state["data"] = sampler.state_dict(it)
        if info.enabled:
            assert_ranks_in_sync([trainer.segmentor, trainer.policy, trainer.objective], info)
        if main_rank:
            save_checkpoint(out / checkpoint_name(it), ckpt_state, keep=cfg.keep_checkpoints)

    last_eval: dict[str, Any] | None = None
    data_s = step_s = 0.0  # seconds this process spent waiting for batches and in train_step (this session)
    loader_iter = iter(train_loader)
    bar = tqdm(total=cfg.max_iters, initial=start, desc=f"{cfg.algo}/{cfg.schedule}", dynamic_ncols=True,
               mininterval=1.0, file=sys.stderr, disable=not main_rank)
    try:
        while trainer.iteration < cfg.max_iters:
            data_error: DataError | None = None
            t0 = time.perf_counter()
            try:
                images, masks = next(loader_iter)
            except DataError as err:  # a bad file mid-run: stop without writing a checkpoint for a partial step
                data_error = DataError(_one_line(err))
            t1 = time.perf_counter()
            if any_rank(data_error is not None, info, device):  # every rank stops together
                raise data_error or DataError(f"another rank hit bad data at iteration {trainer.iteration + 1}")
            stats = trainer.train_step(images, masks)
            t2 = time.perf_counter()
            data_s, step_s = data_s + (t1 - t0), step_s + (t2 - t1)
            stats.update(data_time=t1 - t0, step_time=t2 - t1)
            it = int(stats["iteration"])
            bar.update(1)
            postfix = {"loss": f"{stats['loss']:.3f}", "reward": f"{stats['reward_total']:.3f}"}
            if last_eval is not None:
                postfix["val_mIoU"] = f"{last_eval['miou']:.3f}"
            bar.set_postfix(postfix, refresh=False)
            if main_rank and (it % cfg.log_every == 0 or it == cfg.max_iters or it == start + 1 or stats["skipped"]):
                row = {"iteration": it, "phase": stats["phase"], **{k: stats[k] for k in TRAIN_KEYS}}
                row["time_s"] = time.time() - t_start
                metrics_log.log(row)
                train_rows.append(row)
                log_scalars(tb, "train", row, it)
            if it % cfg.eval_every == 0 or it == cfg.max_iters:
                last_eval = run_eval(it)
                bar.set_postfix({**postfix, "val_mIoU": f"{last_eval['miou']:.3f}"})
            if it % cfg.save_every == 0 or it == cfg.max_iters:
                save(it)
    finally:
        bar.close()
    train_time = time.time() - t_start

    if last_eval is not None:
        final = last_eval
    elif start >= cfg.max_iters:  # resumed a finished run: its last evaluation is already in eval.csv; do not log twice
        final = trainer.evaluate(val_loader, deterministic=True)
    else:
        final = run_eval(trainer.iteration)
    sampled = trainer.evaluate(val_loader, deterministic=False) if cfg.eval_stochastic else None
    digest = assert_ranks_in_sync([trainer.segmentor, trainer.policy, trainer.objective], info) if info.enabled else None
    wall = time.time() - t_start
    rss = _peak_rss_mb()
    if main_rank:
        title = (f"{cfg.preset}: {cfg.model}, {cfg.algo}, {cfg.schedule}, {trainer.iteration} iterations "
                 f"({'digits' if cfg.dataset == 'digits' else 'VOC ' + cfg.val_split})")
        table = format_final_table(final, class_names, sampled, title=title)
        share = data_s / max(data_s + step_s, 1e-9)
        footer = (f"\nwall time {wall / 60:.2f} min (training loop and evals {train_time / 60:.2f} min), "
                  f"peak RSS {rss:.0f} MB, device {device}, skipped steps {len(trainer.skipped_iterations)}\n"
                  f"data: {data_s:.1f} s waiting for batches, {step_s:.1f} s in training steps "
                  f"({100 * share:.1f}% of the step time spent producing data)\n")
        if info.enabled:
            footer += (f"DDP: {info.world_size} processes ({torch.distributed.get_backend()}), global batch "
                       f"{cfg.batch_size}, sync-bn {trainer.sync_bn}, ranks in sync (state sha256 {digest[:16]})\n")
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
        "data_time_s": data_s,
        "step_time_s": step_s,
        "peak_rss_mb": rss,
        "out": str(out),
        "rank": info.rank,
        "world_size": info.world_size,
    }
    if digest is not None:
        result["state_sha256"] = digest
    if sampled is not None:
        result["miou_sampled"] = sampled["miou"]
    return result


EXIT_DATA_ERROR = 2
EXIT_NONFINITE = 3


def cli(argv: list[str] | None = None) -> int:
    """The command line: :func:`main`, with user errors as ``error: ...`` on stderr (no traceback).

    Exit codes: 0 done, 2 bad data or bad flags, 3 too many non-finite steps in a row.
    """
    try:
        main(argv)
    except DataError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_DATA_ERROR
    except NonFiniteError as err:
        print(f"error: {_one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_NONFINITE
    return 0


if __name__ == "__main__":
    sys.exit(cli())
