"""The GPU path, checked in one script (issue #14): update throughput and memory, sampling speed, one
tiny round on the GPU. Prints one table per part.

    python benchmarks/gpu/gpu_check.py               # on a GPU machine: at most ~8 minutes on one H100/H200
    python benchmarks/gpu/gpu_check.py --smoke       # the same code paths on tiny shapes, on CPU (the tests run it)

Needs only torch and transformers (and this repository): nothing is downloaded. The models are
built from the published Qwen2.5 configurations with random weights and the tiny tokenizer (a
random model costs the same FLOPs as a trained one).

1. **Update**: one RL update (``tango_steps.training.update``: the PPO-clip step of docs/method.md §6, chunked
   log-probs, bf16 autocast over fp32 weights and AdamW) of 16 sequences x 1,024 tokens on the
   Qwen2.5-0.5B and -1.5B shapes, three ways: full fine-tuning, full with gradient checkpointing,
   LoRA. Reported: the optimizer step's tokens/s, TFLOP/s as 6 x parameters x tokens / time (the
   usual estimate; LoRA does less work than that), the whole update's seconds (its reference
   forward for the KL term included) and peak GPU memory, beside what an H100 gave
   (ENVIRONMENT.md: 0.5B 197 TFLOP/s at 27.7 GB; 1.5B 312 TFLOP/s at 57 GB, 14.4 GB with gradient
   checkpointing; from a plain PPO-clip step, without our update's reference forward).
2. **Sampling**: the HF engine (``tango_steps.rollout.HFEngine``), 0.5B shape, 256-token prompts,
   512 new tokens, T = 1, batch 64 and 256 (H100: 808 and 2,989 tok/s).
3. **A tiny round**: the tiny default (its shipped warmed-up models, ``data/tiny``) run through the
   round's stage functions (``tango_steps.round.in_process.InProcessRun``: rollout, judge, reward, update,
   checkpoint save and load) for a verifier round and a generator round, then the held-out
   evaluation; reports where each model ran, per-stage seconds and the round's figures.

4. **The process-group path** (issue #35): one update through torchrun and a process group of ONE process
   (``TANGO_FORCE_PROCESS_GROUP=1``: NCCL on a GPU, gloo on CPU), FSDP2 with bf16 (on a GPU) and gradient
   checkpointing over several micro-batches (gradient accumulation), with every collective checked to take tensors
   on the group's device (``TANGO_STRICT_COLLECTIVES=1``); then the checkpoint round trip: the group's checkpoint
   continued on one process and the one-process checkpoint on the group, each against the same update on one
   process (largest weight difference).
5. **Disk and hash**: writing a file with fsync, and sha256 over it (the model store's verification), in GB/s.

Update rows carry the memory estimate of ``tango_steps/pipeline/layout.py`` beside the measured peak.

The update also runs a fourth way, ``full+liger`` (``update.logprob_backend: liger``: liger-kernel's fused
linear cross-entropy instead of the chunked log-probs; entropy bonus 0, which it requires), when
liger-kernel is installed (it is not a dependency: ``pip install --no-deps liger_kernel-*.whl``
beside a CUDA torch, which brings Triton); otherwise a line says why that row is missing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# Published Qwen2.5 configurations (config.json of Qwen/Qwen2.5-0.5B and -1.5B); "smoke" is a tiny stand-in.
SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True),
}  # fmt: skip
COMMON = dict(max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, hidden_act="silu")
# (TFLOP/s, peak GB) measured on one H100 (ENVIRONMENT.md, "GPU figures")
H100_UPDATE = {("qwen2.5-0.5b", "full"): (197, 27.7), ("qwen2.5-1.5b", "full"): (312, 57.0),
               ("qwen2.5-1.5b", "full+gc"): (None, 14.4)}  # fmt: skip
H100_SAMPLING = {("qwen2.5-0.5b", 64): 808, ("qwen2.5-0.5b", 256): 2989}


def tiny_tokenizer():
    from tango_steps.models.tiny import build_tokenizer, tokenizer_corpus
    from tango_steps.tasks import get_task
    from tango_steps.tasks.templates import get_template

    return build_tokenizer(tokenizer_corpus(get_task("arithmetic"), get_template("compact"), n=300), vocab_size=384)


def build_random_model(shape: str, tok, out: Path) -> tuple[Path, int]:
    """A random-weight model of a published shape saved (fp32, as checkpoints hold it) with the tiny tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from tango_steps.models.tiny import save_pretrained_atomic

    config = Qwen2Config(**SHAPES[shape], **COMMON, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialising 1.5B parameters on the GPU takes seconds, not a minute
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    save_pretrained_atomic(model.cpu(), tok, out)
    del model
    return out, n_params


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def update_row(shape: str, mode: str, model_dir: Path, n_params: int, work: Path, seqs: int, length: int) -> dict:
    """One update of ``seqs`` x ``length`` tokens (1/8 prompt), timed: the whole update, then a second
    optimizer step alone (the first paid one-off costs: optimizer state, kernels)."""
    from tango_steps.training.batch import RLBatch
    from tango_steps.training.checkpoint import init_checkpoint
    from tango_steps.training.settings import UpdateSettings
    from tango_steps.training.update import _frozen_logprobs, _optimizer_steps, _setup_update

    lora = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"} if mode == "lora" else None
    liger = dict(logprob_backend="liger", entropy_coef=0.0) if mode == "full+liger" else {}
    settings = UpdateSettings.of(
        learning_rate=1e-6, micro_batch_size=4, gradient_checkpointing=mode == "full+gc", lora=lora, seed=0, **liger
    )
    ckpt = init_checkpoint(str(model_dir), work / f"{shape}-{mode}-ckpt", settings)
    g = torch.Generator().manual_seed(0)
    prompt, response = length // 8, length - length // 8
    vocab = min(SHAPES[shape]["vocab_size"], 384)  # ids the tiny tokenizer has (any id costs the same)
    batch = RLBatch(
        prompt_ids=[torch.randint(3, vocab, (prompt,), generator=g).tolist() for _ in range(seqs)],
        response_ids=[torch.randint(3, vocab, (response,), generator=g).tolist() for _ in range(seqs)],
        advantages=[[(-1.0) ** i] * response for i in range(seqs)],
    )
    reset_peak()
    t0 = time.perf_counter()
    run = _setup_update(ckpt, settings, None, None)
    old_lp, ref_lp = _frozen_logprobs(run, batch, settings, ckpt)
    _optimizer_steps(run, batch, settings, old_lp, ref_lp, "gpu_check", t0, None)
    sync()
    whole = time.perf_counter() - t0
    reset_peak()
    t1 = time.perf_counter()
    _optimizer_steps(run, batch, settings, old_lp, ref_lp, "gpu_check", t1, None)
    sync()
    step = time.perf_counter() - t1
    tokens = seqs * length
    where = str(next(run.model.parameters()).device)
    from tango_steps.pipeline.layout import ModelShape, update_memory_gib

    spec = SHAPES[shape]
    estimate = (
        update_memory_gib(
            ModelShape(n_params, spec["hidden_size"], spec["num_hidden_layers"], spec["vocab_size"]),
            1,
            "ddp",
            4,
            length,
            kl=False,
            gradient_checkpointing=mode == "full+gc",
            lora=mode == "lora",
            bf16=torch.cuda.is_available(),
        )["total"]
        * 2**30
        / 1e9
    )
    h100 = H100_UPDATE.get((shape, mode), (None, None))
    del run
    reset_peak()
    return {
        "shape": shape, "mode": mode, "params (M)": round(n_params / 1e6), "device": where,
        "tokens": tokens, "step s": round(step, 3), "tok/s": round(tokens / step),
        "TFLOP/s": round(6 * n_params * tokens / step / 1e12, 1), "H100 TFLOP/s": h100[0] or "-",
        "whole update s": round(whole, 2), "peak GB (step)": round(peak_gb(), 1), "estimate GB": round(estimate, 1),
        "H100 peak GB": h100[1] or "-",
    }  # fmt: skip


def sampling_row(shape: str, model_dir: Path, batch: int, prompt_tokens: int, new_tokens: int) -> dict:
    from tango_steps.rollout import SamplingSettings
    from tango_steps.rollout.hf import HFEngine

    engine = HFEngine(str(model_dir), dtype="bfloat16" if torch.cuda.is_available() else "float32",
                      batch_size=batch, max_prompt_tokens=prompt_tokens)  # fmt: skip
    text = "Problem: Evaluate left to right: 12 + 7 * 3 - 4\nSolution:\n"
    prompt = text * (prompt_tokens // max(1, len(engine.tokenizer(text)["input_ids"])) + 1)  # cut to prompt_tokens
    engine.generate([prompt], SamplingSettings(n=1, max_tokens=4))  # warm-up
    engine.model.generation_config.min_new_tokens = new_tokens  # every sequence runs to the limit
    sync()
    t0 = time.perf_counter()
    out = engine.generate([prompt] * batch, SamplingSettings(n=1, temperature=1.0, max_tokens=new_tokens, seed=0))
    sync()
    dt = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for cs in out for c in cs)
    row = {
        "shape": shape, "batch": batch, "device": str(engine.device), "new tokens": tokens, "seconds": round(dt, 1),
        "tok/s": round(tokens / dt), "H100 tok/s": H100_SAMPLING.get((shape, batch), "-"),
    }  # fmt: skip
    del engine
    reset_peak()
    return row


def tiny_round(work: Path, smoke: bool) -> list[dict]:
    """A verifier round and a generator round of the tiny default through the stage functions, then evaluation."""
    from tango_steps.config import load_config
    from tango_steps.pipeline.driver import initial_checkpoints
    from tango_steps.round.in_process import InProcessRun
    from tango_steps.training.checkpoint import read_state

    overrides = {"schedule.verifier_warmup_rounds": 1}  # round 1 updates the verifier, round 2 the generator
    if smoke:  # small enough for a CPU test
        overrides |= {"batch.generator_prompts": 2, "batch.verifier_prompts": 2, "generator_sampling.n": 2,
                      "evaluation.heldout_problems": 4}  # fmt: skip
    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(str(repo / "configs" / "tiny.yaml"), overrides)
    reset_peak()
    run = InProcessRun(cfg, initial_checkpoints(cfg, work / "tiny-init", log=lambda s: None), work / "tiny-work")
    rows = []
    for _ in range(2):
        t0 = time.perf_counter()
        out = run.round()
        sync()
        role = out.plan.slot
        state = read_state(getattr(run, role))
        rows.append({
            "round": out.plan.round_idx, "slot": role, "seconds": round(time.perf_counter() - t0, 1),
            **{f"{k} s": round(v, 1) for k, v in out.seconds.items()},
            "checkpoint updates": state.updates, "rng state saved": (getattr(run, role) / "rng_state.pt").exists(),
            # an optimizer step without signal (every advantage zero) is skipped, not taken (issue #36)
            "skipped steps": int(out.update_metrics.get(f"{role}_update/skipped_steps", 0)),
        })  # fmt: skip
    t0 = time.perf_counter()
    _, res = run.evaluate()
    sync()
    rows.append({
        "round": "eval", "slot": "-", "seconds": round(time.perf_counter() - t0, 1),
        "generator acc": round(res.metrics["eval/generator_accuracy"], 3),
        "verifier bal. acc": round(res.metrics["eval/verifier_balanced_accuracy"], 3),
        "peak GB": round(peak_gb(), 2), "device": "cuda" if torch.cuda.is_available() else "cpu",
    })  # fmt: skip
    return rows


def group_rows(model_dir: Path, work: Path, smoke: bool) -> list[dict]:
    """The update through a process group of one (torchrun; NCCL on a GPU), FSDP2 with gradient checkpointing over
    micro-batches, collectives checked; and the checkpoint round trip between it and one process."""
    import os

    from safetensors.torch import load_file

    from tango_steps.training.batch import RLBatch
    from tango_steps.training.checkpoint import init_checkpoint, master_weights
    from tango_steps.training.distributed import STRICT_COLLECTIVES_ENV
    from tango_steps.training.launch import FORCE_GROUP_ENV
    from tango_steps.training.settings import UpdateSettings
    from tango_steps.training.update import rl_update

    seqs, length = (4, 32) if smoke else (8, 512)
    settings = UpdateSettings.of(learning_rate=1e-4 if smoke else 1e-6, micro_batch_size=2, kl_coef=0.001,
                                 gradient_checkpointing=True, strategy="fsdp", seed=0)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    batch = RLBatch(
        prompt_ids=[torch.randint(3, 384, (length // 4,), generator=g).tolist() for _ in range(seqs)],
        response_ids=[torch.randint(3, 384, (length - length // 4,), generator=g).tolist() for _ in range(seqs)],
        advantages=[[(-1.0) ** i] * (length - length // 4) for i in range(seqs)],
    )
    ckpt0 = init_checkpoint(str(model_dir), work / "group-ckpt0", settings)

    def update(src: Path, out: str, group: bool) -> tuple[float, dict]:
        env = {FORCE_GROUP_ENV: "1" if group else "0", STRICT_COLLECTIVES_ENV: "1"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            reset_peak()
            t0 = time.perf_counter()
            m = rl_update(src, batch, settings, work / out)
            return time.perf_counter() - t0, m
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

    def diff(a: str, b: str) -> float:
        wa = load_file(master_weights(work / a) / "model.safetensors")
        wb = load_file(master_weights(work / b) / "model.safetensors")
        return max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)

    rows = []
    s1, m1 = update(ckpt0, "one", group=False)
    sg, mg = update(ckpt0, "group", group=True)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    rows.append({"run": f"update, group of 1 ({backend}, fsdp, gc, {seqs // 2} micro-batches)", "seconds": round(sg, 1),
                 "one-process s": round(s1, 1), "loss": round(mg["loss"], 5), "one-process loss": round(m1["loss"], 5),
                 "max weight diff": f"{diff('one', 'group'):.2e}"})  # fmt: skip
    update(work / "group", "group>one", group=False)
    update(work / "one", "one>group", group=True)
    update(work / "one", "one>one", group=False)
    rows.append({"run": "round trip: group's checkpoint on one process", "max weight diff":
                 f"{diff('group>one', 'one>one'):.2e}"})  # fmt: skip
    rows.append({"run": "round trip: one process's checkpoint on the group", "max weight diff":
                 f"{diff('one>group', 'one>one'):.2e}"})  # fmt: skip
    return rows


def io_rows(work: Path, smoke: bool) -> list[dict]:
    """Disk write (with fsync) and sha256 throughput on ``work``'s disk, the file deleted after."""
    import os

    from tango_steps.models.store import file_sha256

    size = (64 if smoke else 4096) << 20
    block = os.urandom(8 << 20)
    path = work / "io-check.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    write = time.perf_counter() - t0
    t0 = time.perf_counter()
    file_sha256(path)
    hashed = time.perf_counter() - t0
    path.unlink()
    return [{"what": f"write {size >> 20} MiB + fsync", "GB/s": round(size / write / 1e9, 2)},
            {"what": "sha256 of it (page cache)", "GB/s": round(size / hashed / 1e9, 2)}]  # fmt: skip


def table(title: str, rows: list[dict]) -> None:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    print(f"\n### {title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and batches: the same code paths, on CPU")
    ap.add_argument("--parts", default="update,sampling,round,group,io",
                    help="comma-separated: update, sampling, round, group, io")  # fmt: skip
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # (a progress bar per model load would bury the tables)
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --smoke for the CPU check of the same code paths")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)"
    print(f"gpu_check: torch {torch.__version__}, GPU {gpu}, smoke={args.smoke}", flush=True)
    shapes = ["smoke"] if args.smoke else ["qwen2.5-0.5b", "qwen2.5-1.5b"]
    seqs, length = (2, 64) if args.smoke else (16, 1024)
    t_start = time.perf_counter()
    tok = tiny_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        models = {}
        for shape in shapes if parts & {"update", "sampling", "group"} else []:
            models[shape] = build_random_model(shape, tok, work / shape)
            print(f"built {shape}: {models[shape][1] / 1e6:.0f}M parameters", flush=True)
        if "update" in parts:
            from tango_steps.method.loss import liger_unavailable

            modes = ["full", "full+gc", "lora"]
            why = liger_unavailable(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
            if why is None:
                modes.append("full+liger")
            else:
                print(f"update full+liger: not measured ({why})", flush=True)
            rows = []
            for shape in shapes:
                for mode in modes:
                    rows.append(update_row(shape, mode, *models[shape], work, seqs, length))
                    print(f"update {shape} {mode}: {rows[-1]}", flush=True)
            table(f"Update: {seqs} sequences x {length} tokens, bf16 autocast, micro-batch 4", rows)
        if "sampling" in parts:
            batches, new = ((2, 4), 8) if args.smoke else ((64, 256), 512)
            rows = [sampling_row(shapes[0], models[shapes[0]][0], b, 16 if args.smoke else 256, new) for b in batches]
            table(f"HF engine sampling: {shapes[0]}, T = 1, {new} new tokens", rows)
        if "round" in parts:
            table("The tiny default through the stage functions", tiny_round(work, args.smoke))
        if "group" in parts:
            table("The process-group path and the checkpoint round trip", group_rows(models[shapes[0]][0], work,
                                                                                    args.smoke))  # fmt: skip
        if "io" in parts:
            table("Disk and hash", io_rows(work, args.smoke))
    print(f"\ngpu_check done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
