"""A decode step with fixed shapes, so torch.compile compiles it once for a whole generation.

The growing KV cache hands attention one more key every step, and finished rows are dropped: shapes change
every step, which is right for eager PyTorch but makes a compiler recompile. Here every step runs the model's
own forward (so an edit to Model.forward reaches generation too), with a cache that writes each key and value
at a slot given as a tensor (KVCache.start_static_writes) and attends over all its slots with a mask hiding
the unfilled ones. Nothing in the step depends on a Python number that changes, so one
compiled graph serves every step: on CPU the small per-layer ops fuse into a few C++ kernels; on CUDA
mode="reduce-overhead" is asked to replay the step as a CUDA graph (written to the PyTorch documentation,
not run here: no GPU). Finished rows keep computing (their tokens are
dropped) and eos is checked on the host only every EOS_CHECK_EVERY steps, so the loop has no host sync.
In float32 the tokens equal the eager path's (tests/test_inference.py); under bfloat16 autocast inductor
keeps fused intermediates in float32, so greedy text can part from the eager path's after some tokens.

Compiling costs seconds, far more than a short generation takes, so `compile="auto"` decides like renting
skis: it runs eagerly until the decode steps it has run eagerly for one shape (batch, cache slots) add up
to COMPILE_AFTER_STEPS, the measured break-even (bench/README.md), and compiles from then on. A short
generation is never slowed down, and a process that generates a lot loses at most about the compile time.
A shape already compiled in this process is always used.
"""
from __future__ import annotations

import torch

from machinery.generation.sampling import SamplingConfig, sample

COMPILE_MODES = ("auto", "on", "off")
COMPILE_AFTER_STEPS = 20_000  # eager decode steps of one shape after which "auto" compiles (the break-even)
SLOT_ROUNDING = 64  # fixed-slot caches round their slots up to this, so nearby prompt lengths share a compile
EOS_CHECK_EVERY = 16  # steps between host checks for "every row has reached eos"

# How generation treats every ModelConfig field (tests/test_every_option.py fails on a field missing here;
# docs/structure.md says how to classify one). Decoding runs Model.forward, so most need nothing here.
FORWARD = "forward"  # Model.forward applies it, in the prefill and in every decode step alike
CACHE = "cache"  # shapes the KV cache (Model.new_cache) or the mask it builds for fixed-slot steps
LIMIT = "limit"  # bounds what generation feeds the model: prompts, positions, the context
OFF = "off"  # off while generating: generate_ids puts the model in eval mode
FIELDS = {
    "dim": FORWARD, "num_layers": CACHE, "num_q_heads": FORWARD, "num_kv_heads": CACHE, "head_dim": CACHE,
    "max_seq_len": LIMIT,  # each row's budget; a full row keeps its last position (decode_step)
    "tokenizer": LIMIT,  # text <-> ids: inference.py loads it by this name
    "vocab_len": LIMIT,  # prompt ids are checked against it
    "pos_enc_type": FORWARD, "theta": FORWARD,  # each row's own positions (left padding) go into the forward
    "mlp_hidden_mult": FORWARD, "mlp_nonlinearity": FORWARD, "mlp_gated": FORWARD, "mlp_multiple_of": FORWARD,
    "norm_type": FORWARD, "norm_affine": FORWARD, "norm_bias": FORWARD, "norm_eps": FORWARD,
    "post_sublayer_norm": FORWARD, "scale_embeddings": FORWARD, "linear_bias": FORWARD, "tie_embeddings": FORWARD,
    "logit_softcap": FORWARD, "qk_norm": FORWARD,
    "sliding_window": CACHE,  # KVCache.static_attention_mask hides keys outside the window
    "dropout_embed": OFF, "dropout_attn": OFF, "dropout_resid": OFF, "init_std": OFF,
    "parametrization": FORWARD, "mup_base_dim": FORWARD, "mup_base_head_dim": FORWARD,
}

_eager_steps: dict[tuple, int] = {}  # (batch, slots) -> decode steps run eagerly under "auto" in this process
_compiled_shapes: set[tuple] = set()  # (batch, slots) already compiled in this process


