"""The HTTP reward server exposed to hostile and careless clients, for real.

One `areal-sys reward-serve` subprocess bound to every interface with a token (how `reward.url`
reaches it across nodes) serves the module: auth, limits (each a 4xx with one clear line), a
disconnect storm, 200 concurrent slow requests with /health still fast. Bad command lines are
one line on stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from areal_sys.ports import free_port
from reward_service.client import HttpRewardClient
from tests.reward_service.fake_graders import FAKE_MODULE
from tests.reward_service.test_http import ROOT, start_server, stop_server

pytestmark = pytest.mark.integration  # real processes: kept out of `make test-fast`

TOKEN = "t0k3n-for-tests-only"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STORM = 40


class Server:
    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"

    def post(self, body: Any = None, *, content: bytes | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(f"{self.url}/score", json=body, content=content,
                          headers=AUTH if headers is None else headers, timeout=60)

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/health", headers=AUTH, timeout=10).json()

    def raw(self, head: bytes, body: bytes = b"") -> bytes:
        """Send raw bytes on one connection and return the server's answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
            s.sendall(head + body)
            data = b""
            while True:
                header, sep, rest = data.partition(b"\r\n\r\n")
                size = re.search(rb"content-length: (\d+)", header, re.IGNORECASE)
                if sep and size and len(rest) >= int(size.group(1)):
                    return data
                chunk = s.recv(65536)
                if not chunk:
                    return data
                data += chunk


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    port = free_port()
    proc = start_server(
        port, "--grader", f"fake_slow={FAKE_MODULE}:fake_slow",
        "--grader", f"fake_count={FAKE_MODULE}:fake_count", "--num-procs", "2",
        "--max-concurrency", "4", "--max-body-mb", "1", "--max-items", "1000",
        "--max-json-depth", "16", "--max-response-mb", "1", "--max-concurrent-requests", "32",
        host="0.0.0.0", token=TOKEN, log=log)
    yield Server(port, log)
    stop_server(proc)


def item(task: str = "synthetic", response: str = "#### 4", reference: str = "4") -> dict:
    return {"task": task, "response": response, "reference": reference}


# ---------------------------------------------------------------------------------------------
# auth


def test_a_token_is_required_off_loopback(server: Server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"bearer {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        resp = server.post(item(), headers=headers)
        assert resp.status_code == 401 and "token" in resp.json()["detail"]
        assert httpx.get(f"{server.url}/health", headers=headers, timeout=5).status_code == 401
    ok = server.post(item())
    assert ok.status_code == 200 and ok.json()["reward"] == 1.0


def test_the_client_sends_the_token(server: Server) -> None:
    async def go(token: str | None) -> list:
        client = HttpRewardClient(server.url, token=token, retries=0)
        got = await client.score([item()])
        await client.shutdown()
        return got

    [good] = asyncio.run(go(TOKEN))
    [bad] = asyncio.run(go(None))
    assert (good.ok, good.reward) == (True, 1.0)
    assert not bad.ok and "HTTP 401" in bad.reason


def test_no_token_off_loopback_refuses_to_start() -> None:
    res = subprocess.run([sys.executable, "-m", "areal_sys.cli", "reward-serve", "--host",
                          "0.0.0.0", "--port", str(free_port())], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1
    assert "needs a token" in lines[0] and lines[0].startswith("areal-sys: error:")


# ---------------------------------------------------------------------------------------------
# limits: a 4xx answer with one clear line each


def _status_and_detail(raw: bytes) -> tuple[int, str]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["detail"]


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper than 16 levels"),
        (b"{" * 5000, 400, "nested deeper than 16 levels"),
        (b'{"task": "math", "response": "1", "reference": "1", "timeout_s": '
         + b"9" * 5000 + b"}", 400, "integer with 5000 digits"),
        (b'{"task": "math", "response": "1", "reference": "1", "timeout_s": 1e999}', 400,
         "out of range"),
        (b'{"task": "math", "response": "1", "reference": "1", "timeout_s": NaN}', 400,
         "NaN is not a number"),
        (b'{"task": "math", "response": "\xff\xfe", "reference": "1"}', 400, "not JSON"),
        (b"{nope", 400, "not JSON"),
        (b"3", 400, "an item object or a non-empty list"),
        (b"[]", 400, "an item object or a non-empty list"),
        (json.dumps([item()] * 1001).encode(), 413, "1001 items; at most 1000"),
        (json.dumps([item()] * 600).encode(), 413, "an answer could exceed 1 MB"),
    ],
)
def test_limits_answer_4xx(server: Server, body: bytes, status: int, detail: str) -> None:
    resp = server.post(content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == status, resp.text
    assert detail in resp.json()["detail"] and "\n" not in resp.json()["detail"]


def test_body_size_is_checked_while_streaming(server: Server) -> None:
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    declared = (b"POST /score HTTP/1.1\r\nHost: x\r\n" + auth
                + b"Content-Length: 50000000\r\n\r\n")
    assert _status_and_detail(server.raw(declared)) == (413, "body over 1 MB")
    chunked = b"POST /score HTTP/1.1\r\nHost: x\r\n" + auth + b"Transfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % (256 << 10) + b" " * (256 << 10) + b"\r\n"
    over = chunk * 4 + b"400\r\n" + b" " * 1024 + b"\r\n"  # 1 MB + 1 KB, never terminated
    assert _status_and_detail(server.raw(chunked, over)) == (413, "body over 1 MB")
    assert server.post(item()).status_code == 200


def test_item_timeouts_are_clamped(server: Server) -> None:
    tiny = [{**item("fake_slow", f"tiny{i}", "0.05"), "timeout_s": 1e-9} for i in range(6)]
    restarts = server.health()["restarts"]
    answers = server.post(tiny).json()
    assert all(a["ok"] and a["reward"] == 1.0 for a in answers)  # raised to the lower bound
    assert server.health()["restarts"] == restarts
    huge = server.post({**item(), "timeout_s": 1e300}).json()
    assert huge["ok"] and huge["reward"] == 1.0


# ---------------------------------------------------------------------------------------------
# load: hang-ups and many slow clients


def _hang_up(port: int, body: bytes) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
              + body)
    time.sleep(0.05)
    s.close()


