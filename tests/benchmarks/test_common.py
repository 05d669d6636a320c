"""The multi-seed grid runner's bookkeeping and what it reads from a run directory
(benchmarks/common.py), with a fake run function and hand-written run files."""

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.common import (
    Setting,
    collect_run,
    curve_summary,
    eval_every,
    grid_record,
    pooled_hist,
    run_grid,
    setting_figures,
)


def _settings() -> list[Setting]:
    return [Setting("a", "cfg.yaml", ("x=1",), {"eta": 0}),
            Setting("b", "cfg.yaml", ("x=2",), {"eta": 4})]


def test_grid_runs_seed_by_seed_and_records_failures(tmp_path: Path) -> None:
    calls: list[tuple[str, int, Path]] = []

    def fake_run(setting: Setting, seed: int, run_dir: Path) -> dict:
        calls.append((setting.name, seed, run_dir))
        if (setting.name, seed) == ("b", 2):
            raise RuntimeError("run failed:\nboom")
        return {"pass_rate": seed / 10 + (0.5 if setting.name == "b" else 0.0)}

    def fake_before(seed: int, run_dir: Path) -> dict:
        calls.append(("before", seed, run_dir))
        return {"pass_rate": 0.3}

    lines: list[str] = []
    grid = run_grid(_settings(), [1, 2], fake_run, tmp_path, fake_before, log=lines.append)
    assert [(n, s) for n, s, _ in calls] == [("before", 1), ("a", 1), ("b", 1),
                                             ("before", 2), ("a", 2), ("b", 2)]
    assert calls[1][2] == tmp_path / "a" / "seed1"
    assert calls[0][2] == tmp_path / "before" / "seed1"
    assert grid.per_seed("a", "pass_rate") == {1: 0.1, 2: 0.2}
    assert grid.per_seed("b", "pass_rate") == {1: 0.6}
    assert grid.before == {1: {"pass_rate": 0.3}, 2: {"pass_rate": 0.3}}
    assert grid.failures == [{"setting": "b", "seed": 2, "error": "run failed:\nboom"}]
    assert any("FAILED (run failed:)" in line for line in lines)


def test_grid_refuses_duplicate_names_and_seeds(tmp_path: Path) -> None:
    def fake_run(setting: Setting, seed: int, run_dir: Path) -> dict:
        raise AssertionError("must not run")

    with pytest.raises(ValueError, match="unique"):
        run_grid([*_settings(), _settings()[0]], [1], fake_run, tmp_path)
    with pytest.raises(ValueError, match="distinct"):
        run_grid(_settings(), [1, 1], fake_run, tmp_path)


def test_eval_every_ends_at_the_final_step() -> None:
    assert eval_every(40, 4) == 10
    assert eval_every(30, 4) == 10  # 7.5 rounds up to 8; the smallest divisor of 30 from 8 is 10
    assert eval_every(30, 1) == 30
    assert eval_every(2, 4) == 1
    assert eval_every(7, 3) == 7


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _fake_run_dir(path: Path, final_version: int = 4) -> Path:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"steps": 4, "groups_filtered": 3,
                                                   "wall_time_s": 70.0}))
    _write_jsonl(path / "metrics.jsonl", [{"step": i, "step_time_s": 1.5 + i,
                                           "train/entropy": 0.4 - 0.1 * i} for i in range(4)])
    _write_jsonl(path / "eval.jsonl", [
        {"tag": "step_2", "version": 2, "pass_rate": 0.40},
        {"tag": f"step_{final_version}", "version": final_version, "pass_rate": 0.55}])
    _write_jsonl(path / "staleness.jsonl", [
        {"trainer_version": 3, "min_token_version": 3}, {"trainer_version": 3,
                                                         "min_token_version": 1},
        {"trainer_version": 4, "min_token_version": 3}, {"trainer_version": 4,
                                                         "min_token_version": 2}])
    return path


