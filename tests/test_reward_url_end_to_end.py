"""The asynchronous run (tests/e2e_runs.py `async_run`) scores through the HTTP reward server
(`reward.url`, rewards +-1 set on the server) instead of the Ray actor pool: the run must finish,
and every reward must have come from the server."""

from typing import Any

import pytest

from areal_sys.metrics import read_jsonl
from tests.e2e_runs import Async

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_run_scores_through_the_http_server(async_run: dict[str, Any]) -> None:
    url, health = async_run["url"], async_run["health"]
    assert f"reward: HTTP server {url}" in async_run["stdout"]
    metrics = read_jsonl(async_run["run_dir"] / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(Async.STEPS))
    assert all(m["reward_fail_frac"] == 0.0 for m in metrics)
    # every trained trajectory was scored by the server (the controller scores more groups than
    # it trains: the ones the filter dropped and the ones in flight when the run ends)
    assert health["items"] >= Async.STEPS * Async.BATCH * Async.N
    # no item failed on the server; each was graded, a cache hit, dropped because the run hung
    # up before it was graded (its last in-flight requests, cancelled when the run ended), or
    # shared the grading of an identical item in flight (no counter of its own: hence <=)
    assert health["errors"] == 0 and health["timeouts"] == 0
    assert health["graded"] + health["cache_hits"] + health["dropped"] <= health["items"]
