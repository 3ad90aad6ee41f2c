"""The flow tests' client queries: read finished Metaflow runs and return JSON-able values.

``flowtools.Datastore.query("<name>", *args)`` runs ``<name>(*args)`` from this module in a subprocess, with the
test's isolated datastore environment and ``namespace(None)`` set; the arguments arrive as JSON and the result
goes back as JSON. This module is only imported there (never by pytest), so it may import Metaflow at the top.
Heavier imports (tango_steps' training code, torch, pandas, boto3) stay inside the one query that needs them:
every query pays only for its own.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import tempfile
from pathlib import Path

from metaflow import Flow, Run, Task
from metaflow.cards import get_cards

REPO = Path(__file__).resolve().parent.parent  # the benchmarks/ scripts some queries import live here

# a card's components travel base64-encoded inside its HTML
_CARD_COMPONENT = re.compile(r'= "([A-Za-z0-9+/=]{40,})"')


def _card_components(html: str) -> list[str]:
    return [base64.b64decode(m).decode() for m in _CARD_COMPONENT.findall(html)]


def _has_card(task: Task) -> bool:
    try:
        return bool(list(get_cards(task)))
    except Exception:  # start / end have no card
        return False


# --- TangoFlow runs ---------------------------------------------------------------------------------------------


def final_run() -> dict:
    """The latest successful TangoFlow run: its pathspec, round runs, final model URIs and metrics table."""
    r = Flow("TangoFlow").latest_successful_run
    e = r["end"].task
    m = e["metrics"].data
    return {
        "run": r.pathspec,
        "rounds": [c for c in e["round_runs"].data],
        "gen": e["final_generator"].data["uri"],
        "ver": e["final_verifier"].data["uri"],
        "metrics": json.loads(m.to_json(orient="records")),
    }


def latest_stop_reason() -> str | None:
    """The ``stopped`` artifact of the latest TangoFlow run's end step."""
    return Flow("TangoFlow").latest_run["end"].task["stopped"].data


def forked_from(run: str) -> str | None:
    """The round run a TangoFlow run was forked from (its start's ``forked_from``)."""
    return Run(run)["start"].task["forked_from"].data


def step_origins(run: str) -> dict[str, str | None]:
    """Step name -> the pathspec each task of ``run`` was cloned from (None: it ran in this run)."""
    return {s.id: s.task.origin_pathspec for s in Run(run)}


def latest_start_generator_dir() -> str:
    """The local folder of the generator checkpoint the latest TangoFlow run's start recorded in its state."""
    from tango_steps.models.store import load_model_dir
    from tango_steps.pipeline.driver import artifact

    start = Flow("TangoFlow").latest_run["start"].task
    return str(load_model_dir(artifact(start, "state")["generator"]))


# --- round runs -------------------------------------------------------------------------------------------------


def round_model_dirs(round_run: str) -> dict[str, str]:
    """Role -> local model folder of a round run's models (``driver.round_models``, the notebook helper)."""
    from tango_steps.pipeline.driver import round_models

    return {k: str(v) for k, v in round_models(round_run).items()}


def tagged_round_model_dirs(tag: str) -> dict[str, str]:
    """``round_model_dirs`` of the first TangoRoundFlow run listed with ``tag`` (e.g. ``tango_round:1``)."""
    r = next(iter(Flow("TangoRoundFlow").runs(tag)))
    return round_model_dirs(r.pathspec)