def test_collect_run_reads_the_final_evaluation_and_the_staleness(tmp_path: Path) -> None:
    r = collect_run(_fake_run_dir(tmp_path / "run"))
    assert r["pass_rate"] == 0.55 and r["curve"] == [(2, 0.40), (4, 0.55)]
    assert r["wall_s"] == pytest.approx(1.5 + 2.5 + 3.5 + 4.5)
    assert r["staleness_hist"] == {0: 1, 1: 1, 2: 2}
    assert r["groups_filtered"] == 3 and len(r["metrics"]) == 4


def test_collect_only_reads_finished_runs_and_runs_nothing(tmp_path: Path) -> None:
    from benchmarks.common import Setting, evaluate_initial, pipeline_run

    setting = Setting("a", "configs/local_tiny.yaml", ("trainer.total_steps=4",))
    done = _fake_run_dir(tmp_path / "done")
    args = ["run", setting.config, "--overwrite", f"run_dir={done}", *setting.overrides,
            "seed=1"]
    (done / "bench_command.json").write_text(json.dumps(args))
    assert pipeline_run(setting, 1, done, collect_only=True)["pass_rate"] == 0.55
    moved = tmp_path / "moved"  # the same run, named from another working directory
    done.rename(moved)
    assert pipeline_run(setting, 1, moved, collect_only=True)["pass_rate"] == 0.55
    moved.rename(done)
    with pytest.raises(RuntimeError, match="no finished run"):  # another seed's command
        pipeline_run(setting, 2, done, collect_only=True)
    with pytest.raises(RuntimeError, match="no finished run"):  # never stamped
        pipeline_run(setting, 1, _fake_run_dir(tmp_path / "unstamped"), collect_only=True)
    before = tmp_path / "before"
    before.mkdir()
    _write_jsonl(before / "eval.jsonl", [{"tag": "checkpoint", "pass_rate": 0.3}])
    assert evaluate_initial("x.yaml", [], 1, before, collect_only=True)["pass_rate"] == 0.3
    with pytest.raises(RuntimeError, match="not run"):
        evaluate_initial("x.yaml", [], 1, tmp_path / "none", collect_only=True)


def test_reuse_reads_a_before_training_evaluation_with_the_same_command(tmp_path: Path) -> None:
    from benchmarks.common import evaluate_initial

    before = tmp_path / "before"
    before.mkdir()
    _write_jsonl(before / "eval.jsonl", [{"tag": "checkpoint", "pass_rate": 0.3}])
    (before / "bench_command.json").write_text(json.dumps(["x.yaml", "eval.k=2", "seed=1"]))
    assert evaluate_initial("x.yaml", ["eval.k=2"], 1, before, reuse=True)["pass_rate"] == 0.3
    # another seed's command is not this evaluation: it would run (and x.yaml does not exist)
    with pytest.raises(Exception, match="x.yaml"):
        evaluate_initial("x.yaml", ["eval.k=2"], 2, before, reuse=True)


