"""SIGKILL sweep (issue #17): kill the whole process group at one point of a run, `resume`, compare.

    python benchmarks/reliability/kill_sweep.py                      # every point, ~2 minutes each on 2 CPUs
    python benchmarks/reliability/kill_sweep.py --points 2:judge 2:checkpoint_write --out runs/sweep

Each point is one fresh datastore: a 2-round TangoFlow run of the embedded tiny default (round 1 a
verifier round, round 2 a generator round; the sizes of tests/e2e/test_flows.py) started with the
test-only switch ``TANGO_KILL_AT=<round>:<point>`` (``tango_steps.faults.maybe_kill``: SIGKILL of the
process group at that point, nothing gets to clean up), then ``resume`` once without it. The finished
run's models (sha256 of the safetensors) and held-out metrics are compared with one uninterrupted run.
Prints the table (markdown); ``--out`` keeps the datastores and logs.

Points: each TangoRoundFlow step (killed at the end of its work, before its artifacts are stored:
for an update, after its checkpoint was written), TangoFlow's ``start`` / ``round`` / ``end`` and
``checkpoint_write`` (a checkpoint's files written, its manifest not). A row says whether the
kill happened, how ``resume`` went, which stages of the killed round ran again, what leftovers the
kill left in the datastore (interrupted checkpoint writes, `.tmp-*` folders, which nothing reads)
and whether the result equals the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TANGO_FLOW = REPO / "flows" / "tango_flow.py"
KILL_ENV = "TANGO_KILL_AT"  # tango_steps.faults.maybe_kill

# The sizes of tests/e2e/test_flows.py's SMALL: both update paths run in two rounds.
CONFIG = {
    "rounds": 2,
    "rollout": {"engine": "hf", "max_prompt_tokens": 128},
    "generator_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 64},
    "verifier_sampling": {"n": 2, "temperature": 1.0, "max_tokens": 128},
    "batch": {"generator_prompts": 4, "verifier_prompts": 4},
    "schedule": {"verifier_warmup_rounds": 1, "generator_per_verifier": 3},
    "generator_update": {"learning_rate": 2.0e-4, "micro_batch_size": 8},
    "verifier_update": {"learning_rate": 2.0e-4, "micro_batch_size": 8},
    "evaluation": {"heldout_problems": 10, "max_tokens": 64},
}

# (point, where it is): one run each. Round 1 is the verifier round, round 2 the generator round.
POINTS = [
    ("0:TangoFlow.start", "TangoFlow start: round-0 checkpoints stored, task not finished"),
    ("0:checkpoint_write", "TangoFlow start: mid-write of the first round-0 checkpoint"),
    ("1:verifier_update", "round 1 verifier_update: checkpoint stored, task not finished"),
    ("1:checkpoint_write", "round 1 verifier_update: mid-write of the checkpoint"),
    ("1:TangoFlow.round", "TangoFlow round 1: the round run finished, the iteration not"),
    ("2:start", "round 2 start"),
    ("2:rollout", "round 2 rollout"),
    ("2:judge", "round 2 judge"),
    ("2:reward", "round 2 reward"),
    ("2:generator_update", "round 2 generator_update: checkpoint stored, task not finished"),
    ("2:checkpoint_write", "round 2 generator_update: mid-write of the checkpoint"),
    ("2:evaluate", "round 2 evaluate"),
    ("2:end", "round 2 end"),
    ("2:TangoFlow.round", "TangoFlow round 2: the round run finished, the iteration not"),
    ("2:TangoFlow.end", "TangoFlow end"),
]

FINAL = """
import json, sys
from metaflow import Flow, Run, namespace
from tango_steps.pipeline.driver import artifact, succeeded
namespace(None)
root = sys.argv[1]
# a resume keeps its origin's root id (its start is cloned), unless the start itself was killed and reran
done = [r for r in Flow("TangoFlow").runs() if succeeded(r) and root in
        (artifact(r["end"].task, "root_id"), r["start"].task.metadata_dict.get("origin-run-id"))]
r = max(done, key=lambda r: r.created_at)
e = r["end"].task
m = artifact(e, "metrics")
rounds = list(artifact(e, "round_runs"))
cloned = {p: {s.id: s.task.origin_pathspec is not None for s in Run(p)} for p in rounds}
out = {"run": r.pathspec, "root_id": artifact(e, "root_id"), "rounds": rounds,
       "gen": artifact(e, "final_generator")["uri"],
       "ver": artifact(e, "final_verifier")["uri"], "how": list(m["how"].fillna("start")) if "how" in m else [],
       "metrics": json.loads(m.to_json(orient="records")), "cloned": cloned,
       "tags": {p: sorted(t for t in Run(p).tags if t.startswith("tango_")) for p in rounds}}
print(json.dumps(out))
"""


def flow_env(root: Path) -> dict[str, str]:
    """The environment of runs in one isolated local datastore (no inherited Metaflow or test switches)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METAFLOW_", "TANGO_FAIL", "TANGO_KILL"))}
    return {**env, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root), "USERNAME": env.get("USERNAME", "tango-sweep")}


