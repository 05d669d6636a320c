"""The benchmark harness without measuring anything: `areal-sys bench`, the README table
generator, and the controller microbenchmark on its fakes."""

import json
from pathlib import Path

import pytest

from areal_sys.cli import main
from areal_sys.metrics import read_jsonl
from benchmarks import table

MACHINE = {"cpus_usable": 2, "cpu": "x86_64", "memory_gib": 23.5}


def test_bench_lists_and_rejects_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "list"]) == 0
    names = capsys.readouterr().out.split()
    for name in ("async_vs_sync", "interruptible", "rollout_overhead", "controller_throughput",
                 "cold_start"):
        assert name in names
    assert "common" not in names and "table" not in names
    assert main(["bench", "no_such_benchmark"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("areal-sys: error: bench: unknown benchmark") and "\n" not in err


def test_table_rows_and_readme_update(tmp_path: Path) -> None:
    def write(name: str, record: dict) -> None:
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {**record, "machine": MACHINE, "time": "2026-11-22T10:00:00"}))

    write("rollout_overhead", {"ratio": 0.98, "ratio_pooled": 0.97,
                               "ratios_by_round": [0.9, 0.98, 1.1],
                               "tokens_per_s_worker": 970, "tokens_per_s_bare": 1000,
                               "settings": {"engine_cores": ""}})
    write("cold_start", {"seconds": 31.0, "config_s": 3.0, "ray_s": 6.5})
    write("interruptible", {"gain": 0.2})  # a key missing: shown as unreadable, not a crash
    write("something_new", {"x": 1})
    text = table.table(tmp_path)
    assert ("| `rollout_overhead` | ratio **0.980** over 3 rounds (0.90–1.10), pooled 0.970 (970 "
            "vs 1000 tokens/s; tiny model, engine and driver share the cores)") in text
    assert "2 CPU cores (x86_64), 23.5 GiB; 2026-11-22" in text
    assert "**31.0 s**" in text and "(unreadable: missing" in text
    assert "something_new" in text.splitlines()[-1]
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{table.START}\nSTALE TABLE\n{table.END}\n\nafter\n")
    table.update_readme(text, readme)
    updated = readme.read_text()
    assert "STALE TABLE" not in updated and text in updated and updated.endswith("after\n")


def test_controller_microbenchmark_drives_the_real_controller(tmp_path: Path) -> None:
    import argparse

    from benchmarks.controller_throughput import measure

    args = argparse.Namespace(steps=3, batch_size=4, n_samples=2, workers=2, response_tokens=8,
                              seed=1)
    row = measure(1, args, tmp_path)
    assert row["groups_per_s"] > 0 and row["eta"] == 1
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    audit = read_jsonl(tmp_path / "staleness.jsonl")
    assert len(audit) == 3 * 4 * 2
    assert all(a["trainer_version"] - a["min_token_version"] <= 1 for a in audit)
