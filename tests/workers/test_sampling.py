"""How the rollout worker reads the engine's streamed outputs (workers/sampling.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from workers.sampling import sampled_logprobs, sampling_params, token_versions


def test_token_versions_follow_the_engines_spans() -> None:
    span = lambda v, s, e: SimpleNamespace(version=v, start=s, end=e)  # noqa: E731
    assert token_versions("r", [span("3", 0, 2), span("4", 2, 5)], 5) == [3, 3, 4, 4, 4]
    assert token_versions("r", None, 0) == []
    for spans, n in (([span("3", 0, 2)], 3), ([span("3", 0, 2), span("4", 3, 4)], 3), (None, 2)):
        with pytest.raises(RuntimeError, match="do not cover"):
            token_versions("r", spans, n)


def flat(entries: list[list[tuple[int, float]]]):
    """vLLM's FlatLogprobs with the given (token, logprob) entries at each position."""
    from vllm.logprobs import FlatLogprobs, Logprob

    out = FlatLogprobs()
    for pos in entries:
        out.append({tok: Logprob(logprob=lp, rank=1) for tok, lp in pos})
    return out


def test_sampled_logprobs_read_the_flat_lists_of_a_delta() -> None:
    lps = flat([[(7, -0.5)], [(3, -1.25)], [(9, -0.0)]])
    assert sampled_logprobs("r", [7, 3, 9], lps) == [-0.5, -1.25, -0.0]
    assert sampled_logprobs("r", [3, 9], lps[1:]) == [-1.25, -0.0]  # a DELTA's slice
    assert sampled_logprobs("r", [], lps[:0]) == []


@pytest.mark.parametrize(
    "tokens, entries",
    [
        ([7, 3], [[(7, -0.5)]]),  # a position without its logprob
        ([7], [[(8, -0.5)]]),  # the logprob of another token
        ([7], [[(7, -0.5), (8, -2.0)]]),  # top-k entries beside the sampled one
    ],
)
def test_sampled_logprobs_refuse_what_does_not_match_the_tokens(tokens, entries) -> None:
    with pytest.raises(RuntimeError, match="logprobs for"):
        sampled_logprobs("r", tokens, flat(entries))
    with pytest.raises(RuntimeError, match="logprobs for 0 positions"):
        sampled_logprobs("r", tokens, None)


def test_sampling_params_ask_for_flat_sampled_logprobs_as_deltas() -> None:
    from vllm.sampling_params import RequestOutputKind

    p = sampling_params(12, temperature=0.7, top_p=0.9)
    assert (p.max_tokens, p.temperature, p.top_p, p.logprobs) == (12, 0.7, 0.9, 0)
    assert p.flat_logprobs and not p.detokenize and p.output_kind == RequestOutputKind.DELTA
