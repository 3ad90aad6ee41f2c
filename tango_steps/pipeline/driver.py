"""Driving one TangoRoundFlow run per round from TangoFlow's looping step (docs/method.md §3, §9).

Metaflow only lets a step loop onto itself, so TangoFlow's ``round`` step runs round k as a child
``TangoRoundFlow`` run through Metaflow's ``Runner`` (ENVIRONMENT.md "Metaflow 2.19"). The child is
tagged ``tango_root:<root run id>`` and ``tango_round:<k>``, so that a resumed TangoFlow finds it:

- a successful child of (root, k) is ADOPTED (never recomputed);
- else the newest unfinished or failed child is RESUMED at its failed stage (``Runner.resume``);
- else a new child is launched.

A per-root-run lock (:func:`root_lock`: a ``flock`` while a round is driven, and a lease naming the
driving run) makes a second driver of the same run on one host (two ``resume``s at once, or a
resume beside a killed parent's still-running orphan) refuse, naming the run, instead of running
the same round twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROUND_FLOW = "TangoRoundFlow"
ROOT_TAG = "tango_root:{}"
ROUND_TAG = "tango_round:{}"


_MISSING = object()


def artifact(task, name: str, default: Any = _MISSING) -> Any:
    """``task[name].data`` through the task's artifact LIST (docs/method.md §9).

    ``task[name]`` and ``name in task`` ask a metadata service for one artifact by name, a route that
    the lightweight ``metaflow-local-service`` does not have (it answers 404, so the artifact looks
    missing); listing a task's artifacts works with every metadata provider, so the driver reads
    through it. Raises KeyError naming the task when it is missing and no ``default`` is given.
    """
    for a in task:
        if a.id == name:
            return a.data
    if default is _MISSING:
        raise KeyError(f"task '{task.pathspec}' has no '{name}' artifact")
    return default


def succeeded(obj) -> bool:
    """A client Task's or Run's ``successful`` without reading an artifact by name (see :func:`artifact`):
    a task succeeded when its latest attempt's ``attempt_ok`` metadata says so (what the Metaflow UI
    shows), a run when its ``end`` task did."""
    from metaflow import Run

    if isinstance(obj, Run):
        return "end" in obj and any(succeeded(t) for t in obj["end"])
    return obj.metadata_dict.get("attempt_ok") == "True"


def read_task_state(pathspec: str) -> dict[str, Any]:
    """The ``state`` artifact (model references, reweighter, counters) of a finished task (docs/method.md §9).

    ``pathspec`` is a task (``Flow/run/step/task``) or a run (``Flow/run``: its ``end`` task).
    """
    from metaflow import Run, Task, namespace

    namespace(None)
    parts = pathspec.strip("/").split("/")
    if len(parts) == 2:
        run = Run(pathspec)
        if not succeeded(run):
            raise ValueError(f"run '{pathspec}' did not finish successfully; only finished rounds can be forked")
        task = run["end"].task
    elif len(parts) == 4:
        task = Task(pathspec)
    else:
        raise ValueError(f"'{pathspec}' is neither a run (Flow/run) nor a task (Flow/run/step/task) pathspec")
    state = artifact(task, "state", None)
    if state is None:
        raise ValueError(f"task '{task.pathspec}' has no 'state' artifact: not a Tango round or start task")
    return state


class DriverBusy(RuntimeError):
    """Another live process drives the same run: this driver refuses (docs/method.md §9)."""


def _lock_path(root_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"tango-{os.environ.get('USERNAME', 'user')}-{root_id}.lock"


def _process_start(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (``/proc``), which tells a live process from a
    later one that reuses its pid; None when there is no such process (or no ``/proc``)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict[str, Any]) -> bool:
    return (
        holder.get("host") == socket.gethostname()
        and holder.get("start") is not None
        and _process_start(int(holder.get("pid", -1))) == holder["start"]
    )


@contextmanager
def root_lock(root_id: str, round_idx: int, driver: str | None = None) -> Iterator[None]:
    """Refuse to drive a round of run ``root_id`` while another live process drives it (docs/method.md §9).

    Two checks, both on this host (``/tmp``; a cluster has no shared lock, see README "Resume"):

    - an exclusive ``flock`` held while a round is driven: a second driver of the same run at the same
      time (a second ``resume``, or a killed driver's orphaned round still running) refuses at once;
    - a lease naming the driving run (``driver``, e.g. ``TangoFlow/123``) and its Metaflow runtime
      (the parent of this task, alive for the whole run): between two rounds, when no flock is held,
      another run of the same root (a second ``resume`` of it) still refuses while the lease's
      runtime lives. A dead runtime's lease (a killed run) is taken over.

    Raises :class:`DriverBusy` naming the run, the round and the process that holds it.
    """
    path = _lock_path(root_id)
    lease = path.with_suffix(".owner")
    me = {"driver": driver, "host": socket.gethostname(), "pid": os.getpid()}
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "a process that has not said who it is"
            raise DriverBusy(
                f"run {root_id} (round {round_idx}) is being driven by another process on this host "
                f"({holder}; lock {path}). Two drivers of one run would train its rounds twice, so this one "
                "stops. If that process is left over from a killed run, wait for it to end or kill it, "
                "then `resume` again."
            ) from None
        try:
            if driver is not None:
                pid = os.getppid()  # the Metaflow runtime that started this task: alive for the whole run
                runtime = {"driver": driver, "host": me["host"], "pid": pid, "start": _process_start(pid)}
                try:
                    owner = json.loads(lease.read_text())
                except (OSError, ValueError):
                    owner = {}
                if owner.get("driver") not in (None, driver) and _alive(owner):
                    raise DriverBusy(
                        f"run {root_id} (round {round_idx}) is being driven by {owner['driver']} (its Metaflow "
                        f"process {owner['pid']} on this host is alive; lease {lease}); {driver} stops: two "
                        f"resumes of one run at once would train its rounds twice. Wait for {owner['driver']} "
                        "to end (or kill it), then `resume` again."
                    )
                tmp = lease.with_name(f"{lease.name}.{os.getpid()}")
                tmp.write_text(json.dumps(runtime))
                os.replace(tmp, lease)
            f.seek(0)
            f.truncate()
            f.write(json.dumps(me))
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def find_round_runs(root_id: str, round_idx: int) -> list:
    """Child runs of (root, round), newest first (docs/method.md §9 resume)."""
    from metaflow import Flow, namespace
    from metaflow.exception import MetaflowNotFound

    namespace(None)
    try:
        flow = Flow(ROUND_FLOW)
    except MetaflowNotFound:
        return []
    runs = list(flow.runs(ROOT_TAG.format(root_id), ROUND_TAG.format(round_idx)))
    return sorted(runs, key=lambda r: r.created_at, reverse=True)


def _failure_summary(run) -> str:
    bad = [task.pathspec for step in run for task in step if not succeeded(task)]
    return "failed or unfinished: " + (", ".join(bad) or "(no task was recorded)")


def run_round(
    flow_file: str | Path,
    root_id: str,
    round_idx: int,
    previous: str,
    config: dict[str, Any],
    log: Callable[[str], None] = print,
    show_output: bool = True,
    driver: str | None = None,
) -> dict[str, Any]:
    """Adopt, resume or launch the TangoRoundFlow run of round ``round_idx`` (docs/method.md §3, §9).

    Args:
        flow_file: path of ``tango_round_flow.py``.
        root_id: run id of the root TangoFlow run (stays the same across its resumes).
        round_idx: 1-based round number.
        previous: pathspec of the task whose ``state`` the round starts from.
        config: the resolved, validated configuration (a JSON-safe dict).
        driver: the driving run (``TangoFlow/<id>``), named in the lease of :func:`root_lock`.

    Returns:
        ``{"pathspec", "state_task", "state", "metrics", "how"}`` with ``how`` one of adopted/resumed/launched.

    Raises:
        RuntimeError naming the child run and its failed task when the round fails;
        :class:`DriverBusy` when another live process drives the same run.
    """
    from metaflow import Runner

    # A config exported into this task's environment would be passed on and break the child's resume.
    for k in [k for k in os.environ if k.startswith("METAFLOW_FLOW_CONFIG")]:
        os.environ.pop(k)
    tags = [ROOT_TAG.format(root_id), ROUND_TAG.format(round_idx)]
    decospecs = list(config.get("round_with") or [])  # e.g. ["kubernetes"]: every round step runs there
    with root_lock(root_id, round_idx, driver):
        runs = find_round_runs(root_id, round_idx)
        done = [r for r in runs if succeeded(r)]
        if done:
            run, how = done[0], "adopted"
            log(f"round {round_idx}: adopting finished run {run.pathspec}")
        else:
            if runs:
                origin = runs[0]
                log(f"round {round_idx}: resuming {origin.pathspec} at its failed stage")
                with Runner(str(flow_file), show_output=show_output, decospecs=decospecs) as runner:
                    # resume reuses the original run's config and parameters
                    result = runner.resume(origin_run_id=origin.id, tags=tags)
                how = "resumed"
            else:
                log(f"round {round_idx}: launching a TangoRoundFlow run")
                cv = [("config", config)]
                with Runner(str(flow_file), show_output=show_output, config_value=cv, decospecs=decospecs) as runner:
                    result = runner.run(round=round_idx, root=root_id, previous=previous, tags=tags)
                how = "launched"
            run = result.run
            if result.status != "successful":
                raise RuntimeError(
                    f"round {round_idx} failed in run {run.pathspec}: {_failure_summary(run)}. "
                    "Fix the cause and run `resume`: the round continues at its failed stage."
                )
    end = run["end"].task
    return {
        "pathspec": run.pathspec,
        "state_task": end.pathspec,
        "state": artifact(end, "state"),
        "metrics": artifact(end, "metrics"),
        "how": how,
    }


# ----------------------------------------------------------------------------------------------
# TangoFlow's start: validate, build or load the initial models, evaluate round 0 (or fork)
# ----------------------------------------------------------------------------------------------


def validate_run_config(config: Any, rounds: int | None = None):
    """The validated :class:`~tango_steps.config.TangoConfig` of a TangoFlow run (docs/method.md §3-§7).

    ``rounds`` (the ``--rounds`` option) overrides the recipe's. Model paths other than ``tiny`` are
    resolved now, so a missing path fails before any training with the field named.
    """
    from tango_steps.config import ConfigError, TangoConfig, validate
    from tango_steps.models.loading import resolve_model_ref

    data = json.loads(json.dumps(dict(config), default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))
    if rounds is not None:
        data["rounds"] = rounds
    cfg = validate(TangoConfig, data, source="the TangoFlow configuration (--rounds / --config)")
    for role in ("generator", "verifier"):
        path = getattr(cfg, role).path
        if path != "tiny":
            try:
                resolve_model_ref(path)
            except ValueError as e:
                raise ConfigError(f"invalid configuration:\n  {role}.path: {e}") from None
    return cfg


def initial_checkpoints(cfg, out_dir: str | Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """The round-0 policy checkpoints of both models under ``out_dir`` (docs/method.md §3, §7).

    ``path: tiny`` builds and warms up the embedded tiny models once (cached by their settings); any
    other path is loaded as it is. Each checkpoint is also its model's frozen KL reference.
    """
    from tango_steps.training.checkpoint import init_checkpoint
    from tango_steps.training.settings import update_settings
    from tango_steps.training.warmup import warmed_up_models, warmup_settings

    out = Path(out_dir)
    dirs = {}
    for role in ("generator", "verifier"):
        mcfg = getattr(cfg, role)
        if mcfg.path == "tiny":
            warm, _ = warmed_up_models(warmup_settings(cfg), log=log)
            src = str(warm / role)
        else:  # the reference as the recipe gives it: the checkpoint records it, not this machine's cache path
            src = mcfg.path  # (init_checkpoint resolves it: a missing model fails there, naming it)
        ucfg = cfg.generator_update if role == "generator" else cfg.verifier_update
        log(f"{role}: initial checkpoint from {src}")
        settings = update_settings(ucfg, seed=cfg.seed, serving_dtype=cfg.rollout.dtype)
        dirs[role] = init_checkpoint(src, out / role, settings, extra={"source": src})
    return dirs


def begin(cfg, store, log: Callable[[str], None] = print) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Round 0 of a run (docs/method.md §3, §7): initial checkpoints saved in ``store``, evaluated.

    Shared by TangoFlow's ``start`` and AblationFlow's ``init``, so every ablation branch starts
    exactly as a TangoFlow run does. Returns ``(state, eval_table, first history row)``.
    """
    from tango_steps.models.store import task_key
    from tango_steps.pipeline.budgets import check_budgets
    from tango_steps.round.evaluate import evaluate
    from tango_steps.round.plan import alpha_horizon
    from tango_steps.round.state import RoundState

    lengths = check_budgets(cfg)  # before any warm-up or training: the limits must hold the task
    log(f"token budgets hold (99th percentiles of the task's gold data: {lengths})")
    with tempfile.TemporaryDirectory() as tmp:
        dirs = initial_checkpoints(cfg, tmp, log=log)
        refs = {r: store.save(d, task_key(r), meta={"role": r, "round": 0}) for r, d in dirs.items()}
    generator, verifier = store.load(refs["generator"], "serving"), store.load(refs["verifier"], "serving")
    eval_table, res = evaluate(cfg, generator, verifier, log=log)
    return RoundState.initial(refs, alpha_horizon(cfg)).to_dict(), eval_table, {"round": 0, **res.metrics}


def fork_source(pathspec: str, cfg, log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """State and metrics of a finished round run to fork from (docs/method.md §9): ``Flow/run`` or its end task.

    The fork keeps its source's T_g (the alpha schedule's horizon, docs/method.md §4), so a fork that changes
    nothing continues exactly as its source would have; ``algorithm.alpha_horizon`` in the fork's
    recipe overrides it. A source older than the state's ``alpha_horizon`` gets ``cfg``'s, said in the log.
    Every checkpoint the state refers to is checked here (every file at its size in the store, the serving weights
    fetched and hashed; the training state is hashed when an update fetches it), so a damaged or deleted one stops
    the fork in ``start``, naming the file, before any round runs.
    """
    from dataclasses import replace

    from metaflow import Run, namespace

    from tango_steps.models.store import ModelStore, load_model_dir
    from tango_steps.round.plan import alpha_horizon
    from tango_steps.round.state import RoundState

    namespace(None)
    raw = read_task_state(pathspec)
    for role in ("generator", "verifier", "generator_init", "verifier_init"):
        if role in raw:  # every file there at its size; the serving weights (what round 1 serves) hashed too
            ModelStore.for_ref(raw[role]).check(raw[role])
            load_model_dir(raw[role], "serving")
    state = RoundState.from_dict(raw, alpha_horizon=alpha_horizon(cfg))
    if "alpha_horizon" not in raw:
        log(f"{pathspec} predates the stored alpha horizon: T_g = {state.alpha_horizon} from the fork's recipe")
    if cfg.algorithm.alpha_horizon is not None:
        state = replace(state, alpha_horizon=cfg.algorithm.alpha_horizon)
    run_spec = "/".join(pathspec.strip("/").split("/")[:2])
    end = Run(run_spec)["end"].task
    metrics = artifact(end, "metrics", {})
    return state.to_dict(), metrics


def round_models(pathspec: str) -> dict[str, Path]:
    """Local directories of the generator and verifier checkpoints after a round (docs/method.md §9), for notebooks.

    ``pathspec``: a TangoRoundFlow run (its models after the round), a TangoFlow run (its final
    models) or any task with a ``state`` artifact (e.g. a TangoFlow ``start`` task: round 0). Each
    directory holds ``model/`` (safetensors + tokenizer, loadable with ``from_pretrained``; a LoRA
    checkpoint after its first update holds ``adapter/`` instead of the weights:
    :func:`~tango_steps.training.update.servable_model` gives the merged model), ``optimizer.pt``,
    ``rng_state.pt`` and ``trainer_state.json``. S3 models are downloaded once into
    the local cache.
    """
    from metaflow import Run, namespace

    from tango_steps.models.store import load_model_dir

    namespace(None)
    parts = pathspec.strip("/").split("/")
    if len(parts) == 2 and parts[0] != "TangoRoundFlow":
        state = artifact(Run(pathspec)["end"].task, "state", None)
        if state is None:
            raise ValueError(f"run '{pathspec}' has no final state (did it finish?)")
    else:
        state = read_task_state(pathspec)
    return {role: load_model_dir(state[role]) for role in ("generator", "verifier")}


def history_row(child: dict[str, Any], first: dict[str, Any]) -> dict[str, Any]:
    """One row of TangoFlow's per-round table (docs/method.md §9): the round's metrics, where it ran, drift.

    ``eval/generator_length_drift`` is the held-out mean response length minus the first row's
    (round 0, or the forked round): a generator gaming the verifier often grows or shrinks its answers.
    """
    row = {**child["metrics"], "run": child["pathspec"], "how": child["how"]}
    now, then = row.get("eval/generator_mean_length"), first.get("eval/generator_mean_length")
    row["eval/generator_length_drift"] = now - then if now is not None and then is not None else None
    return row
