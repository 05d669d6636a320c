"""The command line: exit code 2 and one line naming the field, before anything starts."""

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def areal_sys(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "areal_sys.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.integration  # builds the tiny model on a fresh machine
def test_validate_accepts_the_demo():
    res = areal_sys("validate", "configs/local_tiny.yaml", "trainer.total_steps=5")
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["configs/local_tiny.yaml", "trainer.nope=1"], "trainer.nope: unknown key"),
        (["configs/local_tiny.yaml", "trainer.total_steps=x"], "trainer.total_steps:"),
        (["configs/local_tiny.yaml", "controller.max_staleness=-2"], "controller.max_staleness:"),
        (["configs/local_tiny.yaml", "algorithm.name=bogus"], "algorithm.name:"),
        (["configs/local_tiny.yaml", "model.path=/no/such/model"], "model.path:"),
        (["configs/does_not_exist.yaml"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(command, args, needle):
    res = areal_sys(command, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert needle in lines[0]
    assert "Traceback" not in res.stderr


def test_yaml_syntax_error_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {total_steps: 3\n")
    res = areal_sys("run", str(bad))
    assert res.returncode == 2
    assert "YAML syntax error" in res.stderr


def test_algorithms_lists_presets_and_pieces(capsys):
    from areal_sys.algorithms.presets import PRESETS
    from areal_sys.algorithms.registry import REGISTRIES, plugins
    from areal_sys.cli import main

    assert main(["algorithms"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert f"  {name} " in out, name
    for kind in REGISTRIES:
        assert f"{kind} (algorithm." in out
        for name, plugin in plugins(kind).items():
            assert f"  {name} " in out and plugin.description in out, (kind, name)


def test_import_is_light():
    heavy = "('ray', 'vllm', 'deepspeed', 'torch', 'controller', 'reward_service', 'workers')"
    code = ("import sys, areal_sys, areal_sys.config, areal_sys.trajectory; "
            f"print(sorted(m for m in {heavy} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip() == "[]", res.stderr
    # the command line is the application's face: it reaches the run's checks, no engine
    code = ("import sys, areal_sys.cli; "
            "print(sorted(m for m in ('ray', 'vllm', 'deepspeed', 'torch') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip() == "[]", res.stderr


def test_bad_dataset_exits_2_before_anything_starts(tmp_path):
    run_dir = f"run_dir={tmp_path}/run"  # never the config's own run_dir, which may hold a run
    missing = areal_sys("run", "configs/local_tiny.yaml", f"data.train={tmp_path}/none.jsonl",
                        run_dir)
    assert missing.returncode == 2
    assert missing.stderr.startswith("areal-sys: error: data.train:"), missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2"}\n{"question": "no prompt field"}\n')
    res = areal_sys("run", "configs/local_tiny.yaml", f"data.train={bad}", run_dir)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.train:" in lines[0] and ":2" in lines[0], res.stderr


def one_error_line(res: subprocess.CompletedProcess) -> str:
    """The single stderr line of a user error (exit code 2, no traceback)."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("areal-sys: error: "), res.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "the following arguments are required: command"),
        (["run"], "run: the following arguments are required: config"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        (["run", "configs/local_tiny.yaml", "--bogus"], "unrecognized arguments: --bogus"),
        (["eval", "configs/local_tiny.yaml"], "--checkpoint"),
        (["make-tiny-model", "--seed", "-1"], "--seed: expected a whole number in [0, 2**31)"),
        (["make-tiny-model", "--sft-steps", "1" * 5000], "--sft-steps: expected a whole number"),
        (["make-tiny-model", "--task", "chain"], "--task: invalid choice: 'chain'"),
    ],
)
def test_usage_errors_are_one_line(args, needle):
    assert needle in one_error_line(areal_sys(*args))


def test_help_still_prints_usage():
    res = areal_sys("run", "--help")
    assert res.returncode == 0 and "--overwrite" in res.stdout and "--resume" in res.stdout


def earlier_run(run_dir: Path) -> dict[str, bytes]:
    """A run_dir as an earlier run left it; returns its files' contents."""
    (run_dir / "checkpoints" / "step_2").mkdir(parents=True)
    files = {"config.yaml": b"seed: 7\n", "metrics.jsonl": b'{"step": 0}\n',
             "checkpoints/step_2/x": b"w", "notes.txt": b"mine"}
    for name, content in files.items():
        (run_dir / name).write_bytes(content)
    return files


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_an_earlier_run_is_never_written_into(tmp_path):
    files = earlier_run(tmp_path)
    line = one_error_line(areal_sys("run", "configs/local_tiny.yaml", f"run_dir={tmp_path}"))
    assert f"run_dir {tmp_path} holds an earlier run (config.yaml, metrics.jsonl, checkpoints)" \
        in line and "--resume" in line and "--overwrite" in line
    # --overwrite deletes only after validation passed: a bad dataset leaves everything in place
    bad = areal_sys("run", "configs/local_tiny.yaml", f"run_dir={tmp_path}", "--overwrite",
                    f"data.train={tmp_path}/none.jsonl")
    assert "data.train:" in one_error_line(bad)
    both = areal_sys("run", "configs/local_tiny.yaml", f"run_dir={tmp_path}", "--overwrite",
                     "--resume")
    assert "--overwrite and --resume exclude each other" in one_error_line(both)
    assert snapshot(tmp_path) == files


def test_overwrite_removes_only_the_earlier_runs_outputs(tmp_path, capsys):
    from controller.preflight import RUN_OUTPUTS, check_run_dir, make_run_dir

    earlier_run(tmp_path)
    earlier = check_run_dir(str(tmp_path))
    assert [p.name for p in earlier] == ["config.yaml", "metrics.jsonl", "checkpoints"]
    make_run_dir(str(tmp_path), earlier, "seed: 1\n")
    assert snapshot(tmp_path) == {"config.yaml": b"seed: 1\n", "notes.txt": b"mine"}
    assert "removed the earlier run's config.yaml, metrics.jsonl, checkpoints" in \
        capsys.readouterr().out
    assert "results.json" in RUN_OUTPUTS and "events.jsonl" in RUN_OUTPUTS


def test_a_run_that_fails_validation_writes_nothing(tmp_path):
    run_dir = tmp_path / "new"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": NaN}\n')
    res = areal_sys("run", "configs/local_tiny.yaml", f"run_dir={run_dir}", f"data.train={bad}")
    assert f"{bad}:1: field 'answer': nan is not a finite number" in one_error_line(res)
    assert not run_dir.exists()


def make_model_dir(path: Path, tokenizer: bool = True) -> Path:
    """A directory with a config.json and (optionally) the tiny model's tokenizer files."""
    from areal_sys.models.tiny import build_tokenizer

    path.mkdir()
    (path / "config.json").write_text('{"model_type": "qwen2"}')
    if tokenizer:
        build_tokenizer().save_pretrained(path)
    return path


CONFIG = str(ROOT / "configs/local_tiny.yaml")


def error_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """`main(args)` in this process (transformers imported once): exit 2, one stderr line."""
    from areal_sys.cli import main

    assert main(list(args)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("areal-sys: error: "), lines
    return lines[0]


def test_bad_run_dirs_and_model_dirs(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    no_tokenizer = make_model_dir(tmp_path / "no_tokenizer", tokenizer=False)
    cases = [
        ([f"run_dir={tmp_path / 'file'}"], f"run_dir '{tmp_path / 'file'}' exists and is not"),
        ([f"run_dir={tmp_path / 'file' / 'sub'}"], f"cannot be created: {tmp_path / 'file'} is"),
        ([f"run_dir={tmp_path / ('x' * 300)}"], "File name too long"),
        ([f"model.path={no_config}"], f"model.path: {no_config} is not a Hugging Face model "
         "directory (no config.json)"),
        ([f"model.path={no_tokenizer}"], f"model.path: {no_tokenizer} has no usable tokenizer"),
    ]
    for overrides, needle in cases:
        assert needle in error_in_process(capsys, "validate", CONFIG, *overrides), overrides
    # run makes the same checks, after the datasets and before Ray, and writes nothing
    run_dir = tmp_path / "run"
    line = error_in_process(capsys, "run", CONFIG, f"run_dir={run_dir}",
                            f"model.path={no_tokenizer}")
    assert "has no usable tokenizer" in line and not run_dir.exists()
    res = areal_sys("run", "configs/local_tiny.yaml", f"run_dir={run_dir}",
                    f"model.path={no_config}")  # the same through a real process
    assert "is not a Hugging Face model directory" in one_error_line(res)
    assert not run_dir.exists()


def test_prompts_must_fit_the_engines_room(tmp_path, capsys):
    data = tmp_path / "long.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "' + "7" * 400 + '=", '
                    '"answer": "7"}\n')
    model = make_model_dir(tmp_path / "model")
    common = [CONFIG, f"data.train={data}", "data.max_prompt_tokens=1000",
              "rollout.max_model_len=256", "rollout.max_new_tokens=48",
              f"run_dir={tmp_path / 'run'}"]
    room = "more than the 208 that fit (rollout.max_model_len 256 - rollout.max_new_tokens 48)"
    line = error_in_process(capsys, "validate", *common)
    assert f"data.train: {data}:2: the prompt has 40" in line and room in line
    line = error_in_process(capsys, "run", *common, f"model.path={model}")
    assert f"data.train: {data}:2: the prompt has 40" in line and room in line
    line = error_in_process(capsys, "validate", *common[:2], "data.max_prompt_tokens=50")
    assert f"{data}:2: the prompt has 40" in line and "the 50 that fit (data.max_prompt_tokens" \
        in line
    assert not (tmp_path / "run").exists()


def test_eval_checks_the_checkpoint_before_anything_starts(tmp_path, capsys):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_bytes(b"\xff{")
    no_tokenizer = make_model_dir(tmp_path / "no_tokenizer", tokenizer=False)
    for ckpt, needle in ((damaged, "config.json is not a JSON object"),
                         (no_tokenizer, "has no usable tokenizer"),
                         (tmp_path / "none", "holds no Hugging Face policy")):
        line = error_in_process(capsys, "eval", CONFIG, "--checkpoint", str(ckpt),
                                f"run_dir={tmp_path / 'run'}")
        assert needle in line, ckpt
    assert not (tmp_path / "run").exists()


def test_validate_reads_the_datasets_and_the_template(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1=", "answer": "2", "task": "os:popen"}\n')
    line = error_in_process(capsys, "validate", CONFIG, f"data.eval={bad}")
    assert f"data.eval: {bad}:1: field 'task': unknown grader 'os:popen'" in line
    line = error_in_process(capsys, "validate", CONFIG, "data.prompt_template=chat")
    assert "data.prompt_template: prompt_template 'chat' needs a tokenizer with a chat" in line


def test_validate_notes_an_earlier_run(tmp_path, capsys):
    from areal_sys.cli import main

    earlier_run(tmp_path)
    assert main(["validate", CONFIG, f"run_dir={tmp_path}", "data.synthetic_train_size=8"]) == 0
    out = capsys.readouterr().out
    assert "ok:" in out and "8 train" in out and "needs --resume or --overwrite" in out


def test_validate_says_when_prompt_lengths_wait_for_a_download(capsys):
    from areal_sys.cli import main

    assert main(["validate", CONFIG, "model.path=nobody-here/no-such-model",
                 "data.synthetic_train_size=4"]) == 0
    out = capsys.readouterr().out
    assert "note: prompt lengths not checked: nobody-here/no-such-model is not downloaded" in out


def test_validate_warns_when_a_presets_advantages_degenerate_under_the_rewards(capsys):
    """Reinforce-Rej under 0/1 rewards: wrong responses get A = R = 0, so it is RAFT++ on mixed
    groups; one warning line. Its own +1/-1 rewards (the preset's default) give none."""
    from areal_sys.cli import main

    common = [CONFIG, "model.path=nobody-here/no-such-model", "data.synthetic_train_size=4",
              "algorithm.name=reinforce_rej"]
    assert main(["validate", *common, "reward.wrong_reward=0"]) == 0
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1
    assert "reinforce_rej: under rewards 1/0 the wrong responses" in warnings[0]
    assert "RAFT++ on mixed groups" in warnings[0] and "1/-1" in warnings[0]
    assert main(["validate", *common]) == 0
    assert "warning:" not in capsys.readouterr().out


def test_a_checkpoint_of_the_pickle_format_is_refused_in_one_line(tmp_path, capsys):
    """controller.pkl (before checkpoint format 1) is not unpickled: `run --resume` names it and
    what to do, exit 2, before anything starts."""
    ckpt = tmp_path / "checkpoints" / "step_1"
    ckpt.mkdir(parents=True)
    (ckpt / "controller.pkl").write_bytes(b"\x80\x05N.")
    (tmp_path / "config.yaml").write_text("{}\n")
    line = error_in_process(capsys, "run", CONFIG, f"run_dir={tmp_path}", "trainer.total_steps=3",
                            "--resume")
    assert "controller.pkl" in line and "--overwrite" in line


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    res = areal_sys("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"areal-sys {version('areal-sys')}"


def _subcommands() -> dict[str, Any]:
    import argparse

    from areal_sys.cli import _parser

    parsers: dict[str, Any] = {}
    pending = [("", _parser())]
    while pending:  # nested ones too: `config show`
        prefix, parser = pending.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    parsers[prefix + name] = child
                    pending.append((prefix + name + " ", child))
    return parsers


def test_every_option_of_every_subcommand_has_help_and_shows_its_default():
    import argparse

    subcommands = _subcommands()
    assert {"run", "eval", "validate", "report", "bench", "config show"} <= set(subcommands)
    for name, parser in subcommands.items():
        if name == "reward-serve":  # its own parser: reward_service/cli.py
            continue
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            if action.option_strings and action.default is not None:
                assert f"(default: {action.default})" in " ".join(text.split()), \
                    (name, action.dest)


def test_reward_serve_help_shows_every_flags_default():
    from areal_sys.config.reward import RewardConfig
    from reward_service.cli import _FLAGS, _parser

    text = " ".join(_parser().format_help().split())
    for flag, (field, _, _) in _FLAGS.items():
        default = RewardConfig.model_fields[field].default
        assert f"(default: {default})" in text or f"(default {default})" in text, flag
    assert "-v, --verbose" in text


def test_help_names_the_defaults_in_a_subprocess():
    res = areal_sys("make-tiny-model", "--help")
    text = " ".join(res.stdout.split())  # argparse wraps to the terminal's width
    assert res.returncode == 0
    assert "(default: 1)" in text and "(default: first_decision)" in text
    assert "--verbose" in areal_sys("run", "--help").stdout


def test_config_show_prints_yaml_that_loads_back_with_the_descriptions(tmp_path):
    import yaml

    from areal_sys.config import load_config
    from areal_sys.config.schema import LoggingConfig, ModelConfig

    res = areal_sys("config", "show", "configs/local_tiny.yaml", "trainer.total_steps=7",
                    "logging.verbose=true")
    assert res.returncode == 0, res.stderr
    shown = yaml.safe_load(res.stdout)
    cfg = load_config("configs/local_tiny.yaml", ["trainer.total_steps=7", "logging.verbose=true"])
    assert shown == cfg.model_dump(mode="json")
    assert shown["trainer"]["total_steps"] == 7 and shown["logging"]["verbose"] is True
    # the YAML is a config: loaded again it is the same configuration
    again = tmp_path / "shown.yaml"
    again.write_text(res.stdout)
    assert load_config(str(again), []) == cfg
    # each field's description, as comments right above it, indented with it
    lines = res.stdout.splitlines()
    at = lines.index("  verbose: true")
    start = at
    while lines[start - 1].startswith("  # "):
        start -= 1
    comment = " ".join(ln.removeprefix("  # ") for ln in lines[start:at])
    assert comment == " ".join(LoggingConfig.model_fields["verbose"].description.split())
    path_doc = " ".join(ModelConfig.model_fields["path"].description.split()[:5])
    assert f"  # {path_doc}" in res.stdout


def test_config_show_without_a_file_shows_the_defaults_and_bad_overrides_fail():
    res = areal_sys("config", "show")
    assert res.returncode == 0 and "run_dir: runs/default" in res.stdout
    assert "trainer.nope: unknown key" in one_error_line(
        areal_sys("config", "show", "configs/local_tiny.yaml", "trainer.nope=1"))


def test_reward_serve_shows_our_own_logs_and_only_the_warnings_of_others():
    import logging

    from areal_sys.cli import _own_or_warning

    def record(name: str, level: int) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "m", None, None)

    assert _own_or_warning(record("reward_service.http", logging.INFO))
    assert not _own_or_warning(record("uvicorn.error", logging.INFO))
    assert not _own_or_warning(record("httpx", logging.DEBUG))
    assert _own_or_warning(record("uvicorn.error", logging.WARNING))
