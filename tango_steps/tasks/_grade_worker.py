"""Answer-grading worker process for :mod:`tango_steps.tasks.grading` (docs/method.md §4: Math-Verify outcome reward).

Run as a script (``python _grade_worker.py``), it imports math-verify once, prints ``ready`` and then
answers one JSON request per line (``{"gold": ..., "pred": ...}``) with one JSON line
(``{"status": "correct"|"incorrect"|"unparseable"|"error", "detail": ...}``). math-verify's own
timeouts are switched off (they need the main thread's SIGALRM); the parent process bounds the time
of each request and kills this worker when it runs over.

This file imports nothing from ``tango_steps`` so that it runs from any working directory.
"""

from __future__ import annotations

import json
import sys


def grade_one(gold: str, pred: str) -> tuple[str, str]:
    """Grade one prediction against one gold answer with math-verify, gold first (docs/method.md §4 r_out)."""
    from math_verify import parse, verify

    try:
        g = parse(gold, parsing_timeout=None)
        if not g:
            return "unparseable", "gold"
        p = parse(pred, parsing_timeout=None)
        if not p:
            return "unparseable", "prediction"
        ok = verify(g, p, timeout_seconds=None)
        return ("correct" if ok else "incorrect"), ""
    except Exception as e:  # math-verify/sympy raise many kinds on odd input: count it, never crash
        return "error", f"{type(e).__name__}: {e}"[:200]


def main() -> None:
    """Serve grading requests on stdin/stdout until stdin closes (docs/method.md §4)."""
    import logging

    logging.disable(logging.WARNING)  # math-verify warns on every call when its timeouts are off
    import math_verify  # noqa: F401  (import cost paid before "ready")

    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            status, detail = grade_one(req["gold"], req["pred"])
        except Exception as e:
            status, detail = "error", f"bad request: {e}"[:200]
        out.write(json.dumps({"status": status, "detail": detail}) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
