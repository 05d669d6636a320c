"""Configuration: YAML + dotted overrides, every class of bad input names its dotted field."""

from pathlib import Path

import pytest

from areal_sys.config import AlgorithmConfig, ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_overrides_apply_and_parse_types():
    cfg = load_config(ROOT / "configs/local_tiny.yaml",
                      ["trainer.total_steps=5", "controller.max_staleness=0", "trainer.lr=3e-4",
                       "rollout.update_mode=wait", "run_dir=/tmp/x"])
    assert cfg.trainer.total_steps == 5
    assert cfg.controller.max_staleness == 0
    assert cfg.trainer.lr == pytest.approx(3e-4)
    assert cfg.rollout.update_mode == "wait"
    assert cfg.run_dir == "/tmp/x"


def test_every_shipped_config_validates():
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert files
    for f in files:
        load_config(f)


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        (["trainer.bogus=1"], "trainer.bogus", "unknown key"),
        (["trainer.total_steps=abc"], "trainer.total_steps", "integer"),
        (["controller.max_staleness=-1"], "controller.max_staleness", "greater than or equal"),
        (["algorithm.name=nonesuch"], "algorithm.name", "nonesuch"),
        (["algorithm.name=nonesuch"], "algorithm.name", "'reinforce_rej'"),
        (["algorithm.estimator=ppo"], "algorithm.estimator", "'gae'"),
        (["algorithm.dual_clip=1.0"], "algorithm.dual_clip", "greater than 1"),
        (["algorithm.overlong_max_len=10", "algorithm.overlong_cache_len=20"], "algorithm",
         "overlong_cache_len"),
        (["model.path=./no/such/dir"], "model.path", "does not exist"),
        (["rollout.temperature=0"], "rollout.temperature", "greater than"),
        (["nosection.x=1"], "nosection", "unknown key"),
    ],
)
def test_bad_values_name_the_field(overrides, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs/local_tiny.yaml", overrides)
    msg = str(err.value)
    assert msg.startswith(field + ":"), msg
    assert words in msg
    assert "\n" not in msg


def test_yaml_syntax_error_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  total_steps: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_hub_id_is_accepted_by_validation():
    cfg = load_config(None, ["model.path=Qwen/Qwen2.5-1.5B-Instruct"])
    assert cfg.model.path == "Qwen/Qwen2.5-1.5B-Instruct"


def test_algorithm_preset_with_overrides_on_top():
    cfg = load_config(ROOT / "configs/local_tiny.yaml",
                      ["algorithm.name=dapo", "algorithm.filter=none", "algorithm.kl_coef=0.01"])
    a = cfg.algorithm
    assert (a.name, a.clip_high, a.overlong_penalty) == ("dapo", 0.28, True)  # from the preset
    assert (a.filter, a.kl_coef) == ("none", 0.01)  # explicit keys win
    assert a.loss == "decoupled_ppo"  # local_tiny.yaml names it; dapo agrees


def test_shipped_configs_resolve_to_plain_grpo():
    for f in (ROOT / "configs/local_tiny.yaml", ROOT / "configs/gsm8k/grpo.yaml"):
        a = load_config(f).algorithm
        assert (a.name, a.estimator, a.loss, a.aggregation, a.filter, a.kl_coef) == (
            "grpo", "grpo", "decoupled_ppo", "token-mean", "none", 0.0)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("trainer.lr=inf", "trainer.lr"),
        ("trainer.lr=.inf", "trainer.lr"),
        ("trainer.lr=1e999", "trainer.lr"),
        ("reward.correct_reward=nan", "reward.correct_reward"),
        ("reward.correct_reward=.nan", "reward.correct_reward"),
        ("rollout.temperature=inf", "rollout.temperature"),
        ("algorithm.kl_coef=-.inf", "algorithm.kl_coef"),
        ("algorithm.kl_coef=inf", "algorithm.kl_coef"),
        ("trainer.adam_betas=[0.9, .nan]", "trainer.adam_betas.1"),
        ("cluster.placement_timeout_s=.inf", "cluster.placement_timeout_s"),
        ("eval.temperature=.inf", "eval.temperature"),
    ],
)
def test_nan_and_infinity_are_refused_everywhere(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(field + ":"), err.value


@pytest.mark.parametrize(
    ("override", "field", "words"),
    [
        ("trainer.adam_betas=[0.9, 1.0]", "trainer.adam_betas.1", "less than 1"),
        ("trainer.adam_betas=[-0.1, 0.9]", "trainer.adam_betas.0", "greater than or equal to 0"),
        ("trainer.adam_betas=[0.9]", "trainer.adam_betas.1", "Field required"),
        ("algorithm.clip_low=1", "algorithm.clip_low", "less than 1"),
        ("seed=-1", "seed", "greater than or equal to 0"),
        ("data.prompt_field=", "data.prompt_field", "at least 1"),
        ("run_dir=", "run_dir", "at least 1"),
        ("data.prompt_template=Question {question}", "data.prompt_template", "'{prompt}'"),
        ("data.prompt_template=Q: {question}", "data.prompt_template", "got a YAML mapping"),
        ("data.task=os:popen", "data.task", "unknown grader 'os:popen'; registered: code"),
        ("data.task=nope", "data.task", "synthetic"),
        ("seed=" + "9" * 30, "seed", "out of range"),
    ],
)
def test_ranges_that_make_sense(override, field, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(field + ":") and words in str(err.value), err.value


def test_registered_plugin_or_remote_service_makes_a_task_valid():
    cfg = load_config(None, ["data.task=mine", "reward.graders={mine: 'my_pkg.graders:mine'}"])
    assert cfg.data.task == "mine"
    # a remote service's graders are its own: not checked against this process's registry
    assert load_config(None, ["data.task=theirs", "reward.url=http://127.0.0.1:9"]).data.task
    assert load_config(None, ["data.prompt_template=chat"]).data.prompt_template == "chat"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("trainer.total_steps=yes", "trainer.total_steps"),
        ("trainer.total_steps=on", "trainer.total_steps"),
        ("trainer.total_steps=true", "trainer.total_steps"),
        ("trainer.lr=true", "trainer.lr"),
        ("trainer.adam_betas=[true, 0.9]", "trainer.adam_betas.0"),
        ("trainer.total_steps=5.0", "trainer.total_steps"),
        ("trainer.total_steps='5'", "trainer.total_steps"),
        ("trainer.lr='0.1'", "trainer.lr"),
        ("rollout.interruptible=1", "rollout.interruptible"),
        ("run_dir=5", "run_dir"),
    ],
)
def test_strict_types(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(field + ":"), err.value


def test_lax_where_it_is_meant():
    cfg = load_config(None, ["trainer.lr=1", "trainer.adam_betas=[0, 0.5]", "trainer.lr=2e-5"])
    assert cfg.trainer.lr == pytest.approx(2e-5)  # 1e-5 style is a float (YAML 1.2)
    assert cfg.trainer.adam_betas == (0.0, 0.5)  # a YAML list for the tuple, ints for floats
    assert load_config(None, ["data.shuffle=yes"]).data.shuffle is True  # a YAML 1.1 boolean


def _config_file(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "the file is empty"),
        (b"# only a comment\n", "the file is empty"),
        (b"- trainer\n", "top level must be a mapping of sections, got list"),
        (b"just text\n", "top level must be a mapping of sections, got str"),
        (b"trainer: 5\n", "trainer: must be a mapping of keys, got 5"),
        (b"trainer: [1]\n", "trainer: must be a mapping of keys"),
        (b"trainer:\n", "trainer: must be a mapping of keys, got None"),
        (b"seed: " + b"9" * 5000 + b"\n", "line 1: YAML error: integer too long"),
        (b"seed: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "YAML nested too deep"),
        (b"seed: 1\nrun_dir: \"r\xff\"\n", "line 2: not UTF-8 text (byte 0xff)"),
        (b"seed: 1\nseed: 2\n", "line 2: YAML error: duplicate key 'seed'"),
        (b"seed: !!python/object/apply:os.system [true]\n", "YAML error"),
        (b"run_dir: \"a\\0b\"\n", "run_dir: must not contain a NUL byte"),
        (b"trainer:\n  total_steps: yes\n", "trainer.total_steps: Input should be a valid integer"),
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, content, words):
    with pytest.raises(ConfigError) as err:
        load_config(_config_file(tmp_path, content))
    assert words in str(err.value) and "\n" not in str(err.value), err.value


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    cfg = load_config(_config_file(tmp_path, b"\xef\xbb\xbfseed: 3\ntrainer:\n  lr: 1e-4\n"))
    assert (cfg.seed, cfg.trainer.lr) == (3, pytest.approx(1e-4))


def test_paths_that_are_no_readable_file(tmp_path):
    import os

    with pytest.raises(ConfigError, match="is a directory, not a YAML file"):
        load_config(tmp_path)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):  # reading would block
        load_config(fifo)


