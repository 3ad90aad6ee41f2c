"""Atomic directory writes and exclusive file locks (TANGO.md §9).

``atomic_directory`` is used for every model and checkpoint Tango writes, so that a crash or a
failed step (a NaN loss, a full disk) never leaves a half-written directory where a reader expects
a complete one. ``exclusive_lock`` keeps two processes on one host from doing the same work at once
(driving the same round, warming up the same models).
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` to fill; rename it to ``out_dir`` on success (TANGO.md §9).

    On any exception the temporary directory is removed and ``out_dir`` is untouched. An existing
    ``out_dir`` is replaced when ``overwrite``, else it is a ``FileExistsError`` (checked before and
    after writing).
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"directory '{out}' already exists; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            if not overwrite:
                raise FileExistsError(f"directory '{out}' already exists; refusing to overwrite it")
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def exclusive_lock(path: str | Path, waiting: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (TANGO.md §9); if another process holds it, log ``waiting`` and wait."""
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(waiting)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
