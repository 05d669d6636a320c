"""`areal-sys report` on damaged or partial run directories: one line and exit code 2, or the
figure skipped with a line saying why; never a traceback, never a hang on an outlier."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from areal_sys.cli import main
from areal_sys.report import write_report
from tests.test_report import FIGURES, make_run

ROOT = Path(__file__).resolve().parents[2]


def report_cli(run: Path) -> subprocess.CompletedProcess:
    """The real command line; the timeout only stops a hang (the old report never finished)."""
    return subprocess.run([sys.executable, "-m", "areal_sys.cli", "report", str(run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("areal-sys: error: report: ")
    return lines[0]


def _outlier_staleness(run: Path) -> None:
    rows = [{"step": 0, "trainer_version": 10**12 if i == 0 else 1, "min_token_version": i % 2}
            for i in range(50)]
    (run / "staleness.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.integration
def test_an_outlier_staleness_is_one_bar_through_the_cli(tmp_path):
    run = make_run(tmp_path / "run")
    _outlier_staleness(run)
    res = report_cli(run)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert f"{len(FIGURES)} figures" in res.stdout and "skipped" not in res.stdout
    assert (run / "report" / "staleness.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
@pytest.mark.parametrize(("damage", "needle"), [
    (lambda run: (run / "report").write_text("not a directory"),
     "report: exists and is not a directory"),
    (lambda run: (run / "metrics.jsonl").write_bytes(b'{"step": 0, "tag": "\xff\xfe"}\n{}\n'),
     "metrics.jsonl: line 1 is not UTF-8"),
    (lambda run: (run / "metrics.jsonl").write_text('[{"step": 0}]\n'),
     "metrics.jsonl: line 1 is not a JSON object but a list"),
    (lambda run: os.truncate(run / "metrics.jsonl", 600 << 20),  # sparse: nothing is written
     "metrics.jsonl: larger than 512 MiB"),
])
def test_a_damaged_run_is_one_line_and_exit_2_through_the_cli(tmp_path, damage, needle):
    run = make_run(tmp_path / "run")
    damage(run)
    res = report_cli(run)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert needle in one_error_line(res.stderr)


@pytest.mark.integration
def test_a_file_given_as_run_dir_is_one_line_through_the_cli(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n')
    res = report_cli(path)
    assert res.returncode == 2
    assert "not a directory" in one_error_line(res.stderr)


@pytest.mark.parametrize(("setup", "needle"), [
    (lambda d: d.parent.mkdir(exist_ok=True), "does not exist"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").mkdir()), "metrics.jsonl: not a regular file"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("\n\n")), "empty"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"step": 0}\n"x\n{}\n')),
     "line 2 is not JSON"),
])
def test_missing_or_unusable_metrics_are_one_line(tmp_path, capsys, setup, needle):
    run = tmp_path / "run"
    setup(run)
    assert main(["report", str(run)]) == 2
    assert needle in one_error_line(capsys.readouterr().err)


def test_a_run_dir_holding_a_nul_byte_is_one_line(capsys):
    assert main(["report", "runs/a\0b"]) == 2
    assert "does not exist" in one_error_line(capsys.readouterr().err)


def test_an_unreadable_file_is_one_line(tmp_path, capsys, monkeypatch):
    """(Tests may run as root, where permissions do not stop a read: the refusal is simulated.)"""
    run = make_run(tmp_path / "run")
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith("metrics.jsonl"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    assert main(["report", str(run)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "metrics.jsonl: cannot read it (Permission denied)" in line


@pytest.mark.integration
def test_a_run_dir_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "run")

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert main(["report", str(run)]) == 2
    assert "report: Permission denied" in one_error_line(capsys.readouterr().err)


@pytest.mark.integration
@pytest.mark.parametrize(("source", "content", "why"), [
    ("staleness.jsonl", b"[1, 2]\n", "line 1 is not a JSON object but a list"),
    ("staleness.jsonl", b'"s"\n{}\n', "line 1 is not a JSON object but a str"),
    ("timeline.jsonl", b'{"worker": "\xff"}\n{}\n', "line 1 is not UTF-8"),
    ("eval.jsonl", b"[" * 100_000 + b"]" * 100_000 + b"\n", "past this reader's limits"),
    ("eval.jsonl", b'{"tag": "before"\n{}\n', "line 1 is not JSON"),
])
def test_a_damaged_optional_file_skips_its_figure(tmp_path, source, content, why):
    run = make_run(tmp_path / "run")
    (run / source).write_bytes(content)
    figure = {"staleness.jsonl": "staleness.png", "timeline.jsonl": "timeline.png",
              "eval.jsonl": "pass_rate.png"}[source]
    report = write_report(run)
    assert {p.name for p in report.figures} == FIGURES - {figure}
    (skipped,) = report.skipped
    assert skipped.startswith(f"{figure}: {run / source}: line 1 ") and why in skipped


@pytest.mark.integration
def test_a_fifo_in_place_of_a_file_does_not_hang(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "eval.jsonl").unlink()
    os.mkfifo(run / "eval.jsonl")  # opening it for reading would block without a writer
    report = write_report(run)
    assert report.skipped == [f"pass_rate.png: {run / 'eval.jsonl'}: not a regular file"]


def test_rows_missing_every_key_skip_each_figure_with_a_reason(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    for source in ("metrics.jsonl", "eval.jsonl", "staleness.jsonl", "timeline.jsonl"):
        (run / source).write_text('{"unrelated": 1}\n{}\n')
    assert main(["report", str(run)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    for why in ["reward.png: no row of metrics.jsonl has a numeric step and reward_mean",
                "throughput.png: no row of metrics.jsonl has a numeric step and tokens_per_s",
                "pass_rate.png: no row of eval.jsonl has a numeric pass_rate",
                "staleness.png: no row of staleness.jsonl has integer trainer_version",
                "timeline.png: no row of timeline.jsonl is a span"]:
        assert f"  skipped {why}" in captured.out
    assert "0 figures" in captured.out


@pytest.mark.integration
def test_nan_infinities_and_huge_numbers_never_raise(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "metrics.jsonl").write_text(
        '{"step": 0, "reward_mean": NaN, "tokens_per_s": Infinity}\n'
        '{"step": 1, "reward_mean": 0.5, "tokens_per_s": 1e308}\n'
        '{"step": 2, "reward_mean": -Infinity, "tokens_per_s": 1e308}\n'
        '{"step": 1e400, "reward_mean": 0.5, "tokens_per_s": 5}\n')
    (run / "eval.jsonl").write_text('{"pass_rate": NaN}\n{"pass_rate": 0.5, "pass@1": "x"}\n')
    (run / "timeline.jsonl").write_text(
        '{"worker": "rollout0", "kind": "generate", "start": -1e308, "end": 1e308}\n')
    (run / "config.yaml").write_text("controller: {max_staleness: .inf}\n")
    report = write_report(run)  # (the figures drawn depend on matplotlib; no exception at all)
    assert {"reward.png", "throughput.png", "staleness.png"} <= {p.name for p in report.figures}
    assert "timeline.png: its spans' times are out of range (the window is not finite)" in \
        report.skipped
    assert report.busy == {}


@pytest.mark.integration
def test_a_worker_per_span_draws_a_bounded_chart(tmp_path):
    run = make_run(tmp_path / "run")
    rows = [{"worker": f"rollout{i}" + "x" * 500, "kind": "generate", "start": i, "end": i + 1}
            for i in range(2000)]
    (run / "timeline.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_report(run)
    assert "timeline.png" in {p.name for p in report.figures}
    assert "timeline.png: 1936 workers past the first 64 not drawn" in report.skipped
    assert len(report.busy) == 2000
