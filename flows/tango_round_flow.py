"""One Tango round as explicit steps (TANGO.md §3): one run of this flow is one round.

    start -> rollout -> judge -> reward -> verifier_update -> generator_update -> evaluate -> end

TangoFlow launches it once per round (you normally never run it by hand). Each step calls one
function of ``tango_steps.round`` and stores what it returns; models live in the datastore as
directories, referenced by small dicts (``tango_steps.model_store``). Artifact names are listed in
the README ("Artifacts").
"""

import os
import tempfile
from pathlib import Path

from metaflow import Config, FlowSpec, Parameter, card, current, resources, retry, step

DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml")
PARSER = "tango_steps.config.parse_recipe"


class TangoRoundFlow(FlowSpec):
    """One round (global step, TANGO.md §3) of Tango: sample, judge, reward, update, evaluate."""

    config = Config("config", default=DEFAULT_CONFIG, parser=PARSER, help="resolved Tango recipe (set by TangoFlow)")
    round_idx = Parameter("round", type=int, default=1, help="1-based round number")
    root = Parameter("root", type=str, default="", help="run id of the TangoFlow run driving this round")
    previous = Parameter("previous", type=str, default="", help="pathspec of the task holding the starting state")

    def _cfg(self):
        from tango_steps.config import TangoConfig, validate

        return validate(TangoConfig, self.config.to_dict(), source="round configuration")

    def _store(self):
        from tango_steps.model_store import ModelStore

        return ModelStore.for_flow(self)

    def _card(self, components):
        for c in components:
            current.card.append(c)

    def _check(self, stage):
        from tango_steps.round import maybe_fail

        maybe_fail(self.round_idx, stage)

    def _record_peak(self):
        """This step's peak resident memory (each step is its own process; benchmarks/round_overhead.py)."""
        from tango_steps.round import peak_rss_mb

        self.peak_rss_mb = peak_rss_mb()

    @resources(cpu=config.resources.start.cpu, memory=config.resources.start.memory)
    @step
    def start(self):
        """Read the starting state from the previous round's run (client API) and plan the round."""
        from tango_steps.driver import read_task_state
        from tango_steps.round import plan_dict, round_plan

        self._check("start")
        cfg = self._cfg()
        self.state_in = read_task_state(self.previous)
        if self.state_in["round"] != self.round_idx - 1:
            raise ValueError(f"round {self.round_idx} cannot start from the state of round {self.state_in['round']}")
        self.plan = plan_dict(round_plan(cfg, self.round_idx))
        self.compute_seconds = 0.0
        print(f"round {self.round_idx}: {self.plan['slot']} round; plan {self.plan}")
        self._record_peak()
        self.next(self.rollout)

    @retry(times=1, minutes_between_retries=0)
    @resources(
        cpu=config.resources.rollout.cpu, memory=config.resources.rollout.memory, gpu=config.resources.rollout.gpu
    )
    @card(type="blank")
    @step
    def rollout(self):
        """The generator samples the round's solutions (TANGO.md §3)."""
        from tango_steps import cards
        from tango_steps import round as stages

        self._check("rollout")
        cfg = self._cfg()
        plan = stages.plan_from_dict(self.plan)
        ckpt = self._store().load(self.state_in["generator"])
        self.rollouts, res = stages.rollout(cfg, plan, ckpt)
        self.rollout_metrics, self.compute_seconds = res.metrics, res.compute_seconds
        self._card(cards.rollout_components(self.rollouts, self.rollout_metrics))
        self._record_peak()
        self.next(self.judge)

    @retry(times=1, minutes_between_retries=0)
    @resources(cpu=config.resources.judge.cpu, memory=config.resources.judge.memory, gpu=config.resources.judge.gpu)
    @card(type="blank")
    @step
    def judge(self):
        """The verifier judges every solution step by step (TANGO.md §2-§3)."""
        from tango_steps import cards
        from tango_steps import round as stages

        self._check("judge")
        cfg = self._cfg()
        plan = stages.plan_from_dict(self.plan)
        ckpt = self._store().load(self.state_in["verifier"])
        self.judgments, res = stages.judge(cfg, plan, ckpt, self.rollouts)
        self.judge_metrics, self.compute_seconds = res.metrics, res.compute_seconds
        self._card(cards.judge_components(self.rollouts, self.judgments))
        self._record_peak()
        self.next(self.reward)

    @resources(cpu=config.resources.reward.cpu, memory=config.resources.reward.memory)
    @card(type="blank")
    @step
    def reward(self):
        """Outcome and step rewards, both models' advantages, the RL batches (TANGO.md §4-§5)."""
        from tango_steps import cards
        from tango_steps import round as stages

        self._check("reward")
        cfg = self._cfg()
        plan = stages.plan_from_dict(self.plan)
        ckpt = self._store().load(self.state_in["generator"])
        out = stages.reward(cfg, plan, self.rollouts, self.judgments, ckpt / "model", self.state_in["reweighter"])
        self.rollouts, self.judgments = out["rollouts"], out["judgments"]
        self.generator_batch, self.verifier_batch = out["generator_batch"], out["verifier_batch"]
        self.reweighter, self.alpha = out["reweighter"], out["alpha"]
        self.reward_metrics, self.compute_seconds = out["metrics"], out["compute_seconds"]
        self._card(cards.reward_components(self.rollouts, self.judgments, self.reward_metrics, self.alpha))
        self._record_peak()
        self.next(self.verifier_update)

    def _update(self, role, batch, update, reason):
        """Shared body of the two update steps: one RL update, or a recorded skip."""
        import time

        from tango_steps import round as stages
        from tango_steps.model_store import task_key

        before = self.state_in[role]
        if not update:
            print(f"{role} update skipped: {reason}")
            return before, {f"{role}_update/skipped": reason}, 0.0
        cfg = self._cfg()
        store = self._store()
        t0 = time.perf_counter()
        ckpt = store.load(before)
        init = store.load(self.state_in[f"{role}_init"])
        extra = {"reweighter": self.reweighter} if role == "verifier" else None
        with tempfile.TemporaryDirectory() as tmp:
            metrics = stages.update(cfg, role, ckpt, init, batch, Path(tmp) / "ckpt", extra_state=extra)
            compute = time.perf_counter() - t0
            ref = store.save(Path(tmp) / "ckpt", task_key(role), meta={"role": role, "round": self.round_idx})
        return ref, metrics, compute

    @resources(
        cpu=config.resources.verifier_update.cpu,
        memory=config.resources.verifier_update.memory,
        gpu=config.resources.verifier_update.gpu,
    )
    @card(type="blank")
    @step
    def verifier_update(self):
        """One RL update of the verifier, when the schedule says so (TANGO.md §5-§6)."""
        from tango_steps import cards

        self._check("verifier_update")
        self.verifier_out, self.verifier_update_metrics, self.compute_seconds = self._update(
            "verifier", self.verifier_batch, self.plan["update_verifier"], self.plan["skip_verifier"]
        )
        self._card(cards.update_components("verifier", self.verifier_update_metrics))
        self._record_peak()
        self.next(self.generator_update)

    @resources(
        cpu=config.resources.generator_update.cpu,
        memory=config.resources.generator_update.memory,
        gpu=config.resources.generator_update.gpu,
    )
    @card(type="blank")
    @step
    def generator_update(self):
        """One RL update of the generator, when the schedule says so (TANGO.md §4, §6)."""
        from tango_steps import cards

        self._check("generator_update")
        self.generator_out, self.generator_update_metrics, self.compute_seconds = self._update(
            "generator", self.generator_batch, self.plan["update_generator"], self.plan["skip_generator"]
        )
        self._card(cards.update_components("generator", self.generator_update_metrics))
        self._record_peak()
        self.next(self.evaluate)

    @resources(
        cpu=config.resources.evaluate.cpu, memory=config.resources.evaluate.memory, gpu=config.resources.evaluate.gpu
    )
    @card(type="blank")
    @step
    def evaluate(self):
        """Held-out generator accuracy and verifier outcome/process metrics (TANGO.md §7-§8)."""
        from tango_steps import cards
        from tango_steps import round as stages

        self._check("evaluate")
        cfg = self._cfg()
        if self.plan.get("evaluate", True):
            store = self._store()
            self.eval_table, res = stages.evaluate(cfg, store.load(self.generator_out), store.load(self.verifier_out))
            self.eval_metrics, self.compute_seconds = res.metrics, res.compute_seconds
            self._card(cards.evaluate_components(self.eval_table, self.eval_metrics))
        else:  # evaluation.every > 1: measurement only, no model depends on it
            self.eval_table, self.eval_metrics, self.compute_seconds = None, {}, 0.0
            self._card(cards.skipped_evaluation_components(cfg.evaluation.every, cfg.evaluation.last))
        self._record_peak()
        self.next(self.end)

    @step
    def end(self):
        """The state the next round starts from, the round's metrics and its lineage."""
        self._check("end")
        self.compute_seconds = 0.0  # (inherited from evaluate otherwise)
        s = self.state_in
        self.state = {
            **s,
            "round": self.round_idx,
            "generator": self.generator_out,
            "verifier": self.verifier_out,
            "reweighter": self.reweighter,
            "generator_updates": s["generator_updates"] + int(self.plan["update_generator"]),
            "verifier_updates": s["verifier_updates"] + int(self.plan["update_verifier"]),
        }
        self.lineage = {
            "rollouts_by_generator": s["generator"]["key"],
            "judged_by_verifier": s["verifier"]["key"],
            "generator_out": self.generator_out["key"],
            "verifier_out": self.verifier_out["key"],
            "root": self.root,
            "previous": self.previous,
            "run": current.pathspec,
        }
        self.metrics = {
            "round": self.round_idx,
            "slot": self.plan["slot"],
            "generator_updates": self.state["generator_updates"],
            "verifier_updates": self.state["verifier_updates"],
            **self.rollout_metrics,
            **self.judge_metrics,
            **self.reward_metrics,
            **self.verifier_update_metrics,
            **self.generator_update_metrics,
            **self.eval_metrics,
        }
        self._record_peak()
        print(f"round {self.round_idx} done: " + ", ".join(f"{k}={v}" for k, v in self.metrics.items() if "eval/" in k))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    TangoRoundFlow()