def test_collect_run_refuses_a_run_not_evaluated_at_its_last_step(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no evaluation at the final step 4"):
        collect_run(_fake_run_dir(tmp_path / "run", final_version=3))


def _run(curve: list[tuple[int, float]], entropy: list[float], wall: float,
         hist: dict[int, int]) -> dict:
    return {"pass_rate": curve[-1][1], "curve": curve, "wall_s": wall, "staleness_hist": hist,
            "metrics": [{"train/entropy": e} for e in entropy]}


def test_setting_figures_across_seeds() -> None:
    runs = {1: _run([(2, 0.4), (4, 0.5)], [0.4, 0.2], 10.0, {0: 3, 1: 1}),
            2: _run([(2, 0.5), (4, 0.7)], [0.6, 0.4, 0.2], 14.0, {1: 2}),
            3: _run([(4, 0.6)], [0.3, 0.1], 12.0, {})}
    before = {1: {"pass_rate": 0.3}, 2: {"pass_rate": 0.3}}
    f = setting_figures(runs, ("train/entropy", "absent/metric"), before)
    assert f["n"] == 3
    assert f["pass_rate"]["mean"] == pytest.approx(60.0)  # points
    assert f["pass_rate"]["values"] == pytest.approx([50.0, 70.0, 60.0])
    assert f["gain"]["values"] == pytest.approx([20.0, 40.0])  # seeds with a before only
    assert f["wall_s"]["mean"] == pytest.approx(12.0)
    # step means per seed: 0.3, 0.4, 0.2 -> 0.3; by step over the common length 2: 0.433.., 0.233..
    assert f["train/entropy"]["mean"] == pytest.approx(0.3)
    assert f["train/entropy_by_step"] == pytest.approx([1.3 / 3, 0.7 / 3])
    assert "absent/metric" not in f
    # the curve only at steps every seed evaluated
    assert [c["step"] for c in f["curve"]] == [4]
    assert [c["step"] for c in curve_summary({1: runs[1], 2: runs[2]})] == [2, 4]
    assert pooled_hist(runs) == {"0": 3, "1": 3}


def test_grid_record_keeps_per_seed_values(tmp_path: Path) -> None:
    def fake_run(setting: Setting, seed: int, run_dir: Path) -> dict:
        return _run([(4, 0.5 + seed / 10)], [0.2, 0.1], 3.0, {0: 1})

    grid = run_grid(_settings(), [1, 2], fake_run, tmp_path, log=lambda line: None)
    rec = grid_record(grid, ("train/entropy",))
    assert rec["seeds"] == [1, 2] and rec["failures"] == []
    a = rec["per_seed"]["a"]
    assert a["meta"] == {"eta": 0} and a["overrides"] == ["x=1"]
    assert a["by_seed"]["2"]["pass_rate"] == pytest.approx(0.7)
    assert a["by_seed"]["1"]["train/entropy"] == [0.2, 0.1]
    assert "metrics" not in a["by_seed"]["1"]
    json.dumps(rec)  # JSON-ready


def _args(**kw: object) -> argparse.Namespace:
    base = {"tiny_seed": 1, "task": "chain_tail", "steps": 40, "batch_size": 16, "n_samples": 8,
            "eval_problems": 512, "eval_k": 4}
    return argparse.Namespace(**{**base, **kw})


def test_learning_overrides_validate_in_every_benchmark_setting() -> None:
    from areal_sys.config import load_config
    from areal_sys.config.schema import LoggingConfig
    from benchmarks import algorithms, staleness
    from benchmarks.common import learning_overrides

    common = learning_overrides(_args(), curve_points=4, kl_to_initial=True)
    assert {"model.tiny_seed=1", "data.synthetic_task=chain_tail", "eval.k=4", "eval.every=10",
            "eval.num_problems=512", "data.synthetic_eval_size=512",
            "eval.before_and_after=false", "logging.kl_to_initial=true"} <= set(common)
    assert ("logging.kl_to_initial_every=1" in common) == (
        "kl_to_initial_every" in LoggingConfig.model_fields)
    for s in [*staleness.settings([0, 8], common, 4, 1e-4),
              *algorithms.settings(algorithms.DEFAULT.split(","), common)]:
        cfg = load_config(s.config, [*s.overrides, "seed=3"])
        assert cfg.model.tiny_seed == 1 and cfg.eval.k == 4 and cfg.seed == 3
    cfg = load_config("configs/tiny/reinforce.yaml",
                      list(algorithms.settings(["reinforce_rm_wrong"], common)[0].overrides))
    assert cfg.algorithm.filter == "remove_all_wrong" and cfg.reward.wrong_reward == -1.0
    naive = staleness.settings([4], common, 4, 1e-4)[1]
    cfg = load_config(naive.config, list(naive.overrides))
    assert (naive.name, cfg.algorithm.loss, cfg.controller.max_staleness,
            cfg.trainer.ppo_minibatches) == ("naive_eta4", "ppo_clip", 4, 4)
