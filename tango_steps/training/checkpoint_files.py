"""Checkpoint files written in parallel, one share per writing process, and hashed as they are written
(docs/method.md §9; issue #35, defect 5).

A multi-process update used to gather the whole model and optimizer state onto rank 0, which wrote it alone
(91 GB for a 7B model) while the other processes waited. Now every process on rank 0's machine (the
"writers": they share its disk) writes a share of the parameters, whole tensors split by bytes
(:func:`writer_shares`):

    model/model-00001-of-00008.safetensors ...   + model.safetensors.index.json   (the Hugging Face sharded layout:
    master/model-00001-of-00008.safetensors ...  + model.safetensors.index.json    HF and vLLM load it as it is)
    optimizer/optimizer-00001-of-00008.pt ...                                      (AdamW state by parameter NAME)

A checkpoint written by one process keeps one file of each (``model.safetensors``, ``optimizer.pt`` by position).
Either is read by any number of processes (:func:`read_optimizer_state`), so any P continues from any P.

Every weight and optimizer file is hashed while it is written (:class:`HashingFile`: the sha256 of the bytes as
they go to the disk); the writer records the digests with the files' sizes and times in ``WRITTEN.json``
(:mod:`tango_steps.models.digests`), which the model store takes instead of reading the files again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tango_steps.models.digests import HashingFile

INDEX = "model.safetensors.index.json"
OPTIMIZER_DIR = "optimizer"

# safetensors' names for torch dtypes (the format's spec)
_ST_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], cast: torch.dtype | None = None) -> str:
    """Write ``tensors`` (floating ones cast to ``cast`` when given) as one safetensors file, streaming each tensor's
    bytes (no copy of the whole file in memory), and return the file's sha256. The layout is the format's: an
    8-byte little-endian header length, the JSON header (padded with spaces to 8 bytes), then every tensor's bytes
    in header order."""

    def dtype(t: torch.Tensor) -> torch.dtype:
        return cast if cast is not None and t.is_floating_point() else t.dtype

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in tensors.items():
        if dtype(t) not in _ST_DTYPES:
            raise ValueError(f"write_safetensors: tensor '{name}' has dtype {dtype(t)}, which safetensors cannot hold")
        size = t.numel() * dtype(t).itemsize
        header[name] = {"dtype": _ST_DTYPES[dtype(t)], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with HashingFile(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors.values():
            if t.numel():  # the raw bytes (little-endian, as on every machine torch runs on); bf16 has no numpy type
                t = t.detach().to("cpu", dtype(t)).contiguous()
                f.write(t.view(-1).view(torch.uint8).numpy().data)
        return f.hexdigest()


def save_hashed(obj: Any, path: str | Path) -> str:
    """``torch.save(obj, path)``, returning the sha256 of the bytes written."""
    with HashingFile(path) as f:
        torch.save(obj, f)
        return f.hexdigest()


def writer_shares(sizes: dict[str, int], writers: int) -> list[list[str]]:
    """Split parameter names into ``writers`` shares of about equal bytes (the largest first, each to the lightest
    share so far), each share in the names' original order. The same on every process (deterministic)."""
    if writers < 1:
        raise ValueError(f"writer_shares: writers must be >= 1, got {writers}")
    load = [0] * writers
    owner: dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        k = min(range(writers), key=lambda i: (load[i], i))
        owner[name] = k
        load[k] += sizes[name]
    return [[n for n in sizes if owner[n] == k] for k in range(writers)]


def shard_file(stem: str, ext: str, k: int, writers: int) -> str:
    """The file of share ``k`` of ``writers``: ``model.safetensors`` alone, else HF's ``model-00001-of-00002...``."""
    return f"{stem}.{ext}" if writers == 1 else f"{stem}-{k + 1:05d}-of-{writers:05d}.{ext}"


def write_index(folder: Path, shares: list[list[str]], sizes: dict[str, int]) -> None:
    """``model.safetensors.index.json`` of a sharded folder (what HF's ``from_pretrained`` and vLLM read)."""
    files = [shard_file("model", "safetensors", k, len(shares)) for k in range(len(shares))]
    weight_map = {n: files[k] for k, names in enumerate(shares) for n in names}
    index = {"metadata": {"total_size": sum(sizes[n] for n in weight_map)}, "weight_map": weight_map}
    (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))


