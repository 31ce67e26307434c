"""Text generation from a trained model: batched, KV-cached, with temperature / top-k / top-p / min-p sampling.

    python inference.py llama3_atto "Once upon a time" "The dog" --temp=0.7 --min_p=0.05 --max_len=100

    from inference import generate
    texts = generate(model, tokenizer, ["Once upon a time", "The dog"], max_len=50, temp=0)

All prompts run through the model together as one batch. Prompts of different lengths are left-padded; each
row gets its own positions (its bos is position 0) and the padding is masked out of attention, so a prompt
gives the same tokens batched as alone. With the cache, the prompts are prefilled once and each step feeds
one token per row; without it (use_cache=False) every step re-runs the whole sequence, which is slow and
exists to check the cache.
"""
from __future__ import annotations

import difflib
import math
import sys

import torch

# ---------------------------------------------------------------------------------------------------
# Sampling. Applied in this order, each on the result of the one before:
#   1. temperature  (temp == 0 means greedy: argmax, and the filters below are skipped)
#   2. top-k        keep the k most likely tokens
#   3. top-p        keep the most likely tokens until their probability adds up to top_p
#   4. min-p        keep tokens whose probability is >= min_p * the most likely token's
# Filters set the logits of dropped tokens to -inf; the softmax at the end renormalizes what is left.
# Because temperature comes first, it changes which tokens top-p and min-p keep (as in Hugging Face).


