"""Data parallelism: N TrainerWorker ranks (real DeepSpeed, gloo, one process each) must compute
the same update as one rank on the same global batch, at any micro-batch split and ZeRO stage.
The rank processes of one world size run its configurations one after the other (three process
starts instead of six).

Every configuration trains one step from the same weights on the same groups and rank 0 writes the
updated full weights. Adam's first step is nearly sign(g)·lr, which would hide a gradient scaled by
a wrong factor, so these runs use adam_eps = 1 (the update is then ~lr·g for these small
gradients) and also compare the loss and the global gradient norm.

Sequence-level aggregations (whose denominators count sequences, not tokens) are checked in the
same processes, after the weights are exported: one more step per aggregation at lr 0 (the weights
do not move), comparing the loss and the global gradient norm across the configurations.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest
import torch

from areal_sys.algorithms import build_algorithm
from areal_sys.config import ExperimentConfig
from areal_sys.ports import free_port
from tests.workers.test_trainer import experiment, make_groups

pytestmark = pytest.mark.slow

# extra aggregations checked at lr 0: name -> algorithm config
SEQUENCE_LEVEL = {
    "seq-mean-token-mean": {"name": "grpo", "aggregation": "seq-mean-token-mean"},
    "seq-mean-token-sum": {"name": "grpo", "aggregation": "seq-mean-token-sum"},
    "dr_grpo": {"name": "dr_grpo"},
}


def _rank_main(
    rank: int, world: int, ports: list[int], model: str, runs: list[tuple[str, ExperimentConfig]],
    root: str,
) -> None:
    """One trainer rank that runs each configuration of `runs` in turn, each from the initial
    weights: set up, train one step, export the weights (rank 0 writes `root/name.*`), then the
    sequence-level aggregations at lr 0, and shut down (a later setup joins a new group). One
    process for several configurations saves a process start (imports) per configuration."""
    import os

    os.environ["AREAL_SYS_CPU_CORES"] = str(rank % max(1, len(os.sched_getaffinity(0))))
    from workers.trainer import TrainerWorker

    for (name, cfg), port in zip(runs, ports, strict=True):
        out = f"{root}/{name}"
        worker = TrainerWorker(model, cfg, rank=rank, world_size=world, master_port=port)
        worker.setup()
        groups = make_groups(6, 4, seed=11)
        metrics = worker.train_step(groups, step=0)
        worker.export_weights(out + ".safetensors")
        worker.train_cfg = worker.train_cfg.model_copy(update={"lr": 0.0})  # the schema needs > 0
        for agg, algo in SEQUENCE_LEVEL.items():
            worker.algo = build_algorithm(algo, max_new_tokens=cfg.rollout.max_new_tokens)
            metrics[agg] = worker.train_step(groups, step=1)
        if rank == 0:
            torch.save(metrics, out + ".metrics")
        worker.shutdown()


def train_one_step(model: Path, root: Path, world: int, settings: dict[str, dict]) -> None:
    """Every setting of one world size, in `world` spawned rank processes."""
    runs = [
        (name, experiment({"lr": 1e-2, "adam_eps": 1.0, "zero_stage": kw["zero_stage"],
                           "max_tokens_per_microbatch": kw["budget"], "num_workers": world}))
        for name, kw in settings.items()
    ]
    ports = [free_port() for _ in runs]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_rank_main, args=(r, world, ports, str(model), runs, str(root)))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from safetensors.torch import load_file

    from areal_sys.models.tiny import save_random_tiny_model

    root = tmp_path_factory.mktemp("dp")
    model = save_random_tiny_model(root / "model", seed=0)
    by_world = {
        1: {"1rank_1mb": dict(zero_stage=1, budget=4096),
            "1rank_3mb": dict(zero_stage=1, budget=160)},
        2: {"2rank_zero1": dict(zero_stage=1, budget=160),
            "2rank_zero3": dict(zero_stage=3, budget=160)},
    }
    out: dict[str, Any] = {}
    for world, settings in by_world.items():
        train_one_step(model, root, world, settings)
        for name in settings:
            out[name] = (load_file(f"{root}/{name}.safetensors"),
                          torch.load(f"{root}/{name}.metrics"))
    out["initial"] = (load_file(str(model / "model.safetensors")), {})
    return out


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_micro_batch_split_does_not_change_the_update(runs: dict[str, Any]) -> None:
    (w1, m1), (w3, m3) = runs["1rank_1mb"], runs["1rank_3mb"]
    assert m1["num_microbatches"] == 1 and m3["num_microbatches"] >= 3
    assert m3["loss"] == pytest.approx(m1["loss"], abs=1e-6)
    assert m3["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    assert max_weight_diff(w1, w3) < 1e-6


def test_two_data_parallel_ranks_equal_one(runs: dict[str, Any]) -> None:
    (w1, m1), (w2, m2) = runs["1rank_1mb"], runs["2rank_zero1"]
    assert m2["loss"] == pytest.approx(m1["loss"], abs=1e-6)
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    assert m2["rank_imbalance"] < 0.2
    # the mismatch figures (every token at version 0, behaviour log-prob -3) add up over ranks:
    # sums, counts and the maxima / minimum reduced across them
    assert m1["mismatch/tokens"] == m2["mismatch/tokens"] > 0
    for key in ("k3", "abs_logp_diff_mean", "abs_logp_diff_max", "weight_min", "weight_max",
                "weight_out_2x_frac"):
        assert m2[f"mismatch/{key}"] == pytest.approx(m1[f"mismatch/{key}"], rel=1e-5)
    moved = max_weight_diff(w1, runs["initial"][0])
    assert moved > 1e-4  # the step really changed the weights ...
    assert max_weight_diff(w1, w2) < 1e-3 * moved  # ... identically with one rank and two


def test_zero3_gathered_weights_equal_zero1(runs: dict[str, Any]) -> None:
    (w1, m1), (w3, m3) = runs["2rank_zero1"], runs["2rank_zero3"]
    assert m3["loss"] == pytest.approx(m1["loss"], abs=1e-6)
    assert m3["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
    assert max_weight_diff(w1, w3) < 1e-6


@pytest.mark.parametrize("aggregation", list(SEQUENCE_LEVEL))
def test_sequence_level_aggregations_are_global(runs: dict[str, Any], aggregation: str) -> None:
    """Same loss and gradient norm at 1 or 3 micro-batches and 1 or 2 ranks (ZeRO 1 and 3)."""
    one = runs["1rank_1mb"][1][aggregation]
    assert one["grad_norm"] > 0 and one["loss"] != 0
    for name in ("1rank_3mb", "2rank_zero1", "2rank_zero3"):
        other = runs[name][1][aggregation]
        assert other["loss"] == pytest.approx(one["loss"], abs=1e-6), name
        assert other["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4), name