def round_details(round_runs: list[str]) -> dict:
    """Of a verifier round then a generator round (``round_runs[0]``, ``[1]``): tags, plans, update metrics,
    lineage, states, the rollouts' and judgments' columns and sizes, per-step peak RSS and round 1's step order."""
    r1, r2 = Run(round_runs[0]), Run(round_runs[1])
    e1, e2 = r1["end"].task, r2["end"].task
    ro = r2["reward"].task["rollouts"].data
    ju = r2["reward"].task["judgments"].data
    return {
        "tags1": sorted(t for t in r1.tags if t.startswith("tango_")),
        "plan1": e1["plan"].data,
        "plan2": e2["plan"].data,
        "vskip2": e2["verifier_update_metrics"].data,
        "gupd2": e2["generator_update_metrics"].data,
        "lineage2": e2["lineage"].data,
        "state1": e1["state"].data,
        "state2": e2["state"].data,
        "cols": sorted(ro.columns),
        "jcols": sorted(ju.columns),
        "n": len(ro),
        "nj": len(ju),
        "gb": len(e2["generator_batch"].data["response_ids"]),
        "rss": {s.id: s.task["peak_rss_mb"].data for s in r2},
        "steps1": [s.id for s in sorted(r1, key=lambda s: s.task.created_at)],
    }


def round_end_states(round_runs: list[str]) -> list[dict]:
    """Per round run, from its end step: the generator's alpha, the two models' URIs and alpha's horizon."""
    out = []
    for p in round_runs:
        e = Run(p)["end"].task
        out.append(
            {
                "alpha": e["metrics"].data.get("generator/alpha"),
                "gen": e["state"].data["generator"]["uri"],
                "ver": e["state"].data["verifier"]["uri"],
                "horizon": e["state"].data["alpha_horizon"],
            }
        )
    return out


def unevaluated_rounds(round_runs: list[str]) -> list:
    """Of two unevaluated rounds: [round 1's eval_table is None, each round's sorted step names, the text of
    round 1's reward card components]."""
    r1, r2 = Run(round_runs[0]), Run(round_runs[1])
    note = [component for c in get_cards(r1["reward"].task) for component in _card_components(c.get())]
    steps = [sorted(s.id for s in r) for r in (r1, r2)]
    return [r1["end"].task["eval_table"].data is None, steps, note]


def smollm2_round_details(round_runs: list[str]) -> dict:
    """Of a SmolLM2 verifier round then generator round: step names, decoded prompts, table sizes, the held-out
    figures, which steps have cards, and both update metrics."""
    from tango_steps.models.loading import load_tokenizer

    r1, r2 = Run(round_runs[0]), Run(round_runs[1])
    ro, ju = r2["reward"].task["rollouts"].data, r2["reward"].task["judgments"].data
    vro, vju = r1["reward"].task["rollouts"].data, r1["reward"].task["judgments"].data
    tok = load_tokenizer("smollm2-135m")
    return {
        "steps1": sorted(s.id for s in r1),
        "steps": sorted(s.id for s in r2),
        "prompt": tok.decode(ro["prompt_ids"][0]),
        "vprompt": tok.decode(ju["prompt_ids"][0]),
        "vprompt1": tok.decode(vju["prompt_ids"][0]),
        "n": len(ro),
        "nj": len(ju),
        "n1": len(vro),
        "nj1": len(vju),
        "eval": r2["evaluate"].task["eval_metrics"].data,
        "cards1": sorted(s.id for s in r1 if _has_card(s.task)),
        "cards": sorted(s.id for s in r2 if _has_card(s.task)),
        "vupd1": r1["end"].task["verifier_update_metrics"].data,
        "gupd": r2["end"].task["generator_update_metrics"].data,
    }


# --- cards ------------------------------------------------------------------------------------------------------


def card_files(round_runs: list[str], run: str, out_dir: str) -> dict[str, str]:
    """Every card of the round runs' steps and of ``run``'s round and end steps, written to ``out_dir``:
    '<flow>/<step>' -> the HTML file."""
    written = {}
    # round 1 (a verifier round) has the verifier's update step, round 2 the generator's
    pathspecs = [s.task.pathspec for r in round_runs for s in Run(r)]
    pathspecs += [s.task.pathspec for s in Run(run) if s.id in ("round", "end")]
    for ps in pathspecs:
        try:
            found = list(get_cards(Task(ps)))
        except Exception:  # start / end of a round have no card
            found = []
        for i, c in enumerate(found):
            f = out_dir + "/" + ps.replace("/", "_") + f"_{i}.html"
            open(f, "w").write(c.get())
            written[ps.split("/")[0] + "/" + ps.split("/")[2]] = f
    return written


