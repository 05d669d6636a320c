"""What one sample of a rollout worker becomes: a single response (`single_turn`) or a
multi-turn episode (`tool_use` or a plugin, areal_sys/episode.py), as a Trajectory. Imports no
engine."""

from __future__ import annotations

from typing import Any

from areal_sys.config.episode import EpisodeConfig
from areal_sys.episode import (
    PROTOCOLS,
    EpisodeEnv,
    EpisodeResult,
    Generate,
    load_episode,
    resolve_call_end,
)
from areal_sys.trajectory import Trajectory
from workers.sampling import Sample

__all__ = ["Episodes", "single_turn", "turns"]


def turns(sample: Any, rid: str, temperature: float, top_p: float) -> Generate:
    """An episode's `generate` from a worker's `_sample(rid, context, max_tokens, temperature,
    top_p, stop_ids)`: each turn one request id (its interruptions are resumed inside it)."""
    count = iter(range(1 << 30))
    return lambda context, max_tokens, stop: sample(
        f"{rid}-t{next(count)}", context, max_tokens, temperature, top_p, stop)


def single_turn(s: Sample, *, prefix: list[int], prefix_logprobs: list[float],
                prefix_versions: list[int], text: str, **fields: Any) -> Trajectory:
    """One response: an RPO cached prefix (if any) + the sampled tokens, all trained."""
    return Trajectory(response_ids=prefix + s.tokens, behav_logprobs=prefix_logprobs + s.logprobs,
                      versions=prefix_versions + s.versions,
                      loss_mask=[1] * (len(prefix) + len(s.tokens)),
                      finish_reason=s.finish_reason, prefix_len=len(prefix),
                      num_interrupts=s.num_interrupts, response_text=text,
                      finish_time=s.finish_time, **fields)


class Episodes:
    """A worker's multi-turn episodes (`rollout.episode`: `tool_use` or a plugin): the episode
    function and, once `bind` has seen the engine's tokenizer, its EpisodeEnv."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = EpisodeConfig(**cfg)
        self.fn = load_episode(self.cfg.kind)
        self._tokenizer: Any = None
        self.env: EpisodeEnv | None = None

    def bind(self, tokenizer: Any) -> None:
        """`tool_use` raises ValueError (one line) when the tokenizer lacks the protocol's
        call-end token; a plugin gets -1 as `call_end_id` then."""
        self._tokenizer = tokenizer
        protocol = PROTOCOLS[self.cfg.protocol]
        try:
            call_end = resolve_call_end(protocol, self.encode)
        except ValueError:
            if self.cfg.kind == "tool_use":
                raise
            call_end = -1
        self.env = EpisodeEnv(self.encode, self.decode, tuple(self.cfg.tools), self.cfg.limits(),
                              protocol, call_end, self.cfg.max_turns)

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    async def run(self, generate: Generate, prompt_ids: list[int],
                  max_tokens: int) -> EpisodeResult:
        """One episode; a plugin's result must be an EpisodeResult within the token budget."""
        if self.env is None:
            raise RuntimeError("episodes: bind() the engine's tokenizer first")
        e = await self.fn(generate, list(prompt_ids), max_tokens, self.env)
        if not isinstance(e, EpisodeResult):
            raise TypeError(f"episode {self.cfg.kind}: returned {type(e).__name__}, not an "
                            "EpisodeResult")
        if len(e.response_ids) > max_tokens:
            raise ValueError(f"episode {self.cfg.kind}: {len(e.response_ids)} response tokens, "
                             f"more than the budget of {max_tokens}")
        return e

    def trajectory(self, e: EpisodeResult, **fields: Any) -> Trajectory:
        """The episode as a Trajectory (its text, decoded once, is what the grader reads)."""
        return Trajectory(response_ids=e.response_ids, behav_logprobs=e.behav_logprobs,
                          versions=e.versions, loss_mask=e.loss_mask,
                          finish_reason=e.finish_reason, num_interrupts=e.num_interrupts,
                          response_text=self._tokenizer.decode(e.response_ids,
                                                               skip_special_tokens=True),
                          finish_time=e.finish_time, turns=e.turns, tool_calls=e.tool_calls,
                          tool_errors=e.tool_errors, tool_s=e.tool_s, **fields)
