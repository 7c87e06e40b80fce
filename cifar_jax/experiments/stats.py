"""Statistics over seeds, in one place: Welch's test and the CI of a difference, differences
combined into an interaction, Holm's adjustment, the smallest effect a test detects with 80%
power, equivalence (TOST), prediction intervals and Fisher's exact test for failure counts. The
mean and CI of one sample are the job's own (`core.metrics.summarize`), and which metrics are
better lower is `job.results.lower_is_better`.

Every function takes plain samples (NaN entries, i.e. diverged runs, are dropped) and returns
plain numbers, so reports and tests can call them on anything.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np
import scipy.stats


ALPHA = 0.05
POWER = 0.8


def finite(values: Iterable[float]) -> np.ndarray:
    """The finite values as a float64 array."""
    array = np.asarray(list(values), dtype=np.float64)
    return array[np.isfinite(array)]


def mean(values: Iterable[float]) -> float:
    """Mean of the finite values; NaN when there are none."""
    kept = finite(values)
    return float(kept.mean()) if kept.size else math.nan


def prediction_half_width(values: Iterable[float], confidence: float = 0.95) -> float:
    """Half-width of the interval that holds one more run from the same distribution with
    probability `confidence`: t * s * sqrt(1 + 1/n). The yardstick for a study's single run
    (the CI of our mean would exclude such a run 16-51% of the time at n = 3-10)."""
    kept = finite(values)
    if kept.size < 2:
        return math.nan
    return float(scipy.stats.t.ppf(0.5 + confidence / 2, kept.size - 1) * kept.std(ddof=1)
                 * math.sqrt(1 + 1 / kept.size))


def welch_parts(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean(a) - mean(b), its standard error, Welch-Satterthwaite df); None below 2 runs a side."""
    a, b = finite(a), finite(b)
    if a.size < 2 or b.size < 2:
        return None
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1)) if se > 0 else a.size + b.size - 2
    return float(a.mean() - b.mean()), se, float(df)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value; NaN when a side has fewer than two finite runs. Two constant
    samples give 1.0 when their means are equal and 0.0 when they differ."""
    a, b = finite(a), finite(b)
    if a.size < 2 or b.size < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():  # near-identical samples: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def combined_parts(parts: Sequence[tuple[float, float, float]], signs: Sequence[int]) -> tuple[float, float, float]:
    """A signed sum of independent differences (e.g. the interaction (a - b) - (c - d) from the
    parts of a - b and c - d): its estimate, standard error and Welch-Satterthwaite df."""
    estimate = sum(s * p[0] for p, s in zip(parts, signs))
    variances = [p[1] ** 2 for p in parts]
    se = math.sqrt(sum(variances))
    denominator = sum(v ** 2 / p[2] for v, p in zip(variances, parts))
    return estimate, se, (se ** 4 / denominator) if denominator > 0 else sum(p[2] for p in parts)


def difference(parts: tuple[float, float, float] | None, alpha: float = ALPHA, power: float = POWER
               ) -> dict[str, float]:
    """A difference's estimate, (1 - alpha) CI, two-sided p and the smallest true difference a
    two-sided test at `alpha` detects with probability `power` ((t_{1-a/2} + t_power) * SE)."""
    if parts is None:
        return {"diff": math.nan, "low": math.nan, "high": math.nan, "p": math.nan, "mde": math.nan, "df": math.nan}
    estimate, se, df = parts
    t_crit = scipy.stats.t.ppf(1 - alpha / 2, df)
    if se == 0:
        p = 1.0 if estimate == 0 else 0.0
    else:
        p = float(2 * scipy.stats.t.sf(abs(estimate) / se, df))
    return {"diff": estimate, "low": estimate - t_crit * se, "high": estimate + t_crit * se, "p": p,
            "mde": float((t_crit + scipy.stats.t.ppf(power, df)) * se), "df": df}


def tost_p(parts: tuple[float, float, float] | None, margin: float) -> float:
    """Two one-sided tests of |difference| < margin: the larger one-sided p (small = equivalent)."""
    if parts is None or margin <= 0:
        return math.nan
    estimate, se, df = parts
    if se == 0:
        return 0.0 if abs(estimate) < margin else 1.0
    lower = scipy.stats.t.sf((estimate + margin) / se, df)
    upper = scipy.stats.t.cdf((estimate - margin) / se, df)
    return float(max(lower, upper))


def fisher_greater(failed_a: int, runs_a: int, failed_b: int, runs_b: int) -> float:
    """One-sided Fisher exact p that a's runs fail more often than b's."""
    table = [[failed_a, runs_a - failed_a], [failed_b, runs_b - failed_b]]
    return float(scipy.stats.fisher_exact(table, alternative="greater").pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and do not count in the family)."""
    p = np.asarray(pvalues, dtype=np.float64)
    adjusted = np.full(p.shape, math.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
