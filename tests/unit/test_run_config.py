"""A TangoFlow run's configuration is checked before anything is built (docs/method.md §3-§7): every bad input
fails with the field named, through the functions TangoFlow's ``start`` calls (tests/e2e/test_flows.py runs one end
to end)."""

from __future__ import annotations

import pytest
from flowtools import SMALL

from tango_steps.config import ConfigError

BAD = [
    ({"bogus": 1}, None, "bogus"),
    ({"batch": {"generator_prompts": "many"}}, None, "batch.generator_prompts"),
    ({"batch": {"verifier_prompts": -4}}, None, "batch.verifier_prompts"),
    ({"generator_sampling": {"top_p": 1.5}}, None, "generator_sampling.top_p"),
    ({}, 0, "rounds"),
    ({"generator": {"path": "/nonexistent/model"}}, None, "generator.path"),
    ({"generator_sampling": {"n": 2, "max_tokens": 8}}, None, "generator_sampling.max_tokens"),  # token budget
]


@pytest.mark.parametrize(("override", "rounds", "field"), BAD, ids=[b[2] for b in BAD])
def test_bad_input_is_refused_naming_the_field(override, rounds, field, warmed):
    """What TangoFlow's start checks, in its order: the recipe (``--rounds`` included) and its model paths, then the
    token budgets measured with the run's own tokenizers."""
    from tango_steps.pipeline.budgets import check_budgets
    from tango_steps.pipeline.driver import validate_run_config

    with pytest.raises(ConfigError, match=f"{field}:"):
        check_budgets(validate_run_config({**SMALL, **override}, rounds))


def test_the_small_recipe_passes_both_checks(warmed):
    """The check can pass: the flow tests' own recipe is accepted."""
    from tango_steps.pipeline.budgets import check_budgets
    from tango_steps.pipeline.driver import validate_run_config

    assert check_budgets(validate_run_config(SMALL, None))
