"""The round schedule (tango_steps.method.schedule, docs/method.md §3)."""

from __future__ import annotations

import pytest

from tango_steps.method.schedule import evaluates, plan_round, total_generator_updates


def test_paper_schedule_440_steps():
    # docs/method.md §3: 440 global steps = 40 verifier warm-up + 300 generator + 100 verifier
    plans = [plan_round(r, 40, 3) for r in range(1, 441)]
    assert sum(p.update_generator for p in plans) == 300 == total_generator_updates(440, 40, 3)
    assert sum(p.update_verifier for p in plans) == 140
    assert all(p.update_verifier and not p.update_generator for p in plans[:40])
    # after warm-up: G G G V, starting with the generator
    assert [("G" if p.update_generator else "V") for p in plans[40:48]] == list("GGGVGGGV")
    assert plans[0].skip_generator == "verifier warm-up round"
    assert plans[43].skip_generator == "verifier round of the schedule"
    assert plans[40].skip_verifier == "generator round of the schedule"


def test_generator_step_counts_updates_before_the_round():
    steps = [plan_round(r, 2, 3).generator_step for r in range(1, 10)]
    # rounds: V V G G G V G G G
    assert steps == [0, 0, 0, 1, 2, 3, 3, 4, 5]


def test_frozen_models_keep_the_slots():
    p = plan_round(5, 2, 3, train_generator=False)
    assert not p.update_generator and p.skip_generator == "generator frozen by configuration"
    v = plan_round(1, 2, 3, train_verifier=False)
    assert not v.update_verifier and v.skip_verifier == "verifier frozen by configuration"
    assert plan_round(5, 2, 3, train_generator=False).generator_step == plan_round(5, 2, 3).generator_step


def test_generator_only_schedule():
    assert all(plan_round(r, 0, 0).update_generator for r in range(1, 20))
    assert total_generator_updates(20, 0, 0) == 20


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ((0, 2, 3), "round_idx must be >= 1"),
        ((1, -1, 3), "verifier_warmup_rounds"),
        ((1, 0, -2), "generator_per_verifier"),
    ],
)
def test_errors(args, msg):
    with pytest.raises(ValueError, match=msg):
        plan_round(*args)


def test_evaluation_every_k_rounds_and_always_the_last():
    assert [r for r in range(1, 21) if evaluates(r, 5, 20)] == [5, 10, 15, 20]
    assert [r for r in range(1, 8) if evaluates(r, 3, 7)] == [3, 6, 7]
    assert all(evaluates(r, 1, 4) for r in range(1, 5))
    with pytest.raises(ValueError, match="every"):
        evaluates(1, 0, 4)


def test_evaluation_last_rounds():
    assert [r for r in range(1, 21) if evaluates(r, 5, 20, last=4)] == [5, 10, 15, 17, 18, 19, 20]
    assert [r for r in range(1, 4) if evaluates(r, 10, 3, last=5)] == [1, 2, 3]
    with pytest.raises(ValueError, match="last"):
        evaluates(1, 5, 4, last=0)


def test_a_plan_cannot_update_another_model_than_its_slot():
    """A round has one slot and updates at most its model (docs/method.md §3): anything else cannot be built."""
    from tango_steps.method.schedule import RoundPlan

    assert RoundPlan(round_idx=3, slot="verifier", update=None, generator_step=2).update_verifier is False
    with pytest.raises(ValueError, match="a generator round cannot update the verifier"):
        RoundPlan(round_idx=3, slot="generator", update="verifier", generator_step=2)
    with pytest.raises(ValueError, match="slot must be generator or verifier"):
        RoundPlan(round_idx=3, slot="both", update=None, generator_step=2)


def test_plan_artifacts_round_trip_and_old_ones_still_read():
    from tango_steps.round.plan import plan_dict, plan_from_dict

    for r in range(1, 9):
        plan = plan_round(r, 2, 3, train_verifier=r != 6)
        d = plan_dict(plan)
        assert (d["update_generator"], d["update_verifier"]) == (plan.update_generator, plan.update_verifier)
        assert plan_from_dict(d) == plan
        old = {k: v for k, v in d.items() if k != "update"}  # an artifact written before plans had `update`
        assert plan_from_dict(old) == plan
