"""`areal-sys report`: figures and busy fractions from a hand-made run directory (no Ray)."""

import json
from pathlib import Path

import pytest

from areal_sys.cli import main
from areal_sys.report import ReportError, write_report
from areal_sys.report_rows import (
    MAX_STALENESS_BARS,
    busy_fractions,
    clean_spans,
    merge_intervals,
    read_rows,
    staleness_bars,
    staleness_values,
)

T0 = 1_700_000_000.0  # time.time()-like seconds
# A 10 s window. rollout0: [0, 6] (two overlapping groups) + [8, 10] -> 8 s busy; rollout1:
# [1, 2] -> 1 s; reward: [4, 5] -> 1 s; trainer: [6, 8] -> 2 s; sync: [8, 8.5] -> 0.5 s.
SPANS = [
    ("rollout0", "generate", 0.0, 4.0), ("rollout0", "generate", 2.0, 6.0),
    ("rollout0", "generate", 8.0, 10.0), ("rollout1", "generate", 1.0, 2.0),
    ("reward", "reward", 4.0, 5.0), ("trainer", "train", 6.0, 8.0), ("sync", "sync", 8.0, 8.5),
]
EXPECTED_BUSY = {"rollout0": 0.8, "rollout1": 0.1, "reward": 0.1, "trainer": 0.2, "sync": 0.05}
FIGURES = {"reward.png", "throughput.png", "mismatch.png", "pass_rate.png", "staleness.png",
           "timeline.png"}


def mismatch_row(s: int) -> dict:
    """The trainer's mismatch figures of step `s`, as metrics.jsonl holds them today (the
    controller prefixes the trainer's metrics with train/)."""
    k3 = 1e-5 * (s + 1)
    return {f"train/mismatch/{k}": v for k, v in {
        "k3": k3, "abs_logp_diff_mean": 4e-3, "abs_logp_diff_max": 0.05, "weight_mean": 1.0,
        "weight_min": 0.95, "weight_max": 1.05, "weight_out_1pct_frac": 0.1,
        "weight_out_10pct_frac": 0.0, "weight_out_2x_frac": 0.0, "token_frac": 0.5,
        "tokens": 100.0}.items()}


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(run: Path, *, timeline: bool = True, evaluation: bool = True) -> Path:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("controller:\n  max_staleness: 1\n")
    _write(run / "metrics.jsonl", [
        {"step": s, "reward_mean": 0.1 * s, "tokens_per_s": 200.0 + 10 * s, **mismatch_row(s)}
        for s in range(6)])
    _write(run / "staleness.jsonl", [
        {"step": s, "trainer_version": s, "min_token_version": max(0, s - (i % 2))}
        for s in range(6) for i in range(4)])
    if evaluation:
        _write(run / "eval.jsonl", [  # the controller's figures (controller/evaluation.py)
            {"tag": "before", "version": 0, "pass_rate": 0.3, "pass@1": 0.25, "pass@4": 0.5},
            {"tag": "step_3", "version": 3, "pass_rate": 0.4, "pass@1": 0.5, "pass@4": 0.7},
            {"tag": "after", "version": 6, "pass_rate": 0.6, "pass@1": 0.55, "pass@4": 0.8}])
    if timeline:
        _write(run / "timeline.jsonl", [
            {"worker": w, "kind": k, "start": T0 + s, "end": T0 + e, **({"step": 0} if
                                                                     k == "train" else {})}
            for w, k, s, e in SPANS])
    return run


def test_merge_intervals():
    assert merge_intervals([(5, 6), (0, 2), (1, 3), (3, 4)]) == [(0, 4), (5, 6)]
    assert merge_intervals([]) == []


def test_busy_fractions_of_hand_made_spans():
    spans = [{"worker": w, "kind": k, "start": T0 + s, "end": T0 + e} for w, k, s, e in SPANS]
    busy, window = busy_fractions(spans)
    assert window == pytest.approx(10.0)
    assert list(busy) == ["rollout0", "rollout1", "reward", "trainer", "sync"]  # chart rows
    assert busy == pytest.approx(EXPECTED_BUSY)


@pytest.mark.integration
def test_report_writes_every_figure(tmp_path):
    run = make_run(tmp_path / "run")
    report = write_report(run)
    assert {p.name for p in report.figures} == FIGURES and not report.skipped
    for name in FIGURES:
        png = run / "report" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert report.busy == pytest.approx(EXPECTED_BUSY)


