"""RewardService with real grader subprocesses: timeouts, crashes, errors, cache, Ray actor."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from areal_sys.config.reward import RewardConfig
from areal_sys.data.synthetic import make_problems
from reward_service.service import RewardResult, RewardService
from tests.reward_service.fake_graders import FAKE_GRADERS, FAKE_MODULE

pytestmark = pytest.mark.integration  # real processes: kept out of `make test-fast`

TIMEOUT_S = 1.5
WRONG = -1.0

Run = Callable[[Coroutine[Any, Any, Any]], Any]


def item(task: str, response: str, reference: str = "") -> dict[str, str]:
    return {"task": task, "response": response, "reference": reference}


def fake(name: str) -> str:
    """A registered plugin's task name (the service registers FAKE_GRADERS at start)."""
    assert name in FAKE_GRADERS
    return name


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def svc(loop: asyncio.AbstractEventLoop) -> Iterator[RewardService]:
    """One service for the module (restarts after kills are part of what is tested)."""
    service = RewardService(timeout_s=TIMEOUT_S, max_concurrency=8, wrong_reward=WRONG,
                            graders=FAKE_GRADERS)
    yield service
    loop.run_until_complete(service.shutdown())


@pytest.fixture(scope="module")
def run(loop: asyncio.AbstractEventLoop) -> Run:
    return loop.run_until_complete


def test_scores_math_and_synthetic_in_order(svc: RewardService, run: Run) -> None:
    rows = make_problems(6, seed=5, split="eval")
    items = [item("synthetic", r["solution"], r["answer"]) for r in rows]
    items += [item("synthetic", "#### 99999", r["answer"]) for r in rows]
    items += [item("math", "so \\boxed{\\frac{1}{2}}", "0.5"), item("math", "#### 3", "#### 4")]
    results = run(svc.score(items))
    assert all(isinstance(r, RewardResult) and r.ok and r.reason == "" for r in results)
    assert [r.reward for r in results] == [1.0] * 6 + [WRONG] * 6 + [1.0, WRONG]


def test_hung_grader_times_out_and_service_recovers(svc: RewardService, run: Run) -> None:
    run(svc.score([item("synthetic", "#### 0", "0")]))  # the process is up: time only the item
    restarts = svc.cache_info()["restarts"]
    [hung] = run(svc.score([item(fake("fake_sleep_forever"), "a")]))
    assert (hung.ok, hung.reason, hung.reward) == (False, "timeout", WRONG)
    assert hung.elapsed_s >= TIMEOUT_S  # the service waited out the item's whole timeout
    assert svc.cache_info()["restarts"] == restarts + 1
    [after] = run(svc.score([item("math", "\\boxed{7}", "7")]))
    assert after.ok and after.reward == 1.0


def test_items_queued_behind_a_hung_item_are_still_graded(svc: RewardService, run: Run) -> None:
    items = [item("math", "\\boxed{1}", "1"), item(fake("fake_sleep_forever"), "b")]
    items += [item("math", f"\\boxed{{{i}}}", str(i)) for i in range(2, 8)]
    results = run(svc.score(items))
    assert results[1].reason == "timeout"
    assert all(r.ok and r.reward == 1.0 for i, r in enumerate(results) if i != 1)


def test_grader_exception_becomes_a_one_line_reason(svc: RewardService, run: Run) -> None:
    results = run(svc.score([item(fake("fake_raise"), "x"), item("synthetic", "#### 3", "3")]))
    assert (results[0].ok, results[0].reward) == (False, WRONG)
    assert results[0].reason == "RuntimeError: fake grader failed"
    assert results[1].ok and results[1].reward == 1.0


def test_crashing_grader_process_is_replaced(svc: RewardService, run: Run) -> None:
    results = run(svc.score([item(fake("fake_exit"), "x"), item("math", "#### 5", "5")]))
    assert not results[0].ok and "grader process died (exit code 3)" in results[0].reason
    assert results[1].ok and results[1].reward == 1.0


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (item("no_such_task", "x"), "unknown task 'no_such_task'"),
        (item("fake_nan", "x"), "returned a non-finite float; expected a bool or a finite"),
        (item("fake_string", "x"), "returned str; expected a bool or a finite float"),
        (item(f"{FAKE_MODULE}:fake_raise", "x"), "registered graders are ['code', 'fake_"),
        (item("os:popen", "echo pwned"), "unknown task 'os:popen'"),
        (item("math", "1", ["1"]), "'reference' must be a string or a JSON object (list)"),
        (item("math", "\\boxed{1}", ""), "cannot parse reference"),
        ({"task": "math", "response": 5, "reference": "5"}, "'response' must be a string (int)"),
        ({"task": "math", "response": "5"}, "'reference' must be a string or a JSON object"),
        ("not a dict", "expected a dict, got str"),
    ],
)
def test_bad_items_fail_without_raising(
    svc: RewardService, run: Run, bad: Any, reason: str
) -> None:
    [result] = run(svc.score([bad]))
    assert not result.ok and reason in result.reason and result.reward == WRONG
    assert "\n" not in result.reason


