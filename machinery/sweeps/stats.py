"""Is a gap between two variants larger than seed noise? Welch's t-test over seeds, and the confidence
interval of the difference of means.

Welch's test does not assume the two variants' seed-to-seed spreads are equal (B. L. Welch, 1947,
https://doi.org/10.1093/biomet/34.1-2.28); it is R's default t.test. With a and b the per-seed values
(sample variances s², sizes n):
    diff = mean(b) - mean(a)
    se   = sqrt(s_a²/n_a + s_b²/n_b)
    t    = diff / se
    df   = se⁴ / ((s_a²/n_a)² / (n_a - 1) + (s_b²/n_b)² / (n_b - 1))     (Welch–Satterthwaite)
    p    = 2 · P(T_df > |t|)                                                  (two-sided)
    CI   = diff ± t_{df, 1-α/2} · se
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import t as student_t

TEST_NAME = "Welch's t-test (two-sided, unequal variances)"


@dataclass
class Comparison:
    diff: float      # mean(b) - mean(a)
    t: float
    df: float
    p_value: float
    ci_low: float    # confidence interval of diff
    ci_high: float


def mean(xs) -> float:
    return sum(xs) / len(xs)


def sample_var(xs) -> float:
    """Unbiased (n - 1) variance; nan for fewer than 2 values."""
    if len(xs) < 2:
        return math.nan
    m = mean(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def welch(a, b, confidence: float = 0.95) -> Comparison:
    """b against a. Needs at least 2 values on each side (else p and the interval are nan); when both
    spreads are 0 the test is undefined (nan), unless the means are equal too (p = 1)."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if not a or not b:
        raise ValueError("welch needs values on both sides")
    diff = mean(b) - mean(a)
    nan = math.nan
    if len(a) < 2 or len(b) < 2:
        return Comparison(diff, nan, nan, nan, nan, nan)
    va, vb = sample_var(a) / len(a), sample_var(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Comparison(diff, nan, nan, 1.0 if diff == 0 else nan, diff, diff)
    t = diff / se
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    p = 2 * student_t.sf(abs(t), df)
    half = float(student_t.ppf(0.5 + confidence / 2, df)) * se
    return Comparison(diff, t, df, float(p), diff - half, diff + half)
