"""What the flow tests share: one isolated Metaflow datastore per test, the small recipe they run, and helpers.

Every test has its own datastore (METAFLOW_DATASTORE_SYSROOT_LOCAL under tmp_path); flows and client queries
run in subprocesses with that environment, so no test can read another's runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TANGO_FLOW = REPO / "flows" / "tango_flow.py"

SMALL = {
    "rounds": 2,
    "rollout": {"engine": "hf", "max_prompt_tokens": 128},
    "generator_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 64},
    "verifier_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 128},
    "batch": {"generator_prompts": 4, "verifier_prompts": 4},
    # round 1: verifier (warm-up) round, round 2: generator round: both update paths run
    "schedule": {"verifier_warmup_rounds": 1, "generator_per_verifier": 3},
    "generator_update": {"learning_rate": 2.0e-4, "micro_batch_size": 8},
    "verifier_update": {"learning_rate": 2.0e-4, "micro_batch_size": 8},
    "evaluation": {"heldout_problems": 10, "max_tokens": 64},
}


# What Datastore.query runs: `python -c QUERY_PRELUDE <tests folder> <fn> <its arguments as a JSON list>`. Every
# query is a function of tests/flowqueries.py (real, linted code); the last line printed is its result, as JSON.
QUERY_PRELUDE = """
import json, sys
sys.path.append(sys.argv[1])
from metaflow import namespace
namespace(None)
import flowqueries
result = getattr(flowqueries, sys.argv[2])(*json.loads(sys.argv[3]))
print(json.dumps(result))
"""
TESTS = Path(__file__).resolve().parent


class Datastore:
    """One isolated Metaflow datastore and the commands that run against it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "TANGO_FAIL"))},
            "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root),
            "USERNAME": "tango-test",
        }

    def config(self, data: dict, name: str = "cfg.yaml") -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump(data))
        return path

    def flow(
        self, *args: str, env: dict | None = None, timeout: int = 1200, flow_file: Path = TANGO_FLOW
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(flow_file), *args],
            env={**self.env, **(env or {})},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def query(self, fn: str, *args):
        """``flowqueries.<fn>(*args)`` run in this datastore (a subprocess with its environment); its JSON result.

        The arguments travel as JSON (argv), never as source: they must be JSON-able, and arrive as JSON gives them
        back (tuples as lists, dict keys as strings)."""
        out = subprocess.run(
            [sys.executable, "-c", QUERY_PRELUDE, str(TESTS), fn, json.dumps(list(args))],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])


def _digest(model_dir: str) -> str:
    """The sha256 of a checkpoint's served weights, tensor by tensor in name order (name, dtype, shape, bytes): the
    same for the same weights whether one process wrote them in one file or several wrote shares (issue #35)."""
    import torch
    from safetensors import safe_open

    tensors = {}
    for p in sorted(Path(model_dir, "model").glob("*.safetensors")):
        with safe_open(str(p), "pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys()})
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
