"""The pure parts of benchmarks/vs_trl.py: the settings table, the summary over runs (ratio and
paired difference with their CIs), TRL's config, the README row, and the one-line exit when TRL
is missing. No TRL run: the runs here are synthetic figures."""

import json
import sys
from pathlib import Path

import pytest

from benchmarks import table, vs_trl


def _run(step_s: float, rate: float, tokens: float = 1000.0) -> dict:
    return {"step_s": step_s, "train_s": 40 * step_s, "tokens_generated": tokens,
            "pass_rate": rate, "step_time_s": [step_s] * 3}


def test_settings_table_lists_every_unmatched_setting_with_both_sides_and_why() -> None:
    t = vs_trl.settings_table()
    for row in t["unmatched"]:
        assert set(row) == {"setting", "areal_sys", "trl", "why"}
        assert all(row[k] for k in row)
    unmatched = {r["setting"]: r for r in t["unmatched"]}
    assert "transformers `generate`" in unmatched["generation engine"]["trl"]
    assert {"schedule", "batch layout", "cores", "objective"} <= set(unmatched)
    assert {r["setting"] for r in t["matched"]} >= {"batch", "loss", "evaluation"}
    json.dumps(t)  # the results file holds it


def test_summary_pairs_runs_by_seed() -> None:
    runs = {"areal_sys": {1: _run(1.0, 0.60), 2: _run(2.0, 0.70)},
            "trl": {1: _run(1.5, 0.50), 2: _run(4.0, 0.65), 3: _run(9.0, 0.10)}}
    s = vs_trl.summary(runs)
    # ratios 1.5 and 2.0: mean 1.75, half-width t(0.975, 1) * s / sqrt(2) = 12.706 * 0.25
    assert s["speedup"]["values"] == [1.5, 2.0]
    assert s["speedup"]["mean"] == pytest.approx(1.75)
    assert s["speedup"]["ci95"] == pytest.approx(12.706 * 0.25)
    # areal_sys − TRL: 10 and 5 points over the seeds both have (seed 3 is TRL's alone)
    assert s["pass_rate_diff"]["values"] == pytest.approx([10.0, 5.0])
    assert s["pass_rate_diff"]["seeds"] == [1, 2]
    trl = s["by_system"]["trl"]
    assert trl["n"] == 3
    assert trl["step_s"]["mean"] == pytest.approx(14.5 / 3)
    assert trl["pass_rate"]["mean"] == pytest.approx(125 / 3)
    assert "TRL/areal_sys step time 1.75" in vs_trl.console_line(s)


def test_summary_without_a_pair_has_no_ratio() -> None:
    s = vs_trl.summary({"areal_sys": {1: _run(1.0, 0.6)}, "trl": {}})
    assert s["speedup"] is None and s["pass_rate_diff"] is None
    assert s["by_system"]["trl"] == {"n": 0}
    assert s["by_system"]["areal_sys"]["step_s"]["ci95"] is None  # one run: no CI


def test_trl_config_makes_one_optimizer_step_per_generation() -> None:
    a = vs_trl.parse(["--trl-micro-batch", "32"])
    kw = vs_trl.trl_config(a, 2, Path("out"), cuda=False)
    assert kw["per_device_train_batch_size"] * kw["gradient_accumulation_steps"] == 16 * 8
    assert (kw["num_generations"], kw["max_completion_length"], kw["max_steps"]) == (8, 160, 40)
    assert (kw["learning_rate"], kw["lr_scheduler_type"], kw["beta"]) == (1e-4, "constant", 0.0)
    assert kw["loss_type"] == "dapo" and kw["use_vllm"] is False and kw["use_cpu"] is True
    assert kw["seed"] == 2
    with pytest.raises(SystemExit, match="must divide 128"):
        vs_trl.trl_config(vs_trl.parse(["--trl-micro-batch", "48"]), 1, Path("out"), cuda=False)


def test_trl_config_is_accepted_by_the_installed_trl(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    args = trl.GRPOConfig(**vs_trl.trl_config(vs_trl.parse([]), 1, tmp_path, cuda=False))
    assert (args.generation_batch_size, args.steps_per_generation) == (128, 4)


def test_missing_trl_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` raises ImportError

    def fake_run(*_args: object) -> dict:
        raise AssertionError("nothing may run without TRL")

    monkeypatch.setattr(vs_trl, "run_areal", fake_run)
    with pytest.raises(SystemExit) as exc:
        vs_trl.main(["--runs", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[trl]"' in err


def test_table_row(tmp_path: Path) -> None:
    runs = {"areal_sys": {1: _run(1.0, 0.60), 2: _run(2.0, 0.70)},
            "trl": {1: _run(1.5, 0.50), 2: _run(4.0, 0.65)}}
    settings = {"runs": 2, "steps": 40, "batch_size": 16, "n_samples": 8, "eval_k": 4,
                "trl_version": "1.16.0"}
    (tmp_path / "vs_trl.json").write_text(json.dumps({
        **vs_trl.summary(runs), "settings": settings, "time": "2026-11-29T12:00:00",
        "machine": {"cpus_usable": 2, "cpu": "x86_64", "memory_gib": 23.5}}))
    text = table.table(tmp_path)
    assert "| `vs_trl` | **1.75 ± 3.18x** TRL 1.16.0 s/step over areal_sys's" in text
    assert "40 steps of 16 × 8, 2 runs each" in text
    assert "pass rate 65.0 ± 63.5% vs 57.5 ± 95.3% (areal_sys − TRL 7.5 ± 31.8 points" in text
    assert "(n = " not in text  # every figure has the runs asked for
