"""tango_steps.pipeline.retention: which rounds keep their checkpoints, and a removed checkpoint refuses loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tango_steps.models.store import REMOVED, ModelStore, load_model_dir
from tango_steps.pipeline.retention import plan_retention, remove_checkpoint


def _ref(key: str, round_: int, role: str, mb: int = 40) -> dict:
    return {"key": key, "bytes": mb * 10**6, "meta": {"round": round_, "role": role}}


def _states(rounds: int, verifier_rounds: set[int]) -> dict[int, dict]:
    """States of a run whose round k updates the verifier when k is in ``verifier_rounds``, else the
    generator: each update writes a new checkpoint; the other model keeps its reference."""
    g0 = _ref("TangoFlow/1/start/1/0/generator", 0, "generator", 14)
    v0 = _ref("TangoFlow/1/start/1/0/verifier", 0, "verifier", 14)
    g, v = g0, v0
    out = {0: {"round": 0, "generator": g, "verifier": v, "generator_init": g0, "verifier_init": v0}}
    for k in range(1, rounds + 1):
        if k in verifier_rounds:
            v = _ref(f"TangoRoundFlow/{k}0/verifier_update/5/0/verifier", k, "verifier")
        else:
            g = _ref(f"TangoRoundFlow/{k}0/generator_update/5/0/generator", k, "generator")
        out[k] = {"round": k, "generator": g, "verifier": v, "generator_init": g0, "verifier_init": v0}
    return out


def test_keep_last_every_and_pinned_rounds():
    """6 rounds: verifier rounds 1 and 4, generator rounds 2, 3, 5, 6. Keep the last 2, every 3rd, and
    round 2 (a fork's source)."""
    states = _states(6, {1, 4})
    plan = plan_retention(states, keep_last=2, every=3, pinned={2: "forked by TangoFlow/9"})
    assert sorted(plan.kept) == [0, 2, 3, 5, 6]
    assert "forked by TangoFlow/9" in plan.kept[2] and "a multiple of --every 3" in plan.kept[3]
    assert "last round" in plan.kept[6]
    # round 1's verifier serves rounds 2-3 (kept); round 4's verifier serves 5-6: both stay.
    # round 4's state is (generator 3, verifier 4): both kept by others -> round 4 stays whole.
    assert [r["key"] for r in plan.remove] == []
    assert plan.broken == [] and plan.intact == [1, 4]
    plan = plan_retention(states, keep_last=1)
    assert sorted(plan.kept) == [0, 6]  # round 6 is (generator 6, verifier 4)
    assert [r["key"].split("/")[1] for r in plan.remove] == ["10", "20", "30", "50"]  # v1, g2, g3, g5
    assert plan.broken == [1, 2, 3, 4, 5] and plan.intact == []  # round 4 is (g3, v4): g3 is gone
    assert plan.bytes == 4 * 40 * 10**6


def test_round_0_and_forked_sources_are_never_removed():
    states = _states(3, {1})
    plan = plan_retention(states, keep_last=1)
    assert all(r["key"].startswith("TangoRoundFlow/") for r in plan.remove)
    # a fork's first state refers to its source's checkpoints: only this run's round runs are deletable
    fork = {k + 10: s for k, s in _states(3, {1}).items()}
    plan = plan_retention(fork, keep_last=1, owned=("TangoRoundFlow/30",))
    assert [r["key"] for r in plan.remove] == []


@pytest.mark.parametrize(("keep_last", "every", "match"), [(0, None, "--keep-last"), (1, 0, "--every")])
def test_bad_arguments_are_named(keep_last, every, match):
    with pytest.raises(ValueError, match=match):
        plan_retention(_states(2, {1}), keep_last=keep_last, every=every)


def test_a_removed_checkpoint_refuses_to_load_and_says_why(tmp_path):
    from metaflow.plugins.datastores.local_storage import LocalStorage

    store = ModelStore(LocalStorage(str(tmp_path / "ds")))
    src = tmp_path / "src"
    (src / "model").mkdir(parents=True)
    (src / "model" / "model.safetensors").write_bytes(os.urandom(4096))
    gone = store.save(src, "TangoRoundFlow/7/generator_update/5/0/generator", meta={"round": 3, "role": "generator"})
    kept = store.save(src, "TangoRoundFlow/8/generator_update/5/0/generator", meta={"round": 4, "role": "generator"})
    remove_checkpoint(store, gone, {"removed_by": "python -m tango_steps.pipeline.retention", "when": "2026-12-01",
                                    "run": "TangoFlow/1", "kept_rounds": [0, 4]})  # fmt: skip
    folder = Path(gone["uri"])
    assert sorted(p.name for p in folder.iterdir()) == [REMOVED]  # the weights are gone, the note stays
    why = r"round 3, role generator\) was removed by the retention command .*2026-12-01, for TangoFlow/1; rounds kept"
    with pytest.raises(ValueError, match=why + r" whole: \[0, 4\]\).*can no longer be resumed"):
        load_model_dir(gone)
    assert load_model_dir(kept).is_dir()
    with pytest.raises(ValueError, match="was removed by the retention command"):
        store.load(gone)
