"""Answer grading for the outcome reward r_out (docs/method.md §4: "equivalent to gold (Math-Verify)").

``is_correct(response, gold)`` decides whether a response's final answer equals the gold answer:

1. the gold is normalised (:func:`extract_gold`): a bare answer, a ``\\boxed{}`` string, a GSM8K
   answer ending in ``#### N`` or a list (OlympiadBench ``final_answer``);
2. the prediction is the last ``\\boxed{}`` of the response, or the whole response if it has none;
3. plain numbers on both sides are compared exactly on the fast path (no subprocess);
4. everything else goes to math-verify (gold first) in a worker PROCESS with a hard deadline: a
   call that runs over kills the worker and counts as incorrect. math-verify's own timeouts use
   SIGALRM and refuse to run off the main thread (ENVIRONMENT.md), so they are switched off and the
   bound is ours; it holds from any thread and inside daemonic pool workers (the worker is a plain
   ``subprocess``, not a ``multiprocessing`` child).

A timeout, an unparseable answer or a math-verify error is "incorrect" and counted in
:class:`GradeStats`. :class:`Grader` grades batches over several worker processes.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

from tango_steps.method.formats import last_boxed

_WORKER = Path(__file__).with_name("_grade_worker.py")
_PLAIN_NUMBER = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$|^[+-]?\.\d+$")
_DEFAULT_TIMEOUT = 5.0
_STARTUP_TIMEOUT = 120.0

Gold = str | int | float | Sequence[str]


@dataclass
class GradeStats:
    """Counts of how answers were graded; a timeout or unparseable answer is graded incorrect (docs/method.md §4)."""

    total: int = 0
    correct: int = 0
    fast_path: int = 0
    timeouts: int = 0
    unparseable: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict, for metrics (docs/method.md §4)."""
        return asdict(self)


def extract_gold(gold: Gold) -> str | None:
    """Normalise a gold answer to one answer string (docs/method.md §7 benchmarks), or None if empty.

    - list/tuple (OlympiadBench ``final_answer``): items joined with ", " (one item -> that item);
    - GSM8K solution: the text after the last ``####``, thousands separators removed;
    - a string holding ``\\boxed{}`` (a MATH solution): the last box's content;
    - anything else: the stripped string.
    Surrounding ``$...$`` is removed in every case.
    """
    if isinstance(gold, list | tuple):
        parts = [p for p in (extract_gold(g) for g in gold) if p]
        return ", ".join(parts) if parts else None
    if gold is None:
        return None
    text = str(gold)
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    elif "\\boxed" in text:
        boxed = last_boxed(text)
        text = boxed if boxed is not None else text
    text = text.strip().strip("$").strip()
    return text or None


ANSWER_EXTRACTIONS = ("strict", "flexible")
# lm-evaluation-harness's GSM8K "flexible-extract": runs of digits, $ . , (2+ chars) or a bare integer
_NUMBER_RUN = re.compile(r"-?[$0-9.,]{2,}|-?[0-9]+")


def last_number(response: str) -> str | None:
    """The last number written in a response ("... so she pays $1,250." -> "1250"), or None.

    The flexible reading of an answer that common evaluation harnesses use for GSM8K (the last
    match of ``-?[$0-9.,]{2,}|-?[0-9]+``, with ``$``, thousands commas and a trailing period removed).
    """
    if not isinstance(response, str):
        return None
    for run in reversed(_NUMBER_RUN.findall(response)):
        text = run.replace("$", "").replace(",", "").rstrip(".")
        if any(c.isdigit() for c in text):
            return text
    return None


def extract_answer(response: str, how: str = "strict") -> str | None:
    """The answer a response gives, read ``strict`` (its last ``\\boxed{}``, docs/method.md §2) or ``flexible``
    (:func:`last_number`); None when it gives none (unanswered)."""
    if how == "strict":
        return last_boxed(response) if isinstance(response, str) else None
    if how == "flexible":
        return last_number(response)
    raise ValueError(f"answer extraction must be one of {', '.join(ANSWER_EXTRACTIONS)}, got {how!r}")


def _prediction(response: str) -> tuple[str | None, bool]:
    """(answer text or None, whether it came from a box)."""
    if not isinstance(response, str):
        return None, False
    boxed = last_boxed(response)
    text = (boxed if boxed is not None else response).strip()
    return (text or None), boxed is not None


def _plain_number(text: str) -> Fraction | None:
    """Exact value of a plain decimal number ("1,234", "-0.50", "27.", "$3$"), else None."""
    s = text.strip().strip("$").strip().rstrip(".")
    if not _PLAIN_NUMBER.match(s):
        return None
    return Fraction(s.replace(",", ""))


