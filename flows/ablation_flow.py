"""AblationFlow: Tango against vanilla GRPO and the frozen variants (docs/method.md §8), seeds x tasks.

    python flows/ablation_flow.py --config config configs/ablation.yaml run      # the study (docs/results.md)
    python flows/ablation_flow.py run --rounds 2 --grid arithmetic:0 --variants tango,grpo   # a smoke run

    start -> init (foreach branch) -> train -> join -> end

Each branch (task, seed, variant) is a TangoFlow-equivalent run through the same code: ``init`` is
TangoFlow's round 0 (``driver.begin``), ``train`` drives one TangoRoundFlow run per round exactly as
TangoFlow's ``round`` step does (``driver.run_round``: adopt / resume / launch), so every round of
every branch is browsable like a normal run's and ``resume`` continues a failed branch at its failed
round and stage. ``join`` builds one table (``metrics``: a row per branch and round) and its summary
(``summary``), with a card of the curves. At most two branches run at once by default (a branch is
CPU-bound; ``--max-workers`` changes it).
"""

import os
from pathlib import Path

from metaflow import Config, FlowSpec, Parameter, card, current, resources, step

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = str(HERE.parent / "configs" / "tiny.yaml")
ROUND_FLOW_FILE = str(HERE / "tango_round_flow.py")


class AblationFlow(FlowSpec):
    """The docs/method.md §8 ablations: tango / grpo / frozen_verifier / frozen_generator over seeds and tasks."""

    config = Config(
        "config", default=DEFAULT_CONFIG, parser="tango_steps.config.parse_recipe", help="base YAML recipe (configs/)"
    )
    variants = Parameter(
        "variants", default="tango,grpo,frozen_verifier,frozen_generator", help="comma-separated variants"
    )
    grid = Parameter("grid", default="arithmetic:0,1,2 last_letters:0", help="space-separated task:seeds entries")
    rounds = Parameter("rounds", type=int, default=None, help="rounds per branch (default: the recipe's)")
    final_window = Parameter(
        "final-window", type=int, default=3, help="final accuracy = mean over the last N distinct generator checkpoints"
    )

    @step
    def start(self):
        """Validate every branch's configuration before anything trains."""
        from tango_steps.pipeline.driver import validate_run_config
        from tango_steps.study.ablation import branches, parse_grid, parse_variants

        base = validate_run_config(self.config.to_dict(), self.rounds)
        if self.final_window < 1:
            raise ValueError(f"--final-window must be >= 1, got {self.final_window}")
        grid, variants = parse_grid(self.grid), parse_variants(self.variants)
        self.branches = branches(base.model_dump(mode="json"), variants, grid, None)
        print(f"{len(self.branches)} branches of {base.rounds} rounds: " + ", ".join(b["name"] for b in self.branches))
        self.next(self.init, foreach="branches")

    # round 0 builds and evaluates both models: the base recipe's resources.round0 (else resources.evaluate), as
    # TangoFlow's start (on Kubernetes / Batch; ignored in a local run)
    @resources(
        cpu=config.resources.round0.cpu,
        memory=config.resources.round0.memory,
        gpu=config.resources.round0.gpu,
        disk=config.resources.round0.disk,
        shared_memory=config.resources.round0.shared_memory,
    )
    @step
    def init(self):
        """Round 0 of one branch, as TangoFlow's start: initial checkpoints (shared warm-up) and evaluation."""
        from tango_steps.models.store import ModelStore
        from tango_steps.pipeline.driver import begin, validate_run_config

        self.branch = self.input
        cfg = validate_run_config(self.branch["config"])
        # a branch's rounds are found by this id (it survives a resume of AblationFlow: init is cloned)
        self.root_id = f"{current.run_id}.{self.branch['task']}.{self.branch['variant']}.s{self.branch['seed']}"
        print(f"branch {self.branch['name']} (root id {self.root_id})")
        self.state, self.eval_table, first = begin(cfg, ModelStore.for_flow(self))
        self.history = [{**first, "run": current.pathspec}]  # the task that holds round 0's eval_table
        self.state_task = current.pathspec
        self.next(self.train)

    @step
    def train(self):
        """The branch's rounds, each one TangoRoundFlow run driven as TangoFlow's ``round`` step drives it."""
        from tango_steps.pipeline.driver import history_row, run_round

        cfg = self.branch["config"]
        self.round_runs = []
        for k in range(self.state["round"] + 1, cfg["rounds"] + 1):
            driver = f"{current.flow_name}/{current.run_id}"  # this run: named in the per-run lease
            child = run_round(ROUND_FLOW_FILE, self.root_id, k, self.state_task, cfg, driver=driver)
            self.state, self.state_task = child["state"], child["state_task"]
            self.round_runs.append(child["pathspec"])
            self.history = [*self.history, history_row(child, self.history[0])]
            acc = child["metrics"].get("eval/generator_accuracy")
            print(f"{self.branch['name']}: round {k}/{cfg['rounds']} done ({child['how']}), generator accuracy {acc}")
        self.next(self.join)

    @card(type="blank")
    @step
    def join(self, inputs):
        """One table of every branch's curves, the summary of docs/method.md §8, and a card of the curves."""
        from metaflow.cards import Markdown, Table

        from tango_steps.pipeline.cards import ablation_components
        from tango_steps.study.ablation import study_table, summarize

        results = [(i.branch, i.history) for i in inputs]
        self.metrics = study_table(results)
        self.summary = summarize(self.metrics, final_window=self.final_window)
        self.branch_runs = {i.branch["name"]: i.round_runs for i in inputs}
        print(self.summary.to_string(index=False))
        for c in ablation_components(self.metrics):
            current.card.append(c)
        current.card.append(Markdown("### Summary (seed means; final = mean of the last rounds)"))
        current.card.append(Table.from_dataframe(self.summary.round(4)))
        self.next(self.end)

    @step
    def end(self):
        """``metrics`` and ``summary`` are the study's results (docs/results.md redraws them)."""
        run = f"{current.flow_name}/{current.run_id}"
        print(f"{len(self.metrics)} rows; redraw the plots with:")
        print(f"python benchmarks/studies/plot_ablation.py --run {run}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("METAFLOW_RUN_MAX_WORKERS", "2")  # `run --max-workers` default: two branches at once
    os.environ.setdefault("METAFLOW_RESUME_MAX_WORKERS", "2")
    AblationFlow()
