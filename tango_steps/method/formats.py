"""Output formats of the generator and the verifier: prompt templates and parsers (docs/method.md §2, §5).

The generator writes ``<think>`` holding one ``<step>...</step>`` per logical step, then
``<answer>\\boxed{FINAL}</answer>``. The verifier, told K, writes ``<step_verification>`` holding K
``<step>`` blocks that each end in ``\\boxed{CORRECT}`` or ``\\boxed{INCORRECT}``, then
``<final_verification>\\boxed{CORRECT|INCORRECT}</final_verification>``.

Parsing never raises and runs in linear time on any text (tags are found with ``str.find``, not
backtracking regexes), because it is applied to raw sampled model output: empty strings, megabytes
of noise, unbalanced or nested tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

STEP_OPEN, STEP_CLOSE = "<step>", "</step>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
STEPV_OPEN, STEPV_CLOSE = "<step_verification>", "</step_verification>"
FINALV_OPEN, FINALV_CLOSE = "<final_verification>", "</final_verification>"
CORRECT, INCORRECT = "CORRECT", "INCORRECT"

_BOXED = re.compile(r"\\boxed\s*\{")
# A verdict may be wrapped as \text{CORRECT} or \textbf{CORRECT}; anything else is not a verdict.
_TEXT_WRAP = re.compile(r"^\\text(?:bf|rm|tt)?\s*\{(.*)\}$", re.DOTALL)


# ----------------------------------------------------------------------------------------------
# Low-level scanning helpers (linear time, never raise)
# ----------------------------------------------------------------------------------------------


def find_blocks(
    text: str, open_tag: str, close_tag: str, start: int = 0, end: int | None = None
) -> list[tuple[int, int]]:
    """Character spans ``(start, end)`` of every ``open_tag ... close_tag`` block, tags included (docs/method.md §2).

    Same matches as the non-greedy regex ``open(.*?)close`` with DOTALL, scanned left to right, but
    linear in ``len(text)``: an opening tag pairs with the first closing tag after it.
    """
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    pos = start
    while True:
        i = text.find(open_tag, pos, end)
        if i < 0:
            return spans
        j = text.find(close_tag, i + len(open_tag), end)
        if j < 0:
            return spans
        spans.append((i, j + len(close_tag)))
        pos = j + len(close_tag)


def _matching_braces(text: str) -> dict[int, int]:
    """Map the index of each ``{`` to the index of its matching ``}`` (LaTeX ``\\{`` ``\\}`` skipped)."""
    match: dict[int, int] = {}
    stack: list[int] = []
    escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
    return match


def last_boxed(text: str) -> str | None:
    """Content of the last balanced ``\\boxed{...}`` in ``text`` (nested braces allowed), or None
    (docs/method.md §2).
    """
    starts = [m.end() - 1 for m in _BOXED.finditer(text)]  # index of each box's "{"
    if not starts:
        return None
    match = _matching_braces(text)
    for brace in reversed(starts):
        close = match.get(brace)
        if close is not None:
            return text[brace + 1 : close]
    return None


def _verdict(content: str | None) -> bool | None:
    """Read ``CORRECT``/``INCORRECT`` (any case, optionally in ``\\text{}``) -> True/False, else None."""
    if content is None:
        return None
    content = content.strip()
    wrapped = _TEXT_WRAP.match(content)
    if wrapped:
        content = wrapped.group(1).strip()
    word = content.upper()
    if word == CORRECT:
        return True
    if word == INCORRECT:
        return False
    return None


def _strip_blocks(text: str, spans: list[tuple[int, int]], offset: int = 0) -> str:
    """``text`` with the given spans (absolute, minus ``offset``) cut out."""
    out, pos = [], 0
    for s, e in spans:
        out.append(text[pos : s - offset])
        pos = e - offset
    out.append(text[pos:])
    return "".join(out)


def _single_envelope(text: str, first: tuple[str, str], second: tuple[str, str]) -> tuple[str, str] | None:
    """If ``text`` is exactly ``first`` block then ``second`` block (whitespace around), their contents.

    Each of the four tags must occur exactly once; otherwise None.
    """
    tags = (*first, *second)
    if any(text.count(t) != 1 for t in tags):
        return None
    s = text.strip()
    if not (s.startswith(first[0]) and s.endswith(second[1])):
        return None
    mid_end = s.find(first[1])
    mid_start = s.find(second[0])
    if mid_end < 0 or mid_start < mid_end or s[mid_end + len(first[1]) : mid_start].strip():
        return None
    return s[len(first[0]) : mid_end], s[mid_start + len(second[0]) : len(s) - len(second[1])]


# ----------------------------------------------------------------------------------------------
# Generator output
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedSolution:
    """A generator response split into steps (docs/method.md §2).

    Attributes:
        steps: text inside each ``<step>...</step>`` block, in order (K = ``len(steps)``).
        step_spans: character ``(start, end)`` of each whole block, tags included:
            ``text[start:end] == "<step>" + steps[k] + "</step>"``. The step reward of docs/method.md §4
            goes on the token holding character ``end - 1`` (the closing ``>``).
        answer: content of the last ``\\boxed{}`` inside the last ``<answer>...</answer>``, or None.
        format_score: generator format score in [0, 1] (see :func:`generator_format_score`).
        well_formed: exact ``<think>...</think><answer>...</answer>`` envelope, at least one step
            and a boxed answer; the verifier's step-count penalty applies only to such solutions.
    """

    steps: list[str] = field(default_factory=list)
    step_spans: list[tuple[int, int]] = field(default_factory=list)
    answer: str | None = None
    format_score: float = 0.0
    well_formed: bool = False

    @property
    def num_steps(self) -> int:
        """K, the number of steps (docs/method.md §2)."""
        return len(self.steps)


def generator_format_score(text: str, num_steps: int, answer: str | None) -> float:
    """Generator format score in [0, 1], the generator-side analogue of docs/method.md §5's score.

    The paper gives the generator format reward weight 0 (docs/method.md §4), so this score is reported
    (and usable through ``outcome_reward(format_weight=...)``) but does not shape training by default.
    Starts at 1; 0 unless the text is exactly ``<think>...</think>`` then ``<answer>...</answer>``;
    -0.5 if there is no ``<step>`` block; -0.5 if the answer has no ``\\boxed{}``; -0.2 for stray
    text inside ``<think>`` outside the step blocks. Clipped to [0, 1].
    """
    envelope = _single_envelope(text, (THINK_OPEN, THINK_CLOSE), (ANSWER_OPEN, ANSWER_CLOSE))
    if envelope is None:
        return 0.0
    think, _ = envelope
    score = 1.0
    if num_steps == 0:
        score -= 0.5
    if answer is None:
        score -= 0.5
    if _strip_blocks(think, find_blocks(think, STEP_OPEN, STEP_CLOSE)).strip():
        score -= 0.2
    return min(1.0, max(0.0, score))


def parse_solution(text: str) -> ParsedSolution:
    """Split a generator response into steps and a final answer (docs/method.md §2).

    Steps are every ``<step>...</step>`` span of the text (non-greedy, DOTALL; K = count). The
    answer is the content of the last balanced ``\\boxed{}`` inside the last complete
    ``<answer>...</answer>`` block; a truncated response without ``</answer>`` has no answer.
    Never raises.

    Args:
        text: the raw response (the generated continuation only, not the prompt).
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    spans = find_blocks(text, STEP_OPEN, STEP_CLOSE)
    steps = [text[s + len(STEP_OPEN) : e - len(STEP_CLOSE)] for s, e in spans]
    answers = find_blocks(text, ANSWER_OPEN, ANSWER_CLOSE)
    answer = None
    if answers:
        s, e = answers[-1]
        answer = last_boxed(text[s + len(ANSWER_OPEN) : e - len(ANSWER_CLOSE)])
    score = generator_format_score(text, len(steps), answer)
    well_formed = score > 0.0 and len(steps) > 0 and answer is not None
    return ParsedSolution(steps=steps, step_spans=spans, answer=answer, format_score=score, well_formed=well_formed)


