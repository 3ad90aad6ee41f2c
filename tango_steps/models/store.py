"""Model directories in the Metaflow datastore, with a small reference as the artifact (docs/method.md §9).

Weights are never pickled into artifacts. A policy checkpoint or a base model (a directory of
safetensors, tokenizer files, optimizer and RNG state) is copied file by file into the flow's own
datastore (local folder or S3) under ``<datastore root>/tango_models/<key>/``, through Metaflow's
storage back-end, so the same code serves ``--datastore local`` and S3 and a Kubernetes/Batch task
can read what another machine wrote. The artifact keeps only a :class:`ModelRef`-style dict::

    {"uri": ..., "ds_type": "local" | "s3", "ds_root": ..., "key": ..., "files": {name: size},
     "bytes": total, "meta": {...}}

``MANIFEST.json`` is written last: a directory without it is an interrupted save and is refused on
load. The reference records every file's size and sha256 (of a checkpoint's weight and optimizer files, the
digests taken as they were written: :mod:`tango_steps.models.digests`); a load checks them and refuses a missing,
truncated or corrupted file with an error naming the file, the run and the round (a full re-hash
is skipped while a file keeps the size and modification time it had when last verified: a stamp
``VERIFIED.json`` beside the files). Local stores are read in place; S3 stores are downloaded once
into ``<cache_dir>/models/<hash of uri>/`` and reused.

A step fetches only the PART of a checkpoint it uses (:func:`part_files`): an engine the serving weights
(``model/``), an update its training state (fp32 master weights when they differ from the serving ones,
optimizer, RNG, trainer state). Files are downloaded into a folder beside the cache and moved into place (no
second copy); each new file is hashed once, from the page cache, right after its download; the manifest is
written when every file of the part is there.

Why not ``metaflow-checkpoint``: see ``docs/model_store.md`` (its per-task overhead measured
above the 2 s budget of issue #4 on the tiny default).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

from tango_steps.models.digests import WRITTEN, written_hashes

MANIFEST = "MANIFEST.json"
VERIFIED = "VERIFIED.json"  # (size, mtime) of each file when its hash last matched: not part of the model
REMOVED = "REMOVED.json"  # left by tango_steps.pipeline.retention in place of a deleted checkpoint
PREFIX = "tango_models"
_NOT_MODEL = (MANIFEST, VERIFIED, REMOVED, WRITTEN)
PARTS = ("all", "serving", "training")


def part_files(names: list[str], part: str) -> list[str]:
    """The files of a stored model that ``part`` needs (:data:`PARTS`).

    ``serving``: what an engine loads, ``model/`` (weights in the serving dtype, config, tokenizer), the trainer
    state and a LoRA adapter (merged into its base at load). ``training``: everything but ``model/``'s weights when
    the checkpoint keeps fp32 master weights of its own (``master/``); else everything. ``all``: every file.
    """
    if part not in PARTS:
        raise ValueError(f"unknown model part '{part}'; known: {', '.join(PARTS)}")
    if part == "serving":
        return [n for n in names if n.startswith(("model/", "adapter/")) or n == "trainer_state.json"] or list(names)
    if part == "training" and any(n.startswith("master/") for n in names):
        return [n for n in names if not (n.startswith("model/") and n.endswith(".safetensors"))]
    return list(names)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _storage_class(ds_type: str):
    from metaflow.plugins import DATASTORES

    for cls in DATASTORES:
        if cls.TYPE == ds_type:
            return cls
    raise ValueError(f"unknown Metaflow datastore type '{ds_type}'; known: {', '.join(c.TYPE for c in DATASTORES)}")


class ModelStore:
    """Save and load model directories through a Metaflow datastore back-end (docs/method.md §9).

    Args:
        storage: a Metaflow ``DataStoreStorage`` (``LocalStorage`` or ``S3Storage``) instance.
    """

    def __init__(self, storage) -> None:
        self.storage = storage
        self.ds_type = storage.TYPE
        self.ds_root = storage.datastore_root

    @classmethod
    def for_flow(cls, flow) -> ModelStore:
        """The store of the datastore a running step writes its artifacts to (docs/method.md §9)."""
        return cls(flow._datastore.parent_datastore._storage_impl)

    @classmethod
    def for_ref(cls, ref: dict[str, Any]) -> ModelStore:
        """The store a reference was written to, e.g. from a notebook (docs/method.md §9)."""
        return cls(_storage_class(ref["ds_type"])(ref["ds_root"]))

    # ------------------------------------------------------------------------------------------

    def save(self, src: str | Path, key: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Copy directory ``src`` to ``tango_models/<key>`` and return its reference (docs/method.md §9).

        An existing complete copy under the same key (a retried task) is replaced.
        """
        from tango_steps import traffic

        src = Path(src)
        if not src.is_dir():
            raise ValueError(f"cannot store '{src}': not a directory")
        files = {  # a directory loaded from a store carries its old manifest: never copy it as a file
            p.relative_to(src).as_posix(): p.stat().st_size
            for p in sorted(src.rglob("*"))
            if p.is_file() and p.relative_to(src).as_posix() not in _NOT_MODEL
        }
        if not files:
            raise ValueError(f"cannot store '{src}': the directory is empty")
        prefix = self.storage.path_join(PREFIX, key)
        # a checkpoint's big files were hashed as they were written (WRITTEN.json): only the others are read here
        sha = written_hashes(src, list(files))
        unhashed = [n for n in files if n not in sha]
        sha.update(_hash_files(src, unhashed))
        sha = {n: sha[n] for n in files}
        traffic.add("bytes_hashed", sum(files[n] for n in unhashed))
        manifest = {"files": files, "sha256": sha, "bytes": sum(files.values()), "meta": dict(meta or {})}
        if self.ds_type == "local":
            final = Path(self.storage.full_uri(prefix))
            from tango_steps.atomic import atomic_directory, is_disk_full

            try:
                with atomic_directory(final, overwrite=True) as tmp:
                    top_manifest = lambda d, names: list(_NOT_MODEL) if Path(d) == src else []  # noqa: E731
                    shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=top_manifest)
                    _kill_point(meta)
                    (tmp / MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
            except OSError as e:
                if is_disk_full(e):
                    raise _disk_full_error(final, key, manifest) from e
                raise
            traffic.add("bytes_written", manifest["bytes"])
        else:  # every file from where it is, in parallel: Metaflow's save_bytes would first copy each into a temp file
            from metaflow import S3

            with S3(s3root=self.ds_root, tmproot=str(src.parent)) as s3:
                s3.put_files([(self.storage.path_join(prefix, name), str(src / name)) for name in files])
            _kill_point(meta)
            traffic.add("bytes_uploaded", manifest["bytes"])
            body = io.BytesIO(json.dumps(manifest, sort_keys=True).encode())
            self.storage.save_bytes(iter([(self.storage.path_join(prefix, MANIFEST), body)]), overwrite=True)
        return {
            "uri": self.storage.full_uri(prefix),
            "ds_type": self.ds_type,
            "ds_root": self.ds_root,
            "key": key,
            **manifest,
        }

    def load(self, ref: dict[str, Any], part: str = "all") -> Path:
        """A local directory holding the referenced model, or the ``part`` of it a step uses (:func:`part_files`),
        verified against the manifest (docs/method.md §9)."""
        from tango_steps import traffic

        names = part_files(list(ref["files"]), part)
        prefix = self.storage.path_join(PREFIX, ref["key"])
        if self.ds_type == "local":
            path = Path(self.storage.full_uri(prefix))
            _verify(path, ref, names)
            return path
        from tango_steps.atomic import exclusive_lock

        local = store_cache() / hashlib.sha256(ref["uri"].encode()).hexdigest()[:20]
        with self.storage.load_bytes([self.storage.path_join(prefix, REMOVED)]) as results:
            for _, path, _ in results:  # removed by retention: refused even when a local copy is cached
                if path is not None:
                    raise removed_error(ref, Path(path).read_text())
        local.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(local.parent / f"{local.name}.lock", f"waiting for another process to fetch {local}"):
            local.mkdir(exist_ok=True)
            try:
                _verify(local, ref, names, manifest=False)
            except ValueError:  # missing, damaged (dropped) or never fetched: fetch what is not there
                stale = [n for n in names if not _same_size(local / n, ref["files"][n])]
                traffic.add("bytes_downloaded", sum(ref["files"][n] for n in stale))
                self._download(prefix, stale, local, ref)
                _verify(local, ref, names, manifest=False)
            # what the store wrote last: a reader (retention, a notebook) sees a complete copy of the part's files
            (local / MANIFEST).write_text(json.dumps({k: ref[k] for k in ("files", "sha256", "bytes", "meta")
                                                      if k in ref}, sort_keys=True))  # fmt: skip
        return local

    def check(self, ref: dict[str, Any]) -> None:
        """Refuse a stored model whose manifest or any file is missing or of another size in the store, without
        fetching it (a fork's ``start``: every checkpoint its state names; hashes are checked at each fetch)."""
        prefix = self.storage.path_join(PREFIX, ref["key"])
        if self.storage.is_file([self.storage.path_join(prefix, REMOVED)])[0]:
            with self.storage.load_bytes([self.storage.path_join(prefix, REMOVED)]) as results:
                for _, path, _ in results:
                    raise removed_error(ref, Path(path).read_text() if path else "{}")
        if not self.storage.is_file([self.storage.path_join(prefix, MANIFEST)])[0]:
            raise ValueError(
                f"{_where(ref)} has no {MANIFEST}: missing or an interrupted save; re-run the step that produced it"
            )
        for name, size in ref["files"].items():
            found = self.storage.size_file(self.storage.path_join(prefix, name))
            if found is None:
                raise ValueError(f"{_where(ref)}: file '{name}' is missing")
            if found != size:
                raise ValueError(f"{_where(ref)}: file '{name}' is truncated or damaged ({found} of {size} bytes)")

    def _download(self, prefix: str, names: list[str], local: Path, ref: dict[str, Any]) -> None:
        """Download ``names`` in parallel into a folder beside ``local`` (the same disk) and move each into place."""
        import tempfile

        from metaflow import S3

        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=local.parent) as tmp:
            keys = [self.storage.path_join(prefix, n) for n in names]
            with S3(s3root=self.ds_root, tmproot=tmp) as s3:
                for name, obj in zip(names, s3.get_many(keys, return_missing=True), strict=True):
                    if not obj.exists:
                        raise ValueError(f"{_where(ref)} is incomplete in the datastore: file '{name}' is missing")
                    (local / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(obj.path, local / name)  # a rename on the same disk: the bytes are written once


def store_cache() -> Path:
    """Where models fetched from an S3 store are kept: ``<cache_dir>/models``, or ``$TANGO_STORE_CACHE`` (``{pid}``
    in it: a folder per process, as every pod of a cluster has its own; benchmarks/speed/round_bytes.py)."""
    from tango_steps.models.cache import cache_dir

    custom = os.environ.get("TANGO_STORE_CACHE")
    return Path(custom.format(pid=os.getpid())) if custom else cache_dir() / "models"


def _same_size(path: Path, size: int) -> bool:
    return path.is_file() and path.stat().st_size == size


def _disk_full_error(final: Path, key: str, manifest: dict[str, Any]) -> OSError:
    """The error a full disk gives when a checkpoint is stored: what, where, how much, what to do
    (docs/method.md §9).
    """
    from tango_steps.atomic import disk_full_error

    where = _where({"key": key, "uri": str(final), "meta": manifest["meta"]})
    return disk_full_error(
        "the datastore's disk", f"storing {where}", manifest["bytes"], final.parent,
        "Free space (e.g. `python -m tango_steps.pipeline.retention`), then `resume`.",
    )  # fmt: skip


def _kill_point(meta: dict[str, Any] | None) -> None:
    """The test-only ``checkpoint_write`` kill point: the files are written, the manifest is not."""
    if os.environ.get("TANGO_KILL_AT"):
        from tango_steps.faults import maybe_kill

        maybe_kill((meta or {}).get("round"), "checkpoint_write")


def _hash_files(root: Path, names: list[str]) -> dict[str, str]:
    """sha256 of several files at once (hashlib releases the GIL: a multi-file checkpoint hashes in
    parallel threads)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda n: file_sha256(root / n), names), strict=True))


def _where(ref: dict[str, Any]) -> str:
    """Where a stored model came from, for error messages: its run, step, round and role (docs/method.md §9)."""
    parts = str(ref.get("key", "")).split("/")
    where = f"run {'/'.join(parts[:2])}, step {parts[2]}" if len(parts) >= 6 else f"key {ref.get('key')}"
    meta = ref.get("meta") or {}
    extra = "".join(f", {k} {meta[k]}" for k in ("round", "role") if k in meta)
    return f"model '{ref.get('uri', '?')}' ({where}{extra})"


def removed_error(ref: dict[str, Any], note: bytes | str) -> ValueError:
    """The error for a checkpoint that the retention command deleted (its ``REMOVED.json`` note)."""
    try:
        info = json.loads(note)
    except ValueError:
        info = {}
    return ValueError(
        f"{_where(ref)} was removed by the retention command "
        f"({info.get('removed_by', 'tango_steps.pipeline.retention')} "
        f"on {info.get('when', '?')}, for {info.get('run', '?')}; rounds kept whole: {info.get('kept_rounds', '?')}). "
        "A round that used it can no longer be resumed or forked from; fork from a kept round instead."
    )


def _verify(path: Path, ref: dict[str, Any], names: list[str] | None = None, manifest: bool = True) -> None:
    """Refuse a copy that lacks its manifest (``manifest``: the store's own copy, whose manifest is written last),
    or any of ``names`` (default: every file) that is missing, of another size or (when the reference has hashes)
    of another sha256 (docs/method.md §9); a checkpoint removed by retention says so. In a cache's copy
    (``manifest`` False) a corrupted file is deleted, so that the next fetch replaces it."""
    from tango_steps import traffic

    if (path / REMOVED).exists():
        raise removed_error(ref, (path / REMOVED).read_text())
    if manifest and not (path / MANIFEST).exists():
        raise ValueError(
            f"{_where(ref)} has no {MANIFEST}: missing or an interrupted save; re-run the step that produced it"
        )
    names = list(ref["files"]) if names is None else names
    for name in names:
        size = ref["files"][name]
        f = path / name
        if not f.is_file():
            raise ValueError(f"{_where(ref)}: file '{name}' is missing")
        if f.stat().st_size != size:
            raise ValueError(
                f"{_where(ref)}: file '{name}' is truncated or damaged ({f.stat().st_size} of {size} bytes)"
            )
    hashes = {n: h for n, h in (ref.get("sha256") or {}).items() if n in names}
    if not hashes:  # a reference written before hashes were recorded: sizes only
        return
    stamp_file = path / VERIFIED
    try:
        stamp = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamp = {}
    now = {**stamp, **{name: [(path / name).stat().st_size, (path / name).stat().st_mtime_ns] for name in hashes}}
    changed = [name for name in hashes if stamp.get(name) != now[name]]
    traffic.add("bytes_hashed", sum(ref["files"][n] for n in changed))
    bad = [name for name, digest in _hash_files(path, changed).items() if digest != hashes[name]]
    if bad:
        for name in bad if not manifest else []:
            (path / name).unlink(missing_ok=True)
        which = ", ".join(f"'{n}'" for n in bad)
        raise ValueError(f"{_where(ref)}: file {which} is corrupted (its sha256 differs from the reference's)")
    if stamp != now:
        tmp = stamp_file.with_name(f".{VERIFIED}.{os.getpid()}")
        try:  # written whole, then renamed: a reader sees the old stamp or the new one
            tmp.write_text(json.dumps(now, sort_keys=True))
            os.replace(tmp, stamp_file)
        except OSError:  # a read-only store: verified all the same, and the next load hashes again
            tmp.unlink(missing_ok=True)


STORE_SCHEME = "tango-store:"  # a model reference naming a stored model (models.loading.resolve_model_ref)


def model_reference(ref: dict[str, Any], part: str = "serving", folder: str = "model") -> str:
    """A model reference (a string a checkpoint can record and any machine resolve) for ``folder`` of the ``part``
    of a stored model: e.g. a LoRA checkpoint's base, or the KL reference, named by the round-0 checkpoint in the
    store rather than by the cache folder of the machine that first fetched it (docs/method.md §9)."""
    if not isinstance(ref, dict) or "key" not in ref or "ds_type" not in ref:
        raise ValueError(f"not a Tango model reference: {ref!r}")
    part_files([], part)  # a known part, or the error naming the known ones
    return STORE_SCHEME + json.dumps({"ref": ref, "part": part, "folder": folder}, sort_keys=True)


def resolve_reference(reference: str) -> Path:
    """The local folder a :func:`model_reference` names on this machine: its part fetched (once) and verified."""
    try:
        spec = json.loads(reference.removeprefix(STORE_SCHEME))
        ref, part, folder = spec["ref"], spec["part"], spec["folder"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a model-store reference: {reference[:200]!r} ({e})") from None
    return load_model_dir(ref, part) / folder


def load_model_dir(ref: dict[str, Any], part: str = "all") -> Path:
    """Local directory of a stored model from its reference alone (docs/method.md §9), e.g. in a notebook."""
    if not isinstance(ref, dict) or "key" not in ref or "ds_type" not in ref:
        raise ValueError(f"not a Tango model reference: {ref!r}")
    return ModelStore.for_ref(ref).load(ref, part)


def task_key(name: str) -> str:
    """Storage key of a model written by the current task: flow/run/step/task/attempt/name (docs/method.md §9)."""
    from metaflow import current

    return "/".join(
        [
            current.flow_name,
            str(current.run_id),
            current.step_name,
            str(current.task_id),
            str(current.retry_count),
            name,
        ]
    )
