"""What this process moved and started, counted where it happens (docs/scaling.md; ``benchmarks/round_bytes.py``).

Each Metaflow step is a process of its own, so a step's counts are this process's: the model store adds the bytes
it downloads, uploads and writes locally, model loading and engines add their loads and starts. A step records
:func:`snapshot` with its artifacts (``traffic``), and the round-bytes benchmark reads them back per step.
"""

from __future__ import annotations

from collections import Counter

COUNTS: Counter[str] = Counter()
KEYS = ("bytes_downloaded", "bytes_uploaded", "bytes_written", "bytes_hashed", "model_loads", "engine_starts")


def add(key: str, amount: int = 1) -> None:
    """Count ``amount`` of ``key`` (one of :data:`KEYS`)."""
    if key not in KEYS:
        raise KeyError(f"unknown traffic counter '{key}'; known: {', '.join(KEYS)}")
    COUNTS[key] += int(amount)


def snapshot() -> dict[str, int]:
    """Every counter's value so far in this process (0 for those never counted)."""
    return {k: COUNTS[k] for k in KEYS}


def reset() -> None:
    """Start counting from zero (a test, or a benchmark measuring one stage in one process)."""
    COUNTS.clear()
