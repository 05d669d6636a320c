"""RPO: partial-reasoning rollouts from an experience cache (pure logic, no I/O besides save/load).

Formulas and hand-checked values: ALGORITHMS.md, "RPO". The pieces, in the order a run uses them:

- `ExperienceCache`: one full response per prompt uid (token ids, behaviour log-probs, versions),
  least-recently-used eviction past `max_entries`, its size in bytes reported, saved atomically.
- `plan_partial(entry, m, max_new_tokens)`: keep the first ℓ − m cached tokens as the prefix and
  generate at most m more; m ≥ ℓ is a full rollout with the normal budget. Token ids are used
  as cached, never decoded and re-encoded.
- `RpoPlanner`: the controller's side. `plan(uid)` draws m ~ U{1..L} once per group (all G
  samples share the prefix) and counts cache hits; `update(uid, ...)` stores one response of a
  trained group, ε-greedily (`choose_for_cache`).
- `length_aware_rewards`: R = r·clip(σ(α(ℓ_ref − |y|)), 0.5, 1) for correct responses, ℓ_ref the
  group's mean length; wrong ones keep r. For r = 1 this is the paper's
  clip(r/(1+e^{−α(ℓ_ref−|y|)}), 0.5, 1); scaling by r keeps the bounds meaningful for other
  correct-reward values.
- `on_policy_prefix`: the `faithful` loss mode's behaviour log-probs for prefix tokens.

Loss modes (`rpo.loss_mode`), for the prefix tokens of a partial rollout:
  faithful     in the loss as if sampled by the current policy: π_b := π_prox, so the decoupled
               weight is 1 and the ratio is π_θ/π_prox (the paper: old log-probs = current ones);
  suffix_only  loss mask 0 (ablation);
  decoupled    in the loss with their cached behaviour log-probs, so the decoupled objective
               weights them by π_prox/π_b under `algorithm.behav_weight_cap`.
With a shared prefix and zero-mean group advantages (GRPO, DAPO) the prefix gradients of the first
update cancel across the group under token-mean aggregation; they matter under per-sequence
aggregations, later minibatches and the decoupled weights.
"""

from __future__ import annotations

import os
import random
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from areal_sys.config import RpoConfig

_BYTES_PER_TOKEN = 4 + 4 + 4  # int32 id, float32 log-prob, int32 version


@dataclass
class CacheEntry:
    """One cached full response (the prompt is not stored: the uid names it)."""

    token_ids: array  # 'i'
    logprobs: array  # 'f'
    versions: array  # 'i'

    @classmethod
    def of(cls, token_ids: Sequence[int], logprobs: Sequence[float],
           versions: Sequence[int]) -> CacheEntry:
        if not len(token_ids) == len(logprobs) == len(versions):
            raise ValueError("cache entry: token ids, log-probs and versions differ in length")
        return cls(array("i", token_ids), array("f", logprobs), array("i", versions))

    def __len__(self) -> int:
        return len(self.token_ids)


