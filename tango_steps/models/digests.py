"""Digests taken while a file is written, and the record that lets the model store use them (docs/method.md §9).

A checkpoint's weight and optimizer files are hashed as they are written (:class:`HashingFile`), not read again
afterwards: for a 7B model that second pass over ~100 GB was a full read per update (issue #35). The writer records
each digest with the file's size and modification time (``WRITTEN.json`` in the checkpoint folder, never stored
with the model); :func:`written_hashes` returns a digest only while the file still has both, so a file changed
since (rewritten, appended, touched) is hashed again from its bytes. What that trusts: that nothing rewrote the
file in the seconds between its write and its upload with the same size AND the same nanosecond time, i.e. the
writer's own folder, written by this step, is not tampered with while the step runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

WRITTEN = "WRITTEN.json"  # {file: [size, mtime_ns, sha256]} of the files hashed as they were written


class HashingFile:
    """A binary file open for writing that keeps the sha256 of what goes through it (``torch.save`` writes to it
    as to any file object)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f = open(self.path, "wb")  # closed by close() (a context manager below)
        self._h = hashlib.sha256()

    def write(self, data) -> int:
        """Write ``data`` and add it to the digest."""
        self._h.update(data)
        return self._f.write(data)

    def flush(self) -> None:
        """Flush the file."""
        self._f.flush()

    def tell(self) -> int:
        """The position in the file (torch.save asks)."""
        return self._f.tell()

    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self) -> HashingFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def hexdigest(self) -> str:
        """The sha256 of everything written so far."""
        return self._h.hexdigest()


def record_written(folder: Path, hashes: dict[str, str]) -> None:
    """Record, in ``folder/WRITTEN.json``, the digests of files hashed as they were written, with their size and
    time now: the model store trusts a digest only for a file that still has both (docs/method.md §9)."""
    out = {}
    for name, digest in sorted(hashes.items()):
        st = (folder / name).stat()
        out[name] = [st.st_size, st.st_mtime_ns, digest]
    (folder / WRITTEN).write_text(json.dumps(out, indent=1, sort_keys=True))


def written_hashes(folder: Path, names: list[str]) -> dict[str, str]:
    """The digests ``WRITTEN.json`` holds for files of ``names`` whose size and time are still as recorded."""
    try:
        recorded = json.loads((Path(folder) / WRITTEN).read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for name in names:
        entry = recorded.get(name)
        path = Path(folder) / name
        if isinstance(entry, list) and len(entry) == 3 and path.is_file():
            st = path.stat()
            if [st.st_size, st.st_mtime_ns] == entry[:2]:
                out[name] = entry[2]
    return out
