"""Teacher-forced evaluation of a model on token sequences: bits per byte and top-k accuracy.

Loss per token depends on the tokenizer (a byte model predicts ~4x more, easier tokens than a BPE one), so
runs are put on one scale with bits per byte: the bits a model spends on a text divided by its UTF-8 bytes
(as in nanochat's evaluation).
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

IGNORE = -100  # target id of padding: cross_entropy's default ignore_index


def _device_of(model) -> torch.device:
    for t in [*model.parameters(), *model.buffers()]:
        return t.device
    return torch.device("cpu")


def windows(sequences, seq_len: int | None, batch_size: int):
    """(inputs, targets) batches from id sequences. Each sequence is cut into windows of at most seq_len
    predictions with stride seq_len (inputs ids[s:s+L], targets ids[s+1:s+L+1]), so every token after
    the first is predicted exactly once; a window's first tokens see only the context inside it. Short
    windows are right-padded: the padding's targets are IGNORE and, the model being causal, the padding
    cannot change the real positions' logits."""
    cut = []
    for ids in sequences:
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        n = len(ids) - 1
        stride = seq_len or max(n, 1)
        cut += [ids[s:s + stride + 1] for s in range(0, n, stride)]
    for i in range(0, len(cut), batch_size):
        chunk = cut[i:i + batch_size]
        width = max(len(w) for w in chunk) - 1
        inputs = torch.zeros(len(chunk), width, dtype=torch.long)
        targets = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        for row, w in enumerate(chunk):
            inputs[row, :len(w) - 1] = w[:-1]
            targets[row, :len(w) - 1] = w[1:]
        yield inputs, targets


def context_len(model, seq_len: int | None) -> int | None:
    """seq_len, checked against the model's context; default the model's max_seq_len."""
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", None)
    if seq_len is None:
        return max_len
    if max_len is not None and seq_len > max_len:
        raise ValueError(f"seq_len={seq_len} exceeds the model's max_seq_len={max_len}")
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    return seq_len


@torch.inference_mode()
def score(model, batches, k_max: int) -> tuple[float, int, list[int]]:
    """One forward per batch, in eval mode (dropout off; the model's mode is restored after).
    Returns (summed cross-entropy in nats, predicted tokens, [tokens whose true id is in the top k
    for k = 1..k_max])."""
    if k_max < 1:
        raise ValueError(f"k_max={k_max} must be >= 1")
    was_training = model.training
    model.eval()
    device = _device_of(model)
    nll, count, correct = 0.0, 0, torch.zeros(k_max, dtype=torch.long)
    try:
        for inputs, targets in batches:
            logits, _ = model(inputs.to(device))
            targets = targets.to(device).flatten()
            valid = targets != IGNORE
            logits, targets = logits.flatten(0, 1)[valid].float(), targets[valid]
            nll += F.cross_entropy(logits, targets, reduction="sum").item()
            k = min(k_max, logits.size(-1))
            guesses = logits.topk(k, dim=-1).indices                       # (N, k), most likely first
            in_top = (guesses == targets[:, None]).cumsum(-1).clamp_(max=1)  # [i, j]: true id in the top j+1
            correct[:k] += in_top.sum(0).cpu()
            correct[k:] += len(targets)  # k beyond the vocabulary: every token is in the "top k"
            count += len(targets)
    finally:
        model.train(was_training)
    return nll, count, correct.tolist()


def _sequences_from(token_batches_or_ids):
    """A (T,) tensor or list of ints is one sequence; a (B, T) tensor is B sequences; otherwise an
    iterable of any of these."""
    x = token_batches_or_ids
    if isinstance(x, torch.Tensor):
        return [x] if x.dim() == 1 else list(x.reshape(-1, x.size(-1)))
    x = list(x)
    if x and all(isinstance(v, numbers.Integral) for v in x):  # numpy ints too
        return [x]
    return [seq for item in x for seq in _sequences_from(item)]


def topk_accuracy(model, token_batches_or_ids, k_max: int = 5, seq_len: int | None = None,
                  batch_size: int = 8) -> list[float]:
    """Teacher-forced next-token accuracy: for k = 1..k_max, the fraction of predicted positions whose
    true next token is among the model's k most likely. Sequences longer than the model's context are
    evaluated in windows (see windows())."""
    seqs = _sequences_from(token_batches_or_ids)
    _, count, correct = score(model, windows(seqs, context_len(model, seq_len), batch_size), k_max)
    if count == 0:
        raise ValueError("no tokens to predict: every sequence is shorter than 2 tokens")
    return [c / count for c in correct]


def text_sequences(tokenizer, texts: list[str]) -> list[list[int]]:
    """[bos] + tokens + [eos] per text."""
    encoded = tokenizer.encode(list(texts)) if texts else []
    return [[tokenizer.bos_id, *ids, tokenizer.eos_id] for ids in encoded]


def utf8_bytes(texts) -> int:
    return sum(len(t.encode("utf-8")) for t in texts)


def bits_per_byte(model, tokenizer, texts: list[str], seq_len: int | None = None, batch_size: int = 8) -> float:
    """Cross-entropy in bits summed over every predicted token, divided by the UTF-8 bytes of the texts.

    Each text is evaluated as [bos] + tokens + [eos]: bos is context only (never predicted, no cost);
    every text token and the final eos are predicted and their bits count. The eos covers no bytes, so
    the denominator is exactly the texts' UTF-8 bytes. Every tokenizer pays for one eos per text, which
    keeps byte and BPE models comparable. Texts longer than the context (seq_len, default the model's
    max_seq_len) are split into windows (see windows()); padding is never counted."""
    texts = list(texts)
    n_bytes = utf8_bytes(texts)
    if n_bytes == 0:
        raise ValueError("bits_per_byte needs non-empty texts")
    seqs = text_sequences(tokenizer, texts)
    nll, _, _ = score(model, windows(seqs, context_len(model, seq_len), batch_size), 1)
    return nll / math.log(2) / n_bytes
