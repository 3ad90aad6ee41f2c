"""Retention: delete the model checkpoints of a run's older rounds (docs/method.md §9; issue #17).

    python -m tango_steps.pipeline.retention TangoFlow/<run id> --keep-last 3 --every 5 --dry-run
    python -m tango_steps.pipeline.retention TangoFlow/<run id> --keep-last 3 --every 5

A TangoFlow run stores one checkpoint (weights and optimizer state) per round and updated model,
~43 MB a round for the tiny default and ~1.6 GB for SmolLM2-135M (docs/performance.md); artifacts,
cards and logs are small and stay. A round's models are the references in its end state
(``generator``, ``verifier`` and the round-0 KL references); a checkpoint can serve several rounds
(the verifier's, while generator rounds run). Kept, with the reason printed:

- round 0 (the initial models: every round's KL reference) and the run's last round (``end``'s
  final models, the state a ``resume`` continues from);
- the last ``--keep-last`` finished rounds, and every ``--every``-th round;
- any round another TangoFlow run was forked from (``--start-from``), found by its ``forked_from``.

Every checkpoint that no kept round refers to is removed, and so are checkpoints written by failed
attempts of a round that later finished (a killed or failed update's, and ``.tmp-*`` folders of
interrupted writes). A removed checkpoint leaves a ``REMOVED.json`` note in its place: loading it
(a ``resume`` or a fork from a round that used it) fails with a message saying it was removed by
retention, when, and which rounds are still whole. ``--dry-run`` prints what would go and the
space it frees, and changes nothing. The run's datastore is the one Metaflow is configured for
(``METAFLOW_DEFAULT_DATASTORE`` / ``METAFLOW_DATASTORE_SYSROOT_*``), local or S3.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tango_steps.models.store import PREFIX, REMOVED, ModelStore

ROLES = ("generator", "verifier", "generator_init", "verifier_init")


def state_refs(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The model references of a round state (its two policies and their KL references)."""
    return [state[r] for r in ROLES if isinstance(state.get(r), dict) and "key" in state[r]]


@dataclass(frozen=True)
class RetentionPlan:
    """What a retention keeps and removes (:func:`plan_retention`).

    Attributes:
        kept: round -> why it is kept.
        remove: references of the checkpoints to delete, each once.
        broken: rounds that lose a checkpoint: they can no longer be resumed or forked from.
        intact: rounds not kept that lose nothing (their checkpoints serve kept rounds).
    """

    kept: dict[int, str]
    remove: list[dict[str, Any]]
    broken: list[int]
    intact: list[int]

    @property
    def bytes(self) -> int:
        """The space the removed checkpoints take (their references' byte counts)."""
        return sum(int(r.get("bytes", 0)) for r in self.remove)


def plan_retention(
    states: dict[int, dict[str, Any]],
    keep_last: int,
    every: int | None = None,
    pinned: dict[int, str] | None = None,
    owned: tuple[str, ...] = ("TangoRoundFlow/",),
) -> RetentionPlan:
    """Which rounds keep their checkpoints and which checkpoints go (pure; docs/method.md §9).

    Args:
        states: round -> its end state (round 0: the run's start state).
        keep_last: the last N finished rounds are kept (at least 1: the state a resume continues from).
        every: also keep every K-th round (K, 2K, ...); None keeps none extra.
        pinned: round -> a reason it must stay (a fork's source, ...).
        owned: key prefixes of checkpoints this run may delete (its round runs' own writes; never the
            round-0 models, which are every round's KL reference, nor a forked source's).
    """
    if keep_last < 1:
        raise ValueError(
            f"--keep-last must be at least 1 (the last round is what a resume continues from), got {keep_last}"
        )
    if every is not None and every < 1:
        raise ValueError(f"--every must be a positive number of rounds, got {every}")
    rounds = sorted(states)
    if not rounds:
        raise ValueError("the run has no finished round")
    kept: dict[int, list[str]] = {}
    for k in rounds:
        why = kept.setdefault(k, [])
        if k == rounds[0]:
            why.append("the run's first state (round-0 models: every round's KL reference)")
        if k == rounds[-1]:
            why.append("the last round (the end step's final models; what a resume continues from)")
        elif k in rounds[-keep_last:]:
            why.append(f"one of the last {keep_last}")
        if every and k % every == 0 and k != rounds[0]:
            why.append(f"a multiple of --every {every}")
        if pinned and k in pinned:
            why.append(pinned[k])
    kept_why = {k: "; ".join(w) for k, w in kept.items() if w}
    keep_keys = {r["key"] for k in kept_why for r in state_refs(states[k])}
    remove: dict[str, dict[str, Any]] = {}
    for k in rounds:
        for ref in state_refs(states[k]):
            if ref["key"] not in keep_keys and ref["key"].startswith(owned):
                remove.setdefault(ref["key"], ref)
    gone = set(remove)
    broken = [k for k in rounds if k not in kept_why and any(r["key"] in gone for r in state_refs(states[k]))]
    intact = [k for k in rounds if k not in kept_why and k not in broken]
    return RetentionPlan(kept_why, sorted(remove.values(), key=lambda r: r["key"]), broken, intact)


