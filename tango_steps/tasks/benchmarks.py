"""Benchmark loaders: GSM8K, MATH-500, AIME 2024/2025, AMC 2023, OlympiadBench, ProcessBench (docs/method.md §7-§8).

Files are read in the formats of the public releases (JSONL, one problem per line; ProcessBench as
a JSON list), from a local path or an ``s3://`` URL (through s3fs). ``path`` may name the file or
a folder holding the benchmark's usual layout (``<root>/gsm8k/test.jsonl``...); with no path the
root is ``$TANGO_BENCHMARKS``.

Gold answers follow the grader's rules (:func:`tango_steps.tasks.grading.extract_gold`): GSM8K's text
after ``####``; the last ``\\boxed{}`` of a MATH solution; OlympiadBench's answer list joined;
AMC's float answers written as integers when integral. A row with a missing field or no usable
gold answer is an error naming the file and the line, unless ``on_bad_row="skip"``: then it is
counted in :class:`LoadStats` and reported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from tango_steps.tasks.grading import extract_gold


@dataclass(frozen=True)
class BenchmarkProblem:
    """One evaluation problem (docs/method.md §7): question text and normalised gold answer."""

    id: str
    question: str
    gold: str
    benchmark: str


@dataclass(frozen=True)
class ProcessSample:
    """One ProcessBench sample (docs/method.md §8): steps and the index of the earliest wrong one (-1: none)."""

    id: str
    problem: str
    steps: list[str]
    label: int
    final_answer_correct: bool
    subset: str


@dataclass
class LoadStats:
    """Rows read, kept and skipped (with the first reasons), for reports (docs/method.md §7)."""

    source: str
    rows: int = 0
    kept: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for artifacts and tables (docs/method.md §7)."""
        return {"source": self.source, "rows": self.rows, "kept": self.kept, "skipped": self.skipped,
                "reasons": self.reasons[:10]}  # fmt: skip


class BenchmarkError(ValueError):
    """A benchmark file that cannot be used as it is (docs/method.md §7); the message names file and row."""


