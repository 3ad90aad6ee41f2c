"""The GPU-path scripts run as they are on CPU (issue #14): ``gpu_check.py --smoke`` and the HF engine's
memory benchmark on a tiny model. Behaviour only: the figures they print are not checked."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tables(stdout: str) -> dict[str, list[dict[str, str]]]:
    """The markdown tables a script printed, by their ``###`` title."""
    out: dict[str, list[dict[str, str]]] = {}
    title, cols = None, None
    for line in stdout.splitlines():
        if line.startswith("### "):
            title, cols = line[4:], None
            out[title] = []
        elif title and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cols is None:
                cols = cells
            else:
                out[title].append(dict(zip(cols, cells, strict=True)))
    return out


def _run(args: list[str], **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra_env}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def test_gpu_check_smoke_runs_every_part_on_cpu():
    done = _run(["benchmarks/gpu/gpu_check.py", "--smoke"])
    assert done.returncode == 0, done.stderr[-3000:]
    tables = _tables(done.stdout)
    update = next(rows for title, rows in tables.items() if title.startswith("Update"))
    assert [r["mode"] for r in update] == ["full", "full+gc", "lora"]
    assert "update full+liger: not measured" in done.stdout  # no CUDA, no Triton interpreter: said, not hidden
    for r in update:
        assert r["device"] == "cpu" and int(r["tokens"]) == 128 and math.isfinite(float(r["tok/s"]))
    sampling = next(rows for title, rows in tables.items() if title.startswith("HF engine sampling"))
    assert [(r["batch"], r["new tokens"]) for r in sampling] == [("2", "16"), ("4", "32")]
    rounds = tables["The tiny default through the stage functions"]
    assert [(r["round"], r["slot"]) for r in rounds] == [("1", "verifier"), ("2", "generator"), ("eval", "-")]
    # one optimizer step per round, taken or skipped for want of signal (every advantage zero: issue #36)
    assert all(int(r["checkpoint updates"]) + int(r["skipped steps"]) == 1 for r in rounds[:2]), rounds
    assert all(r["rng state saved"] == "True" for r in rounds[:2])
    assert 0 <= float(rounds[2]["generator acc"]) <= 1
    assert all(float(r["estimate GB"]) >= 0 for r in update)  # the layout's estimate beside the measured peak
    # issue #35: the process-group path (torchrun, a group of one, FSDP2, gradient checkpointing over micro-batches,
    # collectives checked) lands where one process does, and each checkpoint continues on the other path
    group = tables["The process-group path and the checkpoint round trip"]
    assert group[0]["run"].startswith("update, group of 1 (gloo, fsdp, gc, 2 micro-batches)")
    assert group[0]["loss"] == group[0]["one-process loss"]
    assert len(group) == 3 and all(float(r["max weight diff"]) <= 1e-6 for r in group), group
    io = tables["Disk and hash"]
    assert [r["what"] for r in io] == ["write 64 MiB + fsync", "sha256 of it (page cache)"]
    assert all(float(r["GB/s"]) > 0 for r in io)


def test_gpu_check_without_a_gpu_says_to_use_smoke():
    import torch

    if torch.cuda.is_available():  # pragma: no cover (CI has no GPU)
        return
    done = _run(["benchmarks/gpu/gpu_check.py", "--parts", "round"])
    assert done.returncode != 0 and "run with --smoke" in done.stderr


def test_rollout_memory_benchmark_on_a_tiny_model(tiny_model_dir, tmp_path):
    data = tmp_path / "gsm8k"
    data.mkdir()
    (data / "test.jsonl").write_text(
        "".join(f'{{"question": "What is {i} + 1?", "answer": "#### {i + 1}"}}\n' for i in range(3))
    )
    args = ["--model", str(tiny_model_dir), "--prompts", "3", "--max-tokens", "8", "--threads", "1"]
    done = _run(
        [
            "benchmarks/speed/rollout_memory.py",
            *args,
            "--paths",
            "recorder",
            "full-logits",
            "--benchmarks",
            str(tmp_path),
        ]
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| recorder") or
            line.startswith("| full-logits")]  # fmt: skip
    assert [r[0].strip() for r in rows] == ["recorder", "full-logits"]
    assert all(int(r[3]) == 24 for r in rows)  # 3 prompts x 8 tokens, each held to the limit


@pytest.mark.skipif(not os.environ.get("TANGO_LIGER_SITE"), reason="TANGO_LIGER_SITE is not set; .ci/run sets it")
def test_gpu_check_measures_the_liger_update_where_liger_runs():
    """With liger-kernel importable (here under Triton's interpreter, on CPU) the update gets its fourth row."""
    site = os.environ["TANGO_LIGER_SITE"]
    done = _run(
        ["benchmarks/gpu/gpu_check.py", "--smoke", "--parts", "update"],
        TRITON_INTERPRET="1",
        PYTHONPATH=os.pathsep.join([str(REPO), site]),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    update = next(rows for title, rows in _tables(done.stdout).items() if title.startswith("Update"))
    assert [r["mode"] for r in update] == ["full", "full+gc", "lora", "full+liger"]
    assert math.isfinite(float(update[-1]["tok/s"]))
