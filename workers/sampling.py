"""What the rollout worker keeps per sample, and how it reads the engine's streamed outputs: the
requests' SamplingParams, the sampled tokens' log-probs (flat lists), per-token versions from the
engine's weight-version spans. Imports vLLM only inside `sampling_params`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Sample", "sampled_logprobs", "sampling_params", "token_versions"]


def token_versions(req_id: str, spans: list[Any] | None, num_tokens: int) -> list[int]:
    """Per-token policy versions of one finished request from the engine's weight-version spans
    (`CompletionOutput.weight_versions`: output tokens [start, end) sampled by weights labelled
    `version`). Fails loudly when they do not cover the request's tokens exactly."""
    spans = spans or []
    starts = [sp.start for sp in spans]
    if starts != [0, *(sp.end for sp in spans)][: len(starts)] or (
        (spans[-1].end if spans else 0) != num_tokens
    ):
        raise RuntimeError(f"{req_id}: the engine's weight-version spans {spans} do not cover its "
                           f"{num_tokens} tokens")
    versions: list[int] = []
    for sp in spans:
        versions += [int(sp.version)] * (sp.end - sp.start)
    return versions


def sampling_params(max_tokens: int, temperature: float, top_p: float,
                    stop_ids: list[int] | None = None) -> Any:
    """The SamplingParams of every request: the sampled token's log-prob only, in flat lists
    (`flat_logprobs`: no dict + `Logprob` object per token), streamed as deltas, no detokenising
    (the text is decoded once at the end). `stop_ids`: tokens that end the request besides EOS
    (a tool call's end marker), kept in its output."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                          logprobs=0, flat_logprobs=True, detokenize=False,
                          stop_token_ids=stop_ids or None, output_kind=RequestOutputKind.DELTA)


def sampled_logprobs(req_id: str, new: list[int], lps: Any) -> list[float]:
    """The sampled tokens' behaviour log-probs from one streamed delta. With `logprobs=0` and
    `flat_logprobs=True` the engine sends one entry per position in flat lists (vLLM's
    `FlatLogprobs`: no dict or `Logprob` object per token), so this is a list copy, checked."""
    if lps is None or len(lps) != len(new) or lps.token_ids != new or len(lps.logprobs) != len(new):
        raise RuntimeError(f"{req_id}: {len(new)} tokens but logprobs for "
                           f"{0 if lps is None else len(lps)} positions")
    return lps.logprobs


@dataclass
class Sample:
    """One response being generated: what is kept across interruptions."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    num_interrupts: int = 0
    finish_time: float = 0.0