# ----------------------------------------------------------------------------------------------
# Verifier output
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedVerification:
    """A verifier response (docs/method.md §2, §5).

    Attributes:
        step_verdicts: one bool per judged step (True = CORRECT), or None when the number of
            ``<step>`` blocks differs from ``num_steps`` or a block carries no readable verdict;
            such a solution gets no step reward (docs/method.md §2).
        final_verdict: the ``<final_verification>`` verdict (True = CORRECT), or None when
            unparseable; None counts as INCORRECT with zero verifier reward (docs/method.md §2).
        format_score: the verifier format score of docs/method.md §5, in [0, 1].
        num_judged: number of ``<step>`` blocks found inside ``<step_verification>``.
    """

    step_verdicts: list[bool] | None = None
    final_verdict: bool | None = None
    format_score: float = 0.0
    num_judged: int = 0


def verifier_format_score(text: str, num_steps: int, solution_well_formed: bool = True) -> float:
    """The verifier format score of docs/method.md §5, in [0, 1].

    Starts at 1; 0 unless the output is exactly ``<step_verification>...</step_verification>`` then
    ``<final_verification>...</final_verification>`` (whitespace around and between allowed);
    -0.8 if the final content is not exactly a boxed CORRECT/INCORRECT; -0.8 if there are no
    ``<step>`` blocks; -0.8 if the number of judged steps != K (only when the solution itself was
    well-formed); -0.4 for stray text between the step blocks. Clipped to [0, 1].
    """
    envelope = _single_envelope(text, (STEPV_OPEN, STEPV_CLOSE), (FINALV_OPEN, FINALV_CLOSE))
    if envelope is None:
        return 0.0
    steps_part, final_part = envelope
    score = 1.0
    final = final_part.strip()
    if final not in (rf"\boxed{{{CORRECT}}}", rf"\boxed{{{INCORRECT}}}"):
        score -= 0.8
    blocks = find_blocks(steps_part, STEP_OPEN, STEP_CLOSE)
    if not blocks:
        score -= 0.8
    if solution_well_formed and len(blocks) != num_steps:
        score -= 0.8
    if _strip_blocks(steps_part, blocks).strip():
        score -= 0.4
    return min(1.0, max(0.0, score))