def hostile_card_file(path: str) -> str:
    """The latest HostileCardFlow run's start card, written to ``path``; that path."""
    open(path, "w").write(get_cards(Flow("HostileCardFlow").latest_run["start"].task)[0].get())
    return path


# --- S3 and metadata-service datastores -------------------------------------------------------------------------


def create_tango_bucket(endpoint_url: str) -> int:
    """Create the bucket ``tango`` on the S3 server at ``endpoint_url``; 1 when done."""
    import boto3

    boto3.client("s3", endpoint_url=endpoint_url).create_bucket(Bucket="tango")
    return 1


def s3_run_and_fork(run: str, endpoint_url: str, gsm8k_rows: str) -> dict:
    """Of ``run`` (resumed) and the latest successful TangoFlow run (its fork) on S3: local model folders, the
    generator URIs, the bucket's keys, round cards from ``round_with``, and a benchmark and a dataset task read
    from the bucket after storing ``gsm8k_rows`` as its gsm8k test file."""
    import boto3

    from tango_steps.models.store import load_model_dir

    runs = [Run(run), Flow("TangoFlow").latest_successful_run]  # the resumed run, the fork
    models = [[str(load_model_dir(r["end"].task[m].data)) for m in ("final_generator", "final_verifier")] for r in runs]
    uris = [r["end"].task["final_generator"].data["uri"] for r in runs]
    s3 = boto3.client("s3", endpoint_url=endpoint_url)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket="tango")
        for o in page.get("Contents", [])
    ]
    # benchmark files and a dataset task's prompts from the bucket, through s3fs
    s3.put_object(Bucket="tango", Key="data/gsm8k/test.jsonl", Body=gsm8k_rows.encode())
    from tango_steps.tasks import get_task
    from tango_steps.tasks.benchmarks import load_benchmark

    bench, stats = load_benchmark("gsm8k", path="s3://tango/data")
    prompts = get_task("dataset", benchmark="gsm8k", path="s3://tango/data").problems(3, "train", seed=0)
    with_card = [len(list(get_cards(Run(p)["start"].task))) for p in runs[0]["end"].task["round_runs"].data]
    return {
        "models": models,
        "uris": uris,
        "fork": runs[1].pathspec,
        "keys": keys,
        "with": with_card,
        "bench": [len(bench), stats.source],
        "prompts": [p.question for p in prompts],
    }


def _succeeded_tango_runs() -> list[Run]:
    """The successful TangoFlow runs, newest first, read the way the driver does (``driver.succeeded``)."""
    from tango_steps.pipeline.driver import succeeded

    return [r for r in Flow("TangoFlow").runs() if succeeded(r)]


def _final_model_dirs(end: Task) -> list[str]:
    """The local folders of an end step's final generator and verifier, read through ``driver.artifact``."""
    from tango_steps.models.store import load_model_dir
    from tango_steps.pipeline.driver import artifact

    return [str(load_model_dir(artifact(end, m))) for m in ("final_generator", "final_verifier")]


def service_latest_run() -> dict:
    """Through a metadata service: the newest successful TangoFlow run's root id, round runs, final model
    folders, round 2's tango_ tags, its recipe and the round-2 runs found by their tags."""
    from tango_steps.pipeline.driver import artifact, find_round_runs

    done = _succeeded_tango_runs()
    end = done[0]["end"].task
    root, rounds = artifact(end, "root_id"), artifact(end, "round_runs")
    tags = sorted(t for t in Run(rounds[1]).tags if t.startswith("tango_"))
    children = [r.pathspec for r in find_round_runs(root, 2)]
    return {
        "root": root,
        "rounds": rounds,
        "models": _final_model_dirs(end),
        "tags": tags,
        "cfg": artifact(end, "cfg"),
        "children": children,
    }


