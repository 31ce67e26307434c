"""lm-evaluation-harness's Hugging Face model (HFLM) for an exported run, with one bos everywhere and texts
scored exactly as model_comparison.py scores them. Imports lm_eval: load it only when the harness is installed.

Why not the stock `hf` model as it is:
- the exported tokenizer puts bos in front of every text, as our models saw in training. For rolling
  loglikelihood (perplexity and bits-per-byte tasks) the stock model also puts its prefix token (bos again) in
  front of what the tokenizer gives: every text starts [bos, bos, ...], which our models never saw.
- model_comparison.py (machinery/comparison/metrics.py) scores a text as [bos] + tokens + [eos]: the eos
  predicted after each text counts (it covers no bytes), and a text longer than the context is cut into
  windows of max_seq_len predictions with stride max_seq_len, each seeing only the context inside it. The
  stock rolling loglikelihood does not predict eos and gives its last window the full context instead.

Here rolling requests are scored as [bos] + tokens + [eos] in those same windows, so a bits-per-byte task
equals the comparison's number on the same texts. Everything else (multiple choice, loglikelihood,
generation: hellaswag, lambada_openai, arc_easy, piqa, ...) is the stock model with the tokenizer's own
single bos in front of each context (add_bos_token=True).
"""
from __future__ import annotations

from lm_eval.models.huggingface import HFLM


def comparison_windows(ids: list[int], window: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) pairs that predict every token after the first exactly once: window s feeds
    ids[s:s+window] and predicts ids[s+1:s+window+1] (metrics.windows()); the context is its first token."""
    return [(ids[s:s + 1], ids[s + 1:s + window + 1]) for s in range(0, len(ids) - 1, window)]


class TemplateGPTLM(HFLM):
    """HFLM whose rolling loglikelihood scores [bos] + text tokens + [eos] in model_comparison's windows."""

    def __init__(self, **kwargs):
        kwargs.setdefault("add_bos_token", True)  # hub tasks: the tokenizer's one bos before each context
        super().__init__(**kwargs)

    def text_ids(self, text: str) -> list[int]:
        """[bos] + the text's tokens + [eos]: what the comparison scores, bos once by construction."""
        # verbose=False: a story longer than the context is expected here (it is cut into windows)
        tokens = self.tokenizer.encode(text, add_special_tokens=False, verbose=False)
        return [self.tokenizer.bos_token_id, *tokens, self.tokenizer.eos_token_id]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            for context, continuation in comparison_windows(self.text_ids(text), self.max_length):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += logprob
        return totals