def parse_verification(
    text: str, num_steps: int, solution_well_formed: bool = True, final_from_steps: bool = False
) -> ParsedVerification:
    """Read the verifier's step verdicts, final verdict and format score (docs/method.md §2, §5).

    Verdicts are read leniently (last ``\\boxed{}`` of each block, any case, ``\\text{}`` allowed)
    from the first ``<step_verification>`` block and the last ``<final_verification>`` block even
    when the envelope is not exact; strictness lives in the format score. Never raises.

    Args:
        text: the raw verifier response.
        num_steps: K, the number of steps of the judged solution.
        solution_well_formed: whether the judged solution was well-formed (gates the step-count
            penalty of the format score, docs/method.md §5).
        final_from_steps: the final verdict is the AND of the step verdicts, not the written one: a solution
            is judged wrong iff some step is flagged, and None (INCORRECT, no reward) when the step verdicts
            are unusable (``verifier.final_from_steps``, a declared deviation from the paper, issue #36: the
            outcome reward then trains the step verdicts). The written final still counts in the format score.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    num_judged = 0
    step_verdicts: list[bool] | None = None
    stepv = find_blocks(text, STEPV_OPEN, STEPV_CLOSE)
    if stepv:
        s, e = stepv[0]
        blocks = find_blocks(text, STEP_OPEN, STEP_CLOSE, s + len(STEPV_OPEN), e - len(STEPV_CLOSE))
        num_judged = len(blocks)
        verdicts = [_verdict(last_boxed(text[bs + len(STEP_OPEN) : be - len(STEP_CLOSE)])) for bs, be in blocks]
        if num_judged == num_steps and all(v is not None for v in verdicts):
            step_verdicts = [bool(v) for v in verdicts]
    elif num_steps == 0:
        step_verdicts = []
    final_verdict = None
    finals = find_blocks(text, FINALV_OPEN, FINALV_CLOSE)
    if finals:
        s, e = finals[-1]
        final_verdict = _verdict(last_boxed(text[s + len(FINALV_OPEN) : e - len(FINALV_CLOSE)]))
    if final_from_steps:
        final_verdict = None if step_verdicts is None else all(step_verdicts)
    return ParsedVerification(
        step_verdicts=step_verdicts,
        final_verdict=final_verdict,
        format_score=verifier_format_score(text, num_steps, solution_well_formed),
        num_judged=num_judged,
    )


def format_verification(step_verdicts: list[bool], final_verdict: bool, analyses: list[str] | None = None) -> str:
    """Write a verifier response in the exact format of docs/method.md §2 (for warm-up data and tests)."""
    analyses = analyses or [""] * len(step_verdicts)
    if len(analyses) != len(step_verdicts):
        raise ValueError(f"got {len(analyses)} analyses for {len(step_verdicts)} step verdicts")
    blocks = []
    for k, (a, v) in enumerate(zip(analyses, step_verdicts, strict=True), start=1):
        analysis = a.strip() + " " if a.strip() else ""
        blocks.append(f"<step>Step {k} Analysis: {analysis}\\boxed{{{CORRECT if v else INCORRECT}}}</step>")
    final = CORRECT if final_verdict else INCORRECT
    return f"{STEPV_OPEN}{''.join(blocks)}{STEPV_CLOSE}\n{FINALV_OPEN}\\boxed{{{final}}}{FINALV_CLOSE}"


def format_solution(steps: list[str], answer: str) -> str:
    """Write a generator response in the exact format of docs/method.md §2 (for SFT data and tests)."""
    body = "".join(f"{STEP_OPEN}{s}{STEP_CLOSE}" for s in steps)
    return f"{THINK_OPEN}{body}{THINK_CLOSE}\n{ANSWER_OPEN}\\boxed{{{answer}}}{ANSWER_CLOSE}"
