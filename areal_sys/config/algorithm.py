"""The `algorithm` and `rpo` sections: which pieces train the policy, and RPO's settings.

Piece names (`estimator`, `loss`, `aggregation`, `filter`, `kl_estimator`) are checked against the
plugin registry (areal_sys/algorithms/registry.py) when the section is validated, not against a
list written here: a plugin the user registers with `@register` in a module listed in
`algorithm.plugins` is selectable like a built-in, and an unknown name fails in one line that lists
the registered ones. The built-in names are read from the plugin modules' source, so validating
an `algorithm` section imports no torch (a user's plugin module may).
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from areal_sys.algorithms.presets import PRESETS, preset_values
from areal_sys.config.base import Section

# config field -> registry kind (areal_sys.algorithms.registry)
PIECES = {"estimator": "estimator", "loss": "policy_loss", "aggregation": "aggregation",
          "filter": "filter", "kl_estimator": "kl"}
# the train-inference mismatch corrections of the behaviour weight (algorithms/mismatch.py)
CORRECTIONS = ("tis_cap", "mis_low", "mis_high")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def import_plugin_modules(modules: list[str]) -> None:
    """Import each module of `algorithm.plugins`, whose import registers its pieces. Every
    process that builds an Algorithm calls it (build_algorithm does), as validation may have run
    in another process."""
    for module in modules:
        importlib.import_module(module)


class AlgorithmConfig(Section):
    """The RL algorithm: a named preset (`name`) whose pieces any explicit key overrides.

    Validation starts from the preset's values (areal_sys/algorithms/presets/) and lets every
    key given in YAML or on the command line win, so `cfg.algorithm` is fully resolved and the
    trainer reads the pieces, never the name. Presets apply when the section is built, not on
    later attribute assignment. `areal-sys algorithms` lists presets and pieces. Fields are
    validated in the order written: `plugins` is imported before the piece names are checked.
    """

    name: str = Field(
        "grpo", description="preset: " + ", ".join(PRESETS) + " (see `areal-sys algorithms`)"
    )
    plugins: list[str] = Field(
        default_factory=list, description="modules imported before the pieces are checked, "
        "whose import registers the user's own pieces (@register in areal_sys.algorithms)",
    )
    # advantages
    estimator: str = Field(
        "grpo", description="advantage estimator (registered; gae is token-level, needs a critic)"
    )
    adv_std: Literal["unbiased", "population"] = Field(
        "unbiased", description="grpo: std convention (unbiased: divide by G-1, as verl/TRL)"
    )
    adv_eps: float = Field(1e-6, gt=0, description="grpo: added to the std")
    success_threshold: float = Field(
        0.5, description="a response is correct when its reward >= this (RAFT weights, filters)"
    )
    gae_gamma: float = Field(1.0, ge=0, le=1, description="gae: discount gamma")
    gae_lambda: float = Field(1.0, ge=0, le=1, description="gae: lambda")
    whiten_advantages: bool = Field(
        True, description="gae: whiten advantages over the batch's loss tokens"
    )
    value_clip: float | None = Field(
        0.5, gt=0, description="critic: value-loss clip range around the old values (None: off)"
    )
    # policy loss
    loss: str = Field("decoupled_ppo", description="per-token policy loss (registered)")
    clip_low: float = Field(0.2, ge=0, lt=1, description="ratio clip below: 1 - clip_low")
    clip_high: float = Field(0.2, ge=0, description="ratio clip above: 1 + clip_high (DAPO 0.28)")
    dual_clip: float | None = Field(
        None, gt=1.0, description="dual clip c for A < 0: loss <= c*|A| (None: off; usual 3)"
    )
    behav_weight_cap: float | None = Field(
        5.0, gt=1.0, description="decoupled PPO: cap on pi_prox/pi_behav (None: never cap)"
    )
    behav_cap_mode: Literal["mask", "clamp"] = Field(
        "mask", description="tokens over the cap: mask them out, or clamp the weight to the cap"
    )
    # train-inference mismatch corrections of the same weight (algorithms/mismatch.py); off
    tis_cap: float | None = Field(
        None, gt=1.0, description="TIS: truncate pi_prox/pi_behav at this value, w := min(w, C) "
        "(verl tis_imp_ratio_cap; usual 2; None: off). Applied to the one behaviour weight, "
        "never as a second factor",
    )
    mis_low: float | None = Field(
        None, gt=0, lt=1.0, description="MIS / IcePop: mask tokens with pi_prox/pi_behav below "
        "this (usual 0.5; None: no lower bound)",
    )
    mis_high: float | None = Field(
        None, gt=1.0, description="MIS / IcePop: mask tokens with pi_prox/pi_behav above this "
        "(usual 2 to 5; None: no upper bound)",
    )
    aggregation: str = Field(
        "token-mean", description="per-token losses -> scalar over the global batch (registered)"
    )
    # group filter
    filter: str = Field(
        "none", description="drop scored groups before buffering, counted (registered)"
    )
    max_oversample_rounds: int = Field(
        4, ge=0, description="extra admission rounds per step to refill filtered-out groups"
    )
    # KL to a frozen reference policy (off by default)
    kl_coef: float = Field(0.0, ge=0, description="beta; 0 turns KL (and the reference) off")
    kl_estimator: str = Field("k3", description="per-token KL estimator (registered)")
    kl_placement: Literal["reward", "loss"] = Field(
        "loss", description="add beta*KL to the loss, or -beta*KL to the per-token reward"
    )
    # overlong responses (DAPO)
    overlong_filter: bool = Field(
        False, description="mask truncated responses (finish_reason 'length') out of the loss"
    )
    overlong_penalty: bool = Field(False, description="soft overlong punishment on the reward")
    overlong_max_len: int | None = Field(
        None, ge=1, description="L_max in response tokens (None: rollout.max_new_tokens)"
    )
    overlong_cache_len: int | None = Field(
        None, ge=1, description="L_cache: punishment ramps over the last L_cache tokens "
        "(None: L_max // 5)"
    )

    @model_validator(mode="before")
    @classmethod
    def _start_from_preset(cls, data: Any) -> Any:
        """Preset values first, explicit keys on top. An unknown name is left to the `name`
        field's own check, which reports `algorithm.name` and the choices."""
        if not isinstance(data, dict):
            return data
        name = data.get("name", cls.model_fields["name"].default)
        if not isinstance(name, str) or name not in PRESETS:
            return data
        return {**preset_values(name), **data}

    @field_validator("name")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: "
                             f"{', '.join(repr(p) for p in PRESETS)}")
        return name

    @field_validator("plugins")
    @classmethod
    def _import_plugins(cls, modules: list[str]) -> list[str]:
        for module in modules:
            if not _MODULE.fullmatch(module):
                raise ValueError(f"{module!r} is not a module name (package.module)")
            try:
                importlib.import_module(module)
            except Exception as e:  # noqa: BLE001 - any import failure is a config error
                raise ValueError(f"cannot import {module!r}: {type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}") from None
        return modules

    @field_validator(*PIECES)
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        from areal_sys.algorithms.registry import check_name

        try:
            check_name(PIECES[str(info.field_name)], name)
        except KeyError as e:
            raise ValueError(f"{e.args[0]} (a piece of your own: @register it in a module "
                             "listed in algorithm.plugins)") from None
        return name

    @model_validator(mode="after")
    def _check(self) -> AlgorithmConfig:
        if (
            self.overlong_max_len is not None
            and self.overlong_cache_len is not None
            and self.overlong_cache_len > self.overlong_max_len
        ):
            raise ValueError("overlong_cache_len must not exceed overlong_max_len")
        self._check_corrections()
        return self

    def _check_corrections(self) -> None:
        """The mismatch corrections act on a loss's behaviour weight π_prox/π_b: a loss that has
        none (its registration takes no such option: ppo_clip, raft_sft) refuses them rather than
        ignore them. Checked only when one is set, so a default section imports no torch."""
        corrections = [f for f in CORRECTIONS if getattr(self, f) is not None]
        if not corrections:
            return
        from areal_sys.algorithms.registry import get_plugin

        takes = get_plugin(PIECES["loss"], self.loss).options.values()
        if unused := [f for f in corrections if f not in takes]:
            raise ValueError(f"{', '.join(unused)}: the loss {self.loss!r} applies no behaviour "
                             "weight pi_prox/pi_behav for a mismatch correction to act on (use "
                             "decoupled_ppo or raft_pp, or unset it)")

    def reward_warning(self, correct_reward: float, wrong_reward: float) -> str | None:
        """One line when the preset's advantages degenerate under the configured rewards
        (`reward.correct_reward` / `wrong_reward`), else None: `areal-sys validate` and `run`
        print it at start-up.

        Only a preset with reward values of its own (DAPO, Reinforce-Rej: +1/−1) is checked: the
        estimator is applied to a mixed group [correct, wrong] under the preset's rewards and under
        the configured ones, and a kind of response whose advantage is nonzero under the former
        but 0 under the latter carries no gradient. Reinforce-Rej (A_i = R_i) under 0/1 rewards:
        wrong responses get A = 0, so only the correct ones of a mixed group train, which is
        RAFT++. GRPO's normalised advantages (DAPO) are the same under both. A token-level
        estimator (GAE) is not checked.
        """
        import torch

        from areal_sys.algorithms.registry import bind, get_plugin

        preset = PRESETS[self.name]
        if preset.correct_reward is None and preset.wrong_reward is None:
            return None
        if get_plugin(PIECES["estimator"], self.estimator).meta.get("token_level"):
            return None
        estimator = bind(PIECES["estimator"], self.estimator, self.model_dump())
        theirs = (1.0 if preset.correct_reward is None else preset.correct_reward,
                  0.0 if preset.wrong_reward is None else preset.wrong_reward)
        ours = (correct_reward, wrong_reward)
        adv_theirs, adv_ours = (estimator(torch.tensor(r, dtype=torch.float32)).tolist()
                                for r in (theirs, ours))
        lost = tuple(kind for kind, a, b in zip(("correct", "wrong"), adv_ours, adv_theirs,
                                                strict=True) if a == 0 and b != 0)
        if not lost:
            return None
        effect = {("wrong",): "only its correct ones train (RAFT++ on mixed groups)",
                  ("correct",): "only its wrong ones train"}.get(lost, "it trains nothing")
        return (f"algorithm {self.name}: under rewards {correct_reward:g}/{wrong_reward:g} the "
                f"{' and '.join(lost)} responses of a mixed group get advantage 0, so {effect}; "
                f"the preset's "
                f"rewards are {theirs[0]:g}/{theirs[1]:g} (reward.correct_reward/wrong_reward)")

    @property
    def needs_critic(self) -> bool:
        """Whether the estimator needs a value model (GAE), as its registration says."""
        from areal_sys.algorithms.registry import get_plugin

        return bool(get_plugin(PIECES["estimator"], self.estimator).meta.get("needs_critic"))


