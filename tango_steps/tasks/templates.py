"""Named, configurable prompt templates for the generator and the verifier (docs/method.md §2).

Two templates ship: ``full`` (long instructions, suited to 7B base models, our own wording with the
paper's tags and rules) and ``compact`` (short, for small and tiny models that are warmed up on the
format). A template is plain text with placeholders substituted in ONE pass, so LaTeX braces in a
template need no escaping and a problem that happens to contain ``{solution}`` is left alone:

- generator: ``{problem}``
- verifier: ``{problem}``, ``{solution}``, ``{num_steps}``

Register your own with :func:`register_template`, or build a :class:`PromptTemplate` from YAML
strings; both are validated.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from tango_steps.method.formats import ParsedSolution
from tango_steps.registry import lookup

_PLACEHOLDER = re.compile(r"\{(problem|solution|num_steps)\}")
GENERATOR_PLACEHOLDERS = frozenset({"problem"})
VERIFIER_PLACEHOLDERS = frozenset({"problem", "solution", "num_steps"})


def _substitute(template: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class PromptTemplate:
    """A pair of prompt templates (docs/method.md §2).

    Attributes:
        name: registry name, e.g. ``full``.
        generator: generator prompt; must contain ``{problem}`` and no other placeholder.
        verifier: verifier prompt; must contain ``{problem}``, ``{solution}`` and ``{num_steps}``.
    """

    name: str
    generator: str
    verifier: str

    def __post_init__(self) -> None:
        for which, text, required in (
            ("generator", self.generator, GENERATOR_PLACEHOLDERS),
            ("verifier", self.verifier, VERIFIER_PLACEHOLDERS),
        ):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"template '{self.name}': {which} must be a non-empty string")
            found = set(_PLACEHOLDER.findall(text))
            missing = required - found
            extra = found - required
            if missing:
                names = ", ".join("{" + m + "}" for m in sorted(missing))
                raise ValueError(f"template '{self.name}': {which} template lacks {names}")
            if extra:
                names = ", ".join("{" + m + "}" for m in sorted(extra))
                raise ValueError(f"template '{self.name}': {which} template may not use {names}")

    def generator_prompt(self, problem: str) -> str:
        """The generator's prompt for one problem (docs/method.md §2)."""
        return _substitute(self.generator, {"problem": problem})

    def verifier_prompt(self, problem: str, solution: ParsedSolution, raw_solution: str = "") -> str:
        """The verifier's prompt for one solution; K is ``solution.num_steps`` (docs/method.md §2)."""
        return self._verifier_text(problem, render_solution(solution, raw_solution), solution.num_steps)

    def _verifier_text(self, problem: str, rendered_solution: str, num_steps: int) -> str:
        return _substitute(
            self.verifier, {"problem": problem, "solution": rendered_solution, "num_steps": str(num_steps)}
        )

    def fit_verifier_prompt(
        self,
        problem: str,
        solution: ParsedSolution,
        raw_solution: str,
        count_tokens: Callable[[str], int],
        max_tokens: int,
    ) -> tuple[str, bool]:
        """The verifier's prompt cut to ``max_tokens`` at the SOLUTION's tail, never the problem (docs/method.md §2).

        An engine keeps the last tokens of an over-long prompt, which for a verifier prompt drops the
        problem statement first: the verifier would judge a solution to a problem it cannot see.
        Here the rendered solution loses its end instead (marked with :data:`CUT_MARK`) until the
        prompt fits. Returns ``(prompt, cut)``; ``cut`` is True when anything was removed, for the
        caller to count. A prompt still too long with the whole solution removed is returned as
        that (its problem alone is over the limit) and also flagged.
        """
        prompt = self.verifier_prompt(problem, solution, raw_solution)
        if count_tokens(prompt) <= max_tokens:
            return prompt, False
        rendered = render_solution(solution, raw_solution)
        lo, hi = 0, len(rendered)  # longest prefix of the rendered solution that fits, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count_tokens(self._verifier_text(problem, rendered[:mid] + CUT_MARK, solution.num_steps)) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        return self._verifier_text(problem, rendered[:lo] + CUT_MARK, solution.num_steps), True


CUT_MARK = "\n(solution cut: too long)"  # marks a verifier prompt whose solution lost its tail


def render_solution(solution: ParsedSolution, raw_solution: str = "") -> str:
    """The solution as the verifier sees it (docs/method.md §2): one ``<step>`` block per step, then the final answer.

    A solution without steps is shown as its raw text (the verifier still judges its outcome).
    """
    if solution.num_steps == 0:
        return raw_solution.strip() or "(empty solution)"
    lines = [f"<step>{s.strip()}</step>" for s in solution.steps]
    answer = solution.answer if solution.answer is not None else "(no final answer)"
    lines.append(f"Final answer: {answer}")
    return "\n".join(lines)


FULL = PromptTemplate(
    name="full",
    generator=(
        "A conversation between a User and an Assistant. The User asks a math question and the Assistant "
        "solves it carefully, one step at a time.\n"
        "Rules for the Assistant's reply:\n"
        "1. All reasoning goes inside <think> </think>.\n"
        "2. Inside <think>, every logical step is its own <step> </step> block. A step is one deduction "
        "or computation that a reader can check on its own; do not merge several into one step and do "
        "not write text outside the step blocks.\n"
        "3. After </think>, write the final result, simplified, as <answer>\\boxed{FINAL}</answer> and "
        "nothing after it.\n\n"
        "User: {problem}\n"
        "Assistant:"
    ),
    verifier=(
        "A conversation between a User and an Assistant. The User shows a math problem and a proposed "
        "solution with {num_steps} steps; the Assistant checks the solution step by step.\n"
        "Rules for the Assistant's reply:\n"
        "1. Write <step_verification> and then exactly {num_steps} <step> </step> blocks, one per solution "
        "step, in order. Block k starts with 'Step k Analysis:', checks that step's reasoning and "
        "arithmetic, and ends with \\boxed{CORRECT} or \\boxed{INCORRECT}. Close with </step_verification>.\n"
        "2. Then write <final_verification>\\boxed{CORRECT}</final_verification> if the final answer of "
        "the solution is right, or <final_verification>\\boxed{INCORRECT}</final_verification> if not.\n\n"
        "User: Problem: {problem}\n\n"
        "Solution:\n{solution}\n"
        "Assistant:"
    ),
)

COMPACT = PromptTemplate(
    name="compact",
    generator="Problem: {problem}\nSolution:\n",
    verifier="Problem: {problem}\nSolution:\n{solution}\nCheck all {num_steps} steps.\nVerification:\n",
)

TEMPLATES: dict[str, PromptTemplate] = {FULL.name: FULL, COMPACT.name: COMPACT}


def register_template(template: PromptTemplate, overwrite: bool = False) -> PromptTemplate:
    """Add a template to the registry so that configs can name it (docs/method.md §2)."""
    if template.name in TEMPLATES and not overwrite:
        raise ValueError(f"template '{template.name}' is already registered; pass overwrite=True to replace it")
    TEMPLATES[template.name] = template
    return template


def get_template(name: str) -> PromptTemplate:
    """Look a template up by name (docs/method.md §2); the error lists the known names."""
    return lookup(TEMPLATES, name, "prompt template")
