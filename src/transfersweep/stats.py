"""Uncertainty of accuracies measured over repeats, and paired comparisons between paradigms.

Assumptions (stated in docs/sweeps.md): the repeats of one trial are independent draws of (k-shot
training images, seed) scored on the same val/test images, and their mean is roughly normal,
so a Student t interval over the repeats is the 95 % confidence interval of the mean. It covers
the variation between repeats, not the finite size of the val/test split (which is the same for
every repeat and every paradigm). Two paradigms are compared on the repeats they share (same
draw and seed: transfersweep.repeats) with a two-sided paired t-test; the p-values of a
winner's comparisons are Holm-adjusted, so "worse" holds for all of them together at 5 %.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LEVEL = 0.95
ALPHA = 0.05
MIN_PAIRED = 3  # fewer common repeats than this: no test (the ranking is "untested")


@dataclass(frozen=True)
class Estimate:
    mean: float
    std: float  # sample standard deviation; 0.0 with one value
    n: int
    ci95: float | None  # half-width of the 95 % t interval; None with one value

    @property
    def low(self) -> float | None:
        return None if self.ci95 is None else self.mean - self.ci95

    @property
    def high(self) -> float | None:
        return None if self.ci95 is None else self.mean + self.ci95


def _t(df: int, level: float = LEVEL) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def estimate(values: Sequence[float]) -> Estimate:
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return Estimate(mean, 0.0, n, None)
    std = statistics.stdev(values)
    return Estimate(mean, std, n, _t(n - 1) * std / math.sqrt(n))


@dataclass(frozen=True)
class Paired:
    n: int  # common repeats
    diff: float  # mean of (a - b) over them
    p: float | None  # two-sided paired t-test; None when n < MIN_PAIRED


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired:
    """Paired t-test of a against b over the repeat indices both have."""
    common = sorted(set(a) & set(b))
    d = [a[r] - b[r] for r in common]
    n = len(d)
    if n == 0:
        return Paired(0, math.nan, None)
    mean = statistics.fmean(d)
    if n < MIN_PAIRED:
        return Paired(n, mean, None)
    sd = statistics.stdev(d)
    if sd == 0.0:  # identical differences: no spread to test against
        return Paired(n, mean, 1.0 if mean == 0.0 else 0.0)
    from scipy.stats import t

    stat = mean / (sd / math.sqrt(n))
    return Paired(n, mean, float(2 * t.sf(abs(stat), n - 1)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
