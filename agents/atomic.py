"""One atomic file writer: a temporary file in the target's folder, fsync, the process umask's mode, os.replace.

A write that fails for want of space raises :class:`WriteError` with one line naming the folder, the bytes the file
needed and the bytes free; the previous file at the path is untouched.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


class WriteError(OSError):
    """A file could not be written (e.g. the disk is full); the message is one line naming the folder."""


def _no_space(err: BaseException) -> bool:
    """True for a write that failed for want of space (ENOSPC / EDQUOT, or torch's zip writer's 'unexpected pos')."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("unexpected pos" in text or "file write failed" in text)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _umask_mode() -> int:
    """``0o666`` less the process umask: the mode ``open(path, "w")`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = True, size_hint: int | None = None
) -> Path:
    """Write ``path`` so that readers see either the old file or the whole new one, never a part.

    ``write(fh)`` fills a temporary file beside ``path`` (same file system); it is flushed and fsynced, given the
    mode a plain ``open`` would give (``tempfile`` alone would leave it 0600), renamed over ``path``, and the
    rename made durable with an fsync of the folder.  On any error the temporary file is removed; a full disk is a
    :class:`WriteError` naming the folder and the bytes needed (``size_hint``, else what was written before it failed).
    """
    path = Path(path)
    folder = path.parent.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as err:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _no_space(err):
            needed = size_hint if size_hint is not None else written
            free = shutil.disk_usage(folder).free
            raise WriteError(
                f"{folder}: no space left to write {path.name}: it needs about {_mb(needed)}, {_mb(free)} free"
            ) from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path
