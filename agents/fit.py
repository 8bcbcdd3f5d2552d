"""``fit(cfg)``: a whole co-training run — data, loop, evaluation, checkpoints, logs and resume — as a library call.

The main job (``examples/train_voc_bandit.py``) parses flags into a :class:`~agents.config.TrainConfig` and calls
:func:`fit`; the ablation harness and the tests call it too.  Per iteration: the next batch, one
:meth:`agents.trainer.CoTrainer.train_step` (one bandit step, Eq. 6), a ``metrics.csv`` row every ``log_every``,
an evaluation every ``eval_every`` (``eval.csv``, ``curves.png``, ``overlays.png``), a checkpoint every
``save_every``; at the end ``final.md``.

User errors are exceptions with one-line messages, raised before any work where they can be: :class:`ConfigError`
(a value, the output folder, the device, a resume that would change the run), :class:`segbandit.errors.DataError`
(bad data), :class:`agents.trainer.NonFiniteError` (too many non-finite steps in a row),
:class:`agents.atomic.WriteError` (a full disk).  The script maps each to an exit code.
"""
from __future__ import annotations

import contextlib
import logging
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from agents.checkpoint import (
    checkpoint_name,
    latest_checkpoint,
    latest_complete_checkpoint,
    list_checkpoints,
    remove_stale_temporaries,
    save_checkpoint,
)
from agents.config import TrainConfig, from_dict, resume_config, save_config
from agents.datasets import build_datasets, build_domains, build_loaders, eval_loader, one_line, validate_data
from agents.distributed import assert_ranks_in_sync
from agents.reporting import (
    CSVLogger,
    format_domains,
    format_final_table,
    log_scalars,
    make_tensorboard,
    read_csv,
    save_curves,
    save_overlays,
    truncate_csv,
)
from agents.trainer import REWARD_TERMS, RSS_KEYS, CoTrainer, NonFiniteError, resolve_device
from segbandit.distributed import SINGLE, DistInfo, any_rank, broadcast_object
from segbandit.errors import DataError

DIGITS_NOTICE = (
    "No --data-root given: training on the embedded DigitScenes (11 classes, built from scikit-learn's digits, "
    "no download); pass --data-root /path/containing/VOCdevkit to train on PASCAL VOC 2012 trainaug "
    "(--preset voc-fcn-r50 is the paper's FCN setting)."
)
TRAIN_KEYS: tuple[str, ...] = (
    "loss", "loss_ce", "loss_aux", "loss_policy", "loss_kl", "loss_critic", "loss_entropy",
    *(f"reward_{k}" for k in REWARD_TERMS), "reward_std_actions", "reward_std_images",
    "ratio", "clip_fraction", "kl", "approx_kl", "entropy", "advantage", "baseline", "log_ratio_max", "nonfinite_ratio",
    "ratio_final", "clip_fraction_final", "grad_norm", "lr", "skipped", "data_time", "step_time",
)  # fmt: skip


class ConfigError(ValueError):
    """A run that cannot start as asked (a value, the output folder, the device, a resume): one line, no work done."""


# ----------------------------------------------------------------------------- before any work


