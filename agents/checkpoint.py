"""Atomic, weights_only-loadable training checkpoints ``ckpt_XXXXXXX.pt`` and the RNG state they carry.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects), so
``torch.load(path, weights_only=True)`` reads it.  It is written to a temporary file in the same folder,
flushed and fsynced, then moved into place with ``os.replace`` and the folder fsynced: a crash (even
``kill -9``) never leaves a half-written ``ckpt_*.pt``, at worst a ``.ckpt_*.tmp`` that
:func:`remove_stale_temporaries` clears.  Only the newest ``keep`` checkpoints are kept (older ones are deleted
after the new one is durable).  :func:`latest_complete_checkpoint` is what ``--resume`` uses: the newest file
that loads and holds every part of a training state.
"""
from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.atomic import atomic_write

_CKPT_RE = re.compile(r"^ckpt_(\d{7,})\.pt$")
_TMP_RE = re.compile(r"^\.ckpt_\d{7,}\.pt\..*\.tmp$")
REQUIRED_KEYS: tuple[str, ...] = ("segmentor", "policy", "objective", "optimizer", "iteration", "rng", "config")
logger = logging.getLogger(__name__)


def checkpoint_name(iteration: int) -> str:
    """``ckpt_0001234.pt`` for iteration 1234."""
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    return f"ckpt_{iteration:07d}.pt"


def list_checkpoints(out_dir: str | os.PathLike) -> list[Path]:
    """The ``ckpt_*.pt`` files of ``out_dir``, oldest iteration first (empty if the folder does not exist)."""
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest iteration in ``out_dir``, or None."""
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def _tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a nested state (what a checkpoint of it needs on disk, give or take metadata)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], keep: int | None = 3) -> Path:
    """Write ``state`` to ``path`` atomically; then delete all but the newest ``keep`` ``ckpt_*.pt`` beside it.

    ``keep=None`` keeps everything.  Returns the final path.
    """
    path = atomic_write(path, lambda fh: torch.save(state, fh), size_hint=_tensor_bytes(state))
    folder = path.parent.resolve()
    if keep is not None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1 or None, got {keep}")
        # only checkpoints older than the one just written count: a newer file (stale or truncated, from another
        # run) is never a reason to delete the checkpoint this run just wrote, and is left alone
        ckpts = [p for p in list_checkpoints(folder) if p.resolve() != path.resolve()]  # oldest iteration first
        m = _CKPT_RE.match(path.name)
        older = [p for p in ckpts if m is None or int(_CKPT_RE.match(p.name).group(1)) < int(m.group(1))]
        for old in older[: max(len(older) - (keep - 1), 0)]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (tensors and plain values only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def latest_complete_checkpoint(
    out_dir: str | os.PathLike, map_location: str | torch.device | None = "cpu"
) -> tuple[Path, dict[str, Any]] | tuple[None, None]:
    """``(path, state)`` of the newest checkpoint in ``out_dir`` that loads and has every :data:`REQUIRED_KEYS`.

    Unreadable or incomplete files (e.g. copied in half, or written by something other than
    :func:`save_checkpoint`) are skipped with a warning; ``(None, None)`` when none is usable.
    """
    for path in reversed(list_checkpoints(out_dir)):
        try:
            state = load_checkpoint(path, map_location)
        except Exception as exc:  # truncated zip, unpickling refused, ...
            logger.warning("skipping unreadable checkpoint %s (%s: %s)", path, type(exc).__name__, exc)
            continue
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        if missing:
            logger.warning("skipping incomplete checkpoint %s (missing %s)", path, missing)
            continue
        return path, state
    return None, None


def remove_stale_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Delete the ``.ckpt_*.pt.*.tmp`` files a killed writer left in ``out_dir``; returns them.

    Only call it when no other process is writing checkpoints into ``out_dir``.
    """
    folder = Path(out_dir)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TMP_RE.match(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ----------------------------------------------------------------------------- RNG state as plain values


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA, if initialised) RNG states plus named generators, as plain values/tensors."""
    version, internal, gauss = random.getstate()
    key, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss": gauss},
        "numpy": {
            "key": str(key),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 values fit in int64
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng_state` (generators are restored by name when present in both)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["key"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for name, g in (generators or {}).items():
        if name in state.get("generators", {}):
            g.set_state(state["generators"][name].cpu())


__all__ = [
    "capture_rng_state",
    "checkpoint_name",
    "latest_checkpoint",
    "latest_complete_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_checkpoint",
]
