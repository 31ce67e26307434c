"""Picking the next token from logits: temperature, then top-k, top-p and min-p filters, then a draw.

Applied in this order, each on the result of the one before:
  1. temperature  (0 means greedy: argmax, and the filters below are skipped)
  2. top-k        keep the k most likely tokens
  3. top-p        keep the most likely tokens until their probability adds up to top_p
  4. min-p        keep tokens whose probability is >= min_p * the most likely token's
Filters set the logits of dropped tokens to -inf; the softmax at the end renormalizes what is left.
Because temperature comes first, it changes which tokens top-p and min-p keep (as in Hugging Face).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Below this, sampling is greedy in all but name, and logits / temperature can overflow float32 (inf - inf =
# NaN probabilities). 0 asks for greedy decoding explicitly.
MIN_TEMPERATURE = 1e-4


@dataclass
class SamplingConfig:
    """How each next token is chosen from the model's logits (see the order above)."""
    # --- sampling ---
    temperature: float = 0.7  # divides the logits: < 1 sharper, > 1 flatter; 0 = greedy (argmax, no filters)
    top_k: int | None = None  # keep only the k most likely tokens (None = off)
    top_p: float | None = None  # nucleus: keep the most likely tokens up to this total probability (None = off)
    min_p: float | None = 0.05  # keep tokens with probability >= min_p * the top token's (None = off)
    seed: int | None = None  # seed of the sampler, for reproducible draws (None = fresh randomness)

    def __post_init__(self):
        def is_number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        t = self.temperature
        if not is_number(t) or t < 0:
            raise ValueError(f"temperature={t!r} must be a number >= 0 (0 = greedy)")
        if 0 < t < MIN_TEMPERATURE:
            raise ValueError(f"temperature={t!r} is too small: it makes NaN probabilities; use 0 for greedy "
                             f"decoding or a value >= {MIN_TEMPERATURE:g}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"top_k={k!r} must be an integer >= 1, or None (off)")
        if self.top_p is not None and (not is_number(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p={self.top_p!r} must be a number in (0, 1], or None (off)")
        if self.min_p is not None and (not is_number(self.min_p) or not 0 <= self.min_p <= 1):
            raise ValueError(f"min_p={self.min_p!r} must be a number in [0, 1], or None (off)")
        s = self.seed
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2 ** 63):
            raise ValueError(f"seed={s!r} must be an integer in 0..2**63-1, or None")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device) -> torch.Generator | None:
        """A generator seeded with `seed` (None: torch's global one)."""
        return None if self.seed is None else torch.Generator(device=device).manual_seed(self.seed)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """temperature > 1 flattens the distribution, < 1 sharpens it. The top logit is moved to 0 first (softmax
    does not change), so dividing by a small temperature cannot overflow: the rest only go towards -inf."""
    return (logits - logits.max(dim=-1, keepdim=True).values) / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits of each row (ties broken by topk), -inf elsewhere."""
    if k >= logits.size(-1):
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(k, dim=-1).indices, True)
    return logits.masked_fill(~keep, -math.inf)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose probability sums to >= p (always the top one)
    (https://arxiv.org/abs/1904.09751)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False  # the top token always stays (a tiny p, 0 in float32, would drop every token)
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, -math.inf)


def min_p_filter(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens with probability >= min_p * max probability (https://arxiv.org/abs/2407.01082)."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, -math.inf)


def filter_logits(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, top-p, min-p (see the order above); float32 logits, -inf for dropped tokens."""
    logits = apply_temperature(logits.float(), sampling.temperature or 1.0)
    if sampling.top_k is not None:
        logits = top_k_filter(logits, sampling.top_k)
    if sampling.top_p is not None:
        logits = top_p_filter(logits, sampling.top_p)
    if sampling.min_p is not None:
        logits = min_p_filter(logits, sampling.min_p)
    return logits


def sample(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token of each row of logits (B, vocab) -> (B,), on the logits' device (no host sync)."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, sampling).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
