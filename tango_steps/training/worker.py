"""One process of a multi-process update (docs/method.md §6), started by torchrun: it joins the process group and
runs :func:`~tango_steps.training.update.rl_update` on the spec it is given.

    python -m tango_steps.training.worker <spec.pt>
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tango_steps.training.batch import RLBatch
from tango_steps.training.launch import FAIL_RANK_ENV
from tango_steps.training.settings import UpdateSettings


def main(spec_path: str) -> None:
    """A torchrun worker: join the process group, run ``rl_update``, rank 0 records the metrics."""
    from tango_steps.training.update import rl_update

    spec = torch.load(spec_path, weights_only=False)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    # the collectives around the checkpoint's write wait as long as the write may take (launch.collective_timeout)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=spec.get("timeout_seconds", 600.0)))
    rank = dist.get_rank()
    try:
        if os.environ.get(FAIL_RANK_ENV) == str(rank):
            raise RuntimeError(f"failure injected by {FAIL_RANK_ENV}={rank} (test-only switch)")
        settings = UpdateSettings.from_dict(spec["settings"])
        log = (lambda msg: print(f"[rank0] {msg}", flush=True)) if rank == 0 else None
        metrics = rl_update(
            spec["ckpt"],
            RLBatch(**spec["batch"]),
            settings,
            spec["out_dir"],
            log=log,
            reference_model=spec["reference_model"],
            lora_base=spec["lora_base"],
        )
        if rank == 0:
            Path(spec["metrics"]).write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def _run_main(argv: list[str]) -> Any:
    if len(argv) != 1:
        raise SystemExit("usage: python -m torch.distributed.run ... -m tango_steps.training.distributed SPEC.pt")
    return main(argv[0])


if __name__ == "__main__":
    _run_main(sys.argv[1:])
