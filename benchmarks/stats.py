"""Statistics of per-seed benchmark figures: mean, sample std, 95% CI of the mean, paired
differences and the verdicts a benchmark states from them. Pure Python (no scipy, no numpy).

- `summarize(values)`: {"mean", "ci95", "lo", "hi", "std", "n", "values"}, JSON-ready. `std` is the
  sample standard deviation s (divisor n − 1); `ci95` the half-width t(0.975, n − 1) · s / √n of
  Student's t interval, `lo`/`hi` = mean ∓ ci95. With one value, std/ci95/lo/hi are None: one seed
  says nothing about the spread.
- `paired_difference(a, b)`: `summarize` of a[s] − b[s] over the seeds s both have. The eval set is
  fixed across seeds, so two settings run with the same seeds are paired: the difference's CI
  removes the seed-to-seed spread the two share.
- `verdict_greater(d, margin)` / `verdict_within(d, margin)`: "holds", "contradicted" or
  "inconclusive", read off a difference's CI (see each).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# Two-sided 95% quantiles t(0.975, df) of Student's t, df = 1..30.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
# Beyond 30: the tabulated values at 30, 40, 60, 120 and the normal 1.960 (df = ∞), interpolated
# linearly in 1/df (the standard way to read a t table; within 0.001 of the exact quantile).
_T975_TAIL = ((30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980), (math.inf, 1.960))


def t975(df: int) -> float:
    """t(0.975, df): the multiplier of s/√n in a 95% CI of a mean of df + 1 values."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= 30:
        return _T975[df - 1]
    for (d0, t0), (d1, t1) in zip(_T975_TAIL, _T975_TAIL[1:], strict=False):
        if d0 <= df <= d1:
            x0, x1, x = 1 / d0, (0.0 if d1 == math.inf else 1 / d1), 1 / df
            return t0 + (t1 - t0) * (x0 - x) / (x0 - x1)
    raise AssertionError("unreachable: the tail table ends at infinity")


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values")
    return sum(values) / len(values)


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (divisor n − 1); needs two values or more."""
    if len(values) < 2:
        raise ValueError("a sample std needs at least two values")
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Mean, 95% CI (half-width and bounds), sample std, n and the values themselves."""
    vals = [float(v) for v in values]
    m = mean(vals)
    if len(vals) < 2:
        return {"mean": m, "ci95": None, "lo": None, "hi": None, "std": None, "n": len(vals),
                "values": vals}
    s = sample_std(vals)
    half = t975(len(vals) - 1) * s / math.sqrt(len(vals))
    return {"mean": m, "ci95": half, "lo": m - half, "hi": m + half, "std": s, "n": len(vals),
            "values": vals}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any]:
    """`summarize` of a[s] − b[s] over the seeds in both (sorted), plus "seeds"."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise ValueError("no seed in common: the two settings cannot be paired")
    return {**summarize([a[s] - b[s] for s in seeds]), "seeds": seeds}


def scaled(summary: dict[str, Any], factor: float) -> dict[str, Any]:
    """The same summary in other units (e.g. fractions × 100 = points)."""
    out = dict(summary)
    for key in ("mean", "ci95", "lo", "hi", "std"):
        if out.get(key) is not None:
            out[key] = out[key] * factor
    out["values"] = [v * factor for v in summary["values"]]
    return out


def verdict_greater(diff: dict[str, Any], margin: float = 0.0) -> str:
    """Whether a difference d = a − b shows a > b + margin: "holds" when the whole CI is above
    `margin`, "contradicted" when the whole CI is at or below it, else "inconclusive" (also with
    one seed, which has no CI)."""
    if diff.get("lo") is None:
        return "inconclusive"
    if diff["lo"] > margin:
        return "holds"
    if diff["hi"] <= margin:
        return "contradicted"
    return "inconclusive"


def verdict_within(diff: dict[str, Any], margin: float) -> str:
    """Whether a difference is within ±margin ("a ≈ b"): "holds" when the whole CI is inside
    [−margin, margin], "contradicted" when the whole CI is outside it on one side, else
    "inconclusive"."""
    if diff.get("lo") is None:
        return "inconclusive"
    if -margin <= diff["lo"] and diff["hi"] <= margin:
        return "holds"
    if diff["lo"] > margin or diff["hi"] < -margin:
        return "contradicted"
    return "inconclusive"


def fmt(summary: dict[str, Any] | None, factor: float = 1.0, digits: int = 1,
        unit: str = "", n_expected: int | None = None) -> str:
    """'mean ± half-width (n = N)' for tables and console lines; 'mean (n = 1)' without a CI.
    The '(n = N)' is left out when N is `n_expected` (a table whose caption states it)."""
    if summary is None:
        return "-"
    m = summary["mean"] * factor
    n = "" if summary["n"] == n_expected else f" (n = {summary['n']})"
    if summary.get("ci95") is None:
        return f"{m:.{digits}f}{unit}{n}"
    return f"{m:.{digits}f} ± {summary['ci95'] * factor:.{digits}f}{unit}{n}"
