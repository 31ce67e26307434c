"""Every size and time bench/gpu_check.py uses, for the GPU and for --smoke (the same items with tiny shapes on
the CPU), and the order of the work.

The check runs STEPS in order, each a process of its own. A section's items come in two steps when some of
them matter less than the sections after it: the GPU window is short, so the figures the goals need come
first (train's gpt2_124M pair and llama_1B, decode with and without CUDA graphs, the resume run) and the rest
after them (activation checkpointing, FSDP, the compiled decode step without graphs, FlexAttention).
Each step may use up to `cap_s` of the budget and starts only with `min_s` left; an item starts only when its
`estimate_s` (mostly compile time, guessed for an H100/H200 with 16 CPU cores) still fits.
"""
from __future__ import annotations

from dataclasses import dataclass

SECTIONS = ("env", "tests", "train", "decode", "run", "attention")


@dataclass(frozen=True)
class Step:
    name: str                 # --only takes a step's name or its section's
    section: str
    items: tuple[str, ...]    # the section's items this step runs, in order
    cap_s: float              # the most of the budget this step may use
    min_s: float              # not started with less than this left


STEPS = (
    Step("env", "env", ("machine",), cap_s=30, min_s=5),
    Step("tests", "tests", ("test_cuda",), cap_s=100, min_s=20),
    Step("train", "train", ("gpt2_124M", "llama_1B"), cap_s=160, min_s=40),
    Step("decode", "decode", ("b1_eager", "b1_cuda_graphs", "b64_eager", "b64_cuda_graphs"), cap_s=100, min_s=20),
    Step("run", "run", ("float32", "bfloat16"), cap_s=90, min_s=30),
    Step("train_more", "train", ("llama_1B_ac", "gpt2_124M_fsdp"), cap_s=160, min_s=40),
    Step("decode_more", "decode", ("b1_compiled", "b64_compiled"), cap_s=90, min_s=30),
    Step("attention", "attention", ("causal_sdpa", "docs_sdpa", "docs_flex", "window_sdpa", "window_flex"),
         cap_s=90, min_s=20),
)
STEP_NAMES = tuple(s.name for s in STEPS)


def select_steps(only: str | None) -> list[Step]:
    """The steps `--only` names (section names take all their steps), in the check's order; ValueError for a
    name that is neither."""
    if only is None:
        return list(STEPS)
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in SECTIONS and w not in STEP_NAMES]
    if unknown or not wanted:
        raise ValueError(f"--only={only!r}: {', '.join(map(repr, unknown)) or 'nothing'} is not a section or step; "
                         f"sections: {', '.join(SECTIONS)}; steps: {', '.join(STEP_NAMES)}")
    return [s for s in STEPS if s.name in wanted or s.section in wanted]


# --- sizes ------------------------------------------------------------------------------------------------
_GPT2_PAIR = dict(preset="gpt2_124M", overrides=dict(max_seq_len=1024, micro_batch_size=16),
                  reference=dict(n_layer=12, n_head=12, n_embd=768), warmup=3, rounds=3, block=10, estimate_s=75)
_LLAMA = dict(preset="llama_1B", overrides=dict(max_seq_len=2048, grad_accum_steps=1), max_batch=64, warmup=2,
              steps=6, estimate_s=75)
GPU = dict(
    env=dict(matmul_size=8192, matmul_reps=10, copy_mb=2048, estimate_s=5),
    tests=dict(timeout_s=100, estimate_s=20),
    train=dict(gpt2_124M=_GPT2_PAIR, llama_1B=_LLAMA, llama_1B_ac=dict(_LLAMA, max_batch=128),
               gpt2_124M_fsdp=dict(_GPT2_PAIR, steps=10, estimate_s=60)),
    decode=dict(preset="llama_125M", overrides={}, prompt_len=16, new_tokens=128, batches=dict(b1=1, b64=64),
                estimate_eager_s=10, estimate_compiled_s=45),
    run=dict(model=dict(dim=768, num_layers=12, num_q_heads=12, num_kv_heads=4, max_seq_len=256, vocab_len=2048,
                        mlp_multiple_of=256),
             train=dict(micro_batch_size=16, max_iters=150, eval_interval=50, checkpoint_interval=75,
                        eval_batches=4, warmup_iters=15, lr_max=1e-3, lr_min=1e-4, log_interval=25),
             threads=2, bf16_tolerance=0.02, estimate_s=45),
    attention=dict(batch=8, seq_len=2048, heads=16, kv_heads=8, head_dim=64, window=256, doc_len=256, reps=10,
                   estimate_s=30),
)

_TINY = dict(dim=32, num_layers=2, num_q_heads=2, num_kv_heads=2, vocab_len=256, mlp_multiple_of=1)
_SMOKE_PAIR = dict(preset="gpt2_124M", overrides=dict(_TINY, max_seq_len=32, micro_batch_size=2),
                   reference=dict(n_layer=2, n_head=2, n_embd=32), warmup=2, rounds=2, block=3, estimate_s=2)
_SMOKE_LLAMA = dict(preset="llama_1B", overrides=dict(_TINY, num_q_heads=4, max_seq_len=32, grad_accum_steps=1),
                    max_batch=4, warmup=2, steps=3, estimate_s=2)
SMOKE = dict(
    env=dict(matmul_size=256, matmul_reps=3, copy_mb=16, estimate_s=1),
    tests=dict(timeout_s=60, estimate_s=5),
    train=dict(gpt2_124M=_SMOKE_PAIR, llama_1B=_SMOKE_LLAMA, llama_1B_ac=_SMOKE_LLAMA,
               gpt2_124M_fsdp=dict(_SMOKE_PAIR, steps=3)),
    decode=dict(preset="llama_125M", overrides=dict(_TINY, num_q_heads=4, max_seq_len=64), prompt_len=5,
                new_tokens=8, batches=dict(b1=1, b64=3), estimate_eager_s=1, estimate_compiled_s=2),
    run=dict(model=dict(dim=32, num_layers=2, num_q_heads=4, num_kv_heads=2, max_seq_len=32, vocab_len=512),
             train=dict(micro_batch_size=4, max_iters=40, eval_interval=10, checkpoint_interval=10, eval_batches=2,
                        warmup_iters=5, lr_max=3e-3, lr_min=3e-4, log_interval=10),
             threads=1, bf16_tolerance=0.05, estimate_s=10),
    attention=dict(batch=2, seq_len=64, heads=4, kv_heads=2, head_dim=16, window=8, doc_len=16, reps=3,
                   estimate_s=1),
)


def sizes(smoke: bool, section: str) -> dict:
    return (SMOKE if smoke else GPU)[section]