def decode_step(model, tokens: torch.Tensor, positions: torch.Tensor, cache, greedy: bool) -> torch.Tensor:
    """One new token per row through the model's own forward: tokens and positions (B, 1), over a cache with
    fixed-slot writes. Moves the cache's slot and `positions` (in place, stopping at the last position of the
    context) on by one. -> the greedy next tokens (B,) if greedy, else the logits (B, vocab)."""
    logits, _ = model(tokens, positions=positions, cache=cache, last_only=True)
    # a row past its own budget (its context is full) keeps computing at its last position; it is cut later
    positions.add_(1).clamp_(max=model.cfg.max_seq_len - 1)
    logits = logits[:, -1]
    return logits.argmax(dim=-1) if greedy else logits


_compiled_step = None


def compiled_decode_step():
    """decode_step under torch.compile, made once per process (it recompiles per new shape and model class)."""
    global _compiled_step
    if _compiled_step is None:
        if torch.cuda.is_available():  # replay the whole step as one CUDA graph
            _compiled_step = torch.compile(decode_step, dynamic=False, mode="reduce-overhead")
        else:  # C++ instead of Python calling the kernels: per-step overhead is what a small model pays for
            _compiled_step = torch.compile(decode_step, dynamic=False, options={"cpp_wrapper": True})
    return _compiled_step


def fixed_slots(prompt_len: int, steps: int) -> int:
    """Cache slots for the fixed-slot step: the prompt and every step, rounded up to SLOT_ROUNDING."""
    return -(-(prompt_len + steps) // SLOT_ROUNDING) * SLOT_ROUNDING


def should_compile(mode: str, batch: int, slots: int, steps: int, device: torch.device) -> bool:
    """Whether to run the compiled fixed-slot step for a generation of `steps` decode steps: always for "on",
    never for "off" or on MPS; for "auto", once this shape has been compiled or has run COMPILE_AFTER_STEPS
    steps eagerly (counting this generation's as run eagerly when it is not compiled)."""
    if mode == "on":
        return True
    if mode == "off" or device.type not in ("cpu", "cuda"):
        return False
    shape = (batch, slots)
    if shape in _compiled_shapes or _eager_steps.get(shape, 0) >= COMPILE_AFTER_STEPS:
        return True
    _eager_steps[shape] = _eager_steps.get(shape, 0) + steps
    return False


def decode_fixed_slots(model, cache, tokens: torch.Tensor, next_pos: torch.Tensor, budget: list[int],
                       sampling: SamplingConfig, generator, eos_id: int | None) -> list[list[int]]:
    """Continue from the prefilled `cache` and the first sampled `tokens` (B,) at positions next_pos (B,)
    with the compiled step, to each row's budget of new tokens; cut each row at its first eos_id.
    -> the new ids of each row."""
    step = compiled_decode_step()
    B, steps = len(budget), max(budget)
    _compiled_shapes.add((B, cache.max_positions))
    out = torch.empty(B, steps, dtype=torch.long, device=tokens.device)
    out[:, 0] = tokens
    positions = next_pos[:, None].clone()
    done = tokens == eos_id if eos_id is not None else None
    cache.start_static_writes()
    cuda_graph = tokens.device.type == "cuda"
    if cuda_graph:  # tensors the graph writes in place keep their addresses between replays (a new cache
        # per generation means one re-recording per generation, not a recompile). Untested: no GPU here.
        for t in [*cache.tensors(), positions]:
            torch._dynamo.mark_static_address(t)
    n = 1
    while n < steps:
        if done is not None and n % EOS_CHECK_EVERY == 0 and bool(done.all()):
            break
        if cuda_graph:  # each replay may overwrite the last one's outputs: a new step begins
            torch.compiler.cudagraph_mark_step_begin()
        result = step(model, tokens[:, None], positions, cache, sampling.greedy)
        if cuda_graph:
            result = result.clone()
        tokens = result if sampling.greedy else sample(result, sampling, generator)
        out[:, n] = tokens
        if done is not None:
            done |= tokens == eos_id
        n += 1
    cache.stop_static_writes()
    rows = []
    for b, row in enumerate(out[:, :n].tolist()):
        row = row[:budget[b]]
        rows.append(row[:row.index(eos_id)] if eos_id in row else row)
    return rows
