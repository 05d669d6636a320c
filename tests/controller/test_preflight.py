"""Pre-flight of the model before Ray starts (controller/runtime.py check_model): a model whose
attention head size vLLM's CPU attention lacks is one line and exit code 2, not an engine that
dies in the middle of starting the run."""

import subprocess
import sys
from pathlib import Path

import pytest

from areal_sys.config import ConfigError, ExperimentConfig
from areal_sys.models.tiny import build_tokenizer, save_random_tiny_model
from controller.runtime import check_model
from workers.engine_start import CPU_ATTENTION_HEAD_SIZES

ROOT = Path(__file__).resolve().parents[2]
SUPPORTED = ", ".join(map(str, CPU_ATTENTION_HEAD_SIZES))


def save_head16_model(out: Path) -> Path:
    """A Hugging Face Qwen2 model with hidden size 64 and 4 heads: head size 16."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def head16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_head16_model(tmp_path_factory.mktemp("models") / "head16")


def test_run_with_a_head_size_16_model_stops_before_ray_in_one_line(head16, tmp_path):
    run_dir = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "areal_sys.cli", "run", "configs/local_tiny.yaml",
         f"model.path={head16}", f"run_dir={run_dir}", "logging.progress_bar=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines == [f"areal-sys: error: model.path: {head16} has attention head size 16, which "
                     f"vLLM's CPU attention does not support (it supports {SUPPORTED}); choose "
                     "another model, or give the rollout workers GPUs (cluster.rollout_gpus)"]
    assert "algorithm:" not in res.stdout  # printed just before Ray starts: it never did


def test_the_tiny_architecture_passes(tmp_path):
    check_model(ExperimentConfig(), str(save_random_tiny_model(tmp_path / "tiny")))


def test_head_size_16_is_refused_on_cpu_only(head16):
    with pytest.raises(ConfigError, match=f"head size 16, .*supports {SUPPORTED}"):
        check_model(ExperimentConfig(), str(head16))
    on_gpu = ExperimentConfig.model_validate({"cluster": {"rollout_gpus": 1}})
    check_model(on_gpu, str(head16))  # GPU attention backends have their own sizes


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]", "\"text\""])
def test_a_directory_without_a_config_object_is_not_a_model(tmp_path, content):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    with pytest.raises(ConfigError, match="is not a Hugging Face model directory"):
        check_model(ExperimentConfig(), str(tmp_path))


class _Start:
    def __init__(self, error: BaseException | None):
        self.error = error

    def remote(self):
        async def call():
            if self.error is not None:
                raise self.error
        return call()


class _Worker:
    def __init__(self, error: BaseException | None = None):
        self.start = self.setup = _Start(error)


def test_start_actors_raises_the_workers_one_line_not_rays_wrapping():
    """What Ray raises in the driver for an actor's EngineStartError: a RayTaskError subclass
    whose text adds the actor's traceback. start_actors gives back the worker's one line."""
    import asyncio

    from ray.exceptions import RayTaskError

    from controller.runtime import Actors, start_actors
    from workers.engine_start import EngineStartError

    line = "rollout worker 1: the vLLM engine for m did not start: ValueError: no memory"
    trace = f"Traceback (most recent call last):\n  ...\nEngineStartError: {line}"
    wrapped = RayTaskError("RolloutWorker.start", trace, EngineStartError(line))
    wrapped = wrapped.as_instanceof_cause()
    assert len(str(wrapped).splitlines()) > 1
    actors = Actors(rollout=[_Worker(), _Worker(wrapped)], trainers=[_Worker()], reward=None,
                    sync_dir="")
    with pytest.raises(EngineStartError) as e:
        asyncio.run(start_actors(ExperimentConfig(), actors))
    assert str(e.value) == line

    died = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: "
                        "RolloutWorker\n\tpid: 123")
    actors.rollout = [_Worker(died)]
    with pytest.raises(EngineStartError) as e:
        asyncio.run(start_actors(ExperimentConfig(), actors))
    assert str(e.value) == ("rollout worker 0: the vLLM engine did not start: RuntimeError: The "
                            "actor died unexpectedly before finishing this task.")


def test_a_tool_protocol_the_tokenizer_cannot_stop_on_is_one_line() -> None:
    from controller.preflight import UserError, check_episode

    tok = build_tokenizer()
    tool = {"rollout": {"episode": {"kind": "tool_use", "protocol": "tiny"}}}
    check_episode(ExperimentConfig.model_validate(tool), tok)  # ")" is one token: fine
    check_episode(ExperimentConfig(), tok)  # single_turn: nothing to check
    tool["rollout"]["episode"]["protocol"] = "plain"
    with pytest.raises(UserError, match=r"^rollout.episode.protocol=plain: tool protocol: "
                       r"'</call>' must be one token of the model's tokenizer \(it encodes to 7\)"):
        check_episode(ExperimentConfig.model_validate(tool), tok)


def test_rpo_with_tool_episodes_is_refused() -> None:
    with pytest.raises(Exception, match="rollout.episode.kind must be single_turn"):
        ExperimentConfig.model_validate({"rpo": {"enabled": True},
                                         "rollout": {"episode": {"kind": "tool_use"}}})


def test_an_episode_plugin_that_does_not_import_is_one_line() -> None:
    from controller.preflight import UserError, check_episode

    cfg = ExperimentConfig.model_validate(
        {"rollout": {"episode": {"kind": "no_such_pkg.envs:episode"}}})
    with pytest.raises(UserError, match=r"^rollout.episode.kind=no_such_pkg.envs:episode: cannot "
                       r"import 'no_such_pkg.envs': ModuleNotFoundError"):
        check_episode(cfg, build_tokenizer())
