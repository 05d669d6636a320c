"""benchmarks/stats.py against hand-computed numbers."""

import math

import pytest

from benchmarks.stats import (
    fmt,
    paired_difference,
    sample_std,
    scaled,
    summarize,
    t975,
    verdict_greater,
    verdict_within,
)


def test_summarize_four_values_by_hand() -> None:
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, s^2 = 5/3;
    # half-width = t(0.975, 3) * s / sqrt(4) = 3.182 * 1.2909944 / 2 = 2.0539721
    s = summarize([1, 2, 3, 4])
    assert s["mean"] == pytest.approx(2.5)
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    assert s["ci95"] == pytest.approx(2.0539721, abs=1e-6)
    assert (s["lo"], s["hi"]) == (pytest.approx(0.4460279, abs=1e-6),
                                  pytest.approx(4.5539721, abs=1e-6))
    assert s["n"] == 4 and s["values"] == [1.0, 2.0, 3.0, 4.0]


def test_one_value_has_no_spread_and_none_is_an_error() -> None:
    s = summarize([0.7])
    assert s["mean"] == 0.7 and s["n"] == 1
    assert s["ci95"] is None and s["lo"] is None and s["std"] is None
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        sample_std([1.0])


def test_t_quantiles_table_and_tail() -> None:
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042
    assert t975(40) == pytest.approx(2.021) and t975(120) == pytest.approx(1.980)
    # between 40 and 60, linear in 1/df: 2.021 + (2.000 - 2.021) * 0.6 (exact value 2.0086)
    assert t975(50) == pytest.approx(2.0084, abs=1e-4)
    assert t975(10**9) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError):
        t975(0)


def test_paired_difference_uses_common_seeds_only() -> None:
    a = {1: 0.5, 2: 0.7, 3: 0.6}
    b = {1: 0.4, 2: 0.5, 3: 0.6, 4: 0.9}
    d = paired_difference(a, b)
    # differences 0.1, 0.2, 0.0: mean 0.1, s = 0.1, half-width 4.303 * 0.1 / sqrt(3) = 0.248434
    assert d["seeds"] == [1, 2, 3]
    assert d["mean"] == pytest.approx(0.1) and d["std"] == pytest.approx(0.1)
    assert d["ci95"] == pytest.approx(0.248434, abs=1e-6)
    with pytest.raises(ValueError):
        paired_difference({1: 0.1}, {2: 0.1})


def test_scaled_converts_every_figure() -> None:
    s = scaled(summarize([0.1, 0.3]), 100)
    assert s["mean"] == pytest.approx(20.0) and s["values"] == pytest.approx([10.0, 30.0])
    # s = 0.1414214 (x100 = 14.14214), half-width 12.706 * 14.14214 / sqrt(2) = 127.06
    assert s["ci95"] == pytest.approx(127.06, abs=1e-3) and s["n"] == 2


def _diff(lo: float, hi: float) -> dict:
    return {"mean": (lo + hi) / 2, "lo": lo, "hi": hi, "ci95": (hi - lo) / 2, "n": 3}


def test_verdicts_read_the_interval() -> None:
    assert verdict_greater(_diff(0.5, 2.0)) == "holds"
    assert verdict_greater(_diff(-2.0, -0.1)) == "contradicted"
    assert verdict_greater(_diff(-1.0, 1.0)) == "inconclusive"
    assert verdict_greater(_diff(2.0, 4.0), margin=3.0) == "inconclusive"
    assert verdict_greater({"mean": 5.0, "lo": None, "hi": None, "n": 1}) == "inconclusive"
    assert verdict_within(_diff(-2.0, 2.5), 3.0) == "holds"
    assert verdict_within(_diff(3.5, 6.0), 3.0) == "contradicted"
    assert verdict_within(_diff(-8.0, -3.5), 3.0) == "contradicted"
    assert verdict_within(_diff(-1.0, 4.0), 3.0) == "inconclusive"


def test_fmt() -> None:
    assert fmt(summarize([1, 2, 3, 4])) == "2.5 ± 2.1 (n = 4)"
    assert fmt(summarize([0.25]), 100, 1, "%") == "25.0% (n = 1)"
    assert fmt(None) == "-"
