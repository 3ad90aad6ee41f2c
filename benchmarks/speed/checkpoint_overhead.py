"""metaflow-checkpoint's ``current.model.save/load`` against Tango's ModelStore, per task (issue #4).

Runs two three-step flows (start saves a model directory, middle loads it and saves a copy, end
loads it) in a fresh local datastore each: one through ``metaflow-checkpoint`` (``@model``,
installed with --no-deps into a private folder put on PYTHONPATH so the project's environment is
left alone), one through ``tango_steps.models.store.ModelStore``. Prints the wall time of each
task and the per-task difference. The payload is the tiny default's warmed-up generator checkpoint
(``initial_checkpoints``) or any directory given with --model-dir.

    python benchmarks/speed/checkpoint_overhead.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

MFC_FLOW = textwrap.dedent(
    """
    import os, shutil, tempfile
    from metaflow import FlowSpec, step, current, model

    SRC = os.environ["BENCH_MODEL_DIR"]

    class MFCFlow(FlowSpec):
        @model
        @step
        def start(self):
            self.m = current.model.save(SRC, label="policy")
            self.next(self.middle)

        @model(load=["m"])
        @step
        def middle(self):
            path = current.model.loaded["m"]
            assert os.path.exists(path)
            self.m = current.model.save(path, label="policy")
            self.next(self.end)

        @model(load=["m"])
        @step
        def end(self):
            assert os.path.exists(current.model.loaded["m"])

    if __name__ == "__main__":
        MFCFlow()
    """
)

STORE_FLOW = textwrap.dedent(
    """
    import os
    from metaflow import FlowSpec, step
    from tango_steps.models.store import ModelStore, task_key

    SRC = os.environ["BENCH_MODEL_DIR"]

    class StoreFlow(FlowSpec):
        @step
        def start(self):
            self.m = ModelStore.for_flow(self).save(SRC, task_key("policy"))
            self.next(self.middle)

        @step
        def middle(self):
            store = ModelStore.for_flow(self)
            self.m = store.save(store.load(self.m), task_key("policy"))
            self.next(self.end)

        @step
        def end(self):
            assert ModelStore.for_flow(self).load(self.m).exists()

    if __name__ == "__main__":
        StoreFlow()
    """
)


def run_flow(name: str, source: str, env: dict) -> list[tuple[str, float]]:
    root = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    flow = root / f"{name}.py"
    flow.write_text(source)
    env = {**env, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(flow), "run"], cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    code = (
        "from metaflow import Flow, namespace\nnamespace(None)\nr = Flow({!r}).latest_run\n"
        "ts = sorted((t for s in r for t in s), key=lambda t: t.finished_at)\nprev = r.created_at\n"
        "for t in ts:\n    print(t.parent.id, (t.finished_at - prev).total_seconds())\n    prev = t.finished_at\n"
    ).format({"mfc": "MFCFlow", "store": "StoreFlow"}[name])
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    rows = [(line.split()[0], float(line.split()[1])) for line in out.stdout.strip().splitlines()]
    print(f"{name}: whole command {wall:.1f} s")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="directory to save/load (default: the tiny generator's initial checkpoint)")
    args = ap.parse_args()
    env = {**os.environ, "USERNAME": os.environ.get("USERNAME", "tango-bench")}
    if args.model_dir:
        model_dir = args.model_dir
    else:
        from tango_steps.config import TangoConfig
        from tango_steps.pipeline.driver import initial_checkpoints

        model_dir = str(initial_checkpoints(TangoConfig(), tempfile.mkdtemp(prefix="bench-ckpt-"))["generator"])
    size = sum(p.stat().st_size for p in Path(model_dir).rglob("*") if p.is_file())
    env["BENCH_MODEL_DIR"] = model_dir
    site = Path(tempfile.mkdtemp(prefix="mfc-site-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), "metaflow-checkpoint"],
        check=True,
    )
    mfc_env = {**env, "PYTHONPATH": os.pathsep.join([str(site), env.get("PYTHONPATH", "")])}
    print(f"payload: {model_dir} ({size / 2**20:.1f} MiB)")
    store = run_flow("store", STORE_FLOW, env)
    mfc = run_flow("mfc", MFC_FLOW, mfc_env)
    print("\n| step | ModelStore s | metaflow-checkpoint s | difference s |\n|---|---|---|---|")
    for (step, a), (_, b) in zip(store, mfc, strict=True):
        print(f"| {step} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")
    print(
        f"| total | {sum(a for _, a in store):.2f} | {sum(b for _, b in mfc):.2f} | "
        f"{sum(b for _, b in mfc) - sum(a for _, a in store):+.2f} |"
    )


if __name__ == "__main__":
    main()