def optimizer_files(ckpt: str | Path) -> list[Path]:
    """The optimizer state files of a checkpoint: ``optimizer.pt`` (one process) or ``optimizer/*.pt`` (written in
    shares); empty before the first update."""
    ckpt = Path(ckpt)
    if (ckpt / "optimizer.pt").exists():
        return [ckpt / "optimizer.pt"]
    return sorted((ckpt / OPTIMIZER_DIR).glob("optimizer*.pt")) if (ckpt / OPTIMIZER_DIR).is_dir() else []


def read_optimizer_state(ckpt: str | Path, names: list[str]) -> dict | None:
    """A checkpoint's AdamW state keyed by parameter name (``names``: the trainable parameters in optimizer order),
    whichever way it was written, its tensors memory-mapped from the files (one page-cache copy per machine
    however many processes read it; issue #35, defect 5). None before the first update.

    Raises ValueError naming the checkpoint when a share is missing or holds a parameter the model lacks.
    """
    files = optimizer_files(ckpt)
    if not files:
        return None
    parts = [torch.load(f, map_location="cpu", mmap=True, weights_only=True) for f in files]
    if files[0].name == "optimizer.pt":  # by position: the one-process format
        by_pos = parts[0]
        if any(not 0 <= i < len(names) for i in by_pos["state"]):
            raise ValueError(f"checkpoint '{ckpt}': optimizer.pt holds more parameters than the model has")
        return optimizer_state_by_name(by_pos, names)
    expected = {p.get("writers") for p in parts}
    if expected != {len(files)}:
        raise ValueError(
            f"checkpoint '{ckpt}': {OPTIMIZER_DIR}/ holds {len(files)} files, written as {sorted(expected, key=str)}"
        )
    state = {k: v for p in parts for k, v in p["state"].items()}
    unknown = sorted(set(state) - set(names))
    if unknown:
        raise ValueError(f"checkpoint '{ckpt}': the optimizer state names parameters the model lacks: {unknown[:3]}")
    return {"state": state, "param_groups": parts[0]["param_groups"]}


def optimizer_state_by_name(state: dict, names: list[str]) -> dict:
    """A one-process ``optimizer.state_dict()`` (parameters by position) keyed by parameter name."""
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def optimizer_state_by_position(state: dict, names: list[str]) -> dict:
    """The inverse of :func:`optimizer_state_by_name`: what ``optimizer.load_state_dict`` takes (and ``optimizer.pt``
    holds)."""
    pos = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": [pos[n] for n in g["params"]]} for g in state["param_groups"]]
    return {"state": {pos[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def local_writers(world: int) -> int:
    """How many processes write a checkpoint: those on rank 0's machine (torchrun numbers a machine's processes
    consecutively, so ranks ``0 .. LOCAL_WORLD_SIZE-1``); they share the disk the checkpoint is written to."""
    return max(1, min(world, int(os.environ.get("LOCAL_WORLD_SIZE", world))))


STAGING = ".{name}.tmp-"  # the prefix of a checkpoint's folder while it is written (as atomic_directory's)


def start_staging(out_dir: str | Path, needed: int) -> Path:
    """The folder beside ``out_dir`` that several writers fill and :func:`publish_staging` renames into place.

    Raises FileExistsError when ``out_dir`` exists, and the disk-full error (naming the disk, the bytes needed and
    free) when the disk has less than ``needed`` bytes free, before anything is written.
    """
    from tango_steps.atomic import disk_full_error, free_bytes

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"checkpoint directory '{out}' already exists; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    if free_bytes(out.parent) < needed:
        what = f"writing the checkpoint '{out}'"
        raise disk_full_error("the disk", what, needed, out.parent, "Free space, then `resume`.")
    return Path(tempfile.mkdtemp(prefix=STAGING.format(name=out.name), dir=out.parent))


def publish_staging(tmp: Path, out_dir: str | Path) -> None:
    """Rename a complete staging folder to ``out_dir`` (never over an existing one)."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"checkpoint directory '{out}' already exists; refusing to overwrite it")
    tmp.rename(out)


@contextlib.contextmanager
def removed_on_error(tmp: Path) -> Iterator[None]:
    """Remove the staging folder ``tmp`` when the block raises."""
    try:
        yield
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_staging(out_dir: str | Path) -> list[Path]:
    """Remove what a failed multi-process write left beside ``out_dir`` (its staging folders); the removed ones."""
    out = Path(out_dir)
    left = sorted(out.parent.glob(STAGING.format(name=out.name) + "*")) if out.parent.is_dir() else []
    for d in left:
        shutil.rmtree(d, ignore_errors=True)
    return left
