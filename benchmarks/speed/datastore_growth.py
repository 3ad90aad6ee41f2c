"""The datastore's growth per round (issue #17): run TangoFlow in an empty local datastore, then sum its parts.

    python benchmarks/speed/datastore_growth.py --rounds 4                                   # the tiny default
    python benchmarks/speed/datastore_growth.py --config configs/smollm2-135m.yaml --rounds 2 \\
        --set generator_sampling.max_tokens=64 --set verifier_sampling.max_tokens=64 \\
        --set evaluation.heldout_problems=5 --set rollout.engine=hf

Prints one table: the round-0 checkpoints (TangoFlow's ``start``), each round's checkpoints (by
round and role, from the round runs' own model keys), artifacts (Metaflow's content-addressed
``data/`` of both flows) and the rest (task metadata, logs, cards), in MB, and the growth per round.
The checkpoint sizes do not depend on the batch or response sizes (``--set`` only shortens the run);
the artifacts do.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tango_steps.config import apply_overrides, load_yaml, parse_overrides  # noqa: E402


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "tiny.yaml"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override (YAML value)")
    ap.add_argument("--out", type=Path, default=None, help="datastore folder (default: a temporary one, removed)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="growth-"))
    out.mkdir(parents=True, exist_ok=True)
    data = apply_overrides(load_yaml(args.config), {**parse_overrides(args.set), "rounds": args.rounds})
    params = data.get("task", {}).get("params", {})
    if isinstance(params.get("path"), str) and not params["path"].startswith(("/", "s3://")):
        params["path"] = str((REPO / params["path"]).resolve())  # a recipe's relative data path: from the repo
    cfg = out / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAFLOW_")}
    env.update(METAFLOW_DATASTORE_SYSROOT_LOCAL=str(out), USERNAME=env.get("USERNAME", "tango-bench"))
    t0 = time.perf_counter()
    with open(out / "run.log", "w") as log:
        rc = subprocess.run([sys.executable, str(REPO / "flows" / "tango_flow.py"), "--config", "config", str(cfg),
                             "run"], env=env, cwd=out, stdout=log, stderr=subprocess.STDOUT).returncode  # fmt: skip
    if rc != 0:
        print(f"the run failed (rc {rc}); see {out / 'run.log'}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    ds = out / ".metaflow"
    models = ds / "tango_models"
    start = _size(models / "TangoFlow")
    rounds: dict[str, int] = {}
    for key in sorted((models / "TangoRoundFlow").glob("*/*/*/*/*")):  # run/step/task/attempt/name
        rounds[f"{key.parts[-5]} {key.parts[-4]} {key.name}"] = _size(key)
    artifacts = _size(ds / "TangoFlow" / "data") + _size(ds / "TangoRoundFlow" / "data")
    total = _size(ds)
    rest = total - start - sum(rounds.values()) - artifacts
    mb = lambda n: f"{n / 1e6:,.1f}"  # noqa: E731
    print(f"{args.config} {' '.join(args.set)}: {args.rounds} rounds, {wall:.0f} s; datastore {ds}")
    print("| part | MB |\n|---|---|")
    print(f"| round-0 checkpoints (TangoFlow start: both models, no optimizer state) | {mb(start)} |")
    for name, size in rounds.items():
        print(f"| checkpoint: round run {name} | {mb(size)} |")
    print(f"| artifacts (both flows' data/) | {mb(artifacts)} |")
    print(f"| metadata, logs, cards | {mb(rest)} |")
    print(f"| **total** | **{mb(total)}** |")
    print(f"growth per round: {mb((total - start) / args.rounds)} MB "
          f"(checkpoints {mb(sum(rounds.values()) / args.rounds)} MB)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