class ExperienceCache:
    """Prompt uid → `CacheEntry`, bounded to `max_entries` (least recently used evicted)."""

    def __init__(self, max_entries: int = 1_000_000) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self.num_tokens = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, uid: str) -> bool:
        return uid in self._entries

    def get(self, uid: str) -> CacheEntry | None:
        entry = self._entries.get(uid)
        if entry is not None:
            self._entries.move_to_end(uid)
        return entry

    def put(self, uid: str, entry: CacheEntry) -> None:
        if len(entry) == 0:
            return  # an empty response has nothing to keep a prefix of
        old = self._entries.pop(uid, None)
        self.num_tokens += len(entry) - (len(old) if old is not None else 0)
        self._entries[uid] = entry
        while len(self._entries) > self.max_entries:
            _, evicted = self._entries.popitem(last=False)
            self.num_tokens -= len(evicted)
            self.evictions += 1

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached tokens (ids, log-probs, versions; excludes dict overhead)."""
        return self.num_tokens * _BYTES_PER_TOKEN

    # ------------------------------------------------------------------ save / restore
    def save(self, path: str | Path) -> None:
        """Write the cache to `path` atomically (temporary file, fsync, rename)."""
        import numpy as np

        path = Path(path)
        uids = list(self._entries)
        entries = list(self._entries.values())
        offsets = np.cumsum([0] + [len(e) for e in entries], dtype=np.int64)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                uids=np.array(uids, dtype=np.str_),
                offsets=offsets,
                token_ids=np.array([t for e in entries for t in e.token_ids], dtype=np.int32),
                logprobs=np.array([x for e in entries for x in e.logprobs], dtype=np.float32),
                versions=np.array([v for e in entries for v in e.versions], dtype=np.int32),
                max_entries=np.int64(self.max_entries),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> ExperienceCache:
        """The cache `save` wrote (entries in their least-recently-used order)."""
        import numpy as np

        with np.load(Path(path)) as z:
            cache = cls(int(z["max_entries"]))
            off = z["offsets"]
            ids, lps, vers = z["token_ids"], z["logprobs"], z["versions"]
            for k, uid in enumerate(z["uids"].tolist()):
                a, b = int(off[k]), int(off[k + 1])
                cache.put(uid, CacheEntry(
                    array("i", ids[a:b].tolist()), array("f", lps[a:b].tolist()),
                    array("i", vers[a:b].tolist()),
                ))
        return cache


@dataclass(frozen=True)
class PartialPlan:
    """What one group generates: a shared prefix (maybe empty) and the suffix budget."""

    prefix_ids: list[int]
    prefix_logprobs: list[float]
    prefix_versions: list[int]
    budget: int

    @property
    def full(self) -> bool:
        return not self.prefix_ids


def full_rollout(max_new_tokens: int) -> PartialPlan:
    return PartialPlan([], [], [], max_new_tokens)


def draw_truncation(rng: random.Random, limit: int) -> int:
    """m ~ U{1..L}."""
    if limit < 1:
        raise ValueError(f"regeneration limit L must be >= 1, got {limit}")
    return rng.randint(1, limit)


def plan_partial(entry: CacheEntry, m: int, max_new_tokens: int) -> PartialPlan:
    """Keep entry[0 : ℓ − m] and generate at most m tokens; m ≥ ℓ: full rollout.

    Cached 1000 tokens, m = 200 → prefix 800 tokens, suffix budget 200.
    """
    n = len(entry)
    if m >= n:
        return full_rollout(max_new_tokens)
    keep = n - m
    return PartialPlan(
        list(entry.token_ids[:keep]), list(entry.logprobs[:keep]), list(entry.versions[:keep]),
        budget=min(m, max_new_tokens),
    )


def choose_for_cache(rewards: Sequence[float], rng: random.Random, epsilon: float) -> int:
    """Index of the response that replaces the cache entry: with probability ε the group's best
    (ties broken uniformly), else one of the other G − 1 uniformly. G = 1: that one."""
    g = len(rewards)
    if g == 0:
        raise ValueError("choose_for_cache needs at least one response")
    top = max(rewards)
    best = rng.choice([i for i, r in enumerate(rewards) if r == top])
    if g == 1 or rng.random() < epsilon:
        return best
    other = rng.randrange(g - 1)
    return other if other < best else other + 1


def length_aware_rewards(rewards: torch.Tensor, lengths: Sequence[int], *, alpha: float,
                         success_threshold: float) -> torch.Tensor:
    """RPO's length-aware reward [G]: correct responses (r ≥ threshold) get
    r·clip(σ(α(ℓ_ref − |y|)), 0.5, 1), ℓ_ref = mean |y| of the group; wrong ones keep r.

    lens [100, 200, 300, 400], r = [1, 1, 0, 0], α = 0.01 → [0.8176, 0.6225, 0, 0].
    """
    r = rewards.double()
    lens = torch.tensor(list(lengths), dtype=torch.float64)
    ref = lens.mean()
    factor = torch.sigmoid(alpha * (ref - lens)).clamp(0.5, 1.0)
    return torch.where(r >= success_threshold, r * factor, r).to(rewards.dtype)


def on_policy_prefix(behav: torch.Tensor, prox: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """`faithful` mode: the first `prefix_len` behaviour log-probs replaced by π_prox's."""
    if prefix_len <= 0:
        return behav
    out = behav.clone()
    out[:prefix_len] = prox[:prefix_len].to(out.dtype)
    return out


