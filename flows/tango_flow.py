"""Tango: co-train a generator and a process-level verifier with RL (docs/method.md). What users run.

    python flows/tango_flow.py run --rounds 20            # embedded tiny default, CPU
    python flows/tango_flow.py --config config configs/X.yaml run
    python flows/tango_flow.py resume                      # after a failure: continues at the failed stage
    python flows/tango_flow.py run --start-from TangoRoundFlow/<run id> --rounds 5   # fork

    start -> round (loops: one TangoRoundFlow run per round) -> end

``start`` validates the configuration, builds or loads both initial models (the tiny default is
warmed up once and cached) and evaluates round 0; each ``round`` iteration runs one round as a
TangoRoundFlow run through Metaflow's Runner (adopting a finished one, resuming a failed one);
``end`` summarises. Algorithm code lives in ``tango_steps``.
"""

import os
from pathlib import Path

from metaflow import Config, FlowSpec, Parameter, card, current, resources, step

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = str(HERE.parent / "configs" / "tiny.yaml")
ROUND_FLOW_FILE = str(HERE / "tango_round_flow.py")


class TangoFlow(FlowSpec):
    """Tango training (docs/method.md §3): rounds of rollout, judging, rewards and RL updates of both models."""

    config = Config(
        "config", default=DEFAULT_CONFIG, parser="tango_steps.config.parse_recipe", help="YAML recipe (configs/)"
    )
    rounds = Parameter("rounds", type=int, default=None, help="rounds to run (default: the recipe's `rounds`)")
    start_from = Parameter(
        "start-from", type=str, default="", help="fork: a finished TangoRoundFlow run (Flow/run id) to start from"
    )

    # round 0 loads both models, stores their first checkpoints and evaluates them with the rollout engine: the
    # recipe's `resources.round0` (without one, `resources.evaluate`: tango_steps.config.step_resources_entry)
    @resources(
        cpu=config.resources.round0.cpu,
        memory=config.resources.round0.memory,
        gpu=config.resources.round0.gpu,
        disk=config.resources.round0.disk,
        shared_memory=config.resources.round0.shared_memory,
    )
    @step
    def start(self):
        """Validate, build or load the initial models, evaluate round 0 (or take a forked round's state)."""
        from tango_steps.config import resolved
        from tango_steps.faults import maybe_kill
        from tango_steps.models.store import ModelStore
        from tango_steps.pipeline.driver import begin, fork_source, validate_run_config
        from tango_steps.plan import start_check
        from tango_steps.process import freeze_heap

        cfg = validate_run_config(self.config.to_dict(), self.rounds)
        # the run plan's check (python -m tango_steps.plan): a recipe that cannot fit stops here, naming the field
        print(start_check(cfg))
        self.root_id = current.run_id  # a resumed run keeps the original id: children are found by it
        self.forked_from = self.start_from or None
        store = ModelStore.for_flow(self)
        if self.start_from:
            self.state, source_metrics = fork_source(self.start_from, cfg)
            first = self.state["round"]
            cfg = validate_run_config({**resolved(cfg), "rounds": first + cfg.rounds})
            self.history = [{**source_metrics, "round": first, "forked_from": self.start_from}]
            self.eval_table = None
            print(f"forking from {self.start_from} (round {first}); running rounds {first + 1}..{cfg.rounds}")
        else:
            self.state, self.eval_table, first = begin(cfg, store)
            self.history = [{**first, "run": current.pathspec}]  # the task that holds round 0's eval_table
        self.cfg = resolved(cfg)
        self.total_rounds = cfg.rounds
        self.round_idx = self.state["round"]
        self.round_runs = []
        self.stopped = None  # why the run ended before --rounds (evaluation.stop_on_collapse), if it did
        self.state_task = current.pathspec
        self.more = "more" if self.round_idx < self.total_rounds else "done"
        maybe_kill(self.round_idx, "TangoFlow.start")  # test-only: round 0's checkpoints stored, the task not
        freeze_heap()  # (models were loaded: a quicker exit)
        self.next({"more": self.round, "done": self.end}, condition="more")

    @card(type="blank", id="progress", refresh_interval=10)
    @step
    def round(self):
        """Round k as a TangoRoundFlow run: adopted if finished, resumed at its failed stage, else launched."""
        from metaflow.cards import Markdown

        from tango_steps.faults import maybe_kill
        from tango_steps.pipeline.cards import history_components
        from tango_steps.pipeline.driver import history_row, run_round

        k = self.round_idx + 1
        for c in [Markdown(f"**round {k} of {self.total_rounds} is running**"), *history_components(self.history)]:
            current.card["progress"].append(c)
        current.card["progress"].refresh()
        driver = f"{current.flow_name}/{current.run_id}"  # this run: named in the per-run lease
        child = run_round(ROUND_FLOW_FILE, self.root_id, k, self.state_task, self.cfg, driver=driver)
        self.state = child["state"]
        self.state_task = child["state_task"]
        self.round_runs = [*self.round_runs, child["pathspec"]]
        self.history = [*self.history, history_row(child, self.history[0])]
        self.round_idx = k
        print(f"round {k}/{self.total_rounds} done ({child['how']}): {child['pathspec']}")
        alarm = child["metrics"].get("eval/verifier_alarm")
        if alarm:
            print(f"!!! ALARM after round {k}: {alarm}")
            if self.cfg["evaluation"]["stop_on_collapse"]:
                self.stopped = f"stopped after round {k} (evaluation.stop_on_collapse): {alarm}"
        current.card["progress"].clear()
        for c in history_components(self.history):
            current.card["progress"].append(c)
        self.more = "more" if k < self.total_rounds and not self.stopped else "done"
        maybe_kill(k, "TangoFlow.round")  # test-only: the round run finished, this iteration not
        self.next({"more": self.round, "done": self.end}, condition="more")

    @card(type="blank")
    @step
    def end(self):
        """Summary table, final model references and the charts across rounds (a card)."""
        import pandas as pd
        from metaflow.cards import Markdown, Table

        from tango_steps.faults import maybe_kill
        from tango_steps.pipeline.cards import history_components

        self.metrics = pd.DataFrame(self.history)
        self.final_generator = self.state["generator"]
        self.final_verifier = self.state["verifier"]
        cols = [
            c
            for c in (
                "round", "eval/generator_accuracy", "eval/verifier_f1", "eval/verifier_balanced_accuracy",
                "eval/verifier_process_f1", "eval/verifier_format_ok_frac", "eval/verifier_alarm",
            )
            if c in self.metrics
        ]  # fmt: skip
        if "eval/verifier_alarm" in self.metrics:  # a prominent column: empty unless the verifier collapsed
            self.metrics["eval/verifier_alarm"] = self.metrics["eval/verifier_alarm"].fillna("")
        evaluated = self.metrics  # rounds with held-out figures (evaluation.every > 1 skips some)
        if "eval/generator_accuracy" in evaluated:
            evaluated = evaluated.dropna(subset=["eval/generator_accuracy"])
        print(evaluated[cols].to_string(index=False))
        if self.stopped:
            print(f"!!! {self.stopped}")
        print(f"final generator: {self.final_generator['uri']}\nfinal verifier: {self.final_verifier['uri']}")
        for c in history_components(self.history):
            current.card.append(c)
        current.card.append(Markdown(f"final generator `{self.final_generator['uri']}`  \n"
                                     f"final verifier `{self.final_verifier['uri']}`"))  # fmt: skip
        if self.stopped:
            current.card.append(Markdown(f"# {self.stopped}"))
        current.card.append(Table.from_dataframe(evaluated[cols].round(4)))
        maybe_kill(self.round_idx, "TangoFlow.end")  # test-only


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    TangoFlow()