def check_device(cfg: TrainConfig) -> torch.device:
    """The device of ``cfg``; ConfigError when it names an accelerator this machine does not have."""
    try:
        device = resolve_device(cfg.device)
    except RuntimeError as err:
        raise ConfigError(f"--device {cfg.device}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {cfg.device}: CUDA is not available here (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {cfg.device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def check_writable(out: Path) -> None:
    """ConfigError unless files can be written in ``out``: the folder is made (with any missing parents) and a
    temporary file written there; folders it had to make are removed again, so a later error leaves nothing behind."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    made: list[Path] = []  # the folders this check creates, deepest first
    probe = out.absolute()
    while not probe.exists():
        made.append(probe)
        probe = probe.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write there ({err.strerror or err})") from None
    finally:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()


def resolve_out(cfg: TrainConfig) -> Path:
    """The run's folder: ``cfg.out``; with ``resume`` and no ``out`` the newest ``runs/<preset>-*`` with a checkpoint;
    else ``runs/<preset>-<timestamp>``.  ConfigError for a resume without a checkpoint or a fresh run into one."""
    if cfg.out is not None:
        out = Path(cfg.out)
    elif cfg.resume:
        runs = sorted(
            (p for p in Path("runs").glob(f"{cfg.preset}-*") if latest_checkpoint(p) is not None),
            key=lambda p: p.stat().st_mtime,
        )
        if not runs:
            raise ConfigError(f"--resume without --out: no runs/{cfg.preset}-* folder with a checkpoint; pass --out")
        out = runs[-1]
    else:
        out = Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if cfg.resume and latest_checkpoint(out) is None:
        raise ConfigError(f"--resume: no ckpt_*.pt in {out}")
    if not cfg.resume and list_checkpoints(out):
        raise ConfigError(f"{out} already holds checkpoints; pass --resume to continue that run or choose another --out")
    return out


def resolve_run(
    cfg: TrainConfig, explicit: Mapping[str, Any] | None = None, info: DistInfo = SINGLE
) -> tuple[TrainConfig, Path, dict[str, Any] | None, Path | None]:
    """``(cfg, out, state, checkpoint)`` of the run ``cfg`` asks for: a fresh one, or the saved run it resumes.

    ``explicit``: the fields the user set (flags), the only ones a resume compares with the saved config
    (:func:`agents.config.resume_config`); None = every field of ``cfg`` is taken as asked.
    """
    if cfg.out is None and not cfg.resume:  # one timestamped folder for every rank
        stamp = broadcast_object(str(Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"), info)
        cfg = from_dict({**cfg.to_dict(), "out": stamp})
    out = resolve_out(cfg)
    if not cfg.resume:
        return from_dict({**cfg.to_dict(), "out": str(out)}), out, None, None
    ckpt, state = latest_complete_checkpoint(out)
    if state is None:
        raise ConfigError(f"--resume: no complete ckpt_*.pt in {out}")
    given = dict(cfg.to_dict() if explicit is None else explicit)
    try:
        cfg = resume_config(state["config"], {**given, "resume": True, "out": str(out)})
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return cfg, out, state, ckpt


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


# ----------------------------------------------------------------------------- the run


def evaluate_domains(trainer: CoTrainer, cfg: TrainConfig, domains: list[tuple[str, str, Any]],
                     source: Mapping[str, Any], info: DistInfo = SINGLE) -> list[dict[str, Any]]:
    """One row per domain (the run's own val set first, as ``source``): ``domain``, ``split``, ``num_images``,
    ``miou``, ``pixel_acc``, ``mean_dice``, ``per_class_iou`` (s = mu; a collective under DDP)."""
    keys = ("miou", "pixel_acc", "mean_dice", "per_class_iou", "num_images")
    rows = [{"domain": f"{cfg.dataset} (source)", "split": cfg.val_split, **{k: source.get(k) for k in keys}}]
    for name, split, ds in domains:
        try:
            res = trainer.evaluate(eval_loader(cfg, ds, info), deterministic=True)
        except DataError as err:
            raise DataError(one_line(err)) from None
        rows.append({"domain": name, "split": split, **{k: res[k] for k in keys}})
    return rows


def fit(
    cfg: TrainConfig,
    *,
    explicit: Mapping[str, Any] | None = None,
    dist_info: DistInfo = SINGLE,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_end: Callable[[CoTrainer, Any], Mapping[str, Any]] | None = None,
    save_checkpoints: bool = True,
    stop_on_nonfinite: bool = False,
    log: Callable[[str], None] = print,
    data: tuple[Any, Any, int, tuple[str, ...]] | None = None,
    setup: Callable[[CoTrainer, Any], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` to ``max_iters`` (or resume it), evaluate, write the run folder; returns the final metrics.

    Args:
        cfg: the run (``cfg.resume`` continues the newest complete checkpoint in ``cfg.out``).
        explicit: on resume, the fields the user set (see :func:`resolve_run`).
        dist_info: this process's place under ``torchrun`` (the caller joins the process group); every rank calls
            ``fit``, only rank 0 writes files.
        on_step: called with every iteration's statistics (python floats; see ``CoTrainer.train_step``).
        on_end: called with the trainer and the val loader after the final evaluation; what it returns is the
            result's ``"diagnostics"`` (e.g. :func:`agents.diagnostics.policy_diagnostics` on a batch).
        save_checkpoints: write ``ckpt_*.pt`` every ``save_every`` and at the end (off: a throw-away run).
        stop_on_nonfinite: too many non-finite steps in a row end the training (``result["failed"]`` holds the
            reason) and the model is evaluated as it stands, instead of raising :class:`NonFiniteError`.
        log: where the notices and the final table go (rank 0).
        data: (train, val, num_classes, class_names) to train on instead of ``cfg``'s datasets (a continual step).
        setup: called with the trainer and the train set once built, before the first step (a continual step grows
            the previous step's model into it and attaches its distillation).

    Returns ``miou``, ``pixel_acc``, ``mean_dice``, ``reward_total``, ``per_class_iou`` ({class: IoU}),
    ``iterations``, ``skipped_iterations``, ``wall_time_s``, ``data_time_s``, ``step_time_s``, ``peak_rss_mb``,
    ``out``, ``rank``, ``world_size``, ``failed`` (None or the reason), and ``miou_sampled`` with
    ``eval_stochastic``, ``state_sha256`` under DDP.
    """
    t_start = time.time()
    info = dist_info
    main_rank = info.is_main
    if cfg.batch_size % info.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} (the global batch) must be divisible by the "
                          f"{info.world_size} processes")  # fmt: skip
    device = check_device(cfg)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    cfg, out, state, ckpt = resolve_run(cfg, explicit, info)
    if main_rank:
        check_writable(out)
    if cfg.dataset == "digits" and not cfg.data_root and main_rank:
        log(DIGITS_NOTICE)
    _install_log_handler()

    # data first: bad data stops here, before anything in --out is written or overwritten
    train_ds, val_ds, num_classes, class_names = data if data is not None else build_datasets(cfg)
    try:
        domains = build_domains(cfg, num_classes)  # --eval-domains: checked now, evaluated after training
    except ValueError as err:
        raise ConfigError(f"--eval-domains: {err}") from None
    start = int(state["iteration"]) if state is not None else 0
    train_loader, val_loader, sampler = build_loaders(cfg, train_ds, val_ds, start, device, info)
    validate_data(cfg, train_ds, val_ds, sampler.batch(start), full=cfg.check_data)

    trainer = CoTrainer.from_config(cfg, num_classes, device=device, dist_info=info,
                                    sync_bn=bool(cfg.sync_bn or (state or {}).get("sync_bn", False)))
    if state is None and cfg.init_from is not None:
        try:
            trainer.warm_start(cfg.init_from)
        except (ValueError, OSError) as err:
            raise ConfigError(f"--init-from {cfg.init_from}: {one_line(err)}") from None
    if state is None and setup is not None:
        setup(trainer, train_ds)
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
        if not save_checkpoints:
            return
        ckpt_state = trainer.state_dict()  # a collective under DDP (rank 0's buffers, every rank's RNG states)
        ckpt_state["data"] = sampler.state_dict(it)
        if info.enabled:
            assert_ranks_in_sync([trainer.segmentor, trainer.policy, trainer.objective], info)
        if main_rank:
            save_checkpoint(out / checkpoint_name(it), ckpt_state, keep=cfg.keep_checkpoints)

    last_eval: dict[str, Any] | None = None
    failed: str | None = None
    data_s = step_s = 0.0  # seconds this process spent waiting for batches and in train_step (this session)
    loader_iter = iter(train_loader)
    train_keys = (*TRAIN_KEYS, *RSS_KEYS) if cfg.objective == "rss" else TRAIN_KEYS
    what = f"rss/{cfg.reward_level}" if cfg.objective == "rss" else f"{cfg.algo}/{cfg.schedule}"
    bar = tqdm(total=cfg.max_iters, initial=start, desc=what, dynamic_ncols=True,
               mininterval=1.0, file=sys.stderr, disable=not main_rank)
    try:
        while trainer.iteration < cfg.max_iters:
            data_error: DataError | None = None
            t0 = time.perf_counter()
            try:
                images, masks = next(loader_iter)
            except DataError as err:  # a bad file mid-run: stop without writing a checkpoint for a partial step
                data_error = DataError(one_line(err))
            t1 = time.perf_counter()
            if any_rank(data_error is not None, info, device):  # every rank stops together
                raise data_error or DataError(f"another rank hit bad data at iteration {trainer.iteration + 1}")
            try:
                stats = trainer.train_step(images, masks)
            except NonFiniteError as err:
                if not stop_on_nonfinite:
                    raise
                failed = str(err)
                break
            t2 = time.perf_counter()
            data_s, step_s = data_s + (t1 - t0), step_s + (t2 - t1)
            stats.update(data_time=t1 - t0, step_time=t2 - t1)
            if on_step is not None:
                on_step(stats)
            it = int(stats["iteration"])
            bar.update(1)
            postfix = {"loss": f"{stats['loss']:.3f}", "reward": f"{stats['reward_total']:.3f}"}
            if last_eval is not None:
                postfix["val_mIoU"] = f"{last_eval['miou']:.3f}"
            bar.set_postfix(postfix, refresh=False)
            if main_rank and (it % cfg.log_every == 0 or it == cfg.max_iters or it == start + 1 or stats["skipped"]):
                row = {"iteration": it, "phase": stats["phase"], **{k: stats[k] for k in train_keys}}
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

    if last_eval is not None and failed is None:  # the loop evaluates at max_iters
        final = last_eval
    elif start >= cfg.max_iters:  # resumed a finished run: its last evaluation is already in eval.csv; do not log twice
        final = trainer.evaluate(val_loader, deterministic=True)
    else:
        final = run_eval(trainer.iteration)
    sampled = trainer.evaluate(val_loader, deterministic=False) if cfg.eval_stochastic else None
    domain_rows = evaluate_domains(trainer, cfg, domains, final, info) if domains else None
    diagnostics = dict(on_end(trainer, val_loader)) if on_end is not None else None
    digest = assert_ranks_in_sync([trainer.segmentor, trainer.policy, trainer.objective], info) if info.enabled else None
    wall = time.time() - t_start
    rss = _peak_rss_mb()
    if main_rank:
        title = (f"{cfg.preset}: {cfg.model}, {what}, {trainer.iteration} iterations "
                 f"({'digits' if cfg.dataset == 'digits' else 'VOC ' + cfg.val_split})")
        table = format_final_table(final, class_names, sampled, title=title)
        share = data_s / max(data_s + step_s, 1e-9)
        footer = (f"\nwall time {wall / 60:.2f} min (training loop and evals {train_time / 60:.2f} min), "
                  f"peak RSS {rss:.0f} MB, device {device}, skipped steps {len(trainer.skipped_iterations)}\n"
                  f"data: {data_s:.1f} s waiting for batches, {step_s:.1f} s in training steps "
                  f"({100 * share:.1f}% of the step time spent producing data)\n")
        if failed is not None:
            footer += f"training stopped early: {failed}\n"
        if info.enabled:
            footer += (f"DDP: {info.world_size} processes ({torch.distributed.get_backend()}), global batch "
                       f"{cfg.batch_size}, sync-bn {trainer.sync_bn}, ranks in sync (state sha256 {digest[:16]})\n")
        (out / "final.md").write_text(table + footer)
        log(table + footer)
        if domain_rows is not None:
            text = format_domains(domain_rows, title=f"{cfg.preset}: {cfg.model}, {what}, {trainer.iteration} iterations")
            (out / "domains.md").write_text(text)
            log(text)
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
        "failed": failed,
    }
    if digest is not None:
        result["state_sha256"] = digest
    if sampled is not None:
        result["miou_sampled"] = sampled["miou"]
    if diagnostics is not None:
        result["diagnostics"] = diagnostics
    if domain_rows is not None:
        result["domains"] = domain_rows
    return result


__all__ = ["ConfigError", "DIGITS_NOTICE", "TRAIN_KEYS", "check_device", "check_writable", "fit", "resolve_out",
           "resolve_run"]  # fmt: skip