class RpoPlanner:
    """The controller's RPO state: the cache, the truncation draws, cache healing and the
    counters.

    Healing (`rpo.heal_after` = k > 0, a deviation from the paper): a prompt whose groups on a
    cached prefix were all wrong on k consecutive visits is *dead*: its next visit is a full
    rollout (counted in `rpo/cache_refreshes`), whose response then replaces the entry.
    """

    def __init__(self, cfg: RpoConfig, *, max_new_tokens: int, seed: int) -> None:
        self.cfg = cfg
        self.max_new_tokens = max_new_tokens
        self.cache = ExperienceCache(cfg.max_cache_entries)
        self.rng = random.Random(seed)
        self.dead_visits: dict[str, int] = {}  # uid -> consecutive all-wrong partial groups
        self.correct: set[str] = set()  # uids whose cached response was correct when stored
        self.counts = dict.fromkeys(("lookups", "hits", "updates", "full", "refreshes",
                                     "partial_groups", "dead_groups", "suffixes",
                                     "suffixes_at_length"), 0)

    def plan(self, uid: str) -> PartialPlan:
        """The group's rollout: a partial one from the cache, or a full one (no entry, or a
        dead prefix being refreshed)."""
        self.counts["lookups"] += 1
        entry = self.cache.get(uid)
        if entry is not None and self.cfg.heal_after and \
                self.dead_visits.get(uid, 0) >= self.cfg.heal_after:
            self.counts["refreshes"] += 1
            del self.dead_visits[uid]
            entry = None
        if entry is None:
            self.counts["full"] += 1
            return full_rollout(self.max_new_tokens)
        self.counts["hits"] += 1
        m = draw_truncation(self.rng, self.cfg.regen_limit(len(entry)))
        plan = plan_partial(entry, m, self.max_new_tokens)
        self.counts["full"] += plan.full
        return plan

    def fill(self, uid: str, token_ids: Sequence[int], logprobs: Sequence[float],
             versions: Sequence[int]) -> None:
        """The first full-generation pass: store a response as is (not filtered)."""
        self.cache.put(uid, CacheEntry.of(token_ids, logprobs, versions))

    def update(self, uid: str, responses: Sequence[tuple[list[int], list[float], list[int]]],
               rewards: Sequence[float], *, correct: Sequence[bool], prefix_len: int,
               at_length: Sequence[bool]) -> None:
        """After a step: one of a trained group's full responses (prefix + suffix) replaces the
        entry, ε-greedily on `rewards` (the shaped ones, so shorter correct answers win).
        `correct`: each response's correctness; `prefix_len`: the group's shared cached prefix
        (0: a full rollout); `at_length`: whether each response stopped at its token budget."""
        k = choose_for_cache(rewards, self.rng, self.cfg.epsilon)
        self.cache.put(uid, CacheEntry.of(*responses[k]))
        self.counts["updates"] += 1
        (self.correct.add if correct[k] else self.correct.discard)(uid)
        if prefix_len <= 0:
            self.dead_visits.pop(uid, None)
            return
        self.counts["partial_groups"] += 1
        self.counts["suffixes"] += len(at_length)
        self.counts["suffixes_at_length"] += sum(at_length)
        if any(correct):
            self.dead_visits.pop(uid, None)
        else:
            self.counts["dead_groups"] += 1
            self.dead_visits[uid] = self.dead_visits.get(uid, 0) + 1

    def metrics(self) -> dict[str, float]:
        """Counters since the last call, plus the cache's size and correct fraction."""
        c, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return {
            "rpo/cache_lookups": float(c["lookups"]),
            "rpo/cache_hit_rate": c["hits"] / max(c["lookups"], 1),
            "rpo/full_rollouts": float(c["full"]),
            "rpo/cache_updates": float(c["updates"]),
            "rpo/cache_refreshes": float(c["refreshes"]),
            "rpo/dead_prefix_frac": c["dead_groups"] / max(c["partial_groups"], 1),
            "rpo/suffix_length_frac": c["suffixes_at_length"] / max(c["suffixes"], 1),
            "rpo/cache_correct_frac": sum(u in self.cache for u in self.correct)
            / max(len(self.cache), 1),
            "rpo/cache_entries": float(len(self.cache)),
            "rpo/cache_mib": self.cache.nbytes / 2**20,
            "rpo/cache_evictions": float(self.cache.evictions),
        }

    def state_dict(self) -> dict[str, Any]:
        """The draws' and the healing's state (the cache itself is saved by `ExperienceCache`)."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "dead_visits": dict(self.dead_visits),
                "correct": sorted(self.correct)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.dead_visits = {str(k): int(v) for k, v in state.get("dead_visits", {}).items()}
        self.correct = set(map(str, state.get("correct", [])))
