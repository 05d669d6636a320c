"""Nothing a client says becomes code: the HTTP reward server grades with registered graders only.

The server (`areal-sys reward-serve`, a real subprocess) registers its plugins the two ways an owner
can: a run's `reward.graders` section (`--config`) and `--grader NAME=module:function`. Each
payload that once ran code (`os:popen`, `builtins:open`, `shutil:rmtree`, `os:getenv`, a plugin
file by path) is refused with a 400 naming the registered graders, and a canary file and
directory outside the server are unchanged afterwards; no answer carries the secret of the
server's environment, not even one a registered grader returns.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from areal_sys.config.reward import RewardConfig
from areal_sys.ports import free_port
from tests.reward_service.fake_graders import FAKE_MODULE
from tests.reward_service.test_http import ROOT, SECRET, start_server, stop_server

pytestmark = pytest.mark.integration  # real processes: kept out of `make test-fast`

GRADERS = ["code", "fake_secret", "fake_slow", "format", "math", "synthetic"]


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with one file in it, which no request may change."""
    d = tmp_path_factory.mktemp("canary")
    (d / "keep.txt").write_text("precious")
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    run_yaml = tmp_path_factory.mktemp("run") / "run.yaml"
    run_yaml.write_text(
        "model:\n  path: tiny\nreward:\n  timeout_s: 4.0\n"
        f"  graders:\n    fake_secret: {FAKE_MODULE}:fake_secret\n")
    port = free_port()
    proc = start_server(port, "--config", str(run_yaml),
                        "--grader", f"fake_slow={FAKE_MODULE}:fake_slow")
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def post(url: str, payload: Any) -> httpx.Response:
    return httpx.post(f"{url}/score", json=payload, timeout=60)


def assert_unchanged(canary: Path) -> None:
    assert sorted(p.name for p in canary.iterdir()) == ["keep.txt"]
    assert (canary / "keep.txt").read_text() == "precious"


def payloads(canary: Path, plugin: Path) -> list[dict[str, str]]:
    keep = str(canary / "keep.txt")
    return [
        {"task": "os:popen", "response": f"touch {canary}/pwned; rm -rf {canary}",
         "reference": "r"},
        {"task": "builtins:open", "response": keep, "reference": "w"},
        {"task": "shutil:rmtree", "response": str(canary), "reference": ""},
        {"task": "os:getenv", "response": "AREAL_TEST_SECRET", "reference": ""},
        {"task": "os:system", "response": f"touch {canary}/pwned", "reference": ""},
        {"task": f"{plugin}:grade", "response": "x", "reference": "y"},
        {"task": f"{FAKE_MODULE}:fake_secret", "response": "x", "reference": "y"},
        {"task": "reward_service.graders:grade_math", "response": "1", "reference": "1"},
    ]


@pytest.fixture
def plugin(tmp_path: Path, canary: Path) -> Path:
    """A plugin file that, if it were ever imported, would write into the canary directory."""
    path = tmp_path / "evil_plugin.py"
    path.write_text(f"open({str(canary / 'imported')!r}, 'w').write('ran')\n"
                    "def grade(response, reference):\n    return 1.0\n")
    return path


def test_every_code_payload_is_refused_and_changes_nothing(server: str, canary: Path,
                                                           plugin: Path) -> None:
    for payload in payloads(canary, plugin):
        for body in (payload, [payload], [{"task": "math", "response": "1", "reference": "1"},
                                          payload]):
            resp = post(server, body)
            assert resp.status_code == 400, (payload["task"], resp.text)
            detail = resp.json()["detail"]
            assert detail.startswith("unknown task") and str(GRADERS) in detail
            assert SECRET not in resp.text
    assert_unchanged(canary)
    health = httpx.get(f"{server}/health", timeout=5).json()
    assert health["graders"] == GRADERS and health["items"] == 0  # nothing was graded


def test_task_names_that_are_not_graders(server: str, canary: Path) -> None:
    for task in ("../../etc/passwd", "__import__('os').system('id')", "math ", "MATH", ""):
        resp = post(server, {"task": task, "response": "1", "reference": "1"})
        assert resp.status_code == 400 and "registered graders" in resp.json()["detail"]
    [bad] = post(server, [{"task": 5, "response": "1", "reference": "1"}]).json()
    assert not bad["ok"] and "'task' must be a string" in bad["reason"]
    assert_unchanged(canary)


def test_a_graders_return_value_never_reaches_the_client(server: str) -> None:
    resp = post(server, {"task": "fake_secret", "response": "x", "reference": "y"})
    assert resp.status_code == 200 and SECRET not in resp.text
    answer = resp.json()
    assert not answer["ok"] and "returned str" in answer["reason"]


def test_registered_plugins_grade(server: str) -> None:
    answer = post(server, {"task": "fake_slow", "response": "x", "reference": "0.01"}).json()
    assert (answer["ok"], answer["reward"]) == (True, 1.0)


@pytest.mark.parametrize(
    ("graders", "match"),
    [
        ({"evil": "/tmp/evil.py:grade"}, "is not 'package.module:function'"),
        ({"evil": "os"}, "is not 'package.module:function'"),
        ({"a:b": "os:getenv"}, "no ':' or '/'"),
        ({"math": f"{FAKE_MODULE}:fake_slow"}, "is a built-in grader"),
    ],
)
def test_reward_graders_section_is_validated(graders: dict[str, str], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        RewardConfig(graders=graders)


def test_plugins_that_do_not_load_stop_the_server_at_start(tmp_path: Path) -> None:
    for spec, match in [("fake_x=no_such_module_q:fn", "cannot import 'no_such_module_q'"),
                        (f"fake_x={FAKE_MODULE}:no_such_fn", "has no callable 'no_such_fn'"),
                        ("fake_x=os:popen:x", "is not 'package.module:function'"),
                        ("fake_x", "expected NAME=package.module:function")]:
        res = subprocess.run([sys.executable, "-m", "areal_sys.cli", "reward-serve", "--port",
                              str(free_port()), "--grader", spec], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, res.stderr
        assert lines[0].startswith("areal-sys: error: ") and match in lines[0]


def test_config_and_flags_are_one_surface(tmp_path: Path) -> None:
    """A run's reward section and reward-serve's flags give the same RewardConfig."""
    from reward_service.cli import build_config

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("reward:\n  timeout_s: 3.0\n  code_wall_s: 1.0\n  num_procs: 2\n")
    cfg = build_config(["--config", str(run_yaml), "--num-procs", "3", "--grader",
                        f"fake_slow={FAKE_MODULE}:fake_slow"])
    assert (cfg.timeout_s, cfg.code_wall_s, cfg.num_procs) == (3.0, 1.0, 3)
    assert cfg.grader_names() == ["code", "fake_slow", "format", "math", "synthetic"]
    assert json.loads(cfg.model_dump_json())["graders"] == {"fake_slow": f"{FAKE_MODULE}:fake_slow"}
