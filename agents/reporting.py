"""Run reporting: CSV metrics, optional TensorBoard, curve and overlay PNGs, the final per-class table.

Named ``reporting`` (not ``logging``) so it never shadows the standard library.  Plots use matplotlib's Agg
backend (no display needed).  TensorBoard is used only when ``torch.utils.tensorboard`` imports (it needs the
``tensorboard`` package, which is not a dependency).
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from agents.atomic import atomic_write
from segbandit.constants import IMAGENET_MEAN, IMAGENET_STD
from segbandit.visual import VOID_COLOUR, colorize, denormalize, overlay, voc_palette  # noqa: F401 (re-exported)



# ----------------------------------------------------------------------------- CSV / TensorBoard


class CSVLogger:
    """Appends dict rows to a CSV file.  The header is fixed by the first row (or read from an existing file when
    ``append=True``); later keys outside it are ignored, missing ones left empty.  Each row is flushed."""

    def __init__(self, path: str | os.PathLike, append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fieldnames: list[str] | None = None
        if append and self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as fh:
                self.fieldnames = next(csv.reader(fh), None)
        elif not append or not self.path.exists():
            self.path.write_text("")

    def log(self, row: Mapping[str, Any]) -> None:
        """Write one row (floats, ints, strings)."""
        with open(self.path, "a", newline="") as fh:
            if self.fieldnames is None:
                self.fieldnames = list(row)
                writer = csv.DictWriter(fh, fieldnames=self.fieldnames, extrasaction="ignore")
                writer.writeheader()
            else:
                writer = csv.DictWriter(fh, fieldnames=self.fieldnames, extrasaction="ignore")
            writer.writerow({k: _fmt(v) for k, v in row.items()})


def read_csv(path: str | os.PathLike) -> list[dict[str, float | str]]:
    """Rows of a CSV written by :class:`CSVLogger`, numbers parsed as floats ([] if the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]



def truncate_csv(path: str | os.PathLike, last_iteration: int) -> None:
    """Keep the rows of ``path`` up to ``last_iteration`` (a resumed run re-logs the later ones) and drop a line a
    crash cut short; rewritten atomically (:func:`agents.atomic.atomic_write`)."""
    path = Path(path)
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

    def write(fh: Any) -> None:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(keep)

    atomic_write(path, write, binary=False)

def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _parse(v: str | None) -> float | str:
    if v is None or v == "":
        return math.nan
    try:
        return float(v)
    except ValueError:
        return v


