"""Mismatch metrics and the TIS / MIS corrections of the behaviour weight, against hand-computed
numbers (areal_sys/algorithms/mismatch.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from areal_sys.algorithms import build_algorithm, decoupled_ppo_loss
from areal_sys.algorithms.mismatch import (
    SUM_KEYS,
    behaviour_weight,
    mismatch_metrics,
    mismatch_sums,
)
from areal_sys.config import AlgorithmConfig

LOG = math.log


def _logs(*probs: float) -> torch.Tensor:
    return torch.tensor([LOG(p) for p in probs], dtype=torch.float32)


# behaviour / proximal probabilities of four tokens; w = prox / behav = [1, 1.25, 0.4, 4]
BEHAV = _logs(0.5, 0.2, 0.1, 0.1)
PROX = _logs(0.5, 0.25, 0.04, 0.4)
SELECT = torch.tensor([True, True, True, False])  # the last token is from an older version


def _merge(parts: list[dict[str, float]]) -> dict[str, float]:
    """Sum per-micro-batch numerators as the trainer does (`*_max` keys by maximum)."""
    out = dict.fromkeys(SUM_KEYS, 0.0)
    for part in parts:
        for k, v in part.items():
            out[k] = max(out[k], v) if k.endswith("_max") else out[k] + v
    return out


def test_metrics_by_hand() -> None:
    """w = [1, 1.25, 0.4] on the selected tokens: k3 = mean(w − 1 − log w) = (0 + 0.0268564 +
    0.3162907)/3; |d| = [0, 0.2231436, 0.9162907]; 2 of 3 tokens off by more than 1% and 10%, 1
    by more than a factor 2; 3 of 4 response tokens covered."""
    m = mismatch_metrics(mismatch_sums(PROX, BEHAV, SELECT), response_tokens=4)
    assert m["mismatch/tokens"] == 3 and m["mismatch/token_frac"] == pytest.approx(0.75)
    assert m["mismatch/k3"] == pytest.approx(0.3431471 / 3, abs=1e-6)
    assert m["mismatch/logp_diff_mean"] == pytest.approx(0.6931471 / 3, abs=1e-6)
    assert m["mismatch/abs_logp_diff_mean"] == pytest.approx(1.1394343 / 3, abs=1e-6)
    assert m["mismatch/abs_logp_diff_max"] == pytest.approx(0.9162907, abs=1e-6)
    assert m["mismatch/weight_mean"] == pytest.approx(2.65 / 3, abs=1e-6)
    assert m["mismatch/weight_min"] == pytest.approx(0.4, abs=1e-6)
    assert m["mismatch/weight_max"] == pytest.approx(1.25, abs=1e-6)
    assert m["mismatch/weight_out_1pct_frac"] == pytest.approx(2 / 3)
    assert m["mismatch/weight_out_10pct_frac"] == pytest.approx(2 / 3)
    assert m["mismatch/weight_out_2x_frac"] == pytest.approx(1 / 3)


def test_sums_add_over_micro_batches() -> None:
    """Two micro-batches' numerators merged (sums add, maxima by max) give the whole's metrics."""
    whole = mismatch_metrics(mismatch_sums(PROX, BEHAV, SELECT), 4)
    parts = [mismatch_sums(PROX[:2], BEHAV[:2], SELECT[:2]),
             mismatch_sums(PROX[2:], BEHAV[2:], SELECT[2:])]
    assert mismatch_metrics(_merge(parts), 4) == pytest.approx(whole)


def test_identical_logprobs_give_zero_mismatch() -> None:
    m = mismatch_metrics(mismatch_sums(BEHAV, BEHAV, torch.ones(4, dtype=torch.bool)), 4)
    assert m["mismatch/k3"] == 0 and m["mismatch/abs_logp_diff_max"] == 0
    assert m["mismatch/weight_min"] == m["mismatch/weight_max"] == 1.0
    assert m["mismatch/weight_out_1pct_frac"] == 0


def test_no_current_version_token_reports_only_the_count() -> None:
    sums = mismatch_sums(PROX, BEHAV, torch.zeros(4, dtype=torch.bool))
    assert set(sums) == set(SUM_KEYS) and not any(sums.values())
    assert mismatch_metrics(sums, 4) == {"mismatch/tokens": 0.0, "mismatch/token_frac": 0.0}


W = torch.tensor([0.25, 1.0, 3.0, 8.0])
ZEROS = torch.zeros(4)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, [0.25, 1, 3, 8]),  # no cap, no correction: w itself
    ({"behav_weight_cap": 5.0}, [0.25, 1, 3, 0]),  # AReaL's cap, mask mode
    ({"behav_weight_cap": 5.0, "behav_cap_mode": "clamp"}, [0.25, 1, 3, 5]),
    ({"tis_cap": 2.0}, [0.25, 1, 2, 2]),  # TIS
    ({"mis_low": 0.5, "mis_high": 5.0}, [0, 1, 3, 0]),  # MIS / IcePop
    ({"tis_cap": 2.0, "mis_low": 0.5, "mis_high": 5.0}, [0, 1, 2, 0]),
    ({"tis_cap": 2.0, "behav_weight_cap": 5.0}, [0.25, 1, 2, 0]),  # cap masks, TIS truncates
    ({"tis_cap": 2.0, "behav_weight_cap": 1.5, "behav_cap_mode": "clamp"}, [0.25, 1, 1.5, 1.5]),
])
def test_behaviour_weight_by_hand(kwargs: dict, expected: list[float]) -> None:
    """One weight, treated once: masks give 0, truncation the smallest ceiling, never w·min(w, C)
    (hand values in the parameters)."""
    w_eff, stats = behaviour_weight(torch.log(W), ZEROS, **kwargs)
    assert w_eff.tolist() == pytest.approx(expected)
    assert stats["behav_weight"].tolist() == pytest.approx(W.tolist())


def test_behaviour_weight_stats() -> None:
    _, s = behaviour_weight(torch.log(W), ZEROS, tis_cap=2.0, mis_low=0.5, mis_high=5.0,
                            behav_weight_cap=6.0)
    assert s["mis_masked"].tolist() == [1, 0, 0, 1]
    assert s["tis_truncated"].tolist() == [0, 0, 1, 0]  # token 4 is masked, not truncated
    assert s["capped"].tolist() == [0, 0, 0, 1]


def _loss(theta: float, **kwargs: Any) -> tuple[float, float]:
    """Decoupled PPO at π_b = 0.1, π_prox = 0.3 (w = 3), A = 1: (loss, d loss / d logπ_θ)."""
    logp = torch.tensor([LOG(theta)], requires_grad=True)
    loss, _ = decoupled_ppo_loss(logp, _logs(0.3), _logs(0.1), torch.ones(1), torch.ones(1),
                                 **{"behav_weight_cap": None, **kwargs})
    loss.sum().backward()
    assert logp.grad is not None
    return float(loss.detach()), float(logp.grad)


def test_tis_in_decoupled_loss_truncates_the_one_weight() -> None:
    """u = 0.33/0.3 = 1.1 (inside the clip): ℓ = −w·u = −3.3; TIS at 2: −2.2 (−2·1.1, not
    −3·min(3, 2)·1.1 = −6.6), with the gradient −2.2; MIS above 2: no loss, no gradient."""
    assert _loss(0.33) == pytest.approx((-3.3, -3.3), abs=1e-5)
    assert _loss(0.33, tis_cap=2.0) == pytest.approx((-2.2, -2.2), abs=1e-5)
    assert _loss(0.33, tis_cap=2.0) == pytest.approx(
        _loss(0.33, behav_weight_cap=2.0, behav_cap_mode="clamp"))
    assert _loss(0.33, mis_high=2.0) == (0.0, 0.0)
    assert _loss(0.33, mis_low=0.5, mis_high=4.0) == pytest.approx((-3.3, -3.3), abs=1e-5)


def test_corrections_off_by_default() -> None:
    cfg = AlgorithmConfig()
    assert (cfg.tis_cap, cfg.mis_low, cfg.mis_high) == (None, None, None)


@pytest.mark.parametrize("bad", [{"tis_cap": 1.0}, {"mis_low": 1.0}, {"mis_high": 0.9}])
def test_thresholds_validated(bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        AlgorithmConfig.model_validate(bad)


def test_corrections_refused_for_a_loss_without_behaviour_weight() -> None:
    """ppo_clip has no π_prox/π_b weight: a TIS cap there would silently do nothing, so the
    config refuses it (validate, before Ray starts)."""
    with pytest.raises(ValueError, match="tis_cap.*ppo_clip"):
        AlgorithmConfig.model_validate({"loss": "ppo_clip", "tis_cap": 2.0})
    with pytest.raises(ValueError, match="mis_low.*raft_sft"):
        AlgorithmConfig.model_validate({"loss": "raft_sft", "mis_low": 0.5})
    algo = build_algorithm({"tis_cap": 2.0, "mis_low": 0.5, "mis_high": 5.0})
    assert "'tis_cap': 2.0" in algo.summary and "'mis_high': 5.0" in algo.summary