def test_unreadable_file(tmp_path, monkeypatch):
    path = _config_file(tmp_path, b"seed: 1\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # chmod 000 does not stop root
    with pytest.raises(ConfigError, match="cannot read: Permission denied"):
        load_config(path)


def test_a_dumped_config_loads_back_equal(tmp_path):
    from areal_sys.config import dump_config

    cfg = load_config(ROOT / "configs/local_tiny.yaml", ["trainer.adam_betas=[0.8, 0.95]"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("name", "rewards", "warns"),
    [
        ("reinforce_rej", (1.0, 0.0), "wrong responses of a mixed group get advantage 0"),
        ("reinforce_rej", (0.0, -1.0), "correct responses of a mixed group get advantage 0"),
        ("reinforce_rej", (1.0, -1.0), None),  # its own rewards: A = ±1
        ("dapo", (1.0, 0.0), None),  # GRPO advantages [0.707, -0.707] either way
        ("reinforce", (1.0, 0.0), None),  # no reward values of its own: nothing to compare
        ("ppo", (1.0, 0.0), None),
    ],
)
def test_reward_warning_names_a_degenerate_preset(
        name: str, rewards: tuple[float, float], warns: str | None) -> None:
    """Reinforce-Rej, A_i = R_i: under its ±1 a mixed group trains at [+1, −1]; under 0/1 at
    [1, 0], so only the correct response trains (RAFT++ on mixed groups)."""
    warning = AlgorithmConfig(name=name).reward_warning(*rewards)
    if warns is None:
        assert warning is None
    else:
        assert warning is not None and warns in warning and "\n" not in warning
