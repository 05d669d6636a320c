"""Multi-turn episodes with tool calls, token in / token out (`rollout.episode.kind: tool_use`).

An episode answers one prompt in turns. Each turn, the engine samples from the prompt and
everything so far until the model ends its answer (EOS), writes a tool call (the protocol's
`call_end` token, on which the engine stops), or the budget runs out. A call is parsed from the
turn's text, run (areal_sys/tools.py), and its result is appended as environment tokens; the next
turn continues from there. The response is one token sequence made of segments:

    model tokens      loss mask 1, the engine's behaviour log-probs, per-token versions
    result tokens     loss mask 0, log-prob 0.0, the version of the model token before them

Model tokens are carried as the engine's ids, never decoded and re-tokenised: a turn's text is
decoded only to read the call, and only a result's text is encoded (once). Interruptions for new
weights happen inside a turn (`generate` resumes it, RolloutWorker._sample), so each model token
keeps the version that sampled it; weights may also change between turns.

Budgets: `max_tokens` counts every response token, model and result; `max_turns` counts model
turns. An episode that runs out of either ends with finish_reason "length" (a truncated
response: the overlong filter treats it as such), a call it wrote last is not run.

Protocols (`PROTOCOLS`): `tiny` for the tiny tool model (`(12*34)` then `=408`: characters of
its vocabulary, areal_sys/data/tool_task.py), `plain` for a model whose vocabulary holds
`<call>`, `</call>`, `<result>`, `</result>` as tokens, `qwen` the markers Qwen2.5's
chat template renders for tool calls and tool messages (a JSON body `{"name": ..., "arguments":
...}`; the result closes the assistant turn and opens a user turn holding `<tool_response>`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from areal_sys.tools import ToolLimits, ToolResult, call_tool

__all__ = ["BUILTIN_EPISODES", "PROTOCOLS", "EpisodeEnv", "EpisodeResult", "ToolProtocol", "Turn",
           "load_episode", "parse_call", "resolve_call_end", "tool_use"]


@dataclass(frozen=True)
class ToolProtocol:
    call_start: str
    call_end: str  # must be a single token: the engine stops on it
    result_start: str
    result_end: str
    body: str  # "plain": "TOOL ARGS" (ARGS alone when one tool is offered); "json"


PROTOCOLS = {
    "tiny": ToolProtocol("(", ")", "=", "", "plain"),
    "plain": ToolProtocol("<call>", "</call>", "<result>", "</result>", "plain"),
    "qwen": ToolProtocol("<tool_call>", "</tool_call>",
                         "<|im_end|>\n<|im_start|>user\n<tool_response>\n",
                         "\n</tool_response><|im_end|>\n<|im_start|>assistant\n", "json"),
}


class Turn(Protocol):
    """What `generate` returns for one turn (workers/sampling.Sample has these fields)."""

    tokens: list[int]
    logprobs: list[float]
    versions: list[int]
    finish_reason: str
    num_interrupts: int
    finish_time: float


Generate = Callable[[list[int], int, list[int]], Awaitable[Turn]]  # (context, max, stop ids)


@dataclass
class EpisodeResult:
    response_ids: list[int] = field(default_factory=list)
    behav_logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    finish_reason: str = "length"
    num_interrupts: int = 0
    finish_time: float = 0.0
    turns: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    tool_s: float = 0.0

    def add(self, ids: Sequence[int], logprobs: Sequence[float], versions: Sequence[int],
            trained: bool) -> None:
        self.response_ids += ids
        self.behav_logprobs += logprobs
        self.versions += versions
        self.loss_mask += [int(trained)] * len(ids)


@dataclass(frozen=True)
class EpisodeEnv:
    """What an episode function gets besides `generate`: the tokenizer's `encode` / `decode`, the
    offered tools and their limits, the call protocol (`call_end_id`: the token the engine stops on
    when it is one token of the vocabulary, else -1) and the turn budget."""

    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    tools: tuple[str, ...]
    limits: ToolLimits
    protocol: ToolProtocol
    call_end_id: int
    max_turns: int

    async def call(self, name: str, args: str) -> ToolResult:
        """Run one offered tool; every failure is a result (areal_sys/tools.py)."""
        if name not in self.tools:
            return ToolResult(f"error: unknown tool {name[:40]!r}", False)
        return await call_tool(name, args, self.limits)


Episode = Callable[[Generate, list[int], int, EpisodeEnv], Awaitable[EpisodeResult]]


def load_episode(kind: str) -> Episode:
    """The episode function of `rollout.episode.kind`: `tool_use`, or a plugin
    'package.module:function' with `tool_use`'s signature (an `async` function of generate,
    prompt_ids, max_tokens, env returning an EpisodeResult). ValueError (one line) when a plugin
    cannot be imported or is not callable."""
    import importlib

    if kind in BUILTIN_EPISODES:
        return BUILTIN_EPISODES[kind]
    where, _, attr = kind.rpartition(":")
    try:
        module = importlib.import_module(where)
    except BaseException as e:  # noqa: BLE001 - any import failure means "no such episode"
        text = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot import {where!r}: {type(e).__name__}: {text}"[:300]) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{where!r} has no callable {attr!r}")
    return fn


def resolve_call_end(protocol: ToolProtocol, encode: Callable[[str], list[int]]) -> int:
    """The token id the engine stops on; ValueError (one line) when the tokenizer does not hold
    the protocol's `call_end` as one token."""
    ids = encode(protocol.call_end)
    if len(ids) != 1:
        raise ValueError(f"tool protocol: {protocol.call_end!r} must be one token of the model's "
                         f"tokenizer (it encodes to {len(ids)}); use a protocol whose markers "
                         "the tokenizer holds, or a model built with them")
    return ids[0]


