"""Hostile and careless input to `areal-sys validate|run`, through the real command line.

Every case ends with exit code 2 and one stderr line, runs no code the input names (a marker file
that the payload would create stays absent) and writes nothing (no run directory appears).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # the CLI in a subprocess: out of `make test-fast`

ROOT = Path(__file__).resolve().parents[2]


def areal_sys(*args: str | bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "areal_sys.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, errors="replace", timeout=120)


def refused(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("areal-sys: error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    """A module that creates `marker` when imported or called: the old grader loader ran any
    `module:function` or `/path/file.py:function` a task named."""
    marker = tmp_path / "marker"
    module = tmp_path / "evil.py"
    module.write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                      f"def grade(*a, **k):\n    open({str(marker)!r}, 'w').write('ran')\n")
    return module, marker


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_task_naming_code_is_refused_and_nothing_runs(tmp_path, payload, command):
    module, marker = payload
    run_dir = tmp_path / "run"
    for task in ("os:popen", f"{module}:grade", "builtins:open"):
        line = refused(areal_sys(command, "configs/local_tiny.yaml", f"data.task={task}",
                                 f"run_dir={run_dir}"))
        assert f"data.task: unknown grader {task!r}; registered: " in line
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "1+1=", "answer": "2"}\n'
                    f'{{"prompt": "2+2=", "answer": "4", "task": "{module}:grade"}}\n')
    line = refused(areal_sys(command, "configs/local_tiny.yaml", f"data.train={rows}",
                             f"run_dir={run_dir}"))
    assert f"data.train: {rows}:2: field 'task': unknown grader" in line
    assert not marker.exists() and not run_dir.exists()


def test_yaml_object_tags_build_nothing(tmp_path, payload):
    _, marker = payload
    config = tmp_path / "c.yaml"
    config.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert "YAML error" in refused(areal_sys("run", str(config)))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "the file is empty"),
        (b"trainer:\n  total_steps: yes\n", "trainer.total_steps: Input should be a valid integer"),
        (b"seed: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "YAML nested too deep"),
        (b"seed: " + b"1" * 5000 + b"\n", "line 1: YAML error: integer too long"),
        (b"run_dir: '\xc3\x28'\n", "line 1: not UTF-8 text (byte 0xc3)"),
        (b'run_dir: "runs/a\\0b"\n', "run_dir: must not contain a NUL byte"),
        (b"trainer: [1, 2]\n", "trainer: must be a mapping of keys"),
    ],
)
def test_malformed_config_files(tmp_path, content, needle):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    assert needle in refused(areal_sys("run", str(config)))


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("trainer.lr=inf", "trainer.lr: Input should be a finite number"),
        ("reward.correct_reward=nan", "reward.correct_reward: Input should be a finite number"),
        ("rollout.temperature=inf", "rollout.temperature: Input should be a finite number"),
        ("algorithm.kl_coef=inf", "algorithm.kl_coef: Input should be a finite number"),
        ("seed=" + "7" * 5000, "seed: Input should be a valid integer"),
        ("seed=" + "[" * 60_000 + "]" * 60_000, "nested too deep"),
        (b"trainer.total_steps=\xff", "trainer.total_steps: Input should be a valid integer"),
    ],
)
def test_hostile_overrides(override, needle):
    assert needle in refused(areal_sys("validate", "configs/local_tiny.yaml", override))


def test_config_paths_that_are_no_file(tmp_path):
    import os

    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it for reading would block forever
    assert "is not a regular file" in refused(areal_sys("validate", str(fifo)))
    assert "is a directory" in refused(areal_sys("validate", str(tmp_path)))


def test_control_characters_in_values_stay_on_one_line(tmp_path):
    (tmp_path / "a\nb").mkdir()
    (tmp_path / "a\nb" / "metrics.jsonl").write_text("{}\n")
    config = tmp_path / "c.yaml"  # a quoted YAML escape (an override's newline folds to a space)
    config.write_text(f'run_dir: "{tmp_path}/a\\nb"\n')
    line = refused(areal_sys("run", str(config)))
    assert "a\\nb holds an earlier run" in line
    line = refused(areal_sys("run", "configs/local_tiny.yaml", "data.train=\x1b[31mx.jsonl",
                             f"run_dir={tmp_path}/run"))
    assert "\x1b" not in line and "\\x1b[31mx.jsonl: no such file" in line
