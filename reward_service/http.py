"""The HTTP face of the reward service: a FastAPI app over one `RewardService`.

    POST /score   body: one item {"task", "response", "reference", "timeout_s"?} or a list of them
                  reply: {"reward", "ok", "reason", "elapsed_s"} per item (a list for a list)
    GET  /health  {"status": "ok", "sandbox", "sandbox_safe", "sandbox_uncontained", "graders",
                   counters...}

Every well-formed request gets one result per item; an item the service cannot grade (a missing
field, a bad `timeout_s`) gets `ok=false` with the reason. HTTP errors, each a JSON
`{"detail": one line}`, are kept for requests that are wrong as a whole:
- 401: a token is configured and the request lacks `Authorization: Bearer TOKEN` (compared in
  constant time). Both endpoints need it; binding anything but loopback requires a token.
- 400: not JSON (bad UTF-8, NaN/Infinity, an integer over 4300 digits), nested deeper than
  `max_json_depth` (measured before parsing, so 100k-deep input costs one linear scan), not an
  item or a list of items, or an item whose `task` is not a registered grader (the answer names
  them: a task never names code to import).
- 408: the body did not arrive within `body_timeout_s`. 413: a body over `max_body_mb` (checked
  while it streams in), more than `max_items` items, or more items than an answer of
  `max_response_mb` can hold (each result is at most RESULT_BYTES).
- 503: more than `max_queued_requests` requests wait for a slot (and, from uvicorn, past
  `max_concurrent_requests + max_queued_requests + 64` open connections).

Concurrency: at most `max_concurrent_requests` requests are read and graded at once (memory is
bounded by about that many bodies); the others wait in line for a slot before their body is read
(queueing, not failing, up to `max_queued_requests`). `/health` takes no slot and never waits
behind grading. All requests share the service's queue, grader processes and cache. An item's
`timeout_s` is clamped to the server's bounds (service.py). When a client hangs up, its request
is cancelled: its queued items that no other request waits for are dropped, and the server logs
one line (no traceback).

`serve` (the `areal-sys reward-serve` command) binds its socket first (a busy port is one line),
probes the sandbox and logs the isolation mode in use. fastapi/uvicorn are imported only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from reward_service.grader_process import MAX_REASON_CHARS
from reward_service.graders import one_line
from reward_service.sandbox import SAFE_MODES, UNCONTAINED
from reward_service.service import RewardService

log = logging.getLogger(__name__)

# Largest JSON of one result: a reason of MAX_REASON_CHARS characters, each escaped as \uXXXX.
RESULT_BYTES = 6 * MAX_REASON_CHARS + 128
MAX_INT_DIGITS = 1000


class BadRequest(Exception):
    """A request that is wrong as a whole: HTTP `status` with a one-line `detail`."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def create_app(service: RewardService, *, token: str | None = None) -> FastAPI:
    """The app over `service` (its `cfg` holds the server's limits); `token`: required bearer
    token, or None for none (loopback only: `serve` enforces that)."""
    cfg = service.cfg
    counters = {"requests": 0, "items": 0, "rejected": 0, "disconnects": 0,
                "active_requests": 0, "queued_requests": 0}
    slots = asyncio.Semaphore(cfg.max_concurrent_requests)
    expected = f"Bearer {token}".encode() if token is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.shutdown()

    app = FastAPI(title="areal_sys reward service", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        got = request.headers.get("authorization", "").encode("latin-1", "replace")
        return hmac.compare_digest(got, expected)

    @app.get("/health")
    async def health(request: Request) -> Response:
        if not authorized(request):
            return _unauthorized()
        mode = service.sandbox_mode
        return JSONResponse({
            "status": "ok", "sandbox": mode, "sandbox_safe": mode in SAFE_MODES,
            "sandbox_uncontained": UNCONTAINED.get(mode, ""),
            "code_grader_runs_programs": mode in SAFE_MODES or cfg.allow_unsafe_sandbox,
            "graders": service.grader_names, **counters, **service.cache_info()})

    @app.post("/score")
    async def score(request: Request) -> Response:
        if not authorized(request):
            counters["rejected"] += 1
            return _unauthorized()
        if counters["queued_requests"] >= cfg.max_queued_requests and slots.locked():
            counters["rejected"] += 1
            return _error(503, f"over {cfg.max_queued_requests} requests waiting; retry later")
        counters["queued_requests"] += 1
        try:
            await slots.acquire()
        finally:
            counters["queued_requests"] -= 1
        counters["active_requests"] += 1
        try:
            return await handle(request)
        except BadRequest as e:
            counters["rejected"] += 1
            return _error(e.status, e.detail)
        except Exception as e:  # noqa: BLE001 - a bug: one log line, never a traceback
            log.error("POST /score from %s failed: %s", _peer(request), one_line(e))
            return _error(500, f"reward server error: {one_line(e)}")
        finally:
            counters["active_requests"] -= 1
            slots.release()

    async def handle(request: Request) -> Response:
        try:
            body = await _read_body(request, int(cfg.max_body_mb * (1 << 20)),
                                    cfg.body_timeout_s)
        except ClientDisconnect:
            counters["disconnects"] += 1
            log.warning("client %s hung up while sending its request", _peer(request))
            return Response(status_code=499)
        payload = parse_json(body, cfg.max_json_depth)
        single = isinstance(payload, dict)
        items = [payload] if single else payload
        if not isinstance(items, list) or not items:
            raise BadRequest(400, "body must be an item object or a non-empty list of items")
        if len(items) > cfg.max_items:
            raise BadRequest(413, f"{len(items)} items; at most {cfg.max_items} per request")
        max_results = int(cfg.max_response_mb * (1 << 20)) // RESULT_BYTES
        if len(items) > max_results:
            raise BadRequest(413, f"{len(items)} items: an answer could exceed "
                             f"{cfg.max_response_mb:g} MB; send at most {max_results} per request")
        for i, item in enumerate(items):
            task = item.get("task") if isinstance(item, dict) else None
            if isinstance(task, str) and task not in service.grader_names:
                where = "" if single else f" (item {i})"
                raise BadRequest(400, f"unknown task {task[:80]!r}{where}: registered graders "
                                 f"are {service.grader_names}")
        counters["requests"] += 1
        counters["items"] += len(items)
        results = await _score_unless_hung_up(service, request, items)
        if results is None:
            counters["disconnects"] += 1
            log.warning("client %s hung up: its request of %d item(s) is cancelled",
                        _peer(request), len(items))
            return Response(status_code=499)
        out = [asdict(r) for r in results]
        # ASCII JSON: a lone surrogate in a reason is escaped, never an encoding error
        return Response(json.dumps(out[0] if single else out), media_type="application/json")

    return app


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        raise BadRequest(413, f"body over {limit / (1 << 20):g} MB")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise BadRequest(413, f"body over {limit / (1 << 20):g} MB")
    except TimeoutError:
        raise BadRequest(408, f"body not received within {timeout_s:g} s") from None
    return bytes(body)


async def _score_unless_hung_up(service: RewardService, request: Request,
                                items: list[Any]) -> list[Any] | None:
    """The service's results, or None when the client disconnects first (grading cancelled)."""
    work = asyncio.ensure_future(service.score(items))
    hangup = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, hangup}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hangup.cancel()
        if not work.done():
            work.cancel()
        for task in (hangup, work):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if work.cancelled() else work.result()


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects (the body has been read: only that can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def json_depth(body: bytes) -> int:
    """Deepest bracket nesting of a JSON text, outside strings; -1 if a closer comes first.

    Linear and vectorised (numpy), so a 100k-deep or megabyte body costs milliseconds and never
    reaches the recursive parser. Escaped backslashes are removed first, then escaped quotes;
    what remains between quote pairs is string content. Only brackets and quotes are looked at.
    """
    import numpy as np

    if body.count(b"[") + body.count(b"{") <= 1:
        return int(body.count(b"[") + body.count(b"{") > 0)
    text = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    a = np.frombuffer(text, dtype=np.uint8)
    marks = a[_STEPS[a] != _OTHER]  # brackets and quotes, in order
    outside = (np.cumsum(marks == ord('"'), dtype=np.uint8) & 1) == 0
    depth = np.cumsum(_STEPS[marks[outside]], dtype=np.int32)
    if depth.size == 0:
        return 0
    return -1 if int(depth.min()) < 0 else int(depth.max())


def _steps() -> Any:
    import numpy as np

    lut = np.full(256, _OTHER, dtype=np.int8)
    lut[[ord("["), ord("{")]] = 1
    lut[[ord("]"), ord("}")]] = -1
    lut[ord('"')] = 0
    return lut


_OTHER = 2
_STEPS = _steps()


def parse_json(body: bytes, max_depth: int) -> Any:
    """The request's JSON, or BadRequest(400) with one line saying what is wrong."""
    depth = json_depth(body)
    if depth > max_depth or depth < 0:
        raise BadRequest(400, f"JSON nested deeper than {max_depth} levels"
                         if depth > 0 else "body is not JSON: unbalanced brackets")
    try:
        return json.loads(body, parse_constant=_no_constant, parse_float=_finite_float,
                          parse_int=_bounded_int)
    except (ValueError, RecursionError) as e:
        raise BadRequest(400, f"body is not JSON: {one_line(e)[:200]}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > MAX_INT_DIGITS:
        raise ValueError(f"integer with {len(text)} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _unauthorized() -> JSONResponse:
    return JSONResponse({"detail": "missing or wrong token (Authorization: Bearer TOKEN)"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (IPv4 or IPv6 by `host`); OSError when it cannot be bound."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = info[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(service: RewardService, sock: socket.socket, token: str | None) -> None:
    """Run the server on the bound `sock` until interrupted (blocking)."""
    import uvicorn

    c = service.cfg
    mode = service.sandbox_mode
    log.info("reward service on http://%s:%d (sandbox %s%s, %d grader processes, timeout %g s "
             "in [%g, %g], graders %s, %s)", c.host, c.port, mode,
             "" if mode in SAFE_MODES else f": {UNCONTAINED[mode]}", service.num_procs,
             c.timeout_s, c.min_item_timeout_s, c.max_item_timeout_s, service.grader_names,
             "token required" if token else "no token (loopback only)")
    # connections beyond the request slots, the waiting line and some /health probes: 503
    connections = c.max_concurrent_requests + c.max_queued_requests + 64
    config = uvicorn.Config(create_app(service, token=token), log_level="warning",
                            access_log=False, timeout_graceful_shutdown=5,
                            limit_concurrency=connections)
    uvicorn.Server(config).run(sockets=[sock])