def apply_temperature(logits: torch.Tensor, temp: float) -> torch.Tensor:
    """temp > 1 flattens the distribution, < 1 sharpens it."""
    return logits / temp


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits of each row (ties broken by topk), -inf elsewhere."""
    if k >= logits.size(-1):
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, -math.inf)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability sums to >= p (always the top one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
    drop_sorted = mass_before >= p
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, -math.inf)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens with probability >= min_p * max probability (https://arxiv.org/abs/2407.01082)."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, -math.inf)


def filter_logits(logits: torch.Tensor, temp: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  min_p: float | None = None) -> torch.Tensor:
    """Temperature, then top-k, top-p, min-p (see the order above); float32 logits, -inf for dropped tokens."""
    logits = apply_temperature(logits.float(), temp)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    if min_p is not None:
        logits = min_p_filter(logits, min_p)
    return logits


def sample(logits: torch.Tensor, temp: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           min_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token of each row of logits (B, vocab) -> (B,). temp == 0 is greedy."""
    if temp == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temp, top_k, top_p, min_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_sampling(temp: float, top_k: int | None, top_p: float | None, min_p: float | None) -> None:
    """ValueError naming the first bad sampling setting."""
    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not is_number(temp) or temp < 0:
        raise ValueError(f"temp={temp!r} must be a number >= 0 (0 = greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be an integer >= 1, or None (off)")
    if top_p is not None and (not is_number(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} must be a number in (0, 1], or None (off)")
    if min_p is not None and (not is_number(min_p) or not 0 <= min_p <= 1):
        raise ValueError(f"min_p={min_p!r} must be a number in [0, 1], or None (off)")


# ---------------------------------------------------------------------------------------------------
# Generation


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def _cache_dtype(model) -> torch.dtype:
    """k/v come out of the Linear layers in the autocast dtype when autocast is on, else the weights' dtype."""
    device_type = model.lm_head.weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return model.lm_head.weight.dtype


def _shrink_cache(model, cache, keep: torch.Tensor, room: int):
    """A new cache holding only rows `keep`, without the leading columns that are padding in all of them,
    and with `room` free slots (capped at the context). Dropping finished rows saves work; dropping padding
    frees slots, so a short prompt batched with a long one can still use the whole context, as it would alone."""
    valid = cache.key_valid[keep, :cache.length]
    shift = int((~valid.any(dim=0)).sum())  # padding is on the left, so these are the first columns
    n = cache.length - shift
    new = model.new_cache(len(keep), max_len=min(n + room, model.cfg.max_seq_len), dtype=cache.k.dtype)
    new.k[:, :, :, :n] = cache.k[:, keep, :, shift:cache.length]
    new.v[:, :, :, :n] = cache.v[:, keep, :, shift:cache.length]
    new.key_valid[:, :n] = valid[:, shift:]
    new.length = n
    return new


@torch.inference_mode()
def generate_ids(model, rows: list[list[int]], max_len: int = 100, temp: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None, use_cache: bool = True,
                 seed: int | None = None, eos_id: int | None = None, pad_id: int = 0) -> list[list[int]]:
    """New token ids for each row of prompt ids (bos already included), all rows in one batch.

    A row stops at eos_id (not included in its output; None = never stop early), after max_len new tokens,
    or when it fills the context (max_seq_len). Sampling settings: see `sample`.
    """
    check_sampling(temp, top_k, top_p, min_p)
    _positive_int("max_len", max_len)
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
    device = model.lm_head.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    # each row's budget: max_len new tokens, or what its context has left
    budget = [min(max_len, ctx - len(r)) for r in rows]
    out: list[list[int]] = [[] for _ in rows]
    was_training = model.training
    model.eval()  # dropout off
    try:
        if use_cache:
            _decode_with_cache(model, rows, budget, out, temp, top_k, top_p, min_p, generator, eos_id, pad_id)
        else:
            _decode_without_cache(model, rows, budget, out, temp, top_k, top_p, min_p, generator, eos_id, pad_id)
    finally:
        model.train(was_training)
    return out


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


def _decode_with_cache(model, rows, budget, out, temp, top_k, top_p, min_p, generator, eos_id, pad_id):
    device = model.lm_head.weight.device
    ids, valid, positions = _left_pad(rows, pad_id, device)
    B, P = ids.shape
    cache = model.new_cache(B, max_len=min(P + max(budget), model.cfg.max_seq_len), dtype=_cache_dtype(model))
    cache.key_valid[:, :P] = valid  # padding is never attended
    logits, _ = model(ids, positions=positions, cache=cache, last_only=True)
    active = list(range(B))                                      # rows of the batch, as indices into `rows`
    next_pos = torch.tensor([len(r) for r in rows], device=device)  # position of each row's next token
    while True:
        tokens = sample(logits[:, -1], temp, top_k, top_p, min_p, generator)
        still = _record(tokens, active, out, budget, eos_id)
        if not still:
            return
        if len(still) < len(active):  # some rows finished: stop computing them
            keep = torch.tensor(still, device=device)
            active = [active[j] for j in still]
            tokens, next_pos = tokens[keep], next_pos[keep]
            cache = _shrink_cache(model, cache, keep, room=max(budget[b] - len(out[b]) for b in active))
        logits, _ = model(tokens[:, None], positions=next_pos[:, None], cache=cache)
        next_pos = next_pos + 1


def _decode_without_cache(model, rows, budget, out, temp, top_k, top_p, min_p, generator, eos_id, pad_id):
    device = model.lm_head.weight.device
    active = list(range(len(rows)))
    while True:
        ids, valid, positions = _left_pad([rows[b] + out[b] for b in active], pad_id, device)
        # doc_ids keep real tokens (1) and padding (0) from attending to each other: the explicit padding mask.
        # Without padding, leave it out so attention takes the plain causal kernel.
        doc_ids = None if bool(valid.all()) else valid.long()
        logits, _ = model(ids, positions=positions, doc_ids=doc_ids, last_only=True)
        tokens = sample(logits[:, -1], temp, top_k, top_p, min_p, generator)
        still = _record(tokens, active, out, budget, eos_id)
        if not still:
            return
        active = [active[j] for j in still]


def generate(model, tokenizer, prompts: str | list[str], max_len: int = 100, temp: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             use_cache: bool = True, seed: int | None = None, num_samples: int = 1) -> list[str]:
    """The new text for each prompt (num_samples in a row for each: [p1 s1, p1 s2, ..., p2 s1, ...]).

    Each prompt gets bos in front, as the training documents have. max_len counts new tokens; a row ends at
    eos, after max_len tokens or at the end of the context. temp=0 is greedy; see `sample` for the filters.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    _positive_int("num_samples", num_samples)
    rows = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts for _ in range(num_samples)]
    new_ids = generate_ids(model, rows, max_len, temp, top_k, top_p, min_p, use_cache, seed,
                           eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    return [tokenizer.decode(ids) for ids in new_ids]


# ---------------------------------------------------------------------------------------------------
# Command line

USAGE = """usage: python inference.py MODEL "prompt" ["prompt" ...] [flags]
  MODEL            a folder name in trained/, or a path to a run folder
  --temp=0.7       temperature; 0 = greedy
  --min_p=0.05     keep tokens with probability >= min_p * the top token's (None = off)
  --top_k=None     keep the k most likely tokens
  --top_p=None     keep the most likely tokens up to this total probability
  --max_len=100    new tokens per prompt (fewer at eos or the end of the context)
  --num_samples=1  continuations per prompt
  --seed=None      make sampling reproducible
  --show_tokens    also print each continuation split into tokens
  --device=auto    auto | cpu | cuda | mps
  --dtype=auto     auto | float32 | bfloat16
  Put -- before prompts that start with --."""
DEFAULTS = dict(temp=0.7, min_p=0.05, top_k=None, top_p=None, max_len=100, show_tokens=False, seed=None,
                device="auto", dtype="auto", num_samples=1)


class UsageError(ValueError):
    pass


_INTS, _FLOATS = ("top_k", "seed", "max_len", "num_samples"), ("temp", "min_p", "top_p")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _parse_value(key: str, text: str):
    """Flag text -> value of the flag's kind; 'None' turns an optional setting off."""
    low = text.strip().lower()
    if key in ("min_p", "top_k", "top_p", "seed") and low in ("none", "null"):
        return None
    if key == "show_tokens":
        if low not in _TRUE + _FALSE:
            raise UsageError(f"--show_tokens={text!r} is not true or false")
        return low in _TRUE
    try:
        if key in _INTS:
            return int(text)
        if key in _FLOATS:
            return float(text)
    except ValueError:
        raise UsageError(f"--{key}={text!r} is not {'an integer' if key in _INTS else 'a number'}") from None
    return text  # device, dtype: checked against their choices in parse_args


def parse_args(argv: list[str]) -> tuple[str, list[str], dict]:
    """(model, prompts, options) from the command line; UsageError for anything wrong."""
    opts, positional, prompts_only = dict(DEFAULTS), [], False
    for arg in argv:
        if prompts_only or not arg.startswith("--"):
            positional.append(arg)
        elif arg == "--":
            prompts_only = True
        else:
            key, eq, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if key not in DEFAULTS:
                close = difflib.get_close_matches(key, DEFAULTS, n=1)
                hint = f" (did you mean --{close[0]}?)" if close else ""
                raise UsageError(f"unknown flag --{key}{hint}; flags: " + ", ".join(f"--{k}" for k in DEFAULTS))
            if not eq and key != "show_tokens":
                raise UsageError(f"--{key} needs a value, e.g. --{key}={DEFAULTS[key]}")
            opts[key] = _parse_value(key, value) if eq else True
    if not positional:
        raise UsageError("give a model name or path, and at least one prompt")
    model, prompts = positional[0], positional[1:]
    if not prompts:
        raise UsageError(f'no prompt given: add one or more, e.g. python inference.py {model} "Once upon a time"')
    if any(not p.strip() for p in prompts):
        raise UsageError("empty prompt: every prompt needs some text")
    check_sampling(opts["temp"], opts["top_k"], opts["top_p"], opts["min_p"])
    _positive_int("--max_len", opts["max_len"])
    _positive_int("--num_samples", opts["num_samples"])
    if opts["seed"] is not None and opts["seed"] < 0:
        raise UsageError(f"--seed={opts['seed']} must be >= 0")
    for key, choices in (("device", ("auto", "cpu", "cuda", "mps")), ("dtype", ("auto", "float32", "bfloat16"))):
        if opts[key] not in choices:
            raise UsageError(f"--{key}={opts[key]!r} is not one of {', '.join(choices)}")
    return model, prompts, opts


def run(argv: list[str]) -> None:
    import tools
    from training.device import autocast, pick_device, pick_dtype

    model_name, prompts, opts = parse_args(argv)
    device = pick_device(opts["device"])
    dtype = pick_dtype(opts["dtype"], device)
    model, tokenizer, model_cfg, _ = tools.load_model(model_name, device)
    ctx = model_cfg.max_seq_len
    for i, p in enumerate(prompts, 1):
        n = len(tokenizer.encode(p)) + 1  # + bos
        if n >= ctx:
            raise ValueError(f"prompt {i} is {n} tokens with bos, but {model_name}'s context is {ctx}: "
                             f"shorten it to at most {ctx - 2} tokens")
    with autocast(device, dtype):
        texts = generate(model, tokenizer, prompts, max_len=opts["max_len"], temp=opts["temp"],
                         top_k=opts["top_k"], top_p=opts["top_p"], min_p=opts["min_p"], seed=opts["seed"],
                         num_samples=opts["num_samples"])
    k = opts["num_samples"]
    for i, prompt in enumerate(prompts):
        print(f"=== prompt {i + 1}/{len(prompts)}: {prompt!r}")
        for s in range(k):
            text = texts[i * k + s]
            print(f"--- continuation{f' (sample {s + 1}/{k})' if k > 1 else ''}:")
            print(prompt + text)
            if opts["show_tokens"]:
                print(f"--- tokens of the continuation:\n{tokenizer.display(text)}")
        print()


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success; 2 with a one-line message on stderr for bad input (never a traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    try:
        run(argv)
    except UsageError as e:
        print(f"inference.py: error: {e} (python inference.py --help shows the usage)", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as e:  # unknown model, bad weights, prompt too long, device
        print(f"inference.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
