"""Issue #15: one RL update on several processes (tango_steps.training.distributed): torchrun, gloo on CPU.

The same global batch on 1 process and on 2 (DDP, FSDP2) must end with the same weights within
float tolerance (the processes add their gradients in another order) and log the same loss, KL and
entropy; two processes write the checkpoint in parallel, each a share of the full tensors (issue #35,
defect 5), and a later update on any number of processes continues from either layout, the optimizer
and RNG state surviving that hand-over.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tango_steps.models.digests import WRITTEN
from tango_steps.models.loading import load_model
from tango_steps.models.store import file_sha256
from tango_steps.training.batch import RLBatch, rank_micro_batches
from tango_steps.training.checkpoint import init_checkpoint, read_state
from tango_steps.training.checkpoint_files import (
    optimizer_state_by_name,
    optimizer_state_by_position,
    read_optimizer_state,
)
from tango_steps.training.launch import FAIL_RANK_ENV
from tango_steps.training.settings import UpdateSettings
from tango_steps.training.update import rl_update

# several optimizer steps (old log-probs computed), a KL term (reference log-probs), micro-batches
# that leave one process an empty one: every code path of the split
SETTINGS = UpdateSettings.of(
    learning_rate=5e-3, kl_coef=0.01, entropy_coef=0.001, micro_batch_size=2, optimizer_steps=2
)


@pytest.fixture(scope="module")
def batch(tiny_tokenizer):
    g = torch.Generator().manual_seed(0)
    prompts = [tiny_tokenizer(f"Problem: {i} + 1\nSolution:\n")["input_ids"] for i in range(10)]
    lengths = (5, 9, 3, 7, 8, 4, 6, 2, 9, 5)
    responses = [torch.randint(3, len(tiny_tokenizer), (n,), generator=g).tolist() for n in lengths]
    advantages = [[(1.0 if i % 3 else -1.0) * (1 + 0.1 * t) for t in range(len(r))] for i, r in enumerate(responses)]
    return RLBatch(prompts, responses, advantages)


@pytest.fixture(scope="module")
def updates(tmp_path_factory, tiny_model_dir, batch):
    """ckpt0 -> one update on 1 process, on 2 with DDP and on 2 with FSDP; then a second update of
    each on the other kind of process count (1 -> 2 and 2 -> 1), from the same checkpoints."""
    root = tmp_path_factory.mktemp("dist")
    ckpt0 = init_checkpoint(str(tiny_model_dir), root / "ckpt0", SETTINGS)
    out = {}
    for name, settings in {
        "p1": SETTINGS,
        "ddp": SETTINGS.with_section(processes=2, strategy="ddp"),
        "fsdp": SETTINGS.with_section(processes=2, strategy="fsdp"),
    }.items():
        out[name] = (rl_update(ckpt0, batch, settings, root / name), root / name)
    # continued: p1's checkpoint on 2 FSDP processes, fsdp's and ddp's on 1 process, p1's on 1
    out["p1>p1"] = (rl_update(root / "p1", batch, SETTINGS, root / "p1p1"), root / "p1p1")
    fsdp2 = SETTINGS.with_section(processes=2, strategy="fsdp")
    out["p1>fsdp"] = (rl_update(root / "p1", batch, fsdp2, root / "new2" / "p1fsdp"), root / "new2" / "p1fsdp")
    out["fsdp>p1"] = (rl_update(root / "fsdp", batch, SETTINGS, root / "fsdpp1"), root / "fsdpp1")
    # into a folder that does not exist yet (the in-process runner's layout), as one process can
    out["ddp>p1"] = (rl_update(root / "ddp", batch, SETTINGS, root / "new" / "ddpp1"), root / "new" / "ddpp1")
    return ckpt0, out


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    """Every weight of a checkpoint's model/, from one file or from each writer's share."""
    return {k: v for f in sorted((ckpt / "model").glob("*.safetensors")) for k, v in load_file(f).items()}


def _optimizer(ckpt: Path) -> dict:
    names = [n for n, p in load_model(str(ckpt / "model"), "float32").named_parameters() if p.requires_grad]
    return read_optimizer_state(ckpt, names)


# AdamW moves each weight by up to lr per step whatever the gradient's size, so a gradient summed in
# another order (1e-7 relative) can move a weight whose gradient is near zero by a visible fraction of
# lr: the weights must agree to 1% of one step (lr 5e-3), the gradients' summary metrics to 1e-4.
WEIGHT_ATOL = 0.01 * SETTINGS.section.learning_rate


def _assert_close(a: Path, b: Path, start: Path) -> None:
    wa, wb, w0 = _weights(a), _weights(b), _weights(start)
    assert wa.keys() == wb.keys()
    moved = max((wa[k] - w0[k]).abs().max().item() for k in wa)
    assert moved > 100 * WEIGHT_ATOL  # the update did far more than the tolerance
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=WEIGHT_ATOL, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_end_where_one_does(updates, strategy):
    ckpt0, out = updates
    (m1, c1), (m2, c2) = out["p1"], out[strategy]
    _assert_close(c2, c1, ckpt0)
    for k in ("loss", "pg_loss", "kl", "entropy", "clip_frac", "grad_norm"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-7), k
    assert m2["tokens"] == m1["tokens"] and m2["updates"] == m1["updates"] == 2  # 2 optimizer steps
    assert m2["launch_seconds"] > 0 and "launch_seconds" not in m1
    # two writers, each a share: HF's sharded layout (an index) and one optimizer file each, the same tensors
    assert sorted(p.name for p in (c2 / "model").glob("*.safetensors")) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert (c2 / "model" / "model.safetensors.index.json").exists() and not (c2 / "optimizer.pt").exists()
    assert len(list((c2 / "optimizer").glob("*.pt"))) == 2
    o1, o2 = _optimizer(c1), _optimizer(c2)
    assert o1["state"].keys() == o2["state"].keys() and o1["param_groups"] == o2["param_groups"]
    for i in o1["state"]:
        assert torch.equal(o1["state"][i]["step"], o2["state"][i]["step"])
        torch.testing.assert_close(o1["state"][i]["exp_avg"], o2["state"][i]["exp_avg"], rtol=1e-4, atol=1e-7)
    assert read_state(c2).updates == 2


def test_a_checkpoint_continues_on_any_number_of_processes(updates):
    """One process's checkpoint updated on two FSDP processes, and two processes' on one, land where
    one process continuing from one process's checkpoint does: weights, AdamW moments and RNG state
    went through the hand-over."""
    ckpt0, out = updates
    ref = out["p1>p1"][1]
    for name in ("p1>fsdp", "fsdp>p1", "ddp>p1"):
        _assert_close(out[name][1], ref, ckpt0)
        assert read_state(out[name][1]).updates == 4
    r1, r2 = (
        torch.load(ref / "rng_state.pt", weights_only=False),
        torch.load(out["p1>fsdp"][1] / "rng_state.pt", weights_only=False),
    )
    assert torch.equal(r1["torch"], r2["torch"])


def test_fewer_samples_than_processes(tmp_path, tiny_model_dir, batch):
    """One sample on two processes: the second has only empty micro-batches and still takes part."""
    ckpt0 = init_checkpoint(str(tiny_model_dir), tmp_path / "ckpt0", SETTINGS)
    one = RLBatch(batch.prompt_ids[:1], batch.response_ids[:1], batch.advantages[:1])
    settings = SETTINGS.with_section(optimizer_steps=1)
    m1 = rl_update(ckpt0, one, settings, tmp_path / "p1")
    m2 = rl_update(ckpt0, one, settings.with_section(processes=2, strategy="fsdp"), tmp_path / "p2")
    assert m2["tokens"] == m1["tokens"] == len(batch.response_ids[0])
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4)
    w1, w2 = _weights(tmp_path / "p1"), _weights(tmp_path / "p2")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=WEIGHT_ATOL)


def test_a_failed_process_fails_the_update_and_writes_nothing(tmp_path, tiny_model_dir, batch):
    ckpt0 = init_checkpoint(str(tiny_model_dir), tmp_path / "ckpt0", SETTINGS)
    bad = RLBatch(batch.prompt_ids, batch.response_ids, [[float("nan")] * len(r) for r in batch.response_ids])
    with pytest.raises(RuntimeError, match="2-process update exited") as err:
        rl_update(ckpt0, bad, SETTINGS.with_section(processes=2), tmp_path / "out")
    assert "non-finite loss" in str(err.value)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt0"]  # no launch folder left either


def test_micro_batches_are_dealt_out_and_padded_to_the_busiest_process():
    idx = list(range(7))
    shares = [rank_micro_batches(idx, 2, r, 3) for r in range(3)]
    assert shares == [[[0, 3], [6]], [[1, 4], []], [[2, 5], []]]
    assert sorted(i for s in shares for mb in s for i in mb) == idx
    assert rank_micro_batches([0], 4, 1, 2) == [[]]  # a process with nothing still takes part
    with pytest.raises(ValueError, match="rank"):
        rank_micro_batches(idx, 2, 3, 3)


def test_optimizer_state_keys_round_trip():
    state = {"state": {0: {"step": 1}, 2: {"step": 2}}, "param_groups": [{"lr": 0.1, "params": [0, 1, 2]}]}
    names = ["a", "b", "c"]
    by_name = optimizer_state_by_name(state, names)
    assert by_name["state"].keys() == {"a", "c"} and by_name["param_groups"][0]["params"] == names
    assert optimizer_state_by_position(by_name, names) == state


def test_bad_settings_are_refused_naming_them():
    with pytest.raises(ValueError, match="strategy: Input should be 'ddp' or 'fsdp'"):
        UpdateSettings.of(strategy="zero3")
    with pytest.raises(ValueError, match="processes: Input should be greater than or equal to 1"):
        UpdateSettings.of(processes=0)
    with pytest.raises(ValueError, match="fsdp with LoRA"):
        UpdateSettings.of(processes=2, strategy="fsdp", lora={})


@pytest.mark.parametrize(
    ("override", "msg"),
    [
        ({"generator_update.processes": 0}, r"generator_update.processes: Input should be greater than or equal to 1"),
        ({"verifier_update.strategy": "zero3"}, r"verifier_update.strategy: Input should be 'ddp' or 'fsdp'"),
        (
            {"generator_update.processes": 4, "resources.generator_update.gpu": 2},
            r"generator_update.processes is 4 but resources.generator_update.gpu is 2",
        ),
        (
            {"verifier_update.processes": 2, "verifier_update.strategy": "fsdp", "verifier_update.lora": {"r": 4}},
            r"verifier_update.strategy 'fsdp' with verifier_update.lora is not supported",
        ),
    ],
)
def test_a_recipe_with_an_impossible_update_layout_is_refused_naming_the_field(override, msg):
    from tango_steps.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=msg):
        load_config(None, override)
    assert load_config(None, {"generator_update.processes": 2, "resources.generator_update.gpu": 2})


def test_the_writers_digests_are_their_files(updates):
    """Each writer hashed its files as it wrote them: WRITTEN.json holds every share's weights and optimizer file,
    each digest the file's."""
    _, out = updates
    ckpt = out["fsdp"][1]
    written = json.loads((ckpt / WRITTEN).read_text())
    big = {p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.suffix in (".safetensors", ".pt")}
    assert set(written) == big - {"rng_state.pt"}
    for name, (size, _, digest) in written.items():
        assert size == (ckpt / name).stat().st_size and digest == file_sha256(ckpt / name), name


