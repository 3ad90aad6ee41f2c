"""Policy checkpoints (docs/method.md §6, §9): the first one, loading one to train, writing the next atomically,
and the model an engine serves from one.

A policy checkpoint is a directory:

    model/              standard safetensors + config + tokenizer: HF and vLLM load it directly, in the
                        serving dtype (``UpdateSettings.serving_dtype``): all that sampling, judging and
                        evaluation fetch (with LoRA: the MERGED fp32 weights, so inference never needs peft)
    master/             full fine-tuning served in bf16 only: the fp32 master weights training continues from
    adapter/            LoRA only: the peft adapter that training continues from
    optimizer.pt        AdamW state (absent before the first update)
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
    if settings.section.lora is None or state.updates == 0:
        weights = model_state if model_state is not None else causal_lm(model).state_dict()
    else:  # the adapter only
        weights = {n: p for n, p in model.named_parameters() if p.requires_grad}
    needed = _tensor_bytes(weights) + _tensor_bytes(optimizer_state)
    if settings.section.lora is None and resolved_serving_dtype(settings.serving_dtype) != "float32":
        needed += _tensor_bytes(weights) // 2  # model/ in bf16 beside master/ in fp32

    def full() -> OSError:
        what = f"writing the checkpoint '{out_dir}'"
        return disk_full_error("the disk", what, needed, Path(out_dir).parent, "Free space, then `resume`.")

    if free_bytes(Path(out_dir).parent) < needed:  # (of the nearest existing folder: nothing is made yet)
        raise full()
    traffic.add("bytes_written", needed)
    with atomic_directory(out_dir) as tmp:
        try:
            _write_checkpoint_files(tmp, model, tokenizer, optimizer_state, state, settings, model_state)
        except Exception as e:
            if is_disk_full(e, where=tmp):
                raise full() from e
            raise
    return out_dir


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


def _write_checkpoint_files(tmp: Path, model, tokenizer, optimizer_state, state, settings, model_state) -> None:
    """The files of a checkpoint (``write_checkpoint``), into the temporary directory ``tmp``."""
    serving = resolved_serving_dtype(settings.serving_dtype)
    if settings.section.lora is None and serving != "float32":
        # engines fetch model/ in the serving dtype only (half the bytes in bf16); the update fetches master/
        full = model_state if model_state is not None else causal_lm(model).state_dict()
        model.save_pretrained(tmp / MASTER, safe_serialization=True, state_dict=full)
        dt = getattr(torch, serving)
        cast = {k: v.to(dt) if v.is_floating_point() else v for k, v in full.items()}
        model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=cast)
        config = json.loads((tmp / "model" / "config.json").read_text())
        config["dtype"] = serving  # what the weights are: an engine under dtype auto serves them as they are
        (tmp / "model" / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    elif settings.section.lora is None:
        model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=model_state)
    elif state.updates == 0:  # the first checkpoint holds the base (the adapter is still zero) once
        model.save_pretrained(tmp / "adapter")
        model.merge_and_unload(safe_merge=True).save_pretrained(tmp / "model", safe_serialization=True)
    else:  # later ones only the adapter: small I/O per update; engines merge it at load (servable_model)
        model.save_pretrained(tmp / "adapter")
        causal_lm(model).config.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng_state.pt")
    payload = {**asdict(state), "settings": settings.to_dict()}
    (tmp / STATE_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))


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

    ``optimizer.pt`` is memory-mapped (:func:`load_optimizer_file`), not read whole: the moments stay
    in the page cache, one copy per machine however many processes load it.
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
        if (ckpt / "optimizer.pt").exists():
            optimizer.load_state_dict(load_optimizer_file(ckpt / "optimizer.pt"))
            apply_optimizer_settings(optimizer, settings)
    if (ckpt / "rng_state.pt").exists():
        set_rng_state(torch.load(ckpt / "rng_state.pt", weights_only=False))
    return model, tok, optimizer, state


def load_optimizer_file(path: str | Path) -> dict:
    """An ``optimizer.pt``'s state dict with its tensors memory-mapped from the file (on the CPU).

    Read whole, every process of an update held its own copy in host memory (8 x 61 GB for a 7B
    model on one node; issue #35, defect 5). Mapped, the processes share the page cache's one copy and
    read only the pages they use; ``Optimizer.load_state_dict`` then moves each moment to its
    parameter's device, and keeps a CPU tensor of the parameter's dtype as it is (still file-backed).
    """
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


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