def parse_call(text: str, protocol: ToolProtocol, tools: Sequence[str]) -> tuple[str, str]:
    """(tool name, argument text) of the call a turn's text ends with; a name the episode does not
    offer comes back as written, for `call_tool` to answer as unknown. ValueError (one line) for a
    call that cannot be read."""
    end = text.rfind(protocol.call_end)
    start = text.rfind(protocol.call_start, 0, end if end >= 0 else len(text))
    if start < 0:
        raise ValueError(f"no {protocol.call_start} before {protocol.call_end}")
    body = text[start + len(protocol.call_start): end if end >= 0 else len(text)].strip()
    if protocol.body == "json":
        try:
            call: Any = json.loads(body)
        except json.JSONDecodeError:
            raise ValueError("the call is not JSON") from None
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ValueError('the call needs {"name": ..., "arguments": ...}')
        args = call.get("arguments", "")
        if isinstance(args, dict):  # {"expression": ...} / {"code": ...}: its one string value
            strings = [v for v in args.values() if isinstance(v, str)]
            args = strings[0] if len(strings) == 1 else json.dumps(args)
        return call["name"], str(args)
    name, _, rest = body.partition(" ")
    if name in tools:
        return name, rest
    if len(tools) == 1:
        return tools[0], body
    return name, rest


async def tool_use(generate: Generate, prompt_ids: list[int], max_tokens: int,
                   env: EpisodeEnv) -> EpisodeResult:
    """The built-in `tool_use` episode; see the module docstring."""
    ep = EpisodeResult()
    while True:
        turn = await generate(prompt_ids + ep.response_ids, max_tokens - len(ep.response_ids),
                              [env.call_end_id])
        ep.turns += 1
        ep.num_interrupts += turn.num_interrupts
        ep.finish_time = turn.finish_time
        ep.add(turn.tokens, turn.logprobs, turn.versions, trained=True)
        called = turn.finish_reason == "stop" and turn.tokens[-1:] == [env.call_end_id]
        if not called:
            ep.finish_reason = turn.finish_reason
            return ep
        if ep.turns >= env.max_turns:
            ep.finish_reason = "length"
            return ep
        result = await _run_call(env.decode(turn.tokens), env)
        ep.tool_calls += 1
        ep.tool_errors += not result.ok
        ep.tool_s += result.seconds
        ids = env.encode(env.protocol.result_start + result.text + env.protocol.result_end)
        if len(ep.response_ids) + len(ids) >= max_tokens:  # no room left to answer after it
            ep.finish_reason = "length"
            return ep
        version = ep.versions[-1] if ep.versions else 0
        ep.add(ids, [0.0] * len(ids), [version] * len(ids), trained=False)


BUILTIN_EPISODES: dict[str, Episode] = {"tool_use": tool_use}


async def _run_call(text: str, env: EpisodeEnv) -> ToolResult:
    try:
        name, args = parse_call(text, env.protocol, env.tools)
    except ValueError as e:
        return ToolResult(f"error: {e}", False)
    return await env.call(name, args)
