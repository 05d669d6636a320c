"""The HTTP reward server for real: `areal-sys reward-serve` as a subprocess on a free loopback
port. Hostile programs (model outputs) are graded by the `code` grader; each containment case
asserts the answer comes within the item's limit plus a margin, that the program was contained,
and that the server is healthy and grading afterwards.

Programs that "succeed" at being contained print a marker the test case expects, so a reward of
1.0 means "the program ran and was blocked", not "the program never ran".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from areal_sys.ports import free_port
from reward_service.client import HttpRewardClient

pytestmark = pytest.mark.integration  # real processes: kept out of `make test-fast`

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-the-model-must-never-see-this"
ITEM_TIMEOUT_S = 4.0
WALL_S = 1.5  # sandbox limit per test case (--code-wall-s)
MARGIN_S = 2.0


def start_server(port: int, *extra: str, host: str = "127.0.0.1", token: str | None = None,
                 log: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`areal-sys reward-serve` on `port`, up and answering /health. Its output goes to `log`
    (a temporary file by default); `token` is put in $AREAL_SYS_REWARD_TOKEN."""
    env = {**os.environ, "AREAL_TEST_SECRET": SECRET, **(env or {})}
    env.pop("AREAL_SYS_SANDBOX_MODE", None)
    env.pop("AREAL_SYS_REWARD_TOKEN", None)
    if token is not None:
        env["AREAL_SYS_REWARD_TOKEN"] = token
    cmd = [sys.executable, "-m", "areal_sys.cli", "reward-serve", "--port", str(port),
           "--host", host, "--timeout-s", str(ITEM_TIMEOUT_S), "--code-wall-s", str(WALL_S),
           *extra]
    if log is None:
        log = Path(tempfile.mkstemp(prefix="reward-serve-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"reward-serve exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(f"{url}/health", headers=headers, timeout=1).raise_for_status()
            return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("reward-serve did not come up in 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    proc = start_server(port)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


def score(url: str, payload: Any, timeout: float = 60.0) -> Any:
    resp = httpx.post(f"{url}/score", json=payload, timeout=timeout)
    resp.raise_for_status()
    return resp.json()


def code_item(program: str, expected: str = "blocked", stdin: str = "", **kw: Any) -> dict:
    ref = {"tests": [{"input": stdin, "output": expected}]}
    return {"task": "code", "response": program, "reference": json.dumps(ref), **kw}


def sandbox_processes() -> list[int]:
    """Pids of sandboxed programs still alive (their command line ends in `prog.py`)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"prog.py" in cmd and b"-I" in cmd:
                pids.append(int(entry))
    return pids


def assert_healthy(url: str) -> None:
    health = httpx.get(f"{url}/health", timeout=5).json()
    assert health["status"] == "ok"
    ok = score(url, {"task": "math", "response": "\\boxed{12}", "reference": "12"})
    assert ok["ok"] and ok["reward"] == 1.0
    for _ in range(50):  # every process of a killed program is gone (reaped within moments)
        if not sandbox_processes():
            break
        time.sleep(0.1)
    assert sandbox_processes() == []


def timed(url: str, item: dict) -> tuple[dict, float]:
    """The item's result and the seconds it took. The client gives up at the item's timeout plus
    a margin, so a server that let a hostile program hold the request fails the test with a
    client timeout (an error, not a timed assertion: only a hang gets that far)."""
    t0 = time.monotonic()
    result = score(url, item, timeout=item.get("timeout_s", ITEM_TIMEOUT_S) + 10 * MARGIN_S)
    return result, time.monotonic() - t0


def test_health_reports_the_sandbox_mode_and_the_graders(server: str) -> None:
    health = httpx.get(f"{server}/health", timeout=5).json()
    assert health["status"] == "ok" and health["sandbox"] in ("namespaces", "uid", "rlimits")
    assert health["graders"] == ["code", "format", "math", "synthetic"]
    assert health["sandbox_safe"] == (health["sandbox"] == "namespaces")
    assert health["sandbox_safe"] == (health["sandbox_uncontained"] == "")


def test_math_in_several_notations(server: str) -> None:
    gsm = "48/2 = 24 clips in May, 48+24 = 72 in all.\n#### 72"
    cases = [
        ("so she sold 72 clips.\n#### 72", gsm, 1.0),
        ("The answer is \\boxed{72}.", gsm, 1.0),
        ("In total 48 + 24 = 72", gsm, 1.0),
        ("#### 71", gsm, 0.0),
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("$\\dfrac{6}{8}$", "\\boxed{\\frac{3}{4}}", 1.0),
        ("\\boxed{0.7}", "\\frac{3}{4}", 0.0),
        ("#### 1,250", "1250", 1.0),
    ]
    items = [{"task": "math", "response": r, "reference": ref} for r, ref, _ in cases]
    results = score(server, items)
    assert [r["reward"] for r in results] == [c[2] for c in cases]
    assert all(r["ok"] for r in results)


def test_code_passing_and_failing(server: str) -> None:
    adder = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    tests = {"tests": [{"input": "1 2\n", "output": "3"}, {"input": "40 2", "output": "42\n  "}]}
    ref = json.dumps(tests)
    items = [
        {"task": "code", "response": f"Here you go:\n{adder}\nDone.", "reference": ref},
        {"task": "code", "response": "print(3)", "reference": ref},  # passes one of two
        {"task": "code", "response": "print(3)",
         "reference": json.dumps({**tests, "reward": "all_or_nothing"})},
        {"task": "code", "response": "def f(:\n", "reference": ref},  # syntax error
        {"task": "code", "response": "print(1)", "reference": "not json"},
    ]
    results = score(server, items)
    assert [r["reward"] for r in results] == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert [r["ok"] for r in results] == [True, True, True, True, False]


def test_code_reference_as_a_json_object(server: str) -> None:
    tests = {"tests": [{"input": "1 2\n", "output": "3"}]}
    adder = "a, b = map(int, input().split())\nprint(a + b)"
    items = [{"task": "code", "response": adder, "reference": tests},
             {"task": "code", "response": adder, "reference": json.dumps(tests)},
             {"task": "code", "response": adder, "reference": [tests]}]
    results = score(server, items)
    assert [(r["ok"], r["reward"]) for r in results] == [(True, 1.0), (True, 1.0), (False, 0.0)]
    assert "string or a JSON object (list)" in results[2]["reason"]


def test_single_item_and_bad_requests(server: str) -> None:
    one = score(server, {"task": "synthetic", "response": "#### 4", "reference": "4"})
    assert set(one) == {"reward", "ok", "reason", "elapsed_s"} and one["reward"] == 1.0
    bad = score(server, [{"task": "math"}, {"task": "math", "response": "1", "reference": "1",
                                            "timeout_s": -1}])
    assert [r["ok"] for r in bad] == [False, False] and "timeout_s" in bad[1]["reason"]
    assert httpx.post(f"{server}/score", content=b"{nope", timeout=5).status_code == 400
    assert httpx.post(f"{server}/score", json=3, timeout=5).status_code == 400


# ---------------------------------------------------------------------------------------------
# containment


def test_infinite_loop(server: str) -> None:
    result, _ = timed(server, code_item("while True:\n    pass\n"))
    assert result["ok"] and result["reward"] == 0.0
    assert_healthy(server)


def test_fork_bomb(server: str) -> None:
    bomb = ("import os\nwhile True:\n    try:\n        os.fork()\n"
            "    except OSError:\n        pass\n")
    result, _ = timed(server, code_item(bomb))
    assert result["reward"] == 0.0
    assert_healthy(server)


def test_memory_hog(server: str) -> None:
    hog = "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n"
    result, _ = timed(server, code_item(hog))
    assert result["ok"] and result["reward"] == 0.0
    assert_healthy(server)


def test_100_mb_of_output(server: str) -> None:
    flood = ("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n"
             "    sys.stdout.write(chunk)\n")
    result, _ = timed(server, code_item(flood, expected="x" * 64))
    assert result["ok"] and result["reward"] == 0.0
    assert_healthy(server)


def test_sleeping_past_the_limits(server: str) -> None:
    # past the sandbox's wall clock: the test case fails, the item is graded
    result, waited = timed(server, code_item("import time\ntime.sleep(60)\n"))
    assert result["ok"] and result["reward"] == 0.0 and waited >= WALL_S
    # past the item's own limit: the grader process (and its sandbox) is killed
    item = code_item("import time\ntime.sleep(61)\n", timeout_s=1.0)  # not a cache hit
    result, _ = timed(server, item)
    assert (result["ok"], result["reason"]) == (False, "timeout")
    assert_healthy(server)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A world-writable directory outside the sandbox with one world-writable file in it."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "keep.txt").write_text("precious")
    os.chmod(tmp_path, 0o777)
    os.chmod(d, 0o777)
    os.chmod(d / "keep.txt", 0o666)
    return d


def test_writing_outside_the_sandbox_dir(server: str, outside: Path) -> None:
    target = outside / "escaped.txt"
    program = (f"try:\n    open({str(target)!r}, 'w').write('out')\n    print('wrote')\n"
               "except OSError:\n    print('blocked')\n"
               "open('mine.txt', 'w').write('own dir is writable')\n")
    result, _ = timed(server, code_item(program))
    assert result["reward"] == 1.0, result
    assert not target.exists()
    assert_healthy(server)


def test_deleting_files(server: str, outside: Path) -> None:
    keep = outside / "keep.txt"
    program = ("import os, shutil\nhits = 0\n"
               f"for p in ({str(keep)!r}, {str(ROOT / 'pyproject.toml')!r}):\n"
               "    try:\n        os.remove(p)\n        hits += 1\n    except OSError:\n"
               "        pass\n"
               f"shutil.rmtree({str(outside)!r}, ignore_errors=True)\n"
               "print('blocked' if hits == 0 else 'deleted')\n")
    result, _ = timed(server, code_item(program))
    assert result["reward"] == 1.0, result
    assert keep.read_text() == "precious" and (ROOT / "pyproject.toml").is_file()
    assert_healthy(server)


def test_environment_secret_does_not_leak(server: str) -> None:
    program = (
        "import os\nfound = [v for v in os.environ.values()]\n"
        "for pid in os.listdir('/proc'):\n"
        "    try:\n        found.append(open(f'/proc/{pid}/environ', 'rb').read().decode())\n"
        "    except Exception:\n        pass\n"
        f"print('ran')\nprint('\\n'.join(x for x in found if {SECRET[:10]!r} in x))\n"
    )
    result, _ = timed(server, code_item(program, expected="ran"))
    assert result["reward"] == 1.0, result  # the program ran and found nothing
    assert_healthy(server)


def test_no_connection_reaches_a_loopback_listener(server: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        program = ("import socket\ntry:\n"
                   f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).send(b'hi')\n"
                   "    print('connected')\nexcept OSError:\n    print('blocked')\n")
        result, _ = timed(server, code_item(program))
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert result["reward"] == 1.0, result
    assert_healthy(server)


# ---------------------------------------------------------------------------------------------
# the client the controller uses with reward.url


def test_client_scores_through_the_server(server: str) -> None:
    import asyncio

    client = HttpRewardClient(server, timeout_s=ITEM_TIMEOUT_S)

    async def go() -> list:
        items = [{"task": "synthetic", "response": "#### 9", "reference": "9"},
                 {"task": "math", "response": "#### 8", "reference": "9"}]
        got = await client.score(items)
        await client.shutdown()
        return got

    results = asyncio.run(go())
    assert [(r.ok, r.reward) for r in results] == [(True, 1.0), (True, 0.0)]


def test_client_unreachable_server_gives_failed_results() -> None:
    import asyncio

    client = HttpRewardClient(f"http://127.0.0.1:{free_port()}", retries=1)
    [r] = asyncio.run(client.score([{"task": "math", "response": "1", "reference": "1"}]))
    assert not r.ok and "ConnectError" in r.reason and "\n" not in r.reason
