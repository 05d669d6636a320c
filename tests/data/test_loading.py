"""Dataset loading (synthetic, jsonl, parquet), its one-line errors, and prompt rendering."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from areal_sys.data.loading import DataError, PromptRow, load_rows, render_prompt
from areal_sys.data.synthetic import make_problems
from areal_sys.models.tiny import build_tokenizer

MAPPING = {"prompt_field": "question", "answer_field": "final", "uid_field": "id", "task": "math"}


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_synthetic_rows_match_the_generator() -> None:
    rows = load_rows("synthetic", split="eval", synthetic_size=10, seed=2)
    problems = make_problems(10, 2, "eval")
    assert rows == [PromptRow(p["uid"], p["prompt"], p["answer"], "synthetic") for p in problems]
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
        ([row(final=[1])], ":1: field 'final' must be a string or a number"),
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