def test_score_of_a_non_list_returns_no_results(svc: RewardService, run: Run) -> None:
    assert run(svc.score("nope")) == []  # type: ignore[arg-type]
    assert run(svc.score([])) == []


def test_grader_stdout_does_not_corrupt_the_protocol(svc: RewardService, run: Run) -> None:
    results = run(svc.score([item(fake("fake_print_then_score"), "x"), item("math", "1", "1")]))
    assert [(r.ok, r.reward) for r in results] == [(True, 0.25), (True, 1.0)]


@pytest.mark.parametrize(
    ("response", "reward"),
    [
        ("\\boxed{" * 1_000_000, WRONG),
        ("(" * 1_000_000, WRONG),
        ("1+" * 500_000, WRONG),
        ("$" * 1_000_000, WRONG),
        ("#### " + "9" * 1_000_000, WRONG),
        ("a " * 500_000 + "so the answer is \\boxed{5} " + "b " * 100, 1.0),
        ("x" * 3_000_000 + "\n#### 5", 1.0),
    ],
)
def test_megabyte_and_regex_hostile_inputs_finish(
    svc: RewardService, run: Run, response: str, reward: float
) -> None:
    [result] = run(svc.score([item("math", response, "5")]))
    assert result.ok, result.reason  # graded, not timed out
    assert result.reward == reward


def test_sympy_power_tower_is_never_correct(svc: RewardService, run: Run) -> None:
    # math-verify + sympy hang on this (minutes); the process timeout bounds it
    [result] = run(svc.score([item("math", "$10^{10^{10}}$", "5")]))
    assert result.reward == WRONG and result.reason in ("", "timeout")
    [after] = run(svc.score([item("math", "\\boxed{5}", "5")]))
    assert after.ok and after.reward == 1.0


