"""One Tango round as explicit steps (docs/method.md §3): one run of this flow is one round.

    start -> rollout -> (judge) -> reward -> (verifier_update | generator_update) -> (evaluate) -> end
    start -> split_prompts -> sample_shard x S -> join_shards -> reward -> ...    (rollout.shards S > 1)
    ... reward -> split_nodes -> update_nodes x N -> join_nodes -> after_nodes -> ...  (update.nodes N > 1)

    (...) = a step the round runs only when it needs it

Every stage is a step of the DAG, and a round runs only the ones it needs (Metaflow's conditional
``self.next({...}, condition=...)``): a generator round goes from ``reward`` past
``verifier_update``, a verifier round past ``generator_update``, a round that updates nothing
(a frozen model's slot) straight to ``evaluate``, a round that ``evaluation.every`` does not measure
past ``evaluate`` to ``end``, and a run without step rewards from ``rollout`` past ``judge``. With
``rollout.shards`` S > 1 the round's sampling is a Metaflow ``foreach``: each ``sample_shard`` task
samples its part of the prompts, then judges its own solutions (one device each on a cluster; a
failed shard retries alone and ``resume`` reruns only it), and ``join_shards`` joins them into the
tables the unsharded steps make. An update with ``update.nodes`` N > 1 runs as N Metaflow
``@parallel`` tasks (pods on a cluster), each starting its ``update.processes`` processes of one
torch.distributed group; node 0 stores the checkpoint. A
skipped stage's artifacts are set by the step before it (an empty judgment table, the unchanged
model and the reason of the skip, ``eval_table = None``); the skipped evaluation's note is on
``reward``'s card.

TangoFlow launches it once per round (you normally never run it by hand). Each step calls one
function of ``tango_steps.round`` and stores what it returns; models live in the datastore as
directories, referenced by small dicts (``tango_steps.models.store``). The configuration is validated
once, in ``start``; later steps use that object. The tables ``rollouts``, ``judgments`` and ``eval_table``
have the columns declared in ``tango_steps/round/tables.py``; every artifact is listed in docs/guide.md
("Artifacts").
"""

import os
import tempfile
from pathlib import Path

from metaflow import Config, FlowSpec, Parameter, card, current, parallel, resources, retry, step

DEFAULT_CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml")
PARSER = "tango_steps.config.parse_recipe"


