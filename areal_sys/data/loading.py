"""Prompt datasets for training and evaluation: the synthetic task or a local .jsonl/.parquet file.

Field names mirror `DataConfig`: `prompt_field`, `answer_field`, `uid_field`, `task`. A row may
carry its own `task` (a grader name, see `reward_service.graders`); otherwise `task` applies.
Every problem in a file is a `DataError` whose one-line message names `file:line` (jsonl) or
`file:row N` (parquet, 1-based) and the field, so a bad dataset fails before anything starts:
bytes that are not UTF-8, JSON that is invalid, nested too deep or holds an integer too long to
convert, NaN or an infinity anywhere in a row (JSON has neither; Python's parser accepts them), a
row `task` that is no registered grader. A UTF-8 byte-order mark at the start of a .jsonl file is
accepted (editors add it). An answer that is a JSON object or list (a code dataset's tests) becomes
the reference as JSON with sorted keys; the grader of its task parses it.
"""

from __future__ import annotations

import json
import math
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROW_TASK_FIELD = "task"


class DataError(ValueError):
    """A dataset problem, reported as one line naming the file, line/row and field."""


@dataclass(frozen=True)
class PromptRow:
    """One prompt: `reference` is what the grader of `task` compares responses against."""

    uid: str
    prompt: str
    reference: str
    task: str
    where: str = field(default="", compare=False)  # "file:line" / "file:row N" for messages


def load_rows(
    source: str,
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    uid_field: str | None = None,
    task: str = "synthetic",
    split: str = "train",
    synthetic_size: int = 4096,
    synthetic_task: str = "first_decision",
    seed: int = 1,
    graders: Collection[str] | None = None,
) -> list[PromptRow]:
    """Rows of `source`: "synthetic" (`synthetic_size` problems of `split` of the built-in
    `synthetic_task`) or a file.

    Synthetic train rows are drawn with `seed`; the synthetic eval split is one fixed held-out
    set (`synthetic.EVAL_SEED`), the same whatever the run's seed, so runs that differ only in
    their seed are evaluated on the same problems. For a file, `split` and `synthetic_size` are
    ignored; uids are the `uid_field` values (must be
    unique) or the 0-based row index. `graders`: the task names a row may give (None: no check,
    e.g. a remote reward service that knows its own). Raises DataError.
    """
    if source == "synthetic":
        from areal_sys.data import chain, synthetic, tool_task

        seed = synthetic.EVAL_SEED if split == "eval" else seed
        if synthetic_task == "first_decision":
            rows = synthetic.make_problems(synthetic_size, seed, split)
        elif synthetic_task == "tool_mul":
            rows = tool_task.make_problems(synthetic_size, seed, split)
        else:
            rows = chain.make_problems(synthetic_size, seed, split, synthetic_task)
        return [PromptRow(uid=r["uid"], prompt=r["prompt"], reference=r["answer"], task=task)
                for r in rows]
    path = Path(source).expanduser()
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):  # missing, unreachable, or a NUL byte in the path
        mode = None
    if mode is None or stat.S_ISDIR(mode):
        raise DataError(f"{source}: no such file (expected 'synthetic' or a .jsonl/.parquet file)")
    if not stat.S_ISREG(mode):
        raise DataError(f"{source}: not a regular file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = _read_jsonl(path)
    elif suffix == ".parquet":
        records = _read_parquet(path)
    else:
        raise DataError(f"{source}: unsupported file type {suffix!r} (use .jsonl or .parquet)")
    rows: list[PromptRow] = []
    seen: dict[str, str] = {}
    for index, (where, record) in enumerate(records):
        try:
            _check_finite(where, record)
            row = _to_row(where, index, record, prompt_field, answer_field, uid_field, task)
        except RecursionError:
            raise DataError(f"{where}: nested too deep") from None
        if graders is not None and row.task not in graders:
            raise DataError(f"{where}: field {ROW_TASK_FIELD!r}: unknown grader {row.task!r:.60}; "
                            f"registered: {', '.join(sorted(graders))}")
        if row.uid in seen:
            first = seen[row.uid]
            raise DataError(f"{where}: field {uid_field!r}: duplicate {row.uid!r} (also {first})")
        seen[row.uid] = where
        rows.append(row)
    if not rows:
        raise DataError(f"{source}: no rows")
    return rows


def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    records = []
    try:
        f = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                f"{e.start + 1})") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            records.append((where, _parse_json(where, line)))
    return records


