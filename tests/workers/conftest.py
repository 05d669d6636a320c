"""Fixtures for the worker tests: two random tiny models and their transformers twins, one real
rollout engine shared by every module that drives one, a real trainer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from areal_sys.models.tiny import save_random_tiny_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two distinct weight sets of the same architecture: "A" (seed 0) and "B" (seed 1)."""
    root = tmp_path_factory.mktemp("rollout_models")
    return {name: save_random_tiny_model(root / name, seed) for name, seed in (("A", 0), ("B", 1))}


@pytest.fixture(scope="module")
def hf_models(tiny_models: dict[str, Path]) -> dict[str, object]:
    """fp32 transformers models of A and B in eval mode (the reference forward pass)."""
    import torch
    from transformers import AutoModelForCausalLM

    return {
        name: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        for name, path in tiny_models.items()
    }


@pytest.fixture(scope="session")
def shared_engine(tiny_models: dict[str, Path]) -> Iterator[Any]:
    """One started fp32 RolloutWorker (multiprocess AsyncLLM, on model A, vLLM's statistics on)
    for test_rollout.py, test_rollout_modes.py and test_trainer_mismatch.py: an engine's start is
    most of such a module's time. Each test loads the weights and sets the update mode it needs
    (`fresh`)."""
    from tests.workers.test_rollout import Engine
    from workers.rollout import RolloutWorker

    yield from Engine.started(RolloutWorker(str(tiny_models["A"]), seed=0, kv_cache_gib=1.0,
                                            engine_stats=True))


def fresh(engine: Any, model_dir: Path, update_mode: str = "abort") -> Any:
    """`engine` (the shared one) in `update_mode` with the weights of `model_dir` loaded as the
    next version."""
    engine.worker.update_mode = update_mode
    engine.load(model_dir)
    return engine


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory):
    """A real DeepSpeed TrainerWorker on a random tiny model (lr 1e-3, two minibatches), one per
    test module that asks for it."""
    from areal_sys.ports import free_port
    from tests.workers.test_trainer import experiment
    from workers.trainer import TrainerWorker

    path = save_random_tiny_model(tmp_path_factory.mktemp("trainer_model"), seed=0)
    cfg = experiment({"lr": 1e-3, "ppo_minibatches": 2, "max_tokens_per_microbatch": 128})
    w = TrainerWorker(str(path), cfg, rank=0, world_size=1, master_port=free_port())
    w.setup()
    yield w
    w.shutdown()