def test_cache_hits_skip_grading(svc: RewardService, run: Run, tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    first = item(fake("fake_count"), "r1", str(log))
    [a] = run(svc.score([first]))
    hits = svc.cache_info()["cache_hits"]
    [b] = run(svc.score([first]))
    assert a.ok and b.ok and a.reward == b.reward == 1.0 and b.elapsed_s == 0.0
    assert svc.cache_info()["cache_hits"] == hits + 1
    # identical items in flight together are graded once; a different response is graded
    second = item(fake("fake_count"), "r2", str(log))
    third = item(fake("fake_count"), "r3", str(log))

    async def concurrent() -> list[list[RewardResult]]:
        return await asyncio.gather(svc.score([second, third]), svc.score([second]))

    results = run(concurrent())
    assert all(r.ok for rs in results for r in rs)
    assert log.read_text().splitlines() == ["r1", "r2", "r3"]


def test_a_module_path_task_is_never_imported(svc: RewardService, run: Run,
                                              tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    for task in (f"{FAKE_MODULE}:fake_count", f"{Path(__file__).with_name('fake_graders.py')}"
                 ":fake_count", "builtins:open"):
        [r] = run(svc.score([item(task, "w", str(log))]))
        assert not r.ok and r.reason.startswith("unknown task") and "\n" not in r.reason
    assert not log.exists()


def test_a_graders_return_value_is_never_echoed(svc: RewardService, run: Run,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    [r] = run(svc.score([item("fake_secret", "x")]))
    assert not r.ok and "s3cr3t" not in r.reason and "returned str" in r.reason


def test_object_references_are_canonical_json(svc: RewardService, run: Run) -> None:
    tests = [{"input": "", "output": "3"}]
    a = {"tests": tests, "reward": "fraction"}
    b = {"reward": "fraction", "tests": tests}  # the same object, keys in another order
    hits = svc.cache_info()["cache_hits"]
    [ra] = run(svc.score([item("code", "print(3)", a)]))  # type: ignore[arg-type]
    [rb] = run(svc.score([item("code", "print(3)", b)]))  # type: ignore[arg-type]
    [rs] = run(svc.score([item("code", "print(3)", json.dumps(b, sort_keys=True))]))
    assert (ra.ok, ra.reward) == (True, 1.0), ra.reason
    assert rb == rs == RewardResult(1.0, True, "", 0.0)  # cache hits of the canonical form
    assert svc.cache_info()["cache_hits"] == hits + 2


def test_a_short_timeout_never_fails_another_callers_item(svc: RewardService, run: Run) -> None:
    slow = item("fake_slow", "same", "0.9")

    async def both() -> list[list[RewardResult]]:
        return await asyncio.gather(svc.score([{**slow, "timeout_s": 0.5}]), svc.score([slow]))

    [short], [normal] = run(both())
    assert (short.ok, short.reason) == (False, "timeout")
    assert (normal.ok, normal.reward) == (True, 1.0), normal.reason
    [cached] = run(svc.score([{**slow, "timeout_s": 0.5}]))  # the success is cached, not the
    assert cached.ok and cached.elapsed_s == 0.0               # timeout


def test_tiny_timeouts_are_raised_to_the_lower_bound(svc: RewardService, run: Run) -> None:
    run(svc.score([item("synthetic", "#### 1", "1")]))
    restarts = svc.cache_info()["restarts"]
    items = [{**item("synthetic", f"#### {i}", str(i)), "timeout_s": 1e-9} for i in range(20)]
    results = run(svc.score(items))
    assert all(r.ok and r.reward == 1.0 for r in results)
    assert svc.cache_info()["restarts"] == restarts


def test_cancelled_callers_queued_items_are_dropped(svc: RewardService, run: Run,
                                                    tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"

    async def hang_up() -> tuple[list[RewardResult], list[RewardResult]]:
        busy = asyncio.ensure_future(svc.score([item("fake_slow", "busy", "0.6")]))
        await asyncio.sleep(0.2)  # the slow item occupies the grader process
        shared = item("fake_count", "shared", str(log))
        gone = asyncio.ensure_future(
            svc.score([item("fake_count", f"gone{i}", str(log)) for i in range(5)] + [shared]))
        stays = asyncio.ensure_future(svc.score([shared]))
        await asyncio.sleep(0.1)
        gone.cancel()
        return await busy, await stays

    dropped = svc.cache_info()["dropped"]
    busy, stays = run(hang_up())
    assert busy[0].ok and stays[0].ok and stays[0].reward == 1.0
    assert log.read_text().splitlines() == ["shared"]  # the item another caller waits for ran
    assert svc.cache_info()["dropped"] == dropped + 5


def test_failures_are_not_cached(svc: RewardService, run: Run) -> None:
    errors = svc.cache_info()["errors"]
    run(svc.score([item(fake("fake_raise"), "same")]))
    run(svc.score([item(fake("fake_raise"), "same")]))
    assert svc.cache_info()["errors"] == errors + 2


def test_parallel_processes_and_shutdown(tmp_path: Path) -> None:
    service = RewardService(timeout_s=10.0, max_concurrency=2, num_procs=2, cache_size=0,
                            graders=FAKE_GRADERS)

    async def main() -> tuple[list[RewardResult], list[RewardResult]]:
        got = await service.score([item(fake("fake_pid"), str(i)) for i in range(4)])
        await service.shutdown()
        return got, await service.score([item("math", "1", "1")])

    results, after = asyncio.run(main())
    pids = {int(r.reward) for r in results}
    assert all(r.ok for r in results) and len(pids) == 2 and os.getpid() not in pids
    for pid in pids:  # the grader processes are gone (reaped)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not after[0].ok and after[0].reason == "reward service is shut down"


def test_usable_from_successive_event_loops() -> None:
    service = RewardService(timeout_s=10.0)
    for _ in range(2):  # the second asyncio.run restarts the processes of the closed first loop
        [r] = asyncio.run(service.score([item("synthetic", "#### 4", "4")]))
        assert r.ok and r.reward == 1.0
    asyncio.run(service.shutdown())


@pytest.mark.slow
def test_works_as_async_ray_actor() -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    actor = None
    try:
        cfg = RewardConfig(timeout_s=TIMEOUT_S, graders=FAKE_GRADERS)
        actor = ray.remote(RewardService).options(num_cpus=0).remote(cfg)
        items = [item("math", "#### 42", "42"), item("fake_sleep_forever", "x")]
        items.append(item("synthetic", "1+2=3\n#### 3", "3"))
        refs = [actor.score.remote(items), actor.score.remote(items[:1])]  # concurrent calls
        results, again = ray.get(refs, timeout=120)
        assert [(r.ok, r.reason, r.reward) for r in results] == [
            (True, "", 1.0), (False, "timeout", 0.0), (True, "", 1.0)
        ]
        assert again[0].ok and again[0].reward == 1.0
    finally:
        if actor is not None:
            ray.get(actor.shutdown.remote(), timeout=60)
        ray.shutdown()
