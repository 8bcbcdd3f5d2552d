"""One atomic file writer: a temporary file in the target's folder, fsync, the process umask's mode, os.replace."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _umask_mode() -> int:
    """``0o666`` less the process umask: the mode ``open(path, "w")`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = True) -> Path:
    """Write ``path`` so that readers see either the old file or the whole new one, never a part.

    ``write(fh)`` fills a temporary file beside ``path`` (same file system); it is flushed and fsynced, given the
    mode a plain ``open`` would give (``tempfile`` alone would leave it 0600), renamed over ``path``, and the
    rename made durable with an fsync of the folder.  On any error the temporary file is removed.
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
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
