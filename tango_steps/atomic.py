"""Atomic directory writes and exclusive file locks (docs/method.md §9).

``atomic_directory`` is used for every model and checkpoint Tango writes, so that a crash or a
failed step (a NaN loss, a full disk) never leaves a half-written directory where a reader expects
a complete one. ``exclusive_lock`` keeps two processes on one host from doing the same work at once
(driving the same round, warming up the same models). ``is_disk_full`` and ``disk_full_error`` turn
a write that ran out of space into one clear error, whichever library did the writing.
"""

from __future__ import annotations

import errno
import fcntl
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(out_dir: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` to fill; rename it to ``out_dir`` on success (docs/method.md §9).

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
    """Hold an exclusive ``flock`` on ``path``
    (docs/method.md §9); if another process holds it, log ``waiting`` and wait.
    """
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


def free_bytes(path: str | Path) -> int:
    """Free bytes on the disk that holds ``path`` (its nearest existing ancestor)."""
    path = Path(path)
    return shutil.disk_usage(next((p for p in (path, *path.parents) if p.exists()), path)).free


def is_disk_full(e: BaseException, where: str | Path | None = None) -> bool:
    """Whether an error (or one it wraps: ``shutil.copytree`` collects them) is a full disk or quota.

    Some writers hide the errno: torch.save's zip writer raises ``RuntimeError: ... unexpected pos``
    on a short write. With ``where``, an error raised while that disk has under 1 MiB free counts too.
    """
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    nested = e.args[0] if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) else []
    if any("No space left on device" in str(item) or "Disk quota exceeded" in str(item) for item in nested):
        return True
    return where is not None and free_bytes(where) < (1 << 20)


def disk_full_error(disk: str, what: str, needed: int, where: str | Path, then: str) -> OSError:
    """The ENOSPC error for a write that does not fit: which disk, what, how much, how much is free, what to do."""
    return OSError(
        errno.ENOSPC,
        f"{disk} is full: {what} needs {needed / 2**20:.1f} MiB and {free_bytes(where) / 2**20:.1f} MiB are free "
        f"on {where}. Nothing of it was kept (no partial copy is left for a later step to read). {then}",
    )