def test_a_disconnect_storm(server: Server, tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    before = server.health()
    lines_before = server.log.read_text().count("hung up")

    async def occupy() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=60) as c:
            # both grader processes busy for a while (batches of up to 2 items each): the
            # storm's items wait in the queue behind these
            tasks = []
            for i in range(4):
                tasks.append(asyncio.ensure_future(
                    c.post("/score", json=item("fake_slow", f"busy{i}", "3"))))
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            bodies = [json.dumps([item("fake_count", f"gone{i}-{j}", str(calls))
                                  for j in range(3)]).encode() for i in range(STORM)]
            await asyncio.gather(*[asyncio.to_thread(_hang_up, server.port, b) for b in bodies])
            return [r.json() for r in await asyncio.gather(*tasks)]

    busy = asyncio.run(occupy())
    assert all(b["ok"] for b in busy)
    ok = server.post(item("math", "\\boxed{12}", "12"))  # still serving
    assert ok.status_code == 200 and ok.json()["reward"] == 1.0
    for _ in range(50):
        if server.health()["disconnects"] >= before["disconnects"] + STORM:
            break
        time.sleep(0.1)
    after = server.health()
    assert after["disconnects"] == before["disconnects"] + STORM
    assert after["dropped"] == before["dropped"] + 3 * STORM  # none of their items was graded
    assert not calls.exists()
    log = server.log.read_text()
    assert log.count("hung up") == lines_before + STORM and "Traceback" not in log


def test_200_concurrent_slow_requests_and_a_fast_health(server: Server) -> None:
    async def go() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120,
                                     limits=limits) as c:
            slow = [asyncio.ensure_future(
                c.post("/score", json=item("fake_slow", f"slow{i}", "0.05")))
                for i in range(200)]
            await asyncio.sleep(1.0)
            for _ in range(5):  # answered while slow requests still wait: not queued behind them
                resp = await c.get("/health")
                assert resp.status_code == 200 and resp.json()["queued_requests"] > 0
                assert not all(s.done() for s in slow)
                await asyncio.sleep(0.3)
            return await asyncio.gather(*slow)

    answers = asyncio.run(go())
    assert all(r.status_code == 200 and r.json()["ok"] for r in answers)


# ---------------------------------------------------------------------------------------------
# the command line


BAD_FLAGS = [
    ["--port", "x"], ["--port", "70000"], ["--port", "0"], ["--timeout-s", "nan"],
    ["--timeout-s", "inf"], ["--timeout-s", "-1"], ["--timeout-s", "700"], ["--num-procs", "0"],
    ["--max-concurrency", "0"], ["--cache-size", "-1"], ["--code-wall-s", "-1"],
    ["--code-wall-s", "nan"], ["--code-memory-mb", "1"], ["--code-max-tests", "0"],
    ["--code-reward", "half"], ["--math-extract", "latex"], ["--correct-reward", "inf"],
    ["--wrong-reward", "nan"], ["--max-body-mb", "0"], ["--max-items", "0"],
    ["--max-json-depth", "100000"], ["--min-item-timeout-s", "10"], ["--token-env", "A B"],
    ["--token-file", "/no/such/token"], ["--config", "/no/such/run.yaml"], ["--bogus"],
    ["--port"], ["--grader", "x=/tmp/x.py:f"], ["--host", "10.1.2.3"],
    ["--host", "no.such.host.invalid", "--token-file", "/etc/hostname"],
    ["--config", "/dev/zero"],  # a device is no config file (reading it never ends)
]


def test_every_bad_flag_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_bytes(b"reward:\n  timeout_s: \xff\n")
    cases = [*BAD_FLAGS, ["--config", str(bad_yaml)]]
    procs = [subprocess.Popen([sys.executable, "-m", "areal_sys.cli", "reward-serve", *flags],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={"PATH": "/usr/bin:/bin"}) for flags in cases]
    for flags, proc in zip(cases, procs, strict=True):
        out, err = proc.communicate(timeout=180)
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (flags, err)
        assert lines[0].startswith("areal-sys: error: ") and out == "", (flags, err)