# ----------------------------------------------------------------------------------------------
# What a run's datastore holds (Metaflow client)
# ----------------------------------------------------------------------------------------------


@dataclass
class RunRounds:
    """A TangoFlow run's rounds as its datastore records them."""

    root_id: str
    states: dict[int, dict[str, Any]]  # round -> end state (round 0 / a fork's first: the start state)
    round_runs: dict[int, str]  # round -> its successful TangoRoundFlow run
    failed_runs: dict[int, list[str]]  # round -> runs that did not finish (a later one did, or not)
    pinned: dict[int, str]
    store: ModelStore


def read_run(pathspec: str) -> RunRounds:
    """Collect a TangoFlow run's round states, its failed round attempts and the forks made from it."""
    from metaflow import Flow, Run, namespace

    from tango_steps.pipeline.driver import ROOT_TAG, ROUND_FLOW, artifact, succeeded

    namespace(None)
    run = Run(pathspec)
    if run.parent.id != "TangoFlow":
        raise ValueError(f"'{pathspec}' is not a TangoFlow run (Flow/run id)")
    start = run["start"].task
    root_id = artifact(start, "root_id")
    first = artifact(start, "state")
    states = {int(first["round"]): first}
    round_runs: dict[int, str] = {}
    failed: dict[int, list[str]] = {}
    for child in Flow(ROUND_FLOW).runs(ROOT_TAG.format(root_id)):
        k = next(int(t.split(":", 1)[1]) for t in child.tags if t.startswith("tango_round:"))
        if succeeded(child) and k not in round_runs:
            round_runs[k] = child.pathspec
            states[k] = artifact(child["end"].task, "state")
        elif not succeeded(child):
            failed.setdefault(k, []).append(child.pathspec)
    pinned: dict[int, str] = {}
    by_run = {p: k for k, p in round_runs.items()}
    for other in Flow("TangoFlow").runs():
        if "start" not in other:
            continue
        source = artifact(other["start"].task, "forked_from", None) or ""
        k = by_run.get("/".join(source.split("/")[:2]))  # a run or its end task
        if k is not None:
            pinned[k] = (pinned[k] + ", " if k in pinned else "forked by ") + other.pathspec
    store = ModelStore.for_ref(first["generator"])
    return RunRounds(root_id, states, round_runs, failed, pinned, store)


def stale_writes(rr: RunRounds) -> list[tuple[str, int]]:
    """Files of failed attempts of rounds that later finished, as (key, bytes): checkpoints no state
    refers to (the finished attempt wrote its own, or cloned a step and kept referring to the failed
    attempt's: those stay) and ``.tmp-*`` folders of interrupted writes, which nothing reads. Rounds
    without a finished attempt are left alone (a resume may still need them, or they are running)."""
    referenced = {r["key"] for s in rr.states.values() for r in state_refs(s)}
    out: dict[str, int] = {}
    for k, runs in rr.failed_runs.items():
        if k not in rr.round_runs:
            continue
        for p in runs:
            for rel, size in _files(rr.store, p):
                key = "/".join(rel.split("/")[:6])  # flow/run/step/task/attempt/name
                if key not in referenced:
                    out[key] = out.get(key, 0) + size
    return sorted(out.items())


def _files(store: ModelStore, sub: str) -> list[tuple[str, int]]:
    """Every file under ``tango_models/<sub>`` as (path relative to ``tango_models``, bytes), local or S3."""
    if store.ds_type == "local":
        base = Path(store.storage.full_uri(PREFIX))
        root = base / sub
        return [(p.relative_to(base).as_posix(), p.stat().st_size) for p in root.rglob("*") if p.is_file()]
    client, bucket, base = _s3(store, PREFIX)
    out = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{base.rstrip('/')}/{sub}/")
    for page in pages:
        out += [(o["Key"][len(base.rstrip("/")) + 1 :], o["Size"]) for o in page.get("Contents", [])]
    return out


