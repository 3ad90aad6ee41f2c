"""Policy checkpoints (docs/method.md §6, §9): the first one, loading one to train, writing the next atomically,
and the model an engine serves from one.

A policy checkpoint is a directory:

    model/              standard safetensors + config + tokenizer: HF and vLLM load it directly, in the
                        serving dtype (``UpdateSettings.serving_dtype``): all that sampling, judging and
                        evaluation fetch (with LoRA: the MERGED fp32 weights, so inference never needs peft)
    master/             full fine-tuning served in bf16 only: the fp32 master weights training continues from
    adapter/            LoRA only: the peft adapter that training continues from
    optimizer.pt        AdamW state (absent before the first update); written by several processes in
                        parallel: ``optimizer/``, one file per writer, and the weights in HF's sharded
                        layout (``model.safetensors.index.json``; :mod:`tango_steps.training.checkpoint_files`)
    WRITTEN.json        the sha256 of each weight and optimizer file, taken as it was written (not stored)
    rng_state.pt        torch / python RNG states at save time
    trainer_state.json  update counter, reference model, LoRA base, provenance (``extra``), settings
                        used (the verifier's reweighting EMAs live in the round state, not here)
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tango_steps import traffic
from tango_steps.atomic import atomic_directory, disk_full_error, free_bytes, is_disk_full
from tango_steps.models.digests import record_written
from tango_steps.training import checkpoint_files as files
from tango_steps.training.settings import UpdateSettings, resolved_serving_dtype

STATE_FILE = "trainer_state.json"
MASTER = "master"  # fp32 weights of a checkpoint whose model/ is served in another dtype


@dataclass
class TrainerState:
    """Training state saved beside the weights (docs/method.md §9: resume must restore everything).

    Attributes:
        updates: optimizer updates done so far.
        reference_model: the frozen reference for the KL term (full fine-tuning), as a model reference
            (``models.loading.resolve_model_ref``: a hub name, a builtin or a local path).
        lora_base: the base model the LoRA adapter sits on (LoRA only), a model reference as above.
            Both are resolved where they are used, so a checkpoint names no directory of the cache of the
            process that wrote it (:func:`init_checkpoint`); checkpoints that name an absolute path
            still load where that path exists.
        extra: provenance carried with the checkpoint, e.g. ``{"source": <the model it started from>}``.
    """

    updates: int = 0
    reference_model: str | None = None
    lora_base: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_state(ckpt: str | Path) -> TrainerState:
    """The trainer state of a policy checkpoint (docs/method.md §9 resume)."""
    data = json.loads((Path(ckpt) / STATE_FILE).read_text())
    return TrainerState(**{k: data[k] for k in ("updates", "reference_model", "lora_base", "extra")})


def rng_state(cuda: Any = torch.cuda) -> dict:
    """This process's torch, python (and CUDA) RNG states: saved with a checkpoint (docs/method.md §9).

    CUDA: the state of this process's OWN device only (``cuda.current_device()``). Every visible
    device's (``get_rng_state_all``) would tie the checkpoint to as many visible GPUs: torchrun does
    not narrow ``CUDA_VISIBLE_DEVICES``, so a rank on an 8-GPU node saved 8 states, and a resume where
    fewer are visible failed restoring them (issue #35, defect 6). ``cuda``: ``torch.cuda``, or a
    stand-in with its RNG functions (tests, which have no GPU).
    """
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if cuda.is_available():
        state["cuda"] = cuda.get_rng_state(cuda.current_device())
    return state


def set_rng_state(state: dict, cuda: Any = torch.cuda) -> None:
    """Restore the RNG states :func:`rng_state` saved (docs/method.md §9 resume), the CUDA one onto this
    process's own device, whatever number of devices the writer saw. ``cuda`` as in :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and cuda.is_available():
        saved, device = state["cuda"], cuda.current_device()
        if isinstance(saved, list | tuple):
            # A checkpoint written before issue #35 holds get_rng_state_all(): one state per device its
            # writer saw. This device's entry is what set_rng_state_all restored here before; where the
            # writer saw fewer devices than this index, its first (its rank 0's device) is taken instead.
            if not saved:
                raise ValueError("rng_state.pt: 'cuda' holds an empty list of device states")
            saved = saved[device] if device < len(saved) else saved[0]
        cuda.set_rng_state(saved, device)


def write_checkpoint(
    out_dir: Path,
    model,
    tokenizer,
    optimizer_state: dict | None,
    state: TrainerState,
    settings: UpdateSettings,
    model_state: dict | None = None,
) -> Path:
    """Write a checkpoint to a temporary sibling directory, then rename it into place (never overwrites).

    ``model_state``: the full weights when ``model`` holds only a shard of them (FSDP). A disk too
    small for it is refused before anything is written, and a disk that fills up while it is written
    (another process) is named as such; either way nothing is left behind.
    """
    if settings.section.lora is None:
        weights = weight_tensors(model, model_state)
    elif optimizer_state is None:  # LoRA's first checkpoint (init_checkpoint: no optimizer yet) holds the base
        weights = causal_lm(model).state_dict()
    else:  # the adapter only
        weights = {n: p for n, p in model.named_parameters() if p.requires_grad}
    needed = checkpoint_bytes(_tensor_bytes(weights), _tensor_bytes(optimizer_state), settings)

    def full() -> OSError:
        what = f"writing the checkpoint '{out_dir}'"
        return disk_full_error("the disk", what, needed, Path(out_dir).parent, "Free space, then `resume`.")

    if free_bytes(Path(out_dir).parent) < needed:  # (of the nearest existing folder: nothing is made yet)
        raise full()
    traffic.add("bytes_written", needed)
    with atomic_directory(out_dir) as tmp:
        try:
            if settings.section.lora is None:  # the one writer of a checkpoint in one share
                hashes = write_share(tmp, weights, optimizer_state, 0, 1, settings)
                sizes = {n: t.numel() for n, t in weights.items()}
                finish_checkpoint(tmp, model, tokenizer, state, settings, [list(weights)], sizes, hashes)
            else:
                _write_lora_checkpoint_files(tmp, model, tokenizer, optimizer_state, state, settings)
        except Exception as e:
            if is_disk_full(e, where=tmp):
                raise full() from e
            raise
    return out_dir


def checkpoint_bytes(weight_bytes: int, optimizer_bytes: int, settings: UpdateSettings) -> int:
    """Bytes a checkpoint of weights of ``weight_bytes`` (fp32) and an optimizer state of ``optimizer_bytes`` writes:
    with a serving copy in bf16 beside the fp32 master weights when the recipe serves in bf16 (full fine-tuning)."""
    needed = weight_bytes + optimizer_bytes
    if settings.section.lora is None and resolved_serving_dtype(settings.serving_dtype) != "float32":
        needed += weight_bytes // 2  # model/ in bf16 beside master/ in fp32
    return needed


def write_checkpoint_share(tmp: Path, weights: dict, optimizer_state, k: int, writers: int, settings) -> dict[str, str]:
    """:func:`write_share` with a full disk named as such (the disk of ``tmp``, how much this share needed)."""
    try:
        return write_share(tmp, weights, optimizer_state, k, writers, settings)
    except Exception as e:
        if is_disk_full(e, where=tmp):
            needed = checkpoint_bytes(_tensor_bytes(weights), _tensor_bytes(optimizer_state), settings)
            what = f"writing share {k + 1} of {writers} of a checkpoint into '{tmp}'"
            raise disk_full_error("the disk", what, needed, tmp, "Free space, then `resume`.") from e
        raise


def tied_duplicates(lm) -> set[str]:
    """Names of the second and later names of a tied weight (a causal LM's ``lm_head.weight`` tied to its input
    embedding): saved once, under its first name, as ``save_pretrained`` does; the model ties it again at load."""
    first: dict[int, str] = {}
    dup = set()
    for name, p in lm.named_parameters(remove_duplicate=False):
        if id(p) in first:
            dup.add(name)
        else:
            first[id(p)] = name
    return dup


def weight_tensors(model, model_state: dict | None = None) -> dict[str, torch.Tensor]:
    """The weights a full checkpoint stores: ``model_state`` or the model's state dict, a tied weight once."""
    lm = causal_lm(model)
    sd = model_state if model_state is not None else lm.state_dict()
    dup = tied_duplicates(lm)
    return {k: v for k, v in sd.items() if k not in dup}


def write_share(
    tmp: Path, weights: dict, optimizer_state: dict | None, k: int, writers: int, settings: UpdateSettings
) -> dict[str, str]:
    """Write share ``k`` of ``writers`` of a full checkpoint into ``tmp``: its ``weights`` (full tensors) in fp32
    (``master/`` when served in another dtype, else ``model/``) and in the serving dtype (``model/``), and its
    ``optimizer_state`` (one writer: by position, ``optimizer.pt``; several: this share's parameters by name in
    ``optimizer/``). Returns the sha256 of each file written (relative name), taken as it was written."""
    serving = resolved_serving_dtype(settings.serving_dtype)
    f = files.shard_file("model", "safetensors", k, writers)
    hashes = {}
    folders = [(MASTER, None), ("model", getattr(torch, serving))] if serving != "float32" else [("model", None)]
    for folder, cast in folders:
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        hashes[f"{folder}/{f}"] = files.write_safetensors(tmp / folder / f, weights, cast)
    if optimizer_state is not None and writers == 1:
        if any(not isinstance(i, int) for i in optimizer_state["state"]):  # what load_state_dict takes, not names
            raise ValueError("optimizer.pt holds the state by parameter position; got it by name")
        hashes["optimizer.pt"] = files.save_hashed(optimizer_state, tmp / "optimizer.pt")
    elif optimizer_state is not None:
        (tmp / files.OPTIMIZER_DIR).mkdir(exist_ok=True)
        name = f"{files.OPTIMIZER_DIR}/{files.shard_file('optimizer', 'pt', k, writers)}"
        hashes[name] = files.save_hashed({**optimizer_state, "writers": writers}, tmp / name)
    return hashes


def finish_checkpoint(
    tmp: Path, model, tokenizer, state: TrainerState, settings: UpdateSettings,
    share_names: list[list[str]], numels: dict[str, int], hashes: dict[str, str],
) -> None:  # fmt: skip
    """The small files of a full checkpoint whose weights :func:`write_share` wrote in ``share_names`` (the names of
    each share; ``numels``: each weight's element count): every weight folder's config (and index when sharded),
    the tokenizer, the RNG and trainer state, and ``WRITTEN.json`` with ``hashes`` (every share's digests)."""
    serving = resolved_serving_dtype(settings.serving_dtype)
    lm = causal_lm(model)
    folders = [(MASTER, "float32"), ("model", serving)] if serving != "float32" else [("model", "float32")]
    for folder, dtype in folders:
        lm.config.save_pretrained(tmp / folder)
        if getattr(lm, "generation_config", None) is not None and lm.can_generate():
            lm.generation_config.save_pretrained(tmp / folder)
        config = json.loads((tmp / folder / "config.json").read_text())
        config["dtype"] = dtype  # what the weights are: an engine under dtype auto serves them as they are
        (tmp / folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        if len(share_names) > 1:
            size = getattr(torch, dtype).itemsize
            files.write_index(tmp / folder, share_names, {n: c * size for n, c in numels.items()})
    _write_state_files(tmp, tokenizer, state, settings)
    record_written(tmp, hashes)


def _write_state_files(tmp: Path, tokenizer, state: TrainerState, settings: UpdateSettings) -> None:
    """The tokenizer (beside the served weights), the RNG state and the trainer state of a checkpoint."""
    tokenizer.save_pretrained(tmp / "model")
    torch.save(rng_state(), tmp / "rng_state.pt")
    payload = {**asdict(state), "settings": settings.to_dict()}
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the distinct tensors in a nested dict / list (tied weights once): what will be written."""
    seen: dict[int, int] = {}

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            seen[x.untyped_storage().data_ptr() if x.device.type != "meta" else id(x)] = x.numel() * x.element_size()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list | tuple):
            for v in x:
                walk(v)

    walk(obj)
    return sum(seen.values())


def _write_lora_checkpoint_files(tmp: Path, model, tokenizer, optimizer_state, state, settings) -> None:
    """The files of a LoRA checkpoint (``write_checkpoint``), into the temporary directory ``tmp``."""
    # the first checkpoint (no optimizer yet) holds the base once (the adapter is still zero); an update's, even
    # one whose optimizer steps were all skipped (state.updates still 0), only the adapter
    if optimizer_state is None:
        model.save_pretrained(tmp / "adapter")
        model.merge_and_unload(safe_merge=True).save_pretrained(tmp / "model", safe_serialization=True)
    else:  # later ones only the adapter: small I/O per update; engines merge it at load (servable_model)
        model.save_pretrained(tmp / "adapter")
        causal_lm(model).config.save_pretrained(tmp / "model")
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    _write_state_files(tmp, tokenizer, state, settings)


def resolved_base(ckpt: str | Path, ref: str | None, field: str) -> str:
    """The local directory of the model reference ``ref`` that checkpoint ``ckpt`` records as ``field``
    (``lora_base`` or ``reference_model``), resolved on this machine (docs/method.md §7, §9).

    Raises ValueError naming the checkpoint, the field and the reference when it names none or it does
    not resolve here (a path of another machine, a hub model not downloaded without network).
    """
    from tango_steps.models.loading import resolve_model_ref

    if ref is None:
        raise ValueError(f"checkpoint '{ckpt}' names no {field} in its {STATE_FILE}")
    try:
        return resolve_model_ref(ref)
    except ValueError as e:
        raise ValueError(f"checkpoint '{ckpt}': its {field} '{ref}' is not a model here: {e}") from None


def servable_model(ckpt: str | Path, log=None, lora_base: str | None = None) -> Path:
    """The model directory an engine loads for a policy checkpoint (docs/method.md §3, §6).

    A full checkpoint's ``model/``. A LoRA checkpoint after its first update holds only the adapter
    (and the tokenizer and config in ``model/``); its servable model is the base with the adapter
    merged, built once per adapter (keyed by the adapter's bytes and the base's local path) under
    ``<cache_dir>/merged/`` and reused by every later rollout, judge and evaluation on this machine.
    The base is the checkpoint's ``lora_base`` reference resolved here, or ``lora_base`` when given
    (a model reference or local directory: e.g. a base its caller fetched from a model store).
    """
    import hashlib

    from tango_steps.atomic import exclusive_lock
    from tango_steps.models.loading import cache_dir, load_model, load_tokenizer
    from tango_steps.models.tiny import save_pretrained_atomic

    ckpt = Path(ckpt)
    model_dir = ckpt / "model"
    if any(model_dir.glob("*.safetensors")) or not (ckpt / "adapter").exists():
        return model_dir
    base = resolved_base(ckpt, lora_base if lora_base is not None else read_state(ckpt).lora_base, "lora_base")
    h = hashlib.sha256(str(Path(base).resolve()).encode())
    for f in sorted((ckpt / "adapter").glob("*")):
        h.update(f.name.encode() + f.read_bytes())
    out = cache_dir() / "merged" / h.hexdigest()[:20]
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f"{out.name}.lock", f"waiting for another process to merge {ckpt}", log or print):
        if not (out / "config.json").exists():
            from peft import PeftModel

            merged = PeftModel.from_pretrained(load_model(base, "float32"), str(ckpt / "adapter")).merge_and_unload()
            save_pretrained_atomic(merged, load_tokenizer(str(model_dir)), out, extra={"adapter_of": str(ckpt)})
    return out


def init_checkpoint(model_ref: str, out_dir: str | Path, settings: UpdateSettings, extra: dict | None = None) -> Path:
    """Make the first policy checkpoint from a model (docs/method.md §6: it is also the frozen reference).

    With LoRA the adapter is created (seeded) on top of the model, which becomes ``lora_base``. Both
    ``reference_model`` and ``lora_base`` record ``model_ref`` itself (``recorded_model_ref``: a hub
    name or builtin as given, a local path made absolute), not the directory it resolves to in this
    process's caches: a fresh machine resolves it again (issue #35, defect 9).
    """
    from tango_steps.models.loading import load_model, load_tokenizer, recorded_model_ref, resolve_model_ref

    path = resolve_model_ref(model_ref)
    ref = recorded_model_ref(model_ref)
    tok = load_tokenizer(path)
    model = load_model(path, "float32")
    state = TrainerState(updates=0, reference_model=ref, extra=dict(extra or {}))
    if settings.section.lora is not None:
        model = add_lora(model, settings)
        state.lora_base = ref
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        random.seed(settings.seed)
        return write_checkpoint(Path(out_dir), model, tok, None, state, settings)


def add_lora(model, settings: UpdateSettings):
    """``model`` with a fresh LoRA adapter of ``settings.section.lora``, initialised under ``settings.seed``."""
    from peft import LoraConfig, get_peft_model

    lora = settings.section.lora
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules)
        return get_peft_model(model, cfg)


def load_policy(
    ckpt: str | Path,
    settings: UpdateSettings,
    device: str | torch.device = "cpu",
    lora_base: str | None = None,
    with_optimizer: bool = True,
):
    """Load model (with adapter), tokenizer, optimizer and state from a policy checkpoint (docs/method.md §6).

    ``lora_base`` overrides the base model reference recorded in the checkpoint (e.g. after moving it);
    either is resolved on this machine (:func:`resolved_base`). ``with_optimizer`` False: the optimizer
    is None (FSDP builds it over the sharded parameters).

    The optimizer state (``optimizer.pt``, or the ``optimizer/`` files of several writers) is memory-mapped
    (:func:`tango_steps.training.checkpoint_files.read_optimizer_state`), not read whole: the moments stay in the page
    cache, one copy per machine however many processes load it.
    """
    from tango_steps.models.loading import load_model, load_tokenizer

    ckpt = Path(ckpt)
    if not (ckpt / STATE_FILE).exists():
        raise ValueError(f"'{ckpt}' is not a policy checkpoint (no {STATE_FILE})")
    state = read_state(ckpt)
    tok = load_tokenizer(str(ckpt / "model"))
    if lora_base is not None:
        state.lora_base = lora_base
    if settings.section.lora is not None:
        if state.lora_base is None:
            raise ValueError(f"checkpoint '{ckpt}' was made without LoRA but the settings ask for LoRA")
        from peft import PeftModel

        base = load_model(resolved_base(ckpt, state.lora_base, "lora_base"), "float32")
        model = PeftModel.from_pretrained(base, str(ckpt / "adapter"), is_trainable=True)
    else:
        if state.lora_base is not None:
            raise ValueError(f"checkpoint '{ckpt}' holds a LoRA adapter but the settings ask for full fine-tuning")
        model = load_model(str(master_weights(ckpt)), "float32")
    model.to(device)
    optimizer = None
    if with_optimizer:
        optimizer = adamw(model, settings)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        saved = files.read_optimizer_state(ckpt, names)
        if saved is not None:
            optimizer.load_state_dict(files.optimizer_state_by_position(saved, names))
            apply_optimizer_settings(optimizer, settings)
    if (ckpt / "rng_state.pt").exists():
        set_rng_state(torch.load(ckpt / "rng_state.pt", weights_only=False))
    return model, tok, optimizer, state


def master_weights(ckpt: str | Path) -> Path:
    """The folder of a full checkpoint's fp32 weights, what training continues from: ``master/`` when ``model/``
    is served in another dtype, else ``model/``."""
    ckpt = Path(ckpt)
    return ckpt / MASTER if (ckpt / MASTER / "config.json").exists() else ckpt / "model"


def adamw(model, settings: UpdateSettings) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, in ``model.parameters()`` order (optimizer.pt's positions)."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr, wd = settings.section.learning_rate, settings.section.weight_decay
    return torch.optim.AdamW(params, lr=lr, betas=settings.betas, eps=settings.adam_eps, weight_decay=wd)


def apply_optimizer_settings(optimizer, settings: UpdateSettings) -> None:
    """Settings win over the hyper-parameters saved with a loaded optimizer state."""
    for g in optimizer.param_groups:
        g["lr"], g["betas"], g["eps"], g["weight_decay"] = (
            settings.section.learning_rate,
            settings.betas,
            settings.adam_eps,
            settings.section.weight_decay,
        )


def causal_lm(model):
    """The underlying *ForCausalLM of a (possibly peft-wrapped) model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
