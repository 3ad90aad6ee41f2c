"""Where this machine keeps models it built, converted or fetched (docs/method.md §7): one folder for the whole
package, below everything that reads or writes it (model loading, the model store)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where converted and built models are cached: ``$TANGO_CACHE`` or ``~/.cache/tango`` (docs/method.md §7)."""
    return Path(os.environ.get("TANGO_CACHE", Path.home() / ".cache" / "tango"))
