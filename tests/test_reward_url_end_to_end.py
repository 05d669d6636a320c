"""A short CPU demo run that scores through the HTTP reward server (`reward.url`) instead of the
Ray actor pool: the run must finish, and every reward must have come from the server."""

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from areal_sys.metrics import read_jsonl
from tests.reward_service.test_http import free_port, start_server

ROOT = Path(__file__).resolve().parent.parent
STEPS, BATCH, N = 2, 2, 4


@pytest.mark.slow
def test_demo_run_scores_through_the_http_server(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}"
    try:
        args = [
            sys.executable, "-m", "areal_sys.cli", "run", "configs/local_tiny.yaml",
            f"run_dir={tmp_path / 'run'}", f"trainer.total_steps={STEPS}",
            f"controller.batch_size={BATCH}", f"rollout.n_samples={N}",
            "eval.before_and_after=false", "logging.progress_bar=false",
            "model.tiny_sft_steps=40", f"reward.url={url}",
        ]
        res = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-4000:]
        assert f"reward: HTTP server {url}" in res.stdout
        # items the run hung up on while a grader process had them finish after the run ends:
        # read the counters once nothing is queued or being graded
        deadline = time.monotonic() + 60
        health = httpx.get(f"{url}/health", timeout=10).json()
        while health["inflight"] and time.monotonic() < deadline:
            time.sleep(0.2)
            health = httpx.get(f"{url}/health", timeout=10).json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(STEPS))
    assert all(m["reward_fail_frac"] == 0.0 for m in metrics)
    # every trained trajectory was scored by the server (the controller may score a few more
    # groups than it trains: the ones in flight when the run ends)
    assert health["items"] >= STEPS * BATCH * N
    # every item was graded, a cache hit, or dropped because the run hung up before it was
    # graded (its last in-flight requests, cancelled when the run ended); none failed
    assert health["graded"] + health["cache_hits"] + health["dropped"] == health["items"]
    assert health["errors"] == 0 and health["timeouts"] == 0