def service_fork_and_adoption(round_flow: str, root: str, cfg: dict) -> dict:
    """Through a metadata service: the newest successful TangoFlow run's (the fork's) final model folders and
    its ``forked_from``, and how ``driver.run_round`` takes up round 1 of root run ``root`` again."""
    from tango_steps.pipeline.driver import artifact, run_round

    done = _succeeded_tango_runs()
    fork = max(done, key=lambda r: r.created_at)
    again = run_round(round_flow, root, 1, "unused", cfg, log=lambda m: None, show_output=False)
    return {
        "fork": _final_model_dirs(fork["end"].task),
        "forked_from": artifact(fork["start"].task, "forked_from"),
        "how": again["how"],
        "adopted": again["pathspec"],
    }


def service_round_verifier_dir(round_run: str) -> str:
    """Through a metadata service: the local folder of the verifier in a round run's end state."""
    from tango_steps.models.store import load_model_dir
    from tango_steps.pipeline.driver import artifact

    return str(load_model_dir(artifact(Run(round_run)["end"].task, "state")["verifier"]))


# --- updates and sampling, recomputed -----------------------------------------------------------------------------


def fresh_update_check(round_run: str) -> dict:
    """A round's generator_update step: its metrics, its stored generator's folder, and the folder of a fresh
    update of the same round's batch (same recipe: the same number of processes)."""
    from tango_steps.models.store import load_model_dir
    from tango_steps.round.plan import plan_from_dict
    from tango_steps.round.update import update

    u = Run(round_run)["generator_update"].task
    state_in = u["state_in"].data
    ckpt, init = load_model_dir(state_in["generator"]), load_model_dir(state_in["generator_init"])
    out = Path(tempfile.mkdtemp()) / "ckpt"  # a fresh 2-process update of the same round's batch
    update(
        u["cfg"].data,
        plan_from_dict(u["plan"].data),
        "generator",
        ckpt,
        init,
        u["generator_batch"].data,
        out,
        log=lambda m: None,
    )
    return {
        "metrics": u["generator_update_metrics"].data,
        "fresh": str(out),
        "resumed": str(load_model_dir(u["generator_out"].data)),
    }


def sharded_round_check(round_run: str) -> dict:
    """A round sampled in shards and resumed: where each shard came from, the failed run's attempts, the shard
    table and card, and the round redone by one engine in one process (``InProcessRun``, ``rollout.shards: 1``),
    whose tables must equal the round's (checked here) and whose generator folder is returned."""
    import pandas as pd

    from tango_steps.models.store import load_model_dir
    from tango_steps.round.in_process import InProcessRun

    r = Run(round_run)
    origin = {t.index: t.origin_pathspec for t in r["sample_shard"]}
    first = Run("/".join(origin[0].split("/")[:2]))  # the failed run, whose shard 0 was cloned
    attempts = {t.index: [t.current_attempt, t.successful] for t in first["sample_shard"]}
    j, w = r["join_shards"].task, r["reward"].task
    cfg, s_in = j["cfg"].data, j["state_in"].data
    one = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"shards": 1})})
    dirs = {"generator": load_model_dir(s_in["generator"]), "verifier": load_model_dir(s_in["verifier"])}
    run = InProcessRun(one, dirs, tempfile.mkdtemp())
    out = run.round()
    pd.testing.assert_frame_equal(w["rollouts"].data, out.rollouts)
    pd.testing.assert_frame_equal(w["judgments"].data, out.judgments)
    flow_generator = load_model_dir(r["end"].task["state"].data["generator"])
    html = get_cards(j)[0].get()  # its components travel base64-encoded inside it
    card = _card_components(html)
    return {
        "origin": origin,
        "attempts": attempts,
        "table": j["shard_table"].data.to_dict("records"),
        "card": card,
        "flow": str(flow_generator),
        "one": str(run.generator),
        "rows": len(out.rollouts),
        "verifications": len(out.judgments),
    }


