"""Batched generation: left-padded prompts, one prefill, then one token per row per step from the KV cache.

All prompts run through the model together as one batch. Prompts of different lengths are left-padded; each
row gets its own positions (its bos is position 0) and the padding is masked out of attention, so a prompt
gives the same tokens batched as alone. With the cache, the prompts are prefilled once and each step feeds
one token per row; without it (use_cache=False) every step re-runs the whole sequence, which is slow and
exists to check the cache. A process that generates a lot switches to a compiled fixed-shape decode step
(machinery/generation/decode_step.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from machinery.generation.decode_step import COMPILE_MODES, decode_fixed_slots, fixed_slots, should_compile
from machinery.generation.sampling import SamplingConfig, sample


MAX_SAMPLES = 1024  # continuations per prompt, all decoded in one batch


@dataclass
class GenerationConfig:
    """How much to generate, and how."""
    # --- generation ---
    max_new_tokens: int = 100  # new tokens per prompt; fewer where a row reaches eos or the model's context
    num_samples: int = 1  # continuations per prompt
    use_cache: bool = True  # KV cache; False re-runs the whole sequence every step (slow: a reference)
    compile: str = "auto"  # torch.compile the decode step: on | off | auto (once a shape has decoded ~a compile's time)

    def __post_init__(self):
        for name in ("max_new_tokens", "num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        if self.num_samples > MAX_SAMPLES:  # each sample is a row of one batch: memory grows with it
            raise ValueError(f"num_samples={self.num_samples} is more than {MAX_SAMPLES} continuations per prompt: "
                             f"ask for at most {MAX_SAMPLES} (run again for more)")
        if not isinstance(self.use_cache, bool):
            raise ValueError(f"use_cache={self.use_cache!r} must be True or False")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile={self.compile!r} is not one of {', '.join(COMPILE_MODES)}")


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (B, T) left-padded to the longest row, the non-pad mask, and per-row positions
    (each row's first real token is position 0; padding gets 0 too, it is never attended)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r):] = torch.tensor(r, dtype=torch.long)
    pad = torch.tensor([T - len(r) for r in rows])
    valid = torch.arange(T)[None, :] >= pad[:, None]
    positions = (torch.arange(T)[None, :] - pad[:, None]).clamp(min=0)
    return ids.to(device), valid.to(device), positions.to(device)


def cache_dtype(model) -> torch.dtype:
    """k/v come out of the Linear layers in the autocast dtype when autocast is on, else the weights' dtype."""
    device_type = model.lm_head.weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return model.lm_head.weight.dtype


def check_prompts(model, rows: list[list[int]]) -> None:
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token (its bos)")
    vocab = model.cfg.vocab_len
    if any(not 0 <= t < vocab for r in rows for t in r):
        raise ValueError(f"prompt token ids must be in 0..{vocab - 1} (the model's vocab_len is {vocab})")
    ctx = model.cfg.max_seq_len
    too_long = [len(r) for r in rows if len(r) >= ctx]
    if too_long:
        raise ValueError(f"a prompt is {too_long[0]} tokens (bos included) but the model's context is {ctx}: "
                         f"prompts may be at most {ctx - 1} tokens to leave room for one new token")


@torch.inference_mode()
def generate_ids(model, rows: list[list[int]], sampling: SamplingConfig | None = None,
                 options: GenerationConfig | None = None, eos_id: int | None = None,
                 pad_id: int = 0) -> list[list[int]]:
    """New token ids for each row of prompt ids (bos already included), all rows in one batch.

    A row stops at eos_id (not included in its output; None = never stop early), after
    options.max_new_tokens new tokens, or when it fills the context (max_seq_len).
    """
    sampling = sampling or SamplingConfig()
    options = options or GenerationConfig()
    check_prompts(model, rows)
    generator = sampling.generator(model.lm_head.weight.device)
    ctx = model.cfg.max_seq_len
    budget = [min(options.max_new_tokens, ctx - len(r)) for r in rows]  # new tokens each row may make
    was_training = model.training
    model.eval()  # dropout off
    try:
        if not options.use_cache:
            return _decode_without_cache(model, rows, budget, sampling, generator, eos_id, pad_id)
        return _decode_with_cache(model, rows, budget, sampling, options, generator, eos_id, pad_id)
    finally:
        model.train(was_training)