class _Worker:
    """One math-verify worker process speaking line-delimited JSON on stdin/stdout."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self._buf = b""
        line = self.read_line(time.monotonic() + _STARTUP_TIMEOUT)
        if line != "ready":
            self.kill()
            raise RuntimeError(f"math-verify grading worker failed to start (got {line!r}); is math-verify installed?")

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, gold: str, pred: str) -> None:
        self.proc.stdin.write((json.dumps({"gold": gold, "pred": pred}) + "\n").encode())
        self.proc.stdin.flush()

    def read_line(self, deadline: float) -> str | None:
        """Next line from the worker, or None once ``deadline`` (monotonic) has passed or it died."""
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.fileno()], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self.fileno(), 65536)
            if not chunk:  # worker died
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode().strip()

    def has_line(self) -> bool:
        return b"\n" in self._buf

    def kill(self, graceful: bool = False) -> None:
        """Stop the worker: ``graceful`` closes its input and lets it exit (a stuck one is killed)."""
        if graceful and self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=2.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class Grader:
    """Grades answers for r_out (docs/method.md §4) with a hard per-answer time bound, over ``num_workers`` processes.

    Use as a context manager or call :meth:`close`; workers start on first need and are restarted
    after a timeout. Not thread-safe: use one Grader per thread (the module-level :func:`is_correct`
    serialises its calls with a lock).

    Args:
        timeout: seconds allowed per answer, wall clock, measured from when it is sent to a worker.
        num_workers: worker processes used by :meth:`grade` (each costs ~1 s to start and ~100 MB).
    """

    def __init__(self, timeout: float = _DEFAULT_TIMEOUT, num_workers: int = 1) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.timeout = float(timeout)
        self.num_workers = int(num_workers)
        self.stats = GradeStats()
        self._workers: list[_Worker] = []

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop all worker processes (docs/method.md §4 grading)."""
        for w in self._workers:
            w.kill(graceful=True)
        self._workers = []

    def is_correct(self, response: str, gold: Gold) -> bool:
        """Whether ``response``'s final answer equals ``gold`` (docs/method.md §4); see module docstring."""
        return self.grade([response], [gold])[0]

    def grade_answers(self, answers: Sequence[str | None], golds: Sequence[Gold]) -> list[bool]:
        """Grade extracted answers (:func:`extract_answer`); a missing answer is wrong and counted unparseable."""
        return self.grade([f"\\boxed{{{a}}}" if a is not None else "" for a in answers], golds)

    def grade(self, responses: Sequence[str], golds: Sequence[Gold]) -> list[bool]:
        """Grade many responses (docs/method.md §4): fast path in-process, the rest spread over the workers."""
        if len(responses) != len(golds):
            raise ValueError(f"got {len(responses)} responses but {len(golds)} gold answers")
        results = [False] * len(responses)
        pending: list[tuple[int, str, str]] = []
        for i, (response, gold) in enumerate(zip(responses, golds, strict=True)):
            self.stats.total += 1
            g, (p, boxed) = extract_gold(gold), _prediction(response)
            if g is None or p is None:
                self.stats.unparseable += 1
                continue
            gn, pn = _plain_number(g), _plain_number(p)
            if gn is not None and pn is not None:
                self.stats.fast_path += 1
                results[i] = gn == pn
            else:
                # A boxed answer is re-boxed so math-verify's LaTeX extraction finds it; unboxed text goes
                # as-is and math-verify extracts the answer from the prose ("The answer is 27").
                pending.append((i, f"\\boxed{{{g}}}", f"\\boxed{{{p}}}" if boxed else p))
        if pending:
            self._run_workers(pending, results)
        self.stats.correct += sum(results)
        return results

    def _run_workers(self, pending: list[tuple[int, str, str]], results: list[bool]) -> None:
        queue = list(reversed(pending))
        n = min(self.num_workers, len(queue))
        while len(self._workers) < n:
            self._workers.append(_Worker())
        busy: dict[int, tuple[_Worker, int, float]] = {}  # slot -> (worker, result index, deadline)
        idle = list(range(n))
        while queue or busy:
            while queue and idle:
                slot = idle.pop()
                i, g, p = queue.pop()
                self._workers[slot].send(g, p)
                busy[slot] = (self._workers[slot], i, time.monotonic() + self.timeout)
            # Wait for the first answer or the nearest deadline.
            waiting = [w for w, _, _ in busy.values() if not w.has_line()]
            if len(waiting) == len(busy):
                nearest = min(d for _, _, d in busy.values())
                select.select([w.fileno() for w in waiting], [], [], max(0.0, nearest - time.monotonic()))
            for slot, (w, i, deadline) in list(busy.items()):
                ready = w.has_line() or select.select([w.fileno()], [], [], 0)[0]
                line = w.read_line(time.monotonic() + 0.05) if ready else None
                if line is not None:
                    self._record(line, i, results)
                elif w.proc.poll() is not None or time.monotonic() >= deadline:
                    # A dead worker (e.g. killed for memory) is an error; a live one past its deadline a timeout.
                    if w.proc.poll() is not None:
                        self.stats.errors += 1
                    else:
                        self.stats.timeouts += 1
                    w.kill()
                    self._workers[slot] = _Worker()
                else:
                    continue
                del busy[slot]
                idle.append(slot)

    def _record(self, line: str, i: int, results: list[bool]) -> None:
        try:
            status = json.loads(line)["status"]
        except (ValueError, KeyError, TypeError):
            status = "error"
        if status == "correct":
            results[i] = True
        elif status == "unparseable":
            self.stats.unparseable += 1
        elif status != "incorrect":
            self.stats.errors += 1


_default: Grader | None = None
_default_lock = threading.Lock()


def _close_default() -> None:
    if _default is not None:
        _default.close()


atexit.register(_close_default)


def is_correct(response: str, gold: Gold, timeout: float = _DEFAULT_TIMEOUT) -> bool:
    """Whether ``response``'s final answer is equivalent to ``gold`` (docs/method.md §4, Math-Verify).

    Uses a shared, lazily started worker process; safe to call from any thread (calls are
    serialised). ``timeout`` bounds each call in seconds (a timeout is graded incorrect and counted
    in :func:`grading_stats`). For many answers, use :class:`Grader` with several workers.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = Grader(timeout=timeout)
        _default.timeout = float(timeout)
        return _default.is_correct(response, gold)