def make_tensorboard(log_dir: str | os.PathLike) -> Any | None:
    """A ``SummaryWriter`` when ``torch.utils.tensorboard`` imports, else None (TensorBoard is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed
        return None
    return SummaryWriter(log_dir=os.fspath(log_dir))


def log_scalars(writer: Any | None, prefix: str, values: Mapping[str, Any], step: int) -> None:
    """Every finite numeric value of ``values`` as ``prefix/name`` (no-op without a writer)."""
    if writer is None:
        return
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            writer.add_scalar(f"{prefix}/{k}", float(v), step)


# ----------------------------------------------------------------------------- colours and images


def save_overlays(
    path: str | os.PathLike,
    images: torch.Tensor,
    masks: torch.Tensor,
    preds: torch.Tensor,
    title: str | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
) -> Path:
    """A PNG grid, one row per image: image | truth overlay | prediction overlay | prediction labels.

    images (N, 3, H, W) normalised, masks and preds (N, H, W) int.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = denormalize(images, mean, std).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
    n = imgs.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n + 0.4), squeeze=False)
    cols = ("image", "truth", "prediction", "prediction labels")
    for i in range(n):  # one row per displayed image (a handful)
        panels = (imgs[i], overlay(imgs[i], masks[i], ignore_index=ignore_index),
                  overlay(imgs[i], preds[i], ignore_index=ignore_index), colorize(preds[i], ignore_index))
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def save_curves(
    path: str | os.PathLike, train_rows: Sequence[Mapping[str, Any]], eval_rows: Sequence[Mapping[str, Any]]
) -> Path:
    """A PNG with three panels: training losses, training reward, validation mIoU against the iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for row in rows:
            x, y = row.get("iteration"), row.get(key)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(float(y)):
                xs.append(float(x))
                ys.append(float(y))
        return xs, ys

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for key in ("loss", "loss_ce", "loss_policy", "loss_kl"):
        xs, ys = series(train_rows, key)
        if xs:
            axes[0].plot(xs, ys, label=key, marker="." if len(xs) < 20 else None)
    axes[0].set_title("training loss")
    for key in ("reward_total", "reward_iou", "baseline", "reward_sampled"):
        xs, ys = series(train_rows, key)
        if xs:
            axes[1].plot(xs, ys, label=key, marker="." if len(xs) < 20 else None)
    axes[1].set_title("training reward (Eq. 15)")
    for key, label in (("miou", "val mIoU (s = mu)"), ("miou_sampled", "val mIoU (sampled s)")):
        xs, ys = series(eval_rows, key)
        if xs:
            axes[2].plot(xs, ys, label=label, marker="o")
    axes[2].set_title("validation mIoU")
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- final table


def format_domains(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """Markdown: one row per evaluation domain (source first) with its mIoU and the drop from the source's."""
    def pct(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * float(v):.2f}"

    src = rows[0]["miou"] if rows else None
    lines = [f"# Domain shift: {title}" if title else "# Domain shift", "",
             "| domain | split | images | mIoU (%) | vs source (points) | pixel accuracy (%) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        drop = "" if src is None or r is rows[0] else f"{100.0 * (float(r['miou']) - float(src)):+.2f}"
        lines.append(f"| {r['domain']} | {r['split']} | {r.get('num_images', '')} | {pct(r['miou'])} | {drop} | "
                     f"{pct(r.get('pixel_acc'))} |")
    return "\n".join(lines) + "\n"


def format_final_table(
    metrics: Mapping[str, Any], class_names: Sequence[str], sampled: Mapping[str, Any] | None = None, title: str = ""
) -> str:
    """Markdown: the summary (val mIoU, pixel accuracy, mean Dice, mean reward) and per-class IoU with names.

    ``metrics`` from ``CoTrainer.evaluate`` (deterministic s = mu); ``sampled`` optionally the sampled-action run.
    """
    def pct(v: Any) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100.0 * float(v):.2f}"

    lines = [f"# {title}" if title else "# Final evaluation", ""]
    head = "| metric | s = mu |" + (" sampled s |" if sampled else "")
    lines += [head, "|---|---:|" + ("---:|" if sampled else "")]
    for key, label in (("miou", "val mIoU (%)"), ("pixel_acc", "pixel accuracy (%)"), ("mean_dice", "mean Dice (%)")):
        row = f"| {label} | {pct(metrics.get(key))} |" + (f" {pct(sampled.get(key))} |" if sampled else "")
        lines.append(row)
    r = metrics.get("reward_total")
    if r is not None:
        rs = sampled.get("reward_total") if sampled else None
        lines.append(f"| mean reward (Eq. 15) | {float(r):.4f} |" + (f" {float(rs):.4f} |" if sampled else ""))
    lines += ["", "| class | IoU (%) |" + (" IoU sampled (%) |" if sampled else ""),
              "|---|---:|" + ("---:|" if sampled else "")]
    per_class = list(metrics.get("per_class_iou", []))
    per_class_s = list(sampled.get("per_class_iou", [])) if sampled else []
    for k, name in enumerate(class_names):
        v = per_class[k] if k < len(per_class) else math.nan
        row = f"| {k} {name} | {pct(v)} |"
        if sampled:
            row += f" {pct(per_class_s[k] if k < len(per_class_s) else math.nan)} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


__all__ = [
    "format_domains",
    "truncate_csv",
    "CSVLogger",
    "colorize",
    "denormalize",
    "format_final_table",
    "log_scalars",
    "make_tensorboard",
    "overlay",
    "read_csv",
    "save_curves",
    "save_overlays",
    "voc_palette",
]
