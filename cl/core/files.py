"""Atomic file writes: the content goes to a uniquely named temporary file beside the target, which is then
renamed over it, so a reader never sees a truncated file and two writers never share a temporary name."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def umask() -> int:
    """The process's umask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO], None], *, binary: bool = False, newline: str | None = None,
                 public: bool = True, fsync: bool = False, suffix: str = "") -> None:
    """``write(file)`` into a temporary file beside ``path``, then rename it over ``path``; on any failure the
    temporary file is removed and the error goes on. ``public``: the file gets the permissions of any new file
    of the user (0666 minus the umask) rather than mkstemp's private 0600; ``fsync``: flushed to disk first."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        if public:
            os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": newline})) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
