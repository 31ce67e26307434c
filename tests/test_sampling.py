"""Sampling filters on hand-made distributions: temperature, top-k, top-p, min-p, their order, and draws."""
import math

import pytest
import torch

from machinery.generation.sampling import (
    SamplingConfig,
    apply_temperature,
    filter_logits,
    min_p_filter,
    sample,
    top_k_filter,
    top_p_filter,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def S(temperature=1.0, **kwargs) -> SamplingConfig:
    """Sampling settings with every filter off unless given (SamplingConfig's default min_p is 0.05)."""
    return SamplingConfig(temperature=temperature, **(dict(min_p=None) | kwargs))


def logits_of(probs):
    return torch.tensor(probs, dtype=torch.float32).log()


def kept(logits):
    """Indices of tokens a filter left (finite logits), per row as sets."""
    rows = logits if logits.dim() == 2 else logits[None]
    return [set(torch.isfinite(r).nonzero().flatten().tolist()) for r in rows]


PROBS = [0.05, 0.5, 0.15, 0.3]  # deliberately not sorted: filters must not assume vocabulary order


def test_temperature_divides_logits_and_sharpens_or_flattens():
    logits = torch.tensor([1.0, 2.0, 4.0])
    assert torch.equal(apply_temperature(logits, 2.0), (logits - 4) / 2)  # the top logit moved to 0 first
    p1 = logits.softmax(-1)
    assert filter_logits(logits, S(0.5)).softmax(-1).max() > p1.max()  # sharper
    assert filter_logits(logits, S(2.0)).softmax(-1).max() < p1.max()  # flatter
    assert torch.allclose(filter_logits(logits, S(1.0)).softmax(-1), p1)  # temp 1, no filters: unchanged


def test_top_k_keeps_exactly_the_k_largest():
    logits = logits_of(PROBS)
    assert kept(top_k_filter(logits, 1)) == [{1}]
    assert kept(top_k_filter(logits, 2)) == [{1, 3}]
    assert kept(top_k_filter(logits, 3)) == [{1, 3, 2}]
    assert torch.equal(top_k_filter(logits, 4), logits) and torch.equal(top_k_filter(logits, 99), logits)
    # kept logits are untouched
    assert torch.equal(top_k_filter(logits, 2)[[1, 3]], logits[[1, 3]])
    # ties: still exactly k tokens
    assert len(kept(top_k_filter(torch.zeros(10), 3))[0]) == 3


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    logits = logits_of(PROBS)  # sorted: 0.5 (id 1), 0.3 (id 3), 0.15 (id 2), 0.05 (id 0)
    assert kept(top_p_filter(logits, 0.1)) == [{1}]          # the top token alone already has 0.5
    assert kept(top_p_filter(logits, 0.5)) == [{1}]          # exactly reached
    assert kept(top_p_filter(logits, 0.6)) == [{1, 3}]
    assert kept(top_p_filter(logits, 0.9)) == [{1, 3, 2}]
    assert kept(top_p_filter(logits, 0.99)) == [{0, 1, 2, 3}]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_min_p_keeps_tokens_above_a_fraction_of_the_top():
    logits = logits_of(PROBS)
    assert kept(min_p_filter(logits, 0.2)) == [{1, 3, 2}]    # threshold 0.1
    assert kept(min_p_filter(logits, 0.6)) == [{1, 3}]       # threshold 0.3: 0.3 >= 0.3 is kept
    assert kept(min_p_filter(logits, 0.61)) == [{1}]
    assert kept(min_p_filter(logits, 1.0)) == [{1}]
    assert torch.equal(min_p_filter(logits, 0.0), logits)


def test_filters_work_row_by_row():
    logits = torch.stack([logits_of([0.7, 0.2, 0.1]), logits_of([0.1, 0.45, 0.45])])
    assert kept(top_k_filter(logits, 1))[0] == {0}
    assert kept(top_p_filter(logits, 0.8)) == [{0, 1}, {1, 2}]
    assert kept(min_p_filter(logits, 0.25)) == [{0, 1}, {1, 2}]  # thresholds 0.175, 0.1125


def test_order_is_temperature_top_k_top_p_min_p():
    # top-p sees the distribution renormalized after top-k: [0.4, 0.3] -> [4/7, 3/7], so p=0.5 keeps one
    logits = logits_of([0.4, 0.3, 0.2, 0.1])
    assert kept(top_p_filter(logits, 0.5)) == [{0, 1}]
    assert kept(filter_logits(logits, S(1.0, top_k=2, top_p=0.5))) == [{0}]
    # temperature comes before min-p: at temp 0.5 the ratio 0.3/0.5 becomes 0.36 < 0.5
    logits = logits_of([0.5, 0.3, 0.2])
    assert kept(filter_logits(logits, S(1.0, min_p=0.5))) == [{0, 1}]
    assert kept(filter_logits(logits, S(0.5, min_p=0.5))) == [{0}]
    # all four together: top-k drops id 4; renormalized [.33, .28, .22, .17] -> top-p 0.7 drops id 3;
    # min-p 0.7 of the top (0.3 of the original) drops id 2
    logits = logits_of([0.3, 0.25, 0.2, 0.15, 0.1])
    assert kept(filter_logits(logits, S(1.0, top_k=4, top_p=0.7))) == [{0, 1, 2}]
    assert kept(filter_logits(logits, S(1.0, top_k=4, top_p=0.7, min_p=0.7))) == [{0, 1}]


def test_temp_zero_is_greedy_whatever_the_filters():
    logits = torch.randn(64, 50)
    expected = logits.argmax(-1)
    assert torch.equal(sample(logits, S(0.0)), expected)
    assert torch.equal(sample(logits, S(0, top_k=5, top_p=0.3, min_p=0.9)), expected)


def test_top_k_1_is_greedy():
    # the original template's top-k did nothing; with k=1 sampling must always return the argmax
    logits = torch.randn(500, 50)
    assert torch.equal(sample(logits, S(1.0, top_k=1)), logits.argmax(-1))
    assert torch.equal(sample(logits, S(5.0, top_k=1)), logits.argmax(-1))


def test_top_k_never_samples_outside_the_top_k():
    torch.manual_seed(0)
    logits = torch.randn(50) * 0.1  # nearly flat: without the filter most draws would land outside
    k = 5
    top = set(logits.topk(k).indices.tolist())
    draws = sample(logits.expand(20_000, -1), S(1.0, top_k=k))
    assert set(draws.tolist()) == top  # every draw in the top k, and each of them drawn (it's sampling)


def test_top_p_and_min_p_draw_only_from_what_they_keep():
    logits = logits_of(PROBS).expand(5000, -1)
    assert set(sample(logits, S(1.0, top_p=0.6)).tolist()) == {1, 3}
    assert set(sample(logits, S(1.0, min_p=0.2)).tolist()) == {1, 3, 2}


def test_draw_frequencies_match_the_renormalized_distribution():
    gen = torch.Generator().manual_seed(1)
    n = 40_000
    draws = sample(logits_of(PROBS).expand(n, -1), S(1.0), generator=gen)
    freq = torch.bincount(draws, minlength=4).float() / n
    assert torch.allclose(freq, torch.tensor(PROBS), atol=0.015)
    draws = sample(logits_of(PROBS).expand(n, -1), S(1.0, top_k=2), generator=gen)
    freq = torch.bincount(draws, minlength=4).float() / n
    assert torch.allclose(freq, torch.tensor([0, 0.5 / 0.8, 0, 0.3 / 0.8]), atol=0.015)


def test_seeded_generator_is_reproducible():
    logits = torch.randn(100, 30)
    a = sample(logits, S(1.0), generator=torch.Generator().manual_seed(7))
    b = sample(logits, S(1.0), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, sample(logits, S(1.0, seed=7), generator=S(seed=7).generator("cpu")))
    assert torch.equal(a, b)


def test_bfloat16_logits_are_sampled_in_float32():
    logits = logits_of(PROBS).to(torch.bfloat16).expand(1000, -1)
    assert set(sample(logits, S(1.0, top_k=2)).tolist()) <= {1, 3}
    assert filter_logits(logits, S(1.0)).dtype == torch.float32


@pytest.mark.parametrize("kwargs, word", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=math.nan), "temperature"),
    (dict(temperature="hot"), "temperature"), (dict(temperature=math.inf), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(min_p=-0.1), "min_p"), (dict(min_p=2.0), "min_p"),
    (dict(seed=-1), "seed"), (dict(seed=2 ** 64), "seed"), (dict(seed=1.5), "seed"),
])
def test_bad_settings_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SamplingConfig(**kwargs)