def _gold_float(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else repr(f)


# name -> (relative file, id field or None, question fields in order of preference, gold function)
_SPECS: dict[str, tuple[str, str | None, tuple[str, ...], Any]] = {
    "gsm8k": ("gsm8k/test.jsonl", None, ("question",), lambda r: extract_gold(r["answer"])),
    "math500": (
        "math500/test.jsonl",
        "unique_id",
        ("problem",),
        lambda r: extract_gold(r["solution"]) if "\\boxed" in r.get("solution", "") else extract_gold(r["answer"]),
    ),
    "aime24": ("aime24/test.jsonl", "id", ("problem",), lambda r: extract_gold(str(r["answer"]))),
    "aime25": ("aime25/test.jsonl", None, ("problem",), lambda r: extract_gold(str(r["answer"]))),
    "amc23": ("amc23/test.jsonl", "id", ("problem", "question"), lambda r: _gold_float(r["answer"])),
    "olympiadbench": ("olympiadbench/test.jsonl", "id", ("question",), lambda r: extract_gold(r["final_answer"])),
}
BENCHMARKS = tuple(_SPECS)
PROCESSBENCH_SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")


def _root() -> str | None:
    return os.environ.get("TANGO_BENCHMARKS")


def _open(path: str):
    if path.startswith("s3://"):
        import s3fs

        return s3fs.S3FileSystem().open(path, "r")
    return open(path, encoding="utf-8")


def _exists(path: str) -> bool:
    if path.startswith("s3://"):
        import s3fs

        return s3fs.S3FileSystem().exists(path)
    return os.path.exists(path)


def _resolve(name: str, path: str | None, relative: str) -> str:
    base = path if path is not None else _root()
    if base is None:
        raise BenchmarkError(
            f"no path for benchmark '{name}': pass path= (a file or a folder with {relative}) or set TANGO_BENCHMARKS"
        )
    base = str(base)
    candidate = base.rstrip("/") + "/" + relative
    if base.endswith((".jsonl", ".json")):
        candidate = base
    if not _exists(candidate):
        raise BenchmarkError(f"benchmark '{name}': file '{candidate}' does not exist")
    return candidate


def _check_name(name: str, known: tuple[str, ...], what: str) -> None:
    if name not in known:
        raise BenchmarkError(f"unknown {what} '{name}'; known: {', '.join(known)}")


def load_benchmark(
    name: str, path: str | None = None, limit: int | None = None, on_bad_row: str = "error"
) -> tuple[list[BenchmarkProblem], LoadStats]:
    """Problems of one benchmark with normalised gold answers (docs/method.md §7).

    Args:
        name: one of :data:`BENCHMARKS`.
        path: the JSONL file, or a folder (local or ``s3://``) with the usual layout; default
            ``$TANGO_BENCHMARKS``.
        limit: keep the first ``limit`` usable problems.
        on_bad_row: ``"error"`` (default) or ``"skip"`` (counted in the stats).
    """
    _check_name(name, BENCHMARKS, "benchmark")
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    relative, id_field, question_fields, gold_fn = _SPECS[name]
    source = _resolve(name, path, relative)
    stats = LoadStats(source)
    out: list[BenchmarkProblem] = []
    with _open(source) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            stats.rows += 1
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
                question = next(
                    (row[k] for k in question_fields if isinstance(row.get(k), str) and row[k].strip()), None
                )
                if question is None:
                    raise ValueError(f"missing field {' or '.join(question_fields)}")
                gold = gold_fn(row)
                if not gold:
                    raise ValueError("no usable gold answer")
            except (ValueError, KeyError, TypeError) as e:
                msg = f"{source}, line {lineno}: {e if not isinstance(e, KeyError) else f'missing field {e}'}"
                if on_bad_row == "error":
                    raise BenchmarkError(
                        f"bad row in benchmark '{name}': {msg} (on_bad_row='skip' skips such rows)"
                    ) from None
                stats.skipped += 1
                stats.reasons.append(msg)
                continue
            pid = f"{name}-{row[id_field] if id_field and id_field in row else lineno - 1}"
            out.append(BenchmarkProblem(id=pid, question=question, gold=gold, benchmark=name))
            stats.kept += 1
            if limit is not None and len(out) >= limit:
                break
    return out, stats


def load_processbench(
    subset: str, path: str | None = None, limit: int | None = None, on_bad_row: str = "error"
) -> tuple[list[ProcessSample], LoadStats]:
    """ProcessBench samples of one subset (docs/method.md §8), with the earliest-error label (-1 = none)."""
    _check_name(subset, PROCESSBENCH_SUBSETS, "ProcessBench subset")
    source = _resolve(f"processbench/{subset}", path, f"processbench/{subset}.json")
    stats = LoadStats(source)
    with _open(source) as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{source} is not valid JSON: {e}") from None
    if not isinstance(rows, list):
        raise BenchmarkError(f"{source}: expected a JSON list of samples, got {type(rows).__name__}")
    out: list[ProcessSample] = []
    for i, row in enumerate(rows):
        stats.rows += 1
        try:
            steps, label = row["steps"], int(row["label"])
            if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps) or not steps:
                raise ValueError("'steps' must be a non-empty list of strings")
            if not -1 <= label < len(steps):
                raise ValueError(f"label {label} outside -1..{len(steps) - 1}")
            sample = ProcessSample(
                id=str(row.get("id", f"{subset}-{i}")), problem=str(row["problem"]), steps=steps, label=label,
                final_answer_correct=bool(row.get("final_answer_correct", label == -1)), subset=subset,
            )  # fmt: skip
        except (ValueError, KeyError, TypeError) as e:
            msg = f"{source}, sample {i}: {e if not isinstance(e, KeyError) else f'missing field {e}'}"
            if on_bad_row == "error":
                raise BenchmarkError(f"bad ProcessBench sample: {msg}") from None
            stats.skipped += 1
            stats.reasons.append(msg)
            continue
        out.append(sample)
        stats.kept += 1
        if limit is not None and len(out) >= limit:
            break
    return out, stats