def _s3(store: ModelStore, prefix: str):
    from urllib.parse import urlparse

    from metaflow.plugins.datatools.s3.s3util import get_s3_client

    url = urlparse(store.storage.full_uri(prefix))
    client, _ = get_s3_client()
    return client, url.netloc, url.path.lstrip("/")


def remove_checkpoint(store: ModelStore, ref: dict[str, Any], note: dict[str, Any]) -> None:
    """Delete a stored checkpoint, leaving ``REMOVED.json`` (``note``) in its place. The note is
    written first, so a load refuses the checkpoint from then on, even if the deletion stops halfway
    (running retention again finishes it)."""
    prefix = store.storage.path_join(PREFIX, ref["key"])
    _remove_prefix(store, prefix, note)


def _remove_prefix(store: ModelStore, prefix: str, note: dict[str, Any] | None) -> None:
    import io

    if note is not None:
        body = io.BytesIO(json.dumps(note, sort_keys=True).encode())
        store.storage.save_bytes(iter([(store.storage.path_join(prefix, REMOVED), body)]), overwrite=True)
    if store.ds_type == "local":
        root = Path(store.storage.full_uri(prefix))
        if note is None:
            shutil.rmtree(root, ignore_errors=True)
            return
        for p in sorted(root.iterdir()):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.name != REMOVED:
                p.unlink()
        return
    sub = prefix[len(PREFIX) + 1 :]
    client, bucket, base = _s3(store, PREFIX)
    keys = [f"{base.rstrip('/')}/{rel}" for rel, _ in _files(store, sub)]
    keys = [k for k in keys if note is None or not k.endswith("/" + REMOVED)]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module doc); 0 on success, 2 for a run that cannot be read."""
    ap = argparse.ArgumentParser(
        prog="python -m tango_steps.pipeline.retention",
        description=__doc__.split("\n\n")[0],
        epilog="See the module doc.",
    )
    ap.add_argument("run", help="the TangoFlow run: TangoFlow/<run id> (or a resume of it)")
    ap.add_argument("--keep-last", type=int, required=True, help="keep the last N finished rounds (N >= 1)")
    ap.add_argument("--every", type=int, default=None, help="also keep every K-th round")
    ap.add_argument("--dry-run", action="store_true", help="list what would be removed and the space; change nothing")
    args = ap.parse_args(argv)
    try:
        rr = read_run(args.run)
        # only checkpoints this run's own round runs wrote (finished or not) may go
        owned = tuple(f"{p}/" for p in [*rr.round_runs.values(), *(p for ps in rr.failed_runs.values() for p in ps)])
        plan = plan_retention(rr.states, args.keep_last, args.every, rr.pinned, owned=owned)
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stale = stale_writes(rr)
    rounds = sorted(rr.states)
    print(f"{args.run} (root {rr.root_id}): rounds {rounds[0]}..{rounds[-1]}, datastore {rr.store.ds_root}")
    for k, why in sorted(plan.kept.items()):
        print(f"  keep round {k}: {why}")
    for ref in plan.remove:
        meta = ref.get("meta", {})
        print(f"  {'would remove' if args.dry_run else 'remove'} {ref['key']} (round {meta.get('round', '?')} "
              f"{meta.get('role', '?')}, {_mb(ref.get('bytes', 0))})")  # fmt: skip
    for prefix, size in stale:
        print(f"  {'would remove' if args.dry_run else 'remove'} {prefix} (a failed attempt's, {_mb(size)})")
    if plan.broken:
        which = f"round{'' if len(plan.broken) == 1 else 's'} {', '.join(map(str, plan.broken))}"
        print(f"  {which} can no longer be resumed or forked from")
    freed = plan.bytes + sum(s for _, s in stale)
    if args.dry_run:
        print(f"dry run: {_count(plan.remove, 'checkpoint')} and {_count(stale, 'failed attempt')}: "
              f"{_mb(freed)} would be freed")  # fmt: skip
        return 0
    note = {
        "removed_by": "python -m tango_steps.pipeline.retention",
        "run": args.run,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kept_rounds": sorted(plan.kept),
        "keep_last": args.keep_last,
        "every": args.every,
    }
    for ref in plan.remove:
        remove_checkpoint(rr.store, ref, note)
    for key, _ in stale:
        _remove_prefix(rr.store, rr.store.storage.path_join(PREFIX, key), None)
    print(f"removed {_count(plan.remove, 'checkpoint')} and the files of {_count(stale, 'failed attempt')}: "
          f"{_mb(freed)} freed")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
