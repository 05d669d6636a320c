"""The HTTP face of the reward service: a FastAPI app over one `RewardService`.

    POST /score   body: one item {"task", "response", "reference", "timeout_s"?} or a list of them
                  reply: {"reward", "ok", "reason", "elapsed_s"} per item (a list for a list)
    GET  /health  {"status": "ok", "sandbox": mode, "requests": n, "items": n, ...counters}

Every item gets a result; a malformed item gets `ok=false` with the reason, not an HTTP error.
HTTP errors are kept for requests that are not items at all: 400 (not JSON / not an item or a
list), 413 (more than `max_items` items or a body over `max_body_mb`). All requests share the
service's queue, its bounded concurrency, its grader processes and its cache, so concurrent small
requests are batched onto the grader processes like one big one.

`serve` (the `areal-sys reward-serve` command) probes the sandbox before it listens and logs the
isolation mode in use. fastapi/uvicorn are imported only here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from reward_service.service import RewardService

log = logging.getLogger(__name__)


def create_app(service: RewardService, *, max_items: int = 4096,
               max_body_mb: int = 64) -> FastAPI:
    counters = {"requests": 0, "items": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.shutdown()

    app = FastAPI(title="areal_sys reward service", lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "sandbox": service.sandbox_mode, **counters,
                **service.cache_info()}

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > max_body_mb << 20:
            return _error(413, f"body over {max_body_mb} MB")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_mb << 20:
                return _error(413, f"body over {max_body_mb} MB")
        try:
            payload = json.loads(body)
        except ValueError as e:
            return _error(400, f"body is not JSON: {e}")
        single = isinstance(payload, dict)
        items = [payload] if single else payload
        if not isinstance(items, list):
            return _error(400, "body must be an item object or a list of items")
        if len(items) > max_items:
            return _error(413, f"{len(items)} items; at most {max_items} per request")
        counters["requests"] += 1
        counters["items"] += len(items)
        results = [asdict(r) for r in await service.score(items)]
        return JSONResponse(results[0] if single else results)

    return app


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def serve(host: str, port: int, **service_kwargs: Any) -> None:
    """Run the server until interrupted (blocking)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    service = RewardService(**service_kwargs)
    log.info("reward service on http://%s:%d (sandbox %s, %d grader processes, timeout %g s)",
             host, port, service.sandbox_mode, service.num_procs, service.timeout_s)
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning",
                access_log=False)