@pytest.mark.parametrize("temperature", [1e-45, 1e-30, 1e-8, 5e-5])
def test_temperatures_that_would_make_nan_probabilities_are_refused(temperature):
    # 1e-45 rounds to a float32 denormal: dividing logits by it overflows to inf, and inf - inf is NaN
    with pytest.raises(ValueError, match=r"temperature=.* too small.*use 0 for greedy"):
        SamplingConfig(temperature=temperature)


def test_the_smallest_allowed_temperature_gives_finite_probabilities():
    from machinery.generation.sampling import MIN_TEMPERATURE
    logits = torch.randn(4, 1000) * 30
    probs = filter_logits(logits, S(MIN_TEMPERATURE)).softmax(-1)
    assert torch.isfinite(probs).all() and torch.equal(probs.argmax(-1), logits.argmax(-1))
    assert torch.equal(sample(logits, S(MIN_TEMPERATURE)), logits.argmax(-1))


def test_good_settings_pass():
    SamplingConfig(temperature=0, top_k=None, top_p=None, min_p=None)
    SamplingConfig(temperature=0.7, top_k=1, top_p=1.0, min_p=0.0, seed=0)
    SamplingConfig(temperature=2, top_k=50, top_p=0.9, min_p=1.0, seed=2 ** 63 - 1)
    assert SamplingConfig(temperature=0).greedy and not SamplingConfig().greedy


@pytest.mark.parametrize("p", [1e-50, 1e-300, 5e-324])
def test_a_tiny_top_p_keeps_the_top_token(p):
    """p underflows to 0 in float32: today every token was dropped and torch sampled from NaN."""
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.1, 3.0, -1.0]])
    kept = top_p_filter(logits, p)
    assert torch.equal(torch.isfinite(kept), torch.tensor([[True, False, False], [False, True, False]]))
    draws = sample(logits, SamplingConfig(temperature=1.0, top_p=p, min_p=None, seed=0))
    assert draws.tolist() == [0, 1]


def test_inference_with_a_tiny_top_p_is_greedy(capsys):
    import inference
    assert inference.main(["llama3_atto", "Once upon a time", "--top_p=1e-50", "--max_new_tokens=8"]) == 0
    sampled = capsys.readouterr().out
    assert inference.main(["llama3_atto", "Once upon a time", "--temperature=0", "--max_new_tokens=8"]) == 0
    assert sampled == capsys.readouterr().out
