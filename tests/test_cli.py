"""The command line: exit code 2 and one line naming the field, before anything starts."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def areal_sys(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "areal_sys.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_validate_accepts_the_demo():
    res = areal_sys("validate", "configs/local_tiny.yaml", "trainer.total_steps=5")
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["configs/local_tiny.yaml", "trainer.nope=1"], "trainer.nope: unknown key"),
        (["configs/local_tiny.yaml", "trainer.total_steps=x"], "trainer.total_steps:"),
        (["configs/local_tiny.yaml", "controller.max_staleness=-2"], "controller.max_staleness:"),
        (["configs/local_tiny.yaml", "algorithm.name=bogus"], "algorithm.name:"),
        (["configs/local_tiny.yaml", "model.path=/no/such/model"], "model.path:"),
        (["configs/does_not_exist.yaml"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(command, args, needle):
    res = areal_sys(command, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


def test_yaml_syntax_error_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {total_steps: 3\n")
    res = areal_sys("run", str(bad))
    assert res.returncode == 2
    assert "YAML syntax error" in res.stderr


def test_algorithms_lists_presets_and_pieces(capsys):
    from areal_sys.algorithms.presets import PRESETS
    from areal_sys.algorithms.registry import REGISTRIES, plugins
    from areal_sys.cli import main

    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert f"  {name} " in out, name
    for kind in REGISTRIES:
        assert f"{kind} (algorithm." in out
        for name, plugin in plugins(kind).items():
            assert f"  {name} " in out and plugin.description in out, (kind, name)


def test_import_is_light():
    code = ("import sys, areal_sys, areal_sys.config, areal_sys.trajectory, areal_sys.cli; "
            "print(sorted(m for m in ('ray', 'vllm', 'deepspeed', 'torch') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip() == "[]", res.stderr


def test_bad_dataset_exits_2_before_anything_starts(tmp_path):
    missing = areal_sys("run", "configs/local_tiny.yaml", f"data.train={tmp_path}/none.jsonl")
    assert missing.returncode == 2
    assert missing.stderr.startswith("areal-sys: error: data.train:"), missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"question": "no prompt field"}\n')
    res = areal_sys("run", "configs/local_tiny.yaml", f"data.train={bad}")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.train:" in lines[0] and ":2" in lines[0], res.stderr