def _parse_json(where: str, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: invalid JSON: nested too deep") from None
    except ValueError:  # Python's int-string limit (4300 digits)
        raise DataError(f"{where}: invalid JSON: integer too long") from None


def _check_finite(where: str, record: Any, path: str = "") -> None:
    """Refuse NaN and infinities anywhere in a row, naming the field (json.loads accepts them),
    and text that is not Unicode (a lone surrogate such as the JSON escape \\ud800, which no
    tokenizer or UTF-8 encoder takes)."""
    if isinstance(record, float) and not math.isfinite(record):
        raise DataError(f"{where}: field {path or 'row'!r}: {record} is not a finite number")
    if isinstance(record, str):
        try:
            record.encode("utf-8")
        except UnicodeEncodeError as e:
            bad = f"\\u{ord(record[e.start]):04x}"
            raise DataError(f"{where}: field {path or 'row'!r}: a lone surrogate ({bad}) is not "
                            "text") from None
    items: Any = ()
    if isinstance(record, dict):
        items = record.items()
    elif isinstance(record, list | tuple):
        items = enumerate(record)
    for key, value in items:
        _check_finite(where, value, f"{path}.{key}" if path else str(key))


def _read_parquet(path: Path) -> list[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path}: reading .parquet needs pyarrow, which is not installed (pip install pyarrow)"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable parquet file: {e}") from None
    return [(f"{path}:row {i + 1}", rec) for i, rec in enumerate(table.to_pylist())]


def _to_row(
    where: str,
    index: int,
    record: Any,
    prompt_field: str,
    answer_field: str,
    uid_field: str | None,
    task: str,
) -> PromptRow:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    prompt = _field(where, record, prompt_field)
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(
            f"{where}: field {prompt_field!r} must be a non-empty string, got {prompt!r:.40}"
        )
    answer = _field(where, record, answer_field)
    if isinstance(answer, dict | list):  # e.g. {"tests": [...]} of a code dataset
        try:
            reference = canonical_reference(answer)
        except (TypeError, ValueError) as e:  # parquet: keys or values JSON cannot hold
            msg = f"{where}: field {answer_field!r}: not JSON-serialisable: {e}"
            raise DataError(msg) from None
    elif isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise DataError(f"{where}: field {answer_field!r} must be a string, a number, a JSON "
                        f"object or a list, got {answer!r:.40}")
    else:
        reference = str(answer)
    uid: Any = index
    if uid_field is not None:
        uid = _field(where, record, uid_field)
        if isinstance(uid, bool) or not isinstance(uid, str | int):
            raise DataError(f"{where}: field {uid_field!r} must be a string or an integer")
    row_task = record.get(ROW_TASK_FIELD, task)
    if not isinstance(row_task, str) or not row_task:
        raise DataError(f"{where}: field {ROW_TASK_FIELD!r} must be a grader name (string)")
    return PromptRow(uid=str(uid), prompt=prompt, reference=reference, task=row_task, where=where)


def _field(where: str, record: dict[str, Any], name: str) -> Any:
    if name not in record or record[name] is None:
        have = ", ".join(sorted(map(str, record))[:8])
        raise DataError(f"{where}: missing field {name!r} (row has: {have})")
    return record[name]


def canonical_reference(reference: str | dict | list) -> str:
    """A reference as the graders see it: a string as it is; a JSON object or list (a code
    dataset's tests) as canonical JSON (sorted keys, no NaN), so that equal objects are one
    reference whether they come from a dataset row or an HTTP item. Raises TypeError or
    ValueError for what JSON cannot hold."""
    if isinstance(reference, dict | list):
        return json.dumps(reference, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return reference


def render_prompt(template: str, prompt: str, tokenizer: Any,
                  tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of `prompt` rendered with `template` (`DataConfig.prompt_template`).

    `template` is "chat" (the tokenizer's chat template, one user turn, generation prompt added;
    no extra special tokens; `tools`, JSON schemas of the episode's tools, go to the template,
    which describes them to the model) or text containing `{prompt}`, which is replaced by the
    prompt; other braces are kept literally (so "... \\boxed{}" works). Text templates are
    tokenized with the tokenizer's special tokens (e.g. a BOS), as vLLM does for a text prompt.
    """
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt_template 'chat' needs a tokenizer with a chat template")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tools=tools, tokenize=False,
            add_generation_prompt=True,
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if "{prompt}" not in template:
        raise ValueError(f"prompt_template {template!r} must contain '{{prompt}}' or be 'chat'")
    text = template.replace("{prompt}", prompt)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])
