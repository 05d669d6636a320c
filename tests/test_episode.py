"""Multi-turn tool episodes (areal_sys/episode.py) driven by a scripted fake engine: segments and
loss masks, per-token versions across turns and interruptions, token ids carried through,
tool errors as results, and the budgets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from areal_sys.episode import PROTOCOLS, EpisodeEnv, parse_call, resolve_call_end, tool_use
from areal_sys.tools import ToolLimits

PLAIN = PROTOCOLS["plain"]
MARKERS = ["<eos>", "<call>", "</call>", "<result>", "</result>"]
VOCAB = MARKERS + list("0123456789+-*=#\n ()<>/_abcdefghijklmnopqrstuvwxyz':")
EOS, CALL_END = 0, VOCAB.index("</call>")


def encode(text: str) -> list[int]:
    """A character tokenizer whose markers are single tokens (like the tool task's model)."""
    ids, i = [], 0
    while i < len(text):
        m = next((m for m in MARKERS if text.startswith(m, i)), None)
        ids.append(VOCAB.index(m or text[i]))
        i += len(m or text[i])
    return ids


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


@dataclass
class FakeTurn:
    tokens: list[int]
    logprobs: list[float]
    versions: list[int]
    finish_reason: str
    num_interrupts: int = 0
    finish_time: float = 0.0


@dataclass
class ScriptedEngine:
    """Answers turn k with script[k] (text, version of each token, interruptions), stopping at the
    stop id or the budget like vLLM; records every context it was given."""

    script: list[tuple[str, list[int] | int, int]]
    contexts: list[list[int]] = field(default_factory=list)

    async def __call__(self, context: list[int], max_tokens: int, stop: list[int]) -> FakeTurn:
        text, versions, interrupts = self.script[len(self.contexts)]
        self.contexts.append(list(context))
        ids = encode(text)
        vers = versions if isinstance(versions, list) else [versions] * len(ids)
        finish = "stop"
        if len(ids) > max_tokens:
            ids, vers, finish = ids[:max_tokens], vers[:max_tokens], "length"
        lps = [-0.1 * (k + 1) for k in range(len(ids))]
        return FakeTurn(ids, lps, vers, finish, interrupts)


def episode(engine: ScriptedEngine, prompt: str = "12*34=", max_tokens: int = 64,
            max_turns: int = 4, tools: tuple[str, ...] = ("calculator",)):
    env = EpisodeEnv(encode, decode, tools, ToolLimits(), PLAIN, CALL_END, max_turns)
    return asyncio.run(tool_use(engine, encode(prompt), max_tokens, env))


def test_a_call_its_result_and_the_answer_make_three_segments() -> None:
    engine = ScriptedEngine([("<call>12*34</call>", 3, 0), ("#### 408<eos>", 4, 0)])
    ep = episode(engine)
    result = encode("<result>408</result>")
    call, answer = encode("<call>12*34</call>"), encode("#### 408<eos>")
    assert ep.response_ids == call + result + answer
    assert ep.loss_mask == [1] * len(call) + [0] * len(result) + [1] * len(answer)
    # result tokens: log-prob 0, the version of the model token before them
    assert ep.behav_logprobs[len(call): len(call) + len(result)] == [0.0] * len(result)
    assert ep.versions == [3] * len(call) + [3] * len(result) + [4] * len(answer)
    assert (ep.turns, ep.tool_calls, ep.tool_errors, ep.finish_reason) == (2, 1, 0, "stop")
    # the second turn continued from the exact ids: prompt + call + result, nothing re-tokenised
    assert engine.contexts == [encode("12*34="), encode("12*34=") + call + result]


def test_model_token_ids_are_carried_through_as_the_engine_gave_them() -> None:
    # "<call>" spelled as six character tokens: ids the tokenizer would never produce from the
    # text (it encodes "<call>" as one token). The turn is decoded only to read the call; the
    # next turn continues from these exact ids.
    odd = [VOCAB.index(c) for c in "<call>"] + encode("7*6") + [CALL_END]
    assert encode(decode(odd)) != odd
    contexts: list[list[int]] = []

    async def engine(context: list[int], max_tokens: int, stop: list[int]) -> FakeTurn:
        contexts.append(list(context))
        ids = odd if len(contexts) == 1 else encode("#### 42<eos>")
        return FakeTurn(ids, [-0.5] * len(ids), [1] * len(ids), "stop")

    env = EpisodeEnv(encode, decode, ("calculator",), ToolLimits(), PLAIN, CALL_END, 4)
    ep = asyncio.run(tool_use(engine, encode("7*6="), 64, env))
    result = encode("<result>42</result>")
    assert ep.response_ids == odd + result + encode("#### 42<eos>")
    assert contexts[1] == encode("7*6=") + odd + result


def test_versions_stay_per_token_across_interruptions_and_turns() -> None:
    # turn 1 was interrupted twice: its tokens carry versions 5, 6, 7; turn 2 runs on version 8
    call = "<call>123*456</call>"
    v1 = [5] * 3 + [6] * 4 + [7] * 2
    assert len(encode(call)) == len(v1)
    engine = ScriptedEngine([(call, v1, 2), ("#### 56088<eos>", 8, 1)])
    ep = episode(engine)
    n_res = len(encode("<result>56088</result>"))
    assert ep.versions == v1 + [7] * n_res + [8] * len(encode("#### 56088<eos>"))
    assert ep.num_interrupts == 3


def test_a_tool_error_is_a_result_the_model_reads() -> None:
    engine = ScriptedEngine([("<call>1//0</call>", 1, 0), ("<call>shell ls</call>", 1, 0),
                             ("#### 0<eos>", 1, 0)])
    ep = episode(engine, max_tokens=256, tools=("calculator", "python"))
    text = decode(ep.response_ids)
    assert "<result>error: unknown tool '1//0'</result>" in text  # two tools: a name is needed
    assert "<result>error: unknown tool 'shell'</result>" in text
    assert (ep.tool_calls, ep.tool_errors, ep.finish_reason) == (2, 2, "stop")
    engine = ScriptedEngine([("<call>1//0</call>", 1, 0), ("#### 0<eos>", 1, 0)])
    ep = episode(engine)  # one tool: the body is its argument
    assert "<result>error: division by zero</result>" in decode(ep.response_ids)
    assert ep.tool_errors == 1


def test_the_turn_budget_ends_the_episode_without_running_the_last_call() -> None:
    engine = ScriptedEngine([("<call>1+1</call>", 1, 0), ("<call>2+2</call>", 1, 0)])
    ep = episode(engine, max_turns=2)
    assert (ep.turns, ep.tool_calls, ep.finish_reason) == (2, 1, "length")
    assert decode(ep.response_ids) == "<call>1+1</call><result>2</result><call>2+2</call>"
    assert ep.loss_mask[-len(encode("<call>2+2</call>")):] == [1] * 5


def test_the_token_budget_counts_results_and_is_never_exceeded() -> None:
    call = encode("<call>99*99</call>")
    result = encode("<result>9801</result>")
    # room for the call and the result but not one more token: the result is not appended
    engine = ScriptedEngine([("<call>99*99</call>", 1, 0)])
    ep = episode(engine, max_tokens=len(call) + len(result))
    assert ep.response_ids == call and ep.finish_reason == "length"
    # a turn cut by the budget ends the episode as truncated
    engine = ScriptedEngine([("<call>1+1</call>", 1, 0), ("#### 2222222<eos>", 1, 0)])
    budget = len(encode("<call>1+1</call><result>2</result>")) + 3
    ep = episode(engine, max_tokens=budget)
    assert len(ep.response_ids) == budget and ep.finish_reason == "length"
    assert engine.contexts[1] == encode("12*34=") + encode("<call>1+1</call><result>2</result>")


def test_an_answer_without_a_call_is_single_turn() -> None:
    ep = episode(ScriptedEngine([("#### 408<eos>", 2, 0)]))
    assert (ep.turns, ep.tool_calls, ep.loss_mask) == (1, 0, [1] * len(encode("#### 408<eos>")))


def test_json_calls_and_the_call_end_token_check() -> None:
    qwen = PROTOCOLS["qwen"]
    assert parse_call('<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n'
                      '</tool_call>', qwen, ("calculator",)) == ("calculator", "6*7")
    with pytest.raises(ValueError, match="not JSON"):
        parse_call("<tool_call>6*7</tool_call>", qwen, ("calculator",))
    with pytest.raises(ValueError, match=r"no <call> before </call>"):
        parse_call("12*34</call>", PLAIN, ("calculator",))
    assert resolve_call_end(PLAIN, encode) == CALL_END
    with pytest.raises(ValueError, match="must be one token"):
        resolve_call_end(qwen, encode)


async def feedback_episode(generate, prompt_ids, max_tokens, env):
    """A plugin episode (`rollout.episode.kind: tests.test_episode:feedback_episode`): the model
    answers, the environment says whether the answer was even, and the model answers again."""
    from areal_sys.episode import EpisodeResult

    ep = EpisodeResult()
    first = await generate(prompt_ids, max_tokens, [])
    ep.add(first.tokens, first.logprobs, first.versions, trained=True)
    verdict = (await env.call("calculator", "2*3")).text  # tools are there for plugins too
    note = env.encode(f"={verdict}")
    ep.add(note, [0.0] * len(note), [first.versions[-1]] * len(note), trained=False)
    second = await generate(prompt_ids + ep.response_ids, max_tokens - len(ep.response_ids), [])
    ep.add(second.tokens, second.logprobs, second.versions, trained=True)
    ep.turns, ep.finish_reason = 2, second.finish_reason
    return ep


def test_a_plugin_episode_runs_with_the_worker_s_env() -> None:
    from workers.episodes import Episodes

    class Tok:
        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return encode(text)

        def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
            return decode(ids)

    episodes = Episodes({"kind": "tests.test_episode:feedback_episode", "protocol": "qwen"})
    episodes.bind(Tok())  # "</tool_call>" is no token here: a plugin gets call_end_id -1
    assert episodes.env is not None and episodes.env.call_end_id == -1
    engine = ScriptedEngine([("12", 1, 0), ("#### 6<eos>", 2, 0)])
    ep = asyncio.run(episodes.run(engine, encode("2*3="), 64))
    assert decode(ep.response_ids) == "12=6#### 6<eos>"
    assert ep.loss_mask == [1, 1, 0, 0] + [1] * len(encode("#### 6<eos>"))
    t = episodes.trajectory(ep, prompt_uid="p", group_id=0, prompt_ids=encode("2*3="))
    assert t.tool_tokens == 0 and t.turns == 2  # no tool call counted: the plugin's choice
    with pytest.raises(ValueError, match="more than the budget of 3"):
        asyncio.run(episodes.run(ScriptedEngine([("12", 1, 0), ("#### 6<eos>", 2, 0)]),
                                 encode("2*3="), 3))


def test_episode_kinds_are_built_in_or_an_importable_plugin() -> None:
    from areal_sys.config import ExperimentConfig
    from areal_sys.episode import load_episode, tool_use

    assert load_episode("tool_use") is tool_use
    assert load_episode("tests.test_episode:feedback_episode") is feedback_episode
    with pytest.raises(ValueError, match=r"cannot import 'no_such_pkg.mod': ModuleNotFound"):
        load_episode("no_such_pkg.mod:fn")
    with pytest.raises(ValueError, match="'tests.test_episode' has no callable 'nothing'"):
        load_episode("tests.test_episode:nothing")
    with pytest.raises(Exception, match="expected single_turn, tool_use or 'package.module:"):
        ExperimentConfig.model_validate({"rollout": {"episode": {"kind": "os.system"}}})
    cfg = ExperimentConfig.model_validate(
        {"rollout": {"episode": {"kind": "tests.test_episode:feedback_episode"}}})
    assert cfg.rollout.episode.multi_turn
