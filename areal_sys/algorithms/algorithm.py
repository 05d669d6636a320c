"""`build_algorithm`: an `AlgorithmConfig` → the bound plugins and settings one experiment uses.

The trainer and the controller hold one `Algorithm` and call its pieces; they never branch on an
algorithm's name, only on the facts it carries (`needs_critic`, `needs_reference`, ...). The call
sequence is written out in the `Algorithm` docstring.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from areal_sys.algorithms import shaping
from areal_sys.algorithms.critic import value_loss
from areal_sys.algorithms.kl import KLFn, kl_loss_term, kl_reward_term
from areal_sys.algorithms.registry import (
    AGGREGATION,
    ESTIMATOR,
    FILTER,
    GENERATION_BUDGET,
    KL,
    POLICY_LOSS,
    bind,
    get_plugin,
)
from areal_sys.algorithms.rpo import length_aware_rewards
from areal_sys.trajectory import Group


@dataclass(frozen=True)
class Algorithm:
    """The plugins of one experiment, options bound, and how to use them.

    Controller, per scored group (raw rewards [G]):
      `filter(rewards) -> bool`: False → drop the group before buffering and count the drop;
      refill by admitting more prompts, at most `max_oversample_rounds` extra rounds per step;
      past that the group fills the batch marked `filter_bypassed` and trains with advantage 0 and
      loss mask 0 (workers/batch.py, controller/admission.py).
    Trainer and controller, per group, before advantages:
      `shaped_rewards(group) -> [G]`: the group's rewards after `shape_rewards(rewards [G],
      response_lengths [G])`: RPO's length-aware reward on correct responses (when on), then +
      the soft overlong penalty (identity when both are off);
      `train_mask(finish_reasons [G])`: 1.0/0.0 per response, multiply it into that
      response's loss mask (overlong filtering; all ones when off).
    RPO prefixes (`prefix_loss`, responses with `prefix_len` > 0; algorithms/rpo.py): `suffix_only`
      masks the prefix; `faithful` replaces its behaviour log-probs by π_prox after the proximal
      pass (`rpo.on_policy_prefix`); `decoupled` keeps the cached ones.
    Advantages:
      group-level (`estimator` not None): `estimator(rewards [G]) -> [G]`, broadcast to tokens.
      If `mask_zero_advantage` (RAFT weights), responses with advantage exactly 0 get loss mask 0,
      so they leave the loss and its denominators (SFT over the kept samples only).
      token-level (`needs_critic`, `estimator` None): critic values V [S, L];
      `critic.outcome_token_rewards(R, mask)` (+ `kl_reward(...)` when `kl_in_reward`), then
      `token_estimator(token_rewards, V, mask) -> (A, returns)`; if `whiten_advantages`,
      `critic.masked_whiten(A, mask)` over the whole batch. Train the critic with
      `value_loss(V_new, V, returns, mask) -> (loss, stats)` aggregated by `aggregate`.
    Loss (unchanged): `policy_loss(logp, prox, behav, adv, mask) -> (loss, stats)` (the
      mismatch corrections TIS / MIS, when set, are options of the loss, and the config refuses
      them for a loss without a behaviour weight: mismatch.py); if
      `kl_in_loss` add `kl_loss(logp, ref_logp, mask)` to the per-token loss; then
      `aggregate(loss, mask, denominators)`.
    KL needs the reference model's logπ_ref of the sampled tokens: `needs_reference`. In the
      reward it is computed once from the rollout's log-probabilities; for a group estimator
      add `kl_reward(...).sum(-1)` to R_i before the estimator.
    `summary` says which path is active: log it at start-up.
    """

    estimator: Callable[[torch.Tensor], torch.Tensor] | None
    token_estimator: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None
    policy_loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
    aggregate: Callable[..., torch.Tensor]
    filter: Callable[[torch.Tensor], bool]
    needs_critic: bool
    value_loss: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]] | None
    whiten_advantages: bool
    mask_zero_advantage: bool
    kl: KLFn | None  # None: KL off (kl_coef = 0)
    kl_coef: float
    kl_placement: str  # "reward" | "loss"
    overlong_filter: bool
    overlong_lengths: tuple[int, int] | None  # (L_max, L_cache) when the soft penalty is on
    max_oversample_rounds: int
    summary: str
    success_threshold: float = 0.5
    length_alpha: float | None = None  # RPO length-aware reward (None: off)
    prefix_loss: str = "faithful"  # RPO loss mode for cached prefix tokens

    @property
    def needs_reference(self) -> bool:
        """A frozen reference policy's log-probabilities are needed (KL on)."""
        return self.kl is not None

    @property
    def kl_in_loss(self) -> bool:
        return self.kl is not None and self.kl_placement == "loss"

    @property
    def kl_in_reward(self) -> bool:
        return self.kl is not None and self.kl_placement == "reward"

    def shape_rewards(self, rewards: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """Rewards [G] after the length-aware reward (RPO, if on), plus the soft overlong
        penalty of each response length (if on)."""
        r = rewards.float()
        if self.length_alpha is not None:
            r = length_aware_rewards(r, lengths, alpha=self.length_alpha,
                                     success_threshold=self.success_threshold)
        if self.overlong_lengths is None:
            return r
        lmax, lcache = self.overlong_lengths
        pen = shaping.overlong_penalty(torch.tensor(list(lengths)), max_len=lmax, cache_len=lcache)
        return r + pen

    def shaped_rewards(self, group: Group, bonus: Sequence[float] | None = None) -> torch.Tensor:
        """R [G] of one group after `shape_rewards`, plus `bonus` per response when given (the
        summed −β·KL_t of a KL in the reward, under a group estimator)."""
        rewards = torch.tensor(group.rewards, dtype=torch.float32)
        r = self.shape_rewards(rewards, [len(t.response_ids) for t in group.trajectories])
        if bonus is not None:
            r = r + torch.tensor(list(bonus), dtype=torch.float32)
        return r

    def train_mask(self, finish_reasons: Sequence[str]) -> torch.Tensor:
        """Per response 1.0 (train) or 0.0 (truncated and overlong filtering on)."""
        if not self.overlong_filter:
            return torch.ones(len(finish_reasons))
        return shaping.overlong_keep_mask(finish_reasons)

    def kl_loss(
        self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """β·KL_t to add to the per-token policy loss (call only when `kl_in_loss`)."""
        if self.kl is None:
            raise RuntimeError("KL is off (algorithm.kl_coef = 0)")
        return kl_loss_term(logprobs, ref_logprobs, mask, coef=self.kl_coef, estimator=self.kl)

    def kl_reward(
        self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """−β·KL_t per token, reward shaping (call only when `kl_in_reward`)."""
        if self.kl is None:
            raise RuntimeError("KL is off (algorithm.kl_coef = 0)")
        return kl_reward_term(
            logprobs, ref_logprobs, mask, coef=self.kl_coef, estimator=self.kl
        )


def _describe(kind: str, name: str, cfg: Mapping[str, Any]) -> str:
    opts = {arg: cfg.get(f) for arg, f in get_plugin(kind, name).options.items()}
    return f"{kind}={name}{opts if opts else ''}"


def build_algorithm(
    algo_cfg: Any, *, max_new_tokens: int | None = None, rpo: Any = None
) -> Algorithm:
    """Bind the pieces an `AlgorithmConfig` (or its `model_dump()`, or any partial mapping of its
    fields: it is validated, so a preset fills the rest) names. `rpo`: an `RpoConfig` (or its
    `model_dump()`); when enabled it sets the length-aware reward and the prefix loss mode.

    `max_new_tokens` (rollout.max_new_tokens) is the default L_max of the soft overlong penalty
    and the constant L_max of the `dr_grpo` aggregation (any piece whose options name
    `GENERATION_BUDGET`); it is required only by those.
    The modules of `algorithm.plugins` are imported first: a config validated in another process
    (the driver) reaches a Ray actor without having registered them there.
    """
    from areal_sys.config import AlgorithmConfig, RpoConfig
    from areal_sys.config.algorithm import import_plugin_modules

    if isinstance(algo_cfg, AlgorithmConfig):
        import_plugin_modules(algo_cfg.plugins)
    else:
        algo_cfg = AlgorithmConfig.model_validate(dict(algo_cfg))
    if rpo is not None and not isinstance(rpo, RpoConfig):
        rpo = RpoConfig.model_validate(dict(rpo))
    rpo_on = rpo is not None and rpo.enabled
    c = algo_cfg
    opts = c.model_dump()  # plugins read their options by config field name (registry.bind)
    if max_new_tokens is not None:
        opts[GENERATION_BUDGET] = max_new_tokens
    for kind, name in ((ESTIMATOR, c.estimator), (POLICY_LOSS, c.loss),
                       (AGGREGATION, c.aggregation), (FILTER, c.filter)):
        if max_new_tokens is None and GENERATION_BUDGET in get_plugin(kind, name).options.values():
            raise ValueError(f"{kind} {name!r} needs the generation budget: "
                             "build_algorithm(..., max_new_tokens=rollout.max_new_tokens)")
    est = get_plugin(ESTIMATOR, c.estimator)
    token_level = bool(est.meta.get("token_level"))
    needs_critic = bool(est.meta.get("needs_critic"))
    kl_on = c.kl_coef > 0
    lengths = (
        shaping.resolve_overlong_lengths(c.overlong_max_len, c.overlong_cache_len, max_new_tokens)
        if c.overlong_penalty
        else None
    )
    parts = [
        f"preset={c.name}",
        _describe(ESTIMATOR, c.estimator, opts),
        _describe(POLICY_LOSS, c.loss, opts),
        _describe(AGGREGATION, c.aggregation, opts),
        _describe(FILTER, c.filter, opts),
        f"kl={c.kl_estimator}(coef={c.kl_coef}, in {c.kl_placement})" if kl_on else "kl=off",
        f"overlong_penalty(L_max={lengths[0]}, L_cache={lengths[1]})" if lengths else "",
        "overlong_filter" if c.overlong_filter else "",
        f"critic(value_clip={c.value_clip}, whiten={c.whiten_advantages})"
        if needs_critic
        else "",
        f"rpo(loss_mode={rpo.loss_mode}, length_reward={rpo.length_reward})" if rpo_on else "",
    ]
    estimator = bind(ESTIMATOR, c.estimator, opts)
    return Algorithm(
        estimator=None if token_level else estimator,
        token_estimator=estimator if token_level else None,
        policy_loss=bind(POLICY_LOSS, c.loss, opts),
        aggregate=bind(AGGREGATION, c.aggregation, opts),
        filter=bind(FILTER, c.filter, opts),
        needs_critic=needs_critic,
        value_loss=functools.partial(value_loss, clip=c.value_clip) if needs_critic else None,
        whiten_advantages=c.whiten_advantages,
        mask_zero_advantage=bool(est.meta.get("mask_zero_advantage")),
        kl=bind(KL, c.kl_estimator, opts) if kl_on else None,
        kl_coef=c.kl_coef,
        kl_placement=c.kl_placement,
        overlong_filter=c.overlong_filter,
        overlong_lengths=lengths,
        max_oversample_rounds=c.max_oversample_rounds,
        summary="; ".join(p for p in parts if p),
        success_threshold=c.success_threshold,
        length_alpha=rpo.length_alpha if rpo_on and rpo.length_reward else None,
        prefix_loss=rpo.loss_mode if rpo_on else "faithful",
    )