def digest(model_dir: str) -> str:
    """sha256 over a stored model's safetensors, in name order."""
    h = hashlib.sha256()
    for p in sorted(Path(model_dir, "model").glob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


def final(root: Path, run_id: str) -> dict:
    """The newest successful TangoFlow run of root run ``run_id`` (itself or a resume of it) in a datastore:
    its models, metrics, round runs and which of their steps were cloned."""
    out = subprocess.run([sys.executable, "-c", FINAL, run_id], env=flow_env(root), cwd=root, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"reading run {run_id}'s result in {root} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def outcome(result: dict) -> dict:
    """What two runs must share to be equal: both models' weights and every round's held-out metrics."""
    evals = [{k: v for k, v in m.items() if k.startswith(("eval/", "reward/")) or k == "round"}
             for m in result["metrics"]]  # fmt: skip
    return {"generator": digest(result["gen"]), "verifier": digest(result["ver"]), "metrics": evals}


def start(root: Path, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """One TangoFlow command in its own process group (as a node is: a kill takes all of it), output to ``log``."""
    root.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, str(TANGO_FLOW), *args], env={**flow_env(root), **(env or {})},
                                cwd=root, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def wait(proc: subprocess.Popen, timeout: int = 1800) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def start_killed(root: Path, point: str, config: dict = CONFIG, name: str = "run") -> subprocess.Popen:
    """Start a TangoFlow run that kills itself at ``point`` (log: ``<root>/<name>.log``)."""
    cfg = root / f"{name}.yaml"
    root.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(config))
    return start(root, ["--config", "config", str(cfg), "run"], root / f"{name}.log", {KILL_ENV: point})


def run_id_of(output: str) -> str:
    """The TangoFlow run id that a run's output started (Metaflow prints it first; nested runs' lines are
    prefixed by their parent task)."""
    found = re.search(r"^\S+ \S+ Workflow starting \(run-id (\d+)\)", output, re.MULTILINE)
    if not found:
        raise RuntimeError("no TangoFlow run started in this output")
    return found.group(1)


def run_id(log: Path) -> str:
    """The TangoFlow run id a log file's run started."""
    return run_id_of(log.read_text())


def resume(root: Path, origin: str, name: str) -> subprocess.Popen:
    """``resume --origin-run-id <origin>`` (log: ``<root>/<name>.log``)."""
    return start(root, ["resume", "--origin-run-id", origin], root / f"{name}.log")


def leftovers(root: Path) -> list[str]:
    """Interrupted checkpoint writes in a local datastore: ``.tmp-*`` folders, which no reader opens."""
    models = root / ".metaflow" / "tango_models"
    return sorted(str(p.relative_to(models)) for p in models.rglob(".*.tmp-*") if p.is_dir()) if models.exists() else []


def baseline(root: Path, config: dict = CONFIG) -> dict:
    """An uninterrupted run's outcome."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    rc = wait(start(root, ["--config", "config", str(root / "run.yaml"), "run"], root / "run.log"))
    if rc != 0:
        raise RuntimeError(f"the uninterrupted run failed (rc {rc}); see {root / 'run.log'}")
    return outcome(final(root, run_id(root / "run.log")))


def row(point: str, root: Path, origin: str, kill_rc: int, resume_rc: int, expected: dict) -> dict:
    """One table row: was the run killed, did its resume finish, which stages reran, equal or not."""
    out = {"point": point, "killed": kill_rc == -signal.SIGKILL, "run_rc": kill_rc, "resume_rc": resume_rc,
           "leftovers": leftovers(root)}  # fmt: skip
    if resume_rc != 0:
        return {**out, "equal": False, "how": "resume failed"}
    res = final(root, origin)
    got = outcome(res)
    k = int(point.split(":")[0])
    out["how"] = " ".join(str(h) for h in res["how"][1:])  # rounds 1.. : launched / resumed / adopted
    if 1 <= k <= len(res["rounds"]) and res["how"][k] == "resumed":
        out["rerun"] = ",".join(s for s, c in res["cloned"][res["rounds"][k - 1]].items() if not c)
    out["tags_ok"] = all(f"tango_root:{res['root_id']}" in t for t in res["tags"].values())  # its own rounds only
    out["equal"] = got == expected
    if not out["equal"]:
        out["differs"] = [key for key in got if got[key] != expected[key]]
    return out


def run_point(point: str, root: Path, expected: dict, config: dict = CONFIG) -> dict:
    """Kill a run at ``point`` in a fresh datastore, resume it once, compare with ``expected`` (:func:`outcome`)."""
    kill_rc = wait(start_killed(root, point, config))
    origin = run_id(root / "run.log")
    return row(point, root, origin, kill_rc, wait(resume(root, origin, "resume")), expected)


def table(rows: list[dict], where: dict[str, str]) -> str:
    cols = ["kill point", "where", "killed", "leftovers of the kill", "resume", "rounds 1-2 after resume",
            "stages of the killed round rerun", "equal to uninterrupted"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [
            f"`{r['point']}`",
            where.get(r["point"], ""),
            "yes" if r["killed"] else f"NO (rc {r['run_rc']})",
            str(len(r["leftovers"])),
            "ok" if r["resume_rc"] == 0 else "FAILED",
            r.get("how", ""),
            r.get("rerun", "") or "-",
            "yes" if r.get("equal") else f"NO {r.get('differs', '')}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", nargs="*", default=[p for p, _ in POINTS], help="<round>:<point> (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="keep the datastores and logs here (default: a temp dir)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="kill-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"uninterrupted run in {out / 'baseline'} ...", flush=True)
    expected = baseline(out / "baseline")
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for point in args.points:
        print(f"{point}: kill, then resume ...", flush=True)
        t1 = time.perf_counter()
        r = run_point(point, out / point.replace(":", "_"), expected)
        print(f"  {json.dumps(r)} ({time.perf_counter() - t1:.0f} s)", flush=True)
        rows.append(r)
    print(textwrap.dedent(f"""
        SIGKILL sweep: {len(rows)} points, {sum(r.get('equal', False) for r in rows)} equal to the uninterrupted run,
        {time.perf_counter() - t0:.0f} s in all; datastores and logs in {out}
        """))  # fmt: skip
    print(table(rows, dict(POINTS)))
    return 0 if all(r.get("equal") and r["killed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