def _record(tokens: torch.Tensor, active: list[int], out, budget, eos_id) -> list[int]:
    """Append each active row's new token; return the positions (in `active`) of rows still going."""
    still = []
    for j, (b, t) in enumerate(zip(active, tokens.tolist())):
        if t == eos_id:
            continue
        out[b].append(t)
        if len(out[b]) < budget[b]:
            still.append(j)
    return still


def _decode_with_cache(model, rows, budget, sampling, options, generator, eos_id, pad_id):
    device = model.lm_head.weight.device
    ids, valid, positions = left_pad(rows, pad_id, device)
    B, P = ids.shape
    slots = fixed_slots(P, max(budget))  # a slot for every step of the longest row
    compiled = should_compile(options.compile, B, slots, max(budget), device)
    if not compiled:  # the growing path drops padding as rows finish: it never needs more than the context
        slots = min(P + max(budget), model.cfg.max_seq_len)
    cache = model.new_cache(B, max_positions=slots, dtype=cache_dtype(model))
    cache.mark_padding(valid)  # padding is never attended
    logits, _ = model(ids, positions=positions, cache=cache, last_only=True)
    tokens = sample(logits[:, -1], sampling, generator)
    next_pos = torch.tensor([len(r) for r in rows], device=device)  # position of each row's next token
    if compiled:
        return decode_fixed_slots(model, cache, tokens, next_pos, budget, sampling, generator, eos_id)
    out: list[list[int]] = [[] for _ in rows]
    active = list(range(B))  # rows of the batch, as indices into `rows`
    while True:
        still = _record(tokens, active, out, budget, eos_id)
        if not still:
            return out
        if len(still) < len(active):  # some rows finished: stop computing them
            keep = torch.tensor(still, device=device)
            active = [active[j] for j in still]
            tokens, next_pos = tokens[keep], next_pos[keep]
            room = max(budget[b] - len(out[b]) for b in active)
            cache.keep_rows(keep, max_positions=min(cache.length + room, model.cfg.max_seq_len))
        logits, _ = model(tokens[:, None], positions=next_pos[:, None], cache=cache)
        next_pos = next_pos + 1
        tokens = sample(logits[:, -1], sampling, generator)


def _decode_without_cache(model, rows, budget, sampling, generator, eos_id, pad_id):
    device = model.lm_head.weight.device
    out: list[list[int]] = [[] for _ in rows]
    active = list(range(len(rows)))
    while True:
        ids, valid, positions = left_pad([rows[b] + out[b] for b in active], pad_id, device)
        # doc_ids keep real tokens (1) and padding (0) from attending to each other: the explicit padding mask.
        # Without padding, leave it out so attention takes the plain causal kernel.
        doc_ids = None if bool(valid.all()) else valid.long()
        logits, _ = model(ids, positions=positions, doc_ids=doc_ids, last_only=True)
        tokens = sample(logits[:, -1], sampling, generator)
        still = _record(tokens, active, out, budget, eos_id)
        if not still:
            return out
        active = [active[j] for j in still]


def generate(model, tokenizer, prompts: str | list[str], sampling: SamplingConfig | None = None,
             options: GenerationConfig | None = None) -> list[str]:
    """The new text for each prompt (options.num_samples in a row for each: [p1 s1, p1 s2, ..., p2 s1, ...]).

    Each prompt gets bos in front, as the training documents have. A row ends at eos, after
    options.max_new_tokens tokens or at the end of the context.
    """
    options = options or GenerationConfig()
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    rows = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts for _ in range(options.num_samples)]
    new_ids = generate_ids(model, rows, sampling, options, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    return [tokenizer.decode(ids) for ids in new_ids]
