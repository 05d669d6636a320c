"""What one sample of a rollout worker becomes: a single response (`single_turn`) or a tool
episode (`tool_use`, areal_sys/episode.py), as a Trajectory. Imports no engine."""

from __future__ import annotations

from typing import Any

from areal_sys.config.episode import EpisodeConfig
from areal_sys.episode import PROTOCOLS, EpisodeResult, Generate, resolve_call_end, run_tool_episode
from areal_sys.trajectory import Trajectory
from workers.sampling import Sample

__all__ = ["ToolEpisodes", "single_turn", "turns"]


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


class ToolEpisodes:
    """A worker's tool episodes: the config (`rollout.episode`) and, once `bind` has seen the
    engine's tokenizer, the id of the call-end token the engine stops on."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = EpisodeConfig(**cfg)
        self.protocol = PROTOCOLS[self.cfg.protocol]
        self.limits = self.cfg.limits()
        self._tokenizer: Any = None
        self._call_end = -1

    def bind(self, tokenizer: Any) -> None:
        """Raises ValueError (one line) when the tokenizer lacks the protocol's call-end token."""
        self._tokenizer = tokenizer
        self._call_end = resolve_call_end(self.protocol, self.encode)

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    async def run(self, generate: Generate, prompt_ids: list[int],
                  max_tokens: int) -> EpisodeResult:
        return await run_tool_episode(
            generate, list(prompt_ids), max_tokens, protocol=self.protocol,
            call_end_id=self._call_end, tools=tuple(self.cfg.tools), limits=self.limits,
            max_turns=self.cfg.max_turns, encode=self.encode, decode=self.decode)

    def trajectory(self, e: EpisodeResult, **fields: Any) -> Trajectory:
        """The episode as a Trajectory (its text, decoded once, is what the grader reads)."""
        return Trajectory(response_ids=e.response_ids, behav_logprobs=e.behav_logprobs,
                          versions=e.versions, loss_mask=e.loss_mask,
                          finish_reason=e.finish_reason, num_interrupts=e.num_interrupts,
                          response_text=self._tokenizer.decode(e.response_ids,
                                                               skip_special_tokens=True),
                          finish_time=e.finish_time, turns=e.turns, tool_calls=e.tool_calls,
                          tool_errors=e.tool_errors, tool_s=e.tool_s, **fields)
