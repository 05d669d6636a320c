"""Dataset loading (synthetic, jsonl, parquet), its one-line errors, and prompt rendering."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from areal_sys.data import chain
from areal_sys.data.loading import DataError, PromptRow, load_rows, render_prompt
from areal_sys.data.synthetic import make_problems
from areal_sys.models.tiny import build_tokenizer

MAPPING = {"prompt_field": "question", "answer_field": "final", "uid_field": "id", "task": "math"}


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_synthetic_rows_match_the_generator() -> None:
    rows = load_rows("synthetic", split="train", synthetic_size=10, seed=2)
    problems = make_problems(10, 2, "train")
    assert rows == [PromptRow(p["uid"], p["prompt"], p["answer"], "synthetic") for p in problems]
    rows = load_rows("synthetic", split="train", synthetic_size=4, seed=2,
                     synthetic_task="chain_tail")
    assert [r.prompt for r in rows] == [p["prompt"] for p in chain.make_problems(4, 2, "train",
                                                                                  "chain_tail")]


def test_the_synthetic_eval_set_is_the_same_whatever_the_seed() -> None:
    held = [load_rows("synthetic", split="eval", synthetic_size=10, seed=s) for s in (1, 2, 7)]
    assert held[0] == held[1] == held[2]
    assert [r.prompt for r in held[0]] == [p["prompt"] for p in make_problems(10, 1, "eval")]
    assert load_rows("synthetic", split="train", synthetic_size=10, seed=1) != load_rows(
        "synthetic", split="train", synthetic_size=10, seed=2)
    rows = load_rows("synthetic", split="train", synthetic_size=3, seed=2, task="math")
    assert [r.task for r in rows] == ["math"] * 3


def test_jsonl_field_mapping_row_task_and_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [
        json.dumps({"question": "What is 6*7?", "final": 42, "id": 7, "extra": [1]}),
        "",
        json.dumps({"question": "1+1=", "final": "2", "id": "b", "task": "synthetic"}),
        json.dumps({"question": "Half of 1?", "final": "\\frac{1}{2}", "id": "c"}),
    ])
    assert load_rows(str(path), **MAPPING) == [
        PromptRow("7", "What is 6*7?", "42", "math"),
        PromptRow("b", "1+1=", "2", "synthetic"),
        PromptRow("c", "Half of 1?", "\\frac{1}{2}", "math"),
    ]


def test_default_uid_is_the_row_index(tmp_path: Path) -> None:
    lines = [json.dumps({"prompt": f"{i}=", "answer": i}) for i in range(3)]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    assert [r.uid for r in load_rows(str(path))] == ["0", "1", "2"]


GOOD = json.dumps({"question": "q", "final": "1", "id": "a"})


def row(**fields: object) -> str:
    return json.dumps({"question": "q", "final": "1", "id": "a", **fields})



@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([GOOD, json.dumps({"final": "1", "id": "b"})], ":2: missing field 'question'"),
        ([row(question=5)], ":1: field 'question' must be a non-empty string"),
        ([row(question=" ")], ":1: field 'question' must be a non-empty string"),
        ([row(final=None)], ":1: missing field 'final'"),
        ([row(final=True)], ":1: field 'final' must be a string, a number, a JSON object"),
        ([json.dumps({"question": "q", "final": "1"})], ":1: missing field 'id'"),
        ([row(id=1.5)], ":1: field 'id' must be a string or an integer"),
        ([GOOD, "", GOOD], ":3: field 'id': duplicate 'a' (also "),
        ([GOOD, '{"question": "q", '], ":2: invalid JSON"),
        (["[1, 2]"], ":1: expected a JSON object, got list"),
        ([row(task=3)], ":1: field 'task'"),
        ([], ": no rows"),
        (["", "   "], ": no rows"),
    ],
)
def test_bad_jsonl_rows_raise_one_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        load_rows(str(path), **MAPPING)
    text = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in text
    assert text.startswith(str(path)) and message in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (GOOD.encode() + b'\n{"question": "q\xff", "final": "1", "id": "b"}\n',
         ":2: not UTF-8 text (byte 0xff at column 16)"),
        (b'{"question": "q", "final": NaN, "id": "a"}\n',
         ":1: field 'final': nan is not a finite number"),
        (b'{"question": "q", "final": -Infinity, "id": "a"}\n', ":1: field 'final': -inf"),
        (b'{"question": "q", "final": 1e999, "id": "a"}\n', ":1: field 'final': inf"),
        (b'{"question": "q", "final": {"tests": [1, NaN]}, "id": "a"}\n',
         ":1: field 'final.tests.1': nan"),
        (b'{"question": "q", "final": "1", "id": "a", "x": [Infinity]}\n', ":1: field 'x.0'"),
        (b'{"question": "q", "final": ' + b"9" * 5000 + b', "id": "a"}\n',
         ":1: invalid JSON: integer too long"),
        (b'{"question": "q", "final": ' + b"[" * 100_000 + b"]" * 100_000 + b', "id": "a"}\n',
         ":1: invalid JSON: nested too deep"),
        (GOOD.encode() + b"\n\xef\xbb\xbf" + GOOD.encode() + b"\n", ":2: invalid JSON"),
        (row(task="os:popen").encode(), ":1: field 'task': unknown grader 'os:popen'; registered: "
         "code, math"),
        (b'{"question": "q \\ud800", "final": "1", "id": "a"}\n',
         ":1: field 'question': a lone surrogate (\\ud800) is not text"),
    ],
)
def test_hostile_rows_raise_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_rows(str(path), **MAPPING, graders={"math", "code"})
    text = str(info.value)
    assert "\n" not in text and len(text) < 400, text
    assert text.startswith(str(path)) and message in text, text


def test_byte_order_mark_at_the_start_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")
    assert load_rows(str(path), **MAPPING) == [PromptRow("a", "q", "1", "math")]


def test_graders_none_checks_no_task_name(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [row(task="remote_only")])
    assert load_rows(str(path), **MAPPING)[0].task == "remote_only"  # reward.url: its own graders
    assert load_rows(str(path), **MAPPING, graders={"remote_only"})[0].task == "remote_only"


def test_code_references_may_be_json_objects(tmp_path: Path) -> None:
    tests = {"tests": [{"input": "1", "output": "2"}], "entry": "main"}
    path = write_jsonl(tmp_path / "code.jsonl", [
        json.dumps({"question": "Add one.", "final": tests, "id": "c1", "task": "code"}),
        json.dumps({"question": "List.", "final": [3, "x"], "id": "c2", "task": "code"}),
    ])
    rows = load_rows(str(path), **MAPPING)
    assert rows[0].reference == json.dumps(tests, sort_keys=True)
    assert json.loads(rows[0].reference) == tests and rows[1].reference == '[3, "x"]'
    assert rows[0].where == f"{path}:1"


def test_parquet_code_reference_and_nan(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    good = tmp_path / "code.parquet"
    tests = [{"tests": [{"input": "1", "output": "2"}]}]
    pq.write_table(pa.table({"question": ["q"], "final": tests, "id": ["a"]}), good)
    assert json.loads(load_rows(str(good), **MAPPING)[0].reference) == tests[0]
    bad = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"question": ["q"], "final": [float("nan")], "id": ["a"]}), bad)
    with pytest.raises(DataError, match=r"nan\.parquet:row 1: field 'final': nan is not a finite"):
        load_rows(str(bad), **MAPPING)


def test_not_a_regular_file(tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(DataError, match="not a regular file"):  # reading would block
        load_rows(str(tmp_path / "fifo.jsonl"))
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match="no such file"):
        load_rows(str(tmp_path / "dir.jsonl"))


def test_missing_file_and_unknown_type(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_rows(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_rows(str(tmp_path / "d.csv"))


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match="needs pyarrow.*pip install pyarrow"):
        load_rows(str(tmp_path / "d.parquet"))


def test_parquet_field_mapping_and_bad_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    good = tmp_path / "d.parquet"
    table = pa.table({"question": ["1+2=", "x?"], "final": ["3", "4"], "id": ["u", "v"]})
    pq.write_table(table, good)
    assert load_rows(str(good), **MAPPING) == [
        PromptRow("u", "1+2=", "3", "math"), PromptRow("v", "x?", "4", "math")
    ]
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"question": ["q", None], "final": ["1", "2"], "id": ["a", "b"]}), bad)
    with pytest.raises(DataError, match=r"bad\.parquet:row 2: missing field 'question'"):
        load_rows(str(bad), **MAPPING)
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        load_rows(str(tmp_path / "junk.parquet"), **MAPPING)


def test_render_prompt_format_template() -> None:
    tok = build_tokenizer()
    ids = render_prompt("({prompt})", "3+4=", tok)
    assert tok.decode(ids) == "(3+4=)"
    # other braces stay literal (e.g. "\\boxed{}"); the char tokenizer maps them to <unk>
    assert render_prompt("{prompt}{}", "1=", tok) == tok("1=")["input_ids"] + [tok.unk_token_id] * 2
    with pytest.raises(ValueError, match="must contain"):
        render_prompt("no placeholder", "1=", tok)


def test_render_prompt_chat_template() -> None:
    tok = build_tokenizer()
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        render_prompt("chat", "1+2=", tok)
    tok.chat_template = (
        "{% for m in messages %}# {{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '\\n' }}{% endif %}"
    )
    ids = render_prompt("chat", "1+2=", tok)
    assert tok.decode(ids) == "# 1+2=\n"
    assert ids == tok("# 1+2=\n", add_special_tokens=False)["input_ids"]


def test_render_prompt_gives_a_chat_template_the_episode_tools() -> None:
    from areal_sys.tools import TOOL_SCHEMAS

    tok = build_tokenizer()
    tok.chat_template = (  # digits and a few symbols: what the tiny vocabulary can spell
        "{% if tools %}{% for t in tools %}({{ t['function']['name'] | length }}){% endfor %}"
        "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    tools = [TOOL_SCHEMAS["calculator"], TOOL_SCHEMAS["python"]]
    assert tok.decode(render_prompt("chat", "1+2=", tok, tools)) == "(10)(6)1+2="
    assert tok.decode(render_prompt("chat", "1+2=", tok)) == "1+2="
