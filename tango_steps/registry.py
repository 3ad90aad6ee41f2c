"""One lookup for every registry of names (tasks, templates, estimators, engines, study arms).

A registry is a dict from name to implementation; adding an estimator, a task or an engine is one
entry in its registry (``docs/architecture.md``). Every unknown name fails the same way, listing the
known ones, so a typo in a recipe reads the same whatever it names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


def check_name(name: str, known: Iterable[str], what: str) -> str:
    """``name`` if it is one of ``known``, else ValueError ``unknown <what> '<name>'; known: a, b``."""
    names = sorted(known)
    if name not in names:
        raise ValueError(f"unknown {what} '{name}'; known: {', '.join(names)}")
    return name


def lookup(registry: Mapping[str, T], name: str, what: str) -> T:
    """``registry[name]``, or the error of :func:`check_name` naming the registry's keys."""
    return registry[check_name(name, registry, what)]
