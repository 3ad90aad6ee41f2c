"""Test machinery: Tango's multi-process update across Metaflow ``@parallel`` nodes, checked on one machine.

    python tests/flows/parallel_update_flow.py run --nodes 2 [--strategy fsdp]

Metaflow's ``@parallel`` runs ``num_parallel`` tasks of one step; locally they are processes of this
machine, on Kubernetes / Batch they are pods / jobs that can reach each other. Each node starts one
torchrun with the group's address from ``current.parallel`` (what the ``metaflow-torchrun``
extension's ``@torchrun`` does; its 0.2.2 fails on Metaflow 2.19: its ``task_pre_step`` skips
``@parallel``'s, "object has no attribute 'input_paths'"), and every process runs the same worker
as a one-machine multi-process update (``tango_steps/training/worker.py``):
the checkpoint each node loads comes from the datastore, global rank 0 writes the result. ``join``
compares it with the same update on one process (``start``); ``matches`` says whether it is the same
within float tolerance. TangoRoundFlow runs a round's update the same way when a recipe sets
``update.nodes`` > 1 (its ``update_nodes`` step); this flow checks the mechanism against one process.
"""

import tempfile
from pathlib import Path

from metaflow import FlowSpec, Parameter, current, parallel, step


class ParallelUpdateFlow(FlowSpec):
    """One RL update on N nodes of one process each, against the same update on one process."""

    nodes = Parameter("nodes", type=int, default=2, help="num_parallel nodes (one process each)")
    strategy = Parameter("strategy", type=str, default="ddp", help="ddp or fsdp")

    @step
    def start(self):
        """A tiny model, a fixed batch and the one-process update, all into the datastore."""
        from parallel_check import check_case

        from tango_steps.models.store import ModelStore, task_key

        store = ModelStore.for_flow(self)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt0, self.batch, self.settings, reference = check_case(Path(tmp), self.nodes, self.strategy)
            self.ckpt0 = store.save(ckpt0, task_key("ckpt0"))
            self.reference = store.save(reference, task_key("reference"))
        self.next(self.update, num_parallel=self.nodes)

    @parallel
    @step
    def update(self):
        """Every node: load the checkpoint, join the group, run the update; rank 0 stores the result."""
        from tango_steps.models.store import ModelStore, task_key
        from tango_steps.training.launch import read_metrics, run_workers, torchrun_command, write_spec

        store = ModelStore.for_flow(self)
        ckpt = store.load(self.ckpt0)
        par = current.parallel
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            # the KL reference is the first checkpoint's model (the path recorded in it is start's machine's)
            spec = write_spec(Path(tmp), ckpt, self.batch, self.settings, out, reference_model=str(ckpt / "model"))
            cmd = torchrun_command(spec, 1, par.num_nodes, par.node_index, par.main_ip)
            run_workers(cmd, print, f"node {par.node_index} of the {par.num_nodes}-node update", out)
            first = current.parallel.node_index == 0
            self.updated = store.save(out, task_key("updated")) if first else None
            self.metrics = read_metrics(spec) if first else None
        self.next(self.join)

    @step
    def join(self, inputs):
        """Compare the N-node update with the one-process one."""
        from parallel_check import compare_with_one_process

        from tango_steps.models.store import load_model_dir

        first = next(i for i in inputs if i.updated is not None)
        self.updated, self.metrics, self.settings = first.updated, first.metrics, first.settings
        paths = (load_model_dir(r) for r in (self.updated, first.reference, first.ckpt0))
        c = compare_with_one_process(*paths, self.settings.section.learning_rate)
        self.max_difference, self.moved, self.matches = c["max_difference"], c["moved"], c["matches"]
        print(f"{len(list(inputs))} nodes: largest weight difference to one process {c['max_difference']:.2e} "
              f"(tolerance {c['tolerance']:.1e}; the update moved weights by up to {c['moved']:.2e}): "
              f"{'MATCHES' if c['matches'] else 'DIFFERS'}")  # fmt: skip
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    ParallelUpdateFlow()