@pytest.mark.integration
def test_report_command_prints_busy_fractions(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "6 figures" in out and "of 10.0 s" in out
    assert "rollout0      80.0%" in out and "sync           5.0%" in out


@pytest.mark.integration
def test_report_skips_what_a_run_did_not_write(tmp_path, capsys):
    run = make_run(tmp_path / "run", timeline=False, evaluation=False)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "skipped pass_rate.png: no eval.jsonl" in out
    assert "skipped timeline.png: no timeline.jsonl" in out
    assert {p.name for p in (run / "report").iterdir()} == {
        "reward.png", "throughput.png", "mismatch.png", "staleness.png"}


@pytest.mark.parametrize(("setup", "needle"), [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "no metrics.jsonl"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("")), "empty"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"step": 0\n{"step": 1}\n')),
     "line 1 is not JSON"),
])
def test_report_errors_exit_2_with_one_line(tmp_path, capsys, setup, needle):
    run = tmp_path / "run"
    setup(run)
    assert main(["report", str(run)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("areal-sys: error: report:") and needle in err[0]


def test_a_cut_off_last_line_is_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "rew')  # killed mid-write
    assert read_rows(path) == [{"step": 0}, {"step": 1}]
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ReportError, match="line 2 is not JSON"):
        read_rows(path)


@pytest.mark.parametrize(("content", "needle"), [
    (b'{"step": 0}\n[1, 2]\n', "line 2 is not a JSON object but a list"),
    (b'"text"\n{"step": 1}\n', "line 1 is not a JSON object but a str"),
    (b'{"step": 0}\n3\n', "line 2 is not a JSON object but a int"),
    (b'{"step": "\xff"}\n{"step": 1}\n', "line 1 is not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000 + b"\n{}\n", "line 1 is JSON past this reader's limits"),
    (b'{"step": ' + b"9" * 5000 + b"}\n{}\n", "line 1 is JSON past this reader's limits"),
])
def test_a_line_that_is_not_a_json_object_is_named(tmp_path, content, needle):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(ReportError, match="rows.jsonl: " + needle.replace("[", r"\[")):
        read_rows(path)


def test_a_last_line_cut_inside_a_utf8_character_is_ignored(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes('{"step": 0}\n{"tag": "été"}\n'.encode() + '{"tag": "é'.encode()[:-1])
    assert read_rows(path) == [{"step": 0}, {"tag": "été"}]
    path.write_bytes(b'{"step": 0}\n{"step": 1, "rew\n')  # a newline after it: not cut off
    with pytest.raises(ReportError, match="line 2 is not JSON"):
        read_rows(path)


def test_files_over_the_size_limit_are_refused_unread(tmp_path, monkeypatch):
    import areal_sys.report_rows as rows

    monkeypatch.setattr(rows, "MAX_FILE_BYTES", 100)
    path = tmp_path / "rows.jsonl"
    path.write_text('{"step": 0}\n' * 20)  # 240 bytes
    with pytest.raises(ReportError, match="larger than 0 MiB"):
        read_rows(path)
    path.write_text('{"step": 0}\n' * 8)  # 96 bytes
    assert len(read_rows(path)) == 8


def test_staleness_outliers_share_one_bar():
    assert staleness_bars([0, 1, 1, 2]) == (["0", "1", "2"], [1, 2, 1])
    labels, counts = staleness_bars([0, 1, 1, 2, 10**12, 10**12 + 5])
    assert (labels, counts) == (["0", "1", "2", ">2"], [1, 2, 1, 2])
    values = list(range(0, 3 * MAX_STALENESS_BARS, 2)) + [10**300]  # spread wider than the cap
    labels, counts = staleness_bars(values)
    assert len(counts) <= MAX_STALENESS_BARS and sum(counts) == len(values)
    assert labels[0] == "0" and labels[-1].startswith(">")


def test_staleness_rows_with_no_tokens_or_damage_are_counted_apart():
    rows = [{"trainer_version": 3, "min_token_version": 1},  # 2
            {"trainer_version": 3.0, "min_token_version": 3},  # 0 (an integral float)
            {"trainer_version": 3, "min_token_version": None},  # RPO: no generated token
            {"trainer_version": 3, "min_token_version": -1},  # the same
            {"trainer_version": 1, "min_token_version": 2},  # negative: damaged
            {"trainer_version": "3", "min_token_version": 1},  # a string
            {"trainer_version": float("nan"), "min_token_version": 1},
            {"min_token_version": 1}, {"trainer_version": True, "min_token_version": 0}]
    assert staleness_values(rows) == ([2, 0], 2, 5)


def test_clean_spans_keeps_only_finite_ordered_spans():
    rows = [{"worker": "rollout0", "kind": "generate", "start": 1, "end": 2},
            {"worker": "rollout0", "kind": "generate", "start": 2, "end": 1},  # reversed
            {"worker": 7, "kind": "generate", "start": 1, "end": 2},
            {"worker": "w", "kind": None, "start": 1, "end": 2},
            {"worker": "w", "kind": "train", "start": float("nan"), "end": 2},
            {"worker": "w", "kind": "train", "start": 0, "end": float("inf")},
            {"worker": "w", "kind": "train", "start": "0", "end": 1}, {}]
    spans, bad = clean_spans(rows)
    assert spans == [{"worker": "rollout0", "kind": "generate", "start": 1.0, "end": 2.0}]
    assert bad == 7


@pytest.mark.integration
def test_rows_lacking_a_figures_fields_are_left_out_and_counted(tmp_path):
    run = make_run(tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "reward_mean": NaN, "tokens_per_s": "fast"}\n{"step": null}\n')
    with (run / "timeline.jsonl").open("a") as f:
        f.write('{"worker": "rollout0", "kind": "generate", "start": 5}\n')
    report = write_report(run)
    assert {p.name for p in report.figures} == FIGURES
    assert "metrics.jsonl: 2 of 8 rows not drawn in reward.png (no numeric step and " \
           "reward_mean)" in report.skipped
    assert "metrics.jsonl: 2 of 8 rows not drawn in throughput.png (no numeric step and " \
           "tokens_per_s)" in report.skipped
    assert any(s.startswith("timeline.jsonl: 1 of 8 rows not drawn") for s in report.skipped)
    assert report.busy == pytest.approx(EXPECTED_BUSY)  # the damaged span changes nothing


@pytest.mark.integration
def test_a_figure_is_written_through_a_rename_not_through_a_symlink(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "report").mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (run / "report" / "reward.png").symlink_to(victim)
    write_report(run)
    assert victim.read_text() == "keep me"
    png = run / "report" / "reward.png"
    assert not png.is_symlink() and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_text_from_run_files_is_never_parsed_as_mathematics(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "eval.jsonl").write_text('{"tag": "$\\\\frac{$", "version": 0, "pass_rate": 0.5}\n')
    (run / "timeline.jsonl").write_text(
        '{"worker": "rollout$\\\\sqrt{$", "kind": "generate", "start": 0, "end": 1}\n')
    report = write_report(run)
    assert {p.name for p in report.figures} == FIGURES and not report.skipped


@pytest.mark.integration
def test_mismatch_panel_reads_either_prefix_and_skips_runs_without_it(tmp_path):
    """mismatch/* as the trainer names them or under train/ as the controller writes them; a run
    without them (or with no token of the trainer's version) skips the panel, saying why."""
    run = make_run(tmp_path / "run")
    rows = [{"step": s, "reward_mean": 0.0, "tokens_per_s": 1.0,
             **{k.removeprefix("train/"): v for k, v in mismatch_row(s).items()}}
            for s in range(4)]
    rows.append({"step": 4, "reward_mean": 0.0, "tokens_per_s": 1.0, "mismatch/tokens": 0.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = write_report(run)
    assert "mismatch.png" in {p.name for p in report.figures}
    assert report.skipped == []  # step 4 had no token of the trainer's version: not damage
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "reward_mean": 0, "tokens_per_s": 1, "mismatch/tokens": 3}\n')
    assert write_report(run).skipped == ["metrics.jsonl: 1 of 5 rows not drawn in mismatch.png "
                                         "(no numeric step and mismatch/k3)"]
    (run / "metrics.jsonl").write_text('{"step": 0, "reward_mean": 0, "tokens_per_s": 1}\n')
    report = write_report(run)
    assert any(s.startswith("mismatch.png: no row of metrics.jsonl has mismatch/k3")
               for s in report.skipped)


@pytest.mark.integration
def test_a_tool_use_run_also_gets_its_episodes_figure(tmp_path):
    run = make_run(tmp_path / "run")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for s, r in enumerate(rows):  # what controller/records.py episode_metrics logs
        r.update({"episode/call_rate": 0.2 + 0.1 * s, "episode/tool_errors": 0.05,
                  "episode/turns": 1.2 + 0.1 * s, "episode/model_tokens": 12.0,
                  "episode/tool_tokens": 1.0 + 0.5 * s})
    _write(run / "metrics.jsonl", rows)
    report = write_report(run)
    assert {p.name for p in report.figures} == FIGURES | {"episodes.png"} and not report.skipped
    assert (run / "report" / "episodes.png").stat().st_size > 5000