class TangoRoundFlow(FlowSpec):
    """One round (global step, docs/method.md §3) of Tango: sample, judge, reward, update, evaluate."""

    config = Config("config", default=DEFAULT_CONFIG, parser=PARSER, help="resolved Tango recipe (set by TangoFlow)")
    round_idx = Parameter("round", type=int, default=1, help="1-based round number")
    root = Parameter("root", type=str, default="", help="run id of the TangoFlow run driving this round")
    previous = Parameter("previous", type=str, default="", help="pathspec of the task holding the starting state")

    def _store(self):
        from tango_steps.models.store import ModelStore

        return ModelStore.for_flow(self)

    def _card(self, components):
        for c in components:
            current.card.append(c)

    def _check(self, stage):
        from tango_steps.faults import maybe_fail

        maybe_fail(self.round_idx, stage, current.retry_count)

    def _done(self):
        """The end of a step's work: its peak resident memory (each step is its own process;
        benchmarks/speed/round_overhead.py), the test-only kill point before its artifacts are stored, and a
        frozen heap so that the process's exit does not spend a second collecting garbage."""
        from tango_steps.faults import maybe_kill
        from tango_steps.process import freeze_heap, peak_rss_mb
        from tango_steps.traffic import snapshot

        self.peak_rss_mb = peak_rss_mb()
        self.traffic = snapshot()  # bytes fetched, stored, written, hashed; model loads, engine starts
        maybe_kill(self.round_idx, current.step_name)
        freeze_heap()

    @resources(
        cpu=config.resources.start.cpu,
        memory=config.resources.start.memory,
        gpu=config.resources.start.gpu,
        disk=config.resources.start.disk,
        shared_memory=config.resources.start.shared_memory,
    )
    @step
    def start(self):
        """Validate the configuration once, read the starting state (client API) and plan the round."""
        from tango_steps.config import TangoConfig, validate
        from tango_steps.pipeline.driver import read_task_state
        from tango_steps.round.plan import alpha_horizon, plan_dict, round_plan
        from tango_steps.round.state import RoundState

        self._check("start")
        self.cfg = validate(TangoConfig, self.config.to_dict(), source="round configuration")
        state = RoundState.from_dict(read_task_state(self.previous), alpha_horizon=alpha_horizon(self.cfg))
        if state.round != self.round_idx - 1:
            raise ValueError(f"round {self.round_idx} cannot start from the state of round {state.round}")
        self.state_in = state.to_dict()
        plan = round_plan(self.cfg, self.round_idx, state.alpha_horizon)
        self.plan = plan_dict(plan)
        self.compute_seconds = 0.0
        print(f"round {self.round_idx}: {plan.slot} round; plan {self.plan}")
        self._done()
        self.to_sample = "split_prompts" if self.cfg.rollout.shards > 1 else "rollout"
        self.next({"rollout": self.rollout, "split_prompts": self.split_prompts}, condition="to_sample")

    @step
    def split_prompts(self):
        """rollout.shards S > 1: the round's sampling as S foreach tasks (whole engine calls each)."""
        self.shard_ids = list(range(self.cfg.rollout.shards))
        self.next(self.sample_shard, foreach="shard_ids")

    @retry(times=1, minutes_between_retries=0)
    @resources(
        cpu=config.resources.rollout.cpu,
        memory=config.resources.rollout.memory,
        gpu=config.resources.rollout.gpu,
        disk=config.resources.rollout.disk,
        shared_memory=config.resources.rollout.shared_memory,
    )
    @card(type="blank", refresh_interval=5)
    @step
    def sample_shard(self):
        """One shard: the generator samples its prompts, then the verifier judges its solutions
        (docs/method.md §2-§3).
        """
        from tango_steps.pipeline import cards
        from tango_steps.round.plan import plan_from_dict, verifier_judges
        from tango_steps.round.shards import sample_shard

        k, shards = self.input, len(self.shard_ids)
        plan = plan_from_dict(self.plan)
        store = self._store()
        verifier = store.load(self.state_in["verifier"], "serving") if verifier_judges(self.cfg, plan) else None
        log = cards.CardLog(current.card, f"Shard {k} of {shards}, attempt {current.retry_count}")
        ckpt = store.load(self.state_in["generator"], "serving")
        part = sample_shard(self.cfg, plan, ckpt, verifier, (k, shards), log, pin_devices=True)
        self._check(f"sample_shard{k}")  # (the test-only switch: a shard that fails late, its work lost)
        # the shard's rows of both tables, browsable per task; join_shards joins them
        self.rollouts, self.judgments = part.rollouts, part.judgments
        self.rollout_result, self.judge_result = part.rollout, part.judge
        self.shard_stats = {**part.stats, "attempt": current.retry_count}
        self.compute_seconds = part.rollout.compute_seconds + (part.judge.compute_seconds if part.judge else 0.0)
        self._card(cards.shard_table_components([self.shard_stats]))
        self._done()
        self.next(self.join_shards)

    @card(type="blank")
    @step
    def join_shards(self, inputs):
        """The shards' tables joined in prompt order: what the unsharded rollout and judge steps make."""
        from tango_steps.pipeline import cards
        from tango_steps.round.plan import plan_from_dict
        from tango_steps.round.shards import ShardResult, join_shards, shard_table

        # a pydantic object re-pickles with its field sets in a per-process order: the same cfg, other bytes
        self.cfg = inputs[0].cfg
        mine = ["rollouts", "judgments", "rollout_result", "judge_result", "shard_stats", "compute_seconds"]
        self.merge_artifacts(inputs, exclude=[*mine, "peak_rss_mb", "traffic"])  # (per task: each its own)
        plan = plan_from_dict(self.plan)
        parts = [ShardResult(i.rollouts, i.rollout_result, i.judgments, i.judge_result, i.shard_stats) for i in inputs]
        self.rollouts, res, self.judgments, jres = join_shards(self.cfg, plan, parts)
        self.rollout_metrics, self.judge_metrics = res.metrics, jres.metrics
        self.shard_table = shard_table(parts)
        self.compute_seconds = 0.0  # the engines ran in the shards' tasks
        self._card(cards.shard_table_components(self.shard_table.to_dict("records")))
        self._card(cards.rollout_components(self.rollouts, self.rollout_metrics))
        self._card(cards.judge_components(self.rollouts, self.judgments))
        self._done()
        self.next(self.reward)

    @retry(times=1, minutes_between_retries=0)
    @resources(
        cpu=config.resources.rollout.cpu,
        memory=config.resources.rollout.memory,
        gpu=config.resources.rollout.gpu,
        disk=config.resources.rollout.disk,
        shared_memory=config.resources.rollout.shared_memory,
    )
    @card(type="blank")
    @step
    def rollout(self):
        """The generator samples the round's solutions (docs/method.md §3)."""
        from tango_steps.pipeline import cards
        from tango_steps.round.judge import no_judgments
        from tango_steps.round.plan import needs_judge, plan_from_dict
        from tango_steps.round.sample import rollout

        self._check("rollout")
        plan = plan_from_dict(self.plan)
        ckpt = self._store().load(self.state_in["generator"], "serving")
        self.rollouts, res = rollout(self.cfg, plan, ckpt)
        self.rollout_metrics, self.compute_seconds = res.metrics, res.compute_seconds
        self._card(cards.rollout_components(self.rollouts, self.rollout_metrics))
        self._done()
        self.to_judge = "judge" if needs_judge(self.cfg, plan) else "reward"
        if self.to_judge == "reward":  # vanilla GRPO's generator round: nothing to judge
            self.judgments, res = no_judgments()
            self.judge_metrics = res.metrics
        self.next({"judge": self.judge, "reward": self.reward}, condition="to_judge")

    @retry(times=1, minutes_between_retries=0)
    @resources(
        cpu=config.resources.judge.cpu,
        memory=config.resources.judge.memory,
        gpu=config.resources.judge.gpu,
        disk=config.resources.judge.disk,
        shared_memory=config.resources.judge.shared_memory,
    )
    @card(type="blank")
    @step
    def judge(self):
        """The verifier judges every solution step by step (docs/method.md §2-§3)."""
        from tango_steps.pipeline import cards
        from tango_steps.round.judge import judge
        from tango_steps.round.plan import plan_from_dict

        self._check("judge")
        plan = plan_from_dict(self.plan)
        ckpt = self._store().load(self.state_in["verifier"], "serving")
        self.judgments, res = judge(self.cfg, plan, ckpt, self.rollouts)
        self.judge_metrics, self.compute_seconds = res.metrics, res.compute_seconds
        self._card(cards.judge_components(self.rollouts, self.judgments))
        self._done()
        self.next(self.reward)

    @resources(
        cpu=config.resources.reward.cpu,
        memory=config.resources.reward.memory,
        gpu=config.resources.reward.gpu,
        disk=config.resources.reward.disk,
        shared_memory=config.resources.reward.shared_memory,
    )
    @card(type="blank")
    @step
    def reward(self):
        """Outcome and step rewards, the advantages and the RL batch of the round's slot (docs/method.md §4-§5)."""
        from tango_steps.pipeline import cards
        from tango_steps.round.plan import after_update, plan_from_dict, update_step
        from tango_steps.round.reward import reward

        self._check("reward")
        plan = plan_from_dict(self.plan)
        out = reward(self.cfg, plan, self.rollouts, self.judgments, self.state_in["reweighter"])
        self.rollouts, self.judgments = out.rollouts, out.judgments
        self.generator_batch, self.verifier_batch = out.generator_batch, out.verifier_batch
        self.reweighter, self.alpha = out.reweighter, out.alpha
        self.reward_metrics, self.compute_seconds = out.metrics, out.compute_seconds
        self._card(cards.reward_components(self.rollouts, self.judgments, self.reward_metrics, self.alpha))
        if not plan.evaluate:
            self._card(cards.skipped_evaluation_components(self.cfg.evaluation.every, self.cfg.evaluation.last))
        self._done()
        # A model the round does not update keeps its checkpoint; its update step is not run.
        self.generator_out, self.generator_update_metrics = (
            self.state_in["generator"],
            {"generator_update/skipped": plan.skip_generator},
        )
        self.verifier_out, self.verifier_update_metrics = (
            self.state_in["verifier"],
            {"verifier_update/skipped": plan.skip_verifier},
        )
        if not plan.evaluate:  # evaluation.every > 1: measurement only, so the round goes past `evaluate`
            self.eval_table, self.eval_metrics = None, {}
        self.to_update, self.after_update = update_step(plan, self.cfg), after_update(plan)
        if self.to_update == self.after_update:
            print(f"no update this round: {plan.skip_generator}; {plan.skip_verifier}")
        self.next(
            {"verifier_update": self.verifier_update, "generator_update": self.generator_update,
             "split_nodes": self.split_nodes, "evaluate": self.evaluate, "end": self.end},
            condition="to_update",
        )  # fmt: skip

    def _update(self, role, node=None):
        """Shared body of the update steps: one RL update into the datastore (on several nodes, only
        node 0 has the checkpoint to store: the others return None)."""
        import time

        from tango_steps.models.store import model_reference, task_key
        from tango_steps.round.plan import plan_from_dict
        from tango_steps.round.update import update

        store = self._store()
        t0 = time.perf_counter()
        ckpt = store.load(self.state_in[role], "training")  # fp32 weights, optimizer, RNG: not the serving copy
        # the round-0 model (the KL reference, the LoRA base) by its store reference: the new checkpoint records it,
        # and any machine that serves or continues that checkpoint fetches it from the store (docs/method.md §9)
        init = model_reference(self.state_in[f"{role}_init"], "serving", "model")
        plan = plan_from_dict(self.plan)
        batch = self.generator_batch if role == "generator" else self.verifier_batch
        with tempfile.TemporaryDirectory() as tmp:
            metrics = update(self.cfg, plan, role, ckpt, init, batch, Path(tmp) / "ckpt", node=node)
            compute = time.perf_counter() - t0
            if not (Path(tmp) / "ckpt").exists():
                return None, metrics, compute
            ref = store.save(Path(tmp) / "ckpt", task_key(role), meta={"role": role, "round": self.round_idx})
        return ref, metrics, compute

    @resources(
        cpu=config.resources.verifier_update.cpu,
        memory=config.resources.verifier_update.memory,
        gpu=config.resources.verifier_update.gpu,
        disk=config.resources.verifier_update.disk,
        shared_memory=config.resources.verifier_update.shared_memory,
    )
    @card(type="blank")
    @step
    def verifier_update(self):
        """One RL update of the verifier (docs/method.md §5-§6); only verifier rounds come here."""
        from tango_steps.pipeline import cards

        self._check("verifier_update")
        self.verifier_out, self.verifier_update_metrics, self.compute_seconds = self._update("verifier")
        self._card(cards.update_components("verifier", self.verifier_update_metrics))
        self._done()
        self.next({"evaluate": self.evaluate, "end": self.end}, condition="after_update")

    @resources(
        cpu=config.resources.generator_update.cpu,
        memory=config.resources.generator_update.memory,
        gpu=config.resources.generator_update.gpu,
        disk=config.resources.generator_update.disk,
        shared_memory=config.resources.generator_update.shared_memory,
    )
    @card(type="blank")
    @step
    def generator_update(self):
        """One RL update of the generator (docs/method.md §4, §6); only generator rounds come here."""
        from tango_steps.pipeline import cards

        self._check("generator_update")
        self.generator_out, self.generator_update_metrics, self.compute_seconds = self._update("generator")
        self._card(cards.update_components("generator", self.generator_update_metrics))
        self._done()
        self.next({"evaluate": self.evaluate, "end": self.end}, condition="after_update")

    @step
    def split_nodes(self):
        """update.nodes N > 1: the round's update as N @parallel tasks (one process group across them)."""
        from tango_steps.round.plan import plan_from_dict

        plan = plan_from_dict(self.plan)
        self.update_role = "generator" if plan.update_generator else "verifier"
        self.next(self.update_nodes, num_parallel=getattr(self.cfg, f"{self.update_role}_update").nodes)

    @parallel
    @resources(
        cpu=config.resources.update_nodes.cpu,
        memory=config.resources.update_nodes.memory,
        gpu=config.resources.update_nodes.gpu,
        disk=config.resources.update_nodes.disk,
        shared_memory=config.resources.update_nodes.shared_memory,
    )
    @card(type="blank")
    @step
    def update_nodes(self):
        """One node of an update across machines (docs/method.md §6): its processes join the group; node 0 stores."""
        from tango_steps.pipeline import cards

        self._check("update_nodes")
        par = current.parallel
        from tango_steps.rollout.devices import pin_update_node  # local nodes share a machine: each its own GPUs

        pin_update_node(self.cfg, self.update_role, par.node_index, par.num_nodes)
        node = (par.node_index, par.num_nodes, par.main_ip)
        self.node_out, self.node_metrics, self.compute_seconds = self._update(self.update_role, node)
        self._card(cards.update_components(f"{self.update_role} (node {par.node_index} of {par.num_nodes})",
                                           self.node_metrics))  # fmt: skip
        self._done()
        self.next(self.join_nodes)

    @step
    def join_nodes(self, inputs):
        """The update's result: node 0's checkpoint and metrics."""
        self.cfg = inputs[0].cfg  # (see join_shards)
        self.merge_artifacts(inputs, exclude=["node_out", "node_metrics", "compute_seconds", "peak_rss_mb", "traffic"])
        first = next(i for i in inputs if i.node_out is not None)
        setattr(self, f"{self.update_role}_out", first.node_out)
        setattr(self, f"{self.update_role}_update_metrics", first.node_metrics)
        self.compute_seconds = 0.0
        self.next(self.after_nodes)

    @step
    def after_nodes(self):
        """(a join cannot choose the next step: this one does) evaluate in a measured round, else end."""
        self.next({"evaluate": self.evaluate, "end": self.end}, condition="after_update")

    @resources(
        cpu=config.resources.evaluate.cpu,
        memory=config.resources.evaluate.memory,
        gpu=config.resources.evaluate.gpu,
        disk=config.resources.evaluate.disk,
        shared_memory=config.resources.evaluate.shared_memory,
    )
    @card(type="blank")
    @step
    def evaluate(self):
        """Held-out generator accuracy and verifier outcome/process metrics (docs/method.md §7-§8); only
        measured rounds come here (``evaluation.every``)."""
        from tango_steps.pipeline import cards
        from tango_steps.round.evaluate import evaluate

        self._check("evaluate")
        store = self._store()
        self.eval_table, res = evaluate(
            self.cfg, store.load(self.generator_out, "serving"), store.load(self.verifier_out, "serving")
        )
        self.eval_metrics, self.compute_seconds = res.metrics, res.compute_seconds
        self._card(cards.evaluate_components(self.eval_table, self.eval_metrics))
        self._done()
        self.next(self.end)

    @step
    def end(self):
        """The state the next round starts from, the round's metrics and its lineage."""
        from tango_steps.round.plan import plan_from_dict, round_metrics
        from tango_steps.round.state import RoundState

        self._check("end")
        self.compute_seconds = 0.0  # (inherited from evaluate otherwise)
        s = RoundState.from_dict(self.state_in)
        plan = plan_from_dict(self.plan)
        self.state = s.advance(plan, self.generator_out, self.verifier_out, self.reweighter).to_dict()
        self.lineage = {
            "rollouts_by_generator": s.generator["key"],
            "judged_by_verifier": s.verifier["key"],
            "generator_out": self.generator_out["key"],
            "verifier_out": self.verifier_out["key"],
            "root": self.root,
            "previous": self.previous,
            "run": current.pathspec,
        }
        self.metrics = round_metrics(
            plan, self.state, self.rollout_metrics, self.judge_metrics, self.reward_metrics,
            self.verifier_update_metrics, self.generator_update_metrics, self.eval_metrics,
        )  # fmt: skip
        self._done()
        print(f"round {self.round_idx} done: " + ", ".join(f"{k}={v}" for k, v in self.metrics.items() if "eval/" in k))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    TangoRoundFlow()
