"""What a rollout worker says when its vLLM engine cannot start (workers/engine_start.py): one
line with the root cause. No engine is started here."""

import pytest

from workers.engine_start import (
    CPU_ATTENTION_HEAD_SIZES,
    cpu_attention_problem,
    logged_root_cause,
    model_head_size,
    root_cause,
    start_failure_cause,
)

# What a Ray actor's log holds when vLLM's engine process fails to start (abridged).
ENGINE_LOG = """\
INFO 11-29 05:10:01 [__init__.py:216] Automatically detected platform cpu.
(EngineCore pid=4242) INFO 11-29 05:10:09 [core.py:90] Initializing a V1 LLM engine
(Worker pid=4343) ERROR 11-29 05:10:11 [multiproc_executor.py:800] WorkerProc failed to start.
(Worker pid=4343) ERROR 11-29 05:10:11 [multiproc_executor.py:800] Traceback (most recent call \
last):
(Worker pid=4343) ERROR 11-29 05:10:11 [multiproc_executor.py:800]   File "cpu_worker.py", line 7
(Worker pid=4343) ERROR 11-29 05:10:11 [multiproc_executor.py:800] ValueError: To serve at \
least one request with the models's max seq len (256), (0.01 GiB KV cache is needed
(Worker pid=4343) ERROR 11-29 05:10:11 [multiproc_executor.py:800] which is larger than the \
available KV cache memory.
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510] EngineCore failed to start.
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510] Traceback (most recent call last):
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510]   File "core.py", line 1440, in run
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510]     engine_core = EngineCoreProc(...)
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510] RuntimeError: Unsupported head size: 16
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510]
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510] The above exception was the direct \
cause of the following exception:
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510]
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510] Traceback (most recent call last):
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510]   File "gpu_model_runner.py", line 9
(EngineCore pid=4242) ERROR 11-29 05:10:12 [core.py:1510] ValueError: profiling failed
Process EngineCore:
Traceback (most recent call last):
  File "multiprocessing/process.py", line 314, in _bootstrap
RuntimeError: Unsupported head size: 16
"""
KV_CAUSE = ("ValueError: To serve at least one request with the models's max seq len (256), "
            "(0.01 GiB KV cache is needed")


@pytest.mark.slow  # imports vLLM
def test_the_installed_vllm_supports_the_head_sizes_we_name():
    backend = pytest.importorskip("vllm.v1.attention.backends.cpu_attn").CPUAttentionBackend
    assert tuple(backend.get_supported_head_sizes()) == CPU_ATTENTION_HEAD_SIZES


@pytest.mark.parametrize(("config", "size"), [
    ({"hidden_size": 64, "num_attention_heads": 4}, 16),
    ({"hidden_size": 128, "num_attention_heads": 4}, 32),  # the tiny model
    ({"hidden_size": 64, "num_attention_heads": 4, "head_dim": 128}, 128),
    ({"hidden_size": 64, "num_attention_heads": 4, "head_dim": None}, 16),
    ({"text_config": {"hidden_size": 2048, "num_attention_heads": 16}}, 128),
    ({"hidden_size_per_head": 96}, 96),
    ({"hidden_size": 64, "num_attention_heads": 0}, None),
    ({"hidden_size": "64", "num_attention_heads": 4}, None),
    ({"hidden_size": 64, "num_attention_heads": True}, None),
    ({"hidden_size": 7168, "num_attention_heads": 128, "kv_lora_rank": 512}, None),  # MLA
    ({}, None),
])
def test_model_head_size_follows_vllm(config, size):
    assert model_head_size(config) == size


def test_cpu_attention_problem_names_both_sizes():
    line = cpu_attention_problem({"hidden_size": 64, "num_attention_heads": 4}, "my-model")
    assert line == ("my-model has attention head size 16, which vLLM's CPU attention does not "
                    "support (it supports 32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)")
    assert cpu_attention_problem({"hidden_size": 128, "num_attention_heads": 4}, "tiny") is None
    assert cpu_attention_problem({"model_type": "unknown"}, "odd") is None  # vLLM will say


def test_root_cause_is_the_innermost_exception_of_the_chain():
    def load() -> None:
        try:
            raise OSError("config.json: no such file\nmore detail")
        except OSError as inner:
            raise ValueError("could not load the model") from inner

    with pytest.raises(ValueError) as outer:
        load()
    assert root_cause(outer.value) == "OSError: config.json: no such file"
    assert root_cause(KeyError()) == "KeyError"


def test_a_validation_error_says_its_first_error():
    from pydantic import BaseModel, field_validator

    class Args(BaseModel):
        max_model_len: int

        @field_validator("max_model_len")
        @classmethod
        def _fits(cls, v: int) -> int:
            raise ValueError(f"max_model_len ({v}) is greater than the model's 512")

    with pytest.raises(ValueError) as e:
        Args(max_model_len=100000)
    assert root_cause(e.value) == ("ValidationError: 1 validation error for Args: Value error, "
                                   "max_model_len (100000) is greater than the model's 512")


def test_the_engine_processs_logged_root_cause_is_found():
    assert logged_root_cause(ENGINE_LOG) == KV_CAUSE  # the worker process failed first
    assert logged_root_cause(ENGINE_LOG.split("(Worker pid=4343) ERROR")[0]
                             + ENGINE_LOG.split("available KV cache memory.\n")[1]) == \
        "RuntimeError: Unsupported head size: 16"
    assert logged_root_cause("INFO nothing failed\n") is None
    assert logged_root_cause("(EngineCore pid=1) ERROR 11-29 05:10:12 [core.py:1] EngineCore "
                             "failed to start.\n") is None  # no traceback after it


def test_a_failure_known_only_to_the_engine_process_is_read_from_the_log(tmp_path):
    log = tmp_path / "worker.out"
    log.write_text("an earlier start's output\n")
    logs = {str(log): log.stat().st_size}
    log.write_text(log.read_text() + ENGINE_LOG)
    failure = RuntimeError("Engine core initialization failed. See root cause above. Failed "
                           "core proc(s): {'EngineCore': 1}")
    assert start_failure_cause(failure, logs) == KV_CAUSE
    assert start_failure_cause(failure, {}) == f"RuntimeError: {failure}"  # no log to read
    assert start_failure_cause(ValueError("max_model_len 4096 > 1024"), logs) == \
        "ValueError: max_model_len 4096 > 1024"