def parallel_nodes_update_check(round_run: str) -> dict:
    """A round whose update ran on @parallel nodes: its metrics, the nodes' generator folder, the folder of the
    same update on 2 processes of one machine, the number of node tasks and the round's step names."""
    from tango_steps.models.store import load_model_dir
    from tango_steps.round.plan import plan_from_dict
    from tango_steps.round.update import update

    r = Run(round_run)
    j = r["join_nodes"].task
    cfg, state_in = j["cfg"].data, j["state_in"].data
    one = cfg.model_copy(
        update={"generator_update": cfg.generator_update.model_copy(update={"nodes": 1, "processes": 2})}
    )
    ckpt, init = load_model_dir(state_in["generator"]), load_model_dir(state_in["generator_init"])
    out = Path(tempfile.mkdtemp()) / "ckpt"  # the same update on 2 processes of this machine
    update(
        one, plan_from_dict(j["plan"].data), "generator", ckpt, init, j["generator_batch"].data, out, log=lambda m: None
    )
    return {
        "metrics": j["generator_update_metrics"].data,
        "fresh": str(out),
        "nodes": str(load_model_dir(r["end"].task["state"].data["generator"])),
        "tasks": len(list(r["update_nodes"])),
        "steps": sorted(s.id for s in r),
    }


def parallel_update_result() -> dict:
    """The latest successful ParallelUpdateFlow run's comparison with one process, its update task count and
    number of updates."""
    r = Flow("ParallelUpdateFlow").latest_successful_run
    j = r["join"].task
    return {
        "matches": j["matches"].data,
        "diff": j["max_difference"].data,
        "moved": j["moved"].data,
        "tasks": len(list(r["update"])),
        "updates": j["metrics"].data["updates"],
    }


# --- AblationFlow -----------------------------------------------------------------------------------------------


def ablation_result() -> dict:
    """The latest successful AblationFlow run: its metrics and summary tables, branch round runs, their user
    tags and each branch's last round metrics (values JSON cannot hold as they are: as strings)."""
    r = Flow("AblationFlow").latest_successful_run
    j = r["join"].task
    out = {
        "run": r.pathspec,
        "metrics": json.loads(j["metrics"].data.to_json(orient="records")),
        "summary": json.loads(j["summary"].data.to_json(orient="records")),
        "branch_runs": j["branch_runs"].data,
    }
    br = out["branch_runs"].items()
    out["tags"] = {name: [sorted(Run(p).user_tags) for p in runs] for name, runs in br}
    out["children"] = {name: Run(runs[-1])["end"].task["metrics"].data for name, runs in br}
    return json.loads(json.dumps(out, default=str))


def eval_correct_summary(pathspec: str) -> list:
    """[number of held-out problems, share correct] of an evaluation task (``study_intervals.eval_correct``)."""
    sys.path.insert(0, str(REPO))
    from benchmarks.studies.study_intervals import eval_correct

    c = eval_correct(pathspec)
    return [len(c), float(c.mean())]


def tango_finals(study_run: str) -> list[dict]:
    """The tango arm's per-problem results (round, prompt_id, correct) of an AblationFlow run
    (``study_intervals.finals_from_runs``, window 3)."""
    sys.path.insert(0, str(REPO))
    from benchmarks.studies.study_intervals import finals_from_runs

    f = finals_from_runs([study_run], 3)
    f = f[f["variant"] == "tango"]
    return json.loads(f[["round", "prompt_id", "correct"]].to_json(orient="records"))


# --- EvalFlow ---------------------------------------------------------------------------------------------------


def eval_results() -> list[dict]:
    """The latest EvalFlow run's joined results table, one record per benchmark."""
    res = Flow("EvalFlow").latest_run["join"].task["results"].data
    return json.loads(json.dumps(res.to_dict(orient="records"), default=str))