def test_a_writer_failing_mid_checkpoint_leaves_nothing(tmp_path, tiny_model_dir, batch, monkeypatch):
    """Process 1 dies after rank 0 made the staging folder: the update fails naming it, and neither the checkpoint
    nor its half-written staging folder is left."""
    ckpt0 = init_checkpoint(str(tiny_model_dir), tmp_path / "ckpt0", SETTINGS)
    monkeypatch.setenv(FAIL_RANK_ENV, "1:write")
    with pytest.raises(RuntimeError, match="2-process update exited") as err:
        rl_update(ckpt0, batch, SETTINGS.with_section(processes=2, strategy="fsdp"), tmp_path / "out")
    assert "failure injected by TANGO_FAIL_UPDATE_RANK=1:write" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt0"]  # no checkpoint, no .out.tmp-* folder


def test_two_processes_skip_a_step_without_signal_together(tmp_path, tiny_model_dir, batch):
    """Issue #36: a step whose advantages are all zero is skipped by every process alike (each holds the whole
    batch, so none waits in a collective the others skipped); the other step is taken, as on one process."""
    ckpt0 = init_checkpoint(str(tiny_model_dir), tmp_path / "ckpt0", SETTINGS)
    half = [[0.0] * len(r) if i % 2 == 0 else batch.advantages[i] for i, r in enumerate(batch.response_ids)]
    flat = RLBatch(batch.prompt_ids, batch.response_ids, half)
    m1 = rl_update(ckpt0, flat, SETTINGS, tmp_path / "p1")
    m2 = rl_update(ckpt0, flat, SETTINGS.with_section(processes=2, strategy="fsdp"), tmp_path / "p2")
    assert m1["skipped_steps"] == m2["skipped_steps"] == 1 and m1["updates"] == m2["updates"] == 1
    w1, w2 = _weights(tmp_path / "p1"), _weights(tmp_path / "p2")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=WEIGHT_ATOL)
