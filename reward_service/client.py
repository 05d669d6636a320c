"""`HttpRewardClient`: the controller's view of a remote reward server (`reward.url`).

It has the same async `score(items) -> list[RewardResult]` and `shutdown()` as `RewardService`,
so `controller/runtime.py` wraps either one as the `reward` Ray actor and the controller does not
know which it talks to. Like the service it never raises: connection errors and HTTP 5xx answers
(infrastructure failures) are retried with exponential backoff, `retries` times; what is still
failing then becomes `ok=False` results. Per-item timeouts are the server's business (a
`"timeout"` result is an answer, never retried here). `token` (from `RewardConfig.resolve_token`)
is sent as `Authorization: Bearer TOKEN`; an HTTP 4xx answer (a wrong token, a limit) fails the
items with the server's one-line reason and is not retried.
"""

from __future__ import annotations

import asyncio
from typing import Any

from reward_service.grader_process import MAX_REASON_CHARS
from reward_service.graders import one_line
from reward_service.service import RewardResult

_BACKOFF_S = 0.5


class HttpRewardClient:
    """url: the server's base URL (http://host:port). timeout_s: the per-item limit the server
    applies; a request waits at most `timeout_s * (len(items) + 1) + request_slack_s`.
    token: the server's bearer token (None: send none)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, wrong_reward: float = 0.0,
                 retries: int = 3, request_slack_s: float = 60.0,
                 token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.wrong_reward = float(wrong_reward)
        self.retries = retries
        self.request_slack_s = request_slack_s
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = httpx.AsyncClient(base_url=self.url, headers=self._headers,
                                             limits=httpx.Limits(max_connections=64))
            self._loop = loop
        return self._client

    async def score(self, items: list[dict]) -> list[RewardResult]:
        """One result per item, in order; never raises (except on cancellation)."""
        if not isinstance(items, list) or not items:
            return []
        try:
            body = await self._post("/score", items)
            return [RewardResult(float(r["reward"]), bool(r["ok"]), str(r["reason"]),
                                 float(r["elapsed_s"])) for r in body]
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the contract: failures are results
            reason = f"reward server {self.url}: {one_line(e)}"
            return [RewardResult(self.wrong_reward, False, reason[:MAX_REASON_CHARS], 0.0)
                    for _ in items]

    async def _post(self, path: str, payload: Any) -> Any:
        import httpx

        timeout = self.timeout_s * (len(payload) + 1) + self.request_slack_s
        for attempt in range(self.retries + 1):
            try:
                resp = await self._http().post(path, json=payload, timeout=timeout)
                if 400 <= resp.status_code < 500:
                    raise RuntimeError(f"HTTP {resp.status_code}: {_detail(resp)}")
                if resp.status_code < 400:
                    return resp.json()
                err: Exception = RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
            except httpx.TransportError as e:  # connect/read errors: retry (not HTTP 4xx)
                if isinstance(e, httpx.TimeoutException):
                    raise
                err = e
            if attempt == self.retries:
                raise err
            await asyncio.sleep(_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    async def health(self) -> dict[str, Any]:
        resp = await self._http().get("/health", timeout=10)
        resp.raise_for_status()
        return resp.json()

    async def shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _detail(resp: Any) -> str:
    """The server's one-line `detail` of an error answer (else the start of the text)."""
    try:
        return str(resp.json()["detail"])[:200]
    except (ValueError, KeyError, TypeError):
        return resp.text[:200]