class RpoConfig(Section):
    """RPO: each rollout keeps a prefix of a cached response and generates only the suffix.

    The truncation m ~ U{1..L}: L = `max_regen_tokens` (fixed) or `regen_fraction` × the cached
    length (set at most one; neither: fraction 0.5). m >= the cached length: a full rollout.
    """

    enabled: bool = False
    max_regen_tokens: int | None = Field(None, ge=1, description="L fixed (the paper: 300)")
    regen_fraction: float | None = Field(
        None, gt=0, le=1, description="L = fraction x cached length (default 0.5 if neither is set)"
    )
    loss_mode: Literal["faithful", "suffix_only", "decoupled"] = Field(
        "faithful", description="faithful: prefix in the loss as on-policy tokens (the paper); "
        "suffix_only: prefix masked; decoupled: prefix weighted by its cached behaviour logprobs",
    )
    epsilon: float = Field(
        0.5, ge=0, le=1, description="cache update: P(store the group's best response)"
    )
    length_reward: bool = Field(True, description="length-aware reward for correct responses")
    length_alpha: float = Field(0.01, gt=0, description="slope of the length-aware reward")
    cache_fill: Literal["pass", "lazy"] = Field(
        "pass", description="pass: one full response per train prompt before training; "
        "lazy: a prompt's first visit is a full rollout",
    )
    max_cache_entries: int = Field(
        1_000_000, ge=1, description="bound on cached prompts (least recently used evicted)"
    )
    heal_after: int = Field(
        1, ge=0, description="cache healing (not in the paper, whose cache is never filtered): a "
        "prompt whose partial groups were all wrong on this many consecutive visits gets a full "
        "rollout at its next visit, which then refreshes its entry (its prefix likely holds an "
        "error no suffix can undo); 0: off, the paper's behaviour",
    )

    @model_validator(mode="after")
    def _one_limit(self) -> RpoConfig:
        if self.max_regen_tokens is not None and self.regen_fraction is not None:
            raise ValueError("set rpo.max_regen_tokens or rpo.regen_fraction, not both")
        return self

    def regen_limit(self, cached_len: int) -> int:
        """L for a cached response of `cached_len` tokens (at least 1)."""
        if self.max_regen_tokens is not None:
            return self.max_regen_tokens
        fraction = 0.5 if self.regen_fraction is None else self.regen_fraction
        return max(1, round(fraction * cached_len))
