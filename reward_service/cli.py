"""`areal-sys reward-serve`: the HTTP reward service from the command line.

Every flag is a field of `RewardConfig` (areal_sys/config/reward.py) and is validated there;
`--config RUN.yaml` starts from a run's `reward:` section (flags override it) and
`--grader NAME=package.module:function` (repeatable) registers a plugin. Any bad flag, an
unloadable plugin, a busy port or a non-loopback `--host` without a token: one line
`areal-sys: error: ...` on stderr and exit code 2, before anything listens.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from pydantic import ValidationError

EXIT_USAGE = 2

# flag -> (RewardConfig field, argparse type, help); a flag's dest is its field.
_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--host": ("host", str, "address to bind (anything but loopback needs a token)"),
    "--port": ("port", int, "TCP port"),
    "--timeout-s": ("timeout_s", float, "per-item limit when an item sets none (s)"),
    "--min-item-timeout-s": ("min_item_timeout_s", float, "lower bound of an item's timeout_s"),
    "--max-item-timeout-s": ("max_item_timeout_s", float, "upper bound of an item's timeout_s"),
    "--max-concurrency": ("max_concurrency", int, "items graded at once"),
    "--num-procs": ("num_procs", int, "grader subprocesses"),
    "--cache-size": ("cache_size", int, "LRU results kept (0: off)"),
    "--memory-limit-mb": ("memory_limit_mb", int, "address space of a grader process (0: none)"),
    "--start-timeout-s": ("start_timeout_s", float, "limit for a grader process to start"),
    "--retries": ("retries", int, "re-runs of an item whose grader process died"),
    "--correct-reward": ("correct_reward", float, "reward of a correct answer"),
    "--wrong-reward": ("wrong_reward", float, "reward of a wrong answer and of failures"),
    "--math-extract": ("math_extract", str, "auto | a comma list of gsm8k,boxed,last_number"),
    "--code-reward": ("code_reward", str, "fraction | all_or_nothing"),
    "--code-wall-s": ("code_wall_s", float, "sandbox wall clock per test case (s)"),
    "--code-memory-mb": ("code_memory_mb", int, "sandbox memory per test case (MB)"),
    "--code-max-tests": ("code_max_tests", int, "test cases run per item"),
    "--token-file": ("token_file", str, "file holding the bearer token"),
    "--token-env": ("token_env", str, "environment variable holding the token "
                    "(default AREAL_SYS_REWARD_TOKEN)"),
    "--max-body-mb": ("max_body_mb", float, "largest request body (MB)"),
    "--max-items": ("max_items", int, "items per request"),
    "--max-json-depth": ("max_json_depth", int, "deepest JSON nesting accepted"),
    "--max-response-mb": ("max_response_mb", float, "largest answer (MB)"),
    "--max-concurrent-requests": ("max_concurrent_requests", int, "requests served at once; "
                                  "more wait in line"),
    "--max-queued-requests": ("max_queued_requests", int, "requests waiting; past it: 503"),
    "--body-timeout-s": ("body_timeout_s", float, "limit for receiving a body (s)"),
}
_FIELD_FLAG = {field: flag for flag, (field, _, _) in _FLAGS.items()}
_FIELD_FLAG.update(allow_unsafe_sandbox="--allow-unsafe-sandbox", graders="reward.graders")


class UsageError(Exception):
    """A bad command line, reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own errors: one line, exit 2
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    rs = _Parser(prog="areal-sys reward-serve", argument_default=argparse.SUPPRESS,
                 description="HTTP reward service (POST /score, GET /health); every option is "
                 "a field of the `reward` config section")
    from areal_sys.config.reward import RewardConfig

    rs.add_argument("--config", metavar="RUN.yaml", help="start from this run's reward section")
    rs.add_argument("-v", "--verbose", action="store_true",
                    help="other libraries' INFO log lines too, not only their warnings and errors")
    for flag, (field, kind, text) in _FLAGS.items():
        default = RewardConfig.model_fields[field].default
        rs.add_argument(flag, dest=field, type=kind,
                        help=text if "(default" in text else f"{text} (default: {default})")
    rs.add_argument("--grader", dest="graders", action="append", metavar="NAME=module:function",
                    help="register a plugin grader (repeatable)")
    rs.add_argument("--allow-unsafe-sandbox", dest="allow_unsafe_sandbox", action="store_true",
                    help="let the code grader run programs in a sandbox that does not contain "
                    "them (uid, rlimits modes)")
    return rs


def build_config(argv: list[str]) -> Any:
    """The validated RewardConfig of a command line; UsageError (one line) when it is wrong."""
    from areal_sys.config.reward import RewardConfig

    args = vars(_parser().parse_args(argv))
    args.pop("verbose", None)  # the logging set-up's (areal_sys/cli.py), not the config's
    values: dict[str, Any] = {}
    path = args.pop("config", None)
    if path is not None:
        values = _reward_section(path)
    flags = args.pop("graders", [])
    if flags:
        graders = values.get("graders") or {}
        if not isinstance(graders, dict):
            raise UsageError("reward.graders: must be a mapping NAME: package.module:function")
        graders = dict(graders)
        for spec in flags:
            name, eq, target = spec.partition("=")
            if not eq or not name or not target:
                raise UsageError(f"--grader {spec!r}: expected NAME=package.module:function")
            graders[name] = target
        values["graders"] = graders
    values.update(args)
    try:
        return RewardConfig.model_validate(values)
    except ValidationError as e:
        raise UsageError(_one_line(e)) from None


def _reward_section(path: str) -> dict[str, Any]:
    """The `reward:` mapping of a run's YAML, read as `areal-sys run` reads it (one line on any
    problem: not a regular file, not UTF-8, YAML errors, duplicate keys, deep nesting, ...)."""
    from areal_sys.config.base import ConfigError
    from areal_sys.config.loading import read_config_file

    try:
        data = read_config_file(path)
    except ConfigError as e:
        raise UsageError(f"--config: {e}") from None
    section = data.get("reward", {})
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise UsageError(f"--config {path!r}: 'reward' must be a mapping")
    return dict(section)


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    where = _FIELD_FLAG.get(loc[0], f"reward.{loc[0]}") if loc else "reward"
    if len(loc) > 1:
        where += f" ({'.'.join(loc[1:])})"
    got = first.get("input")
    shown = f" (got {got!r})" if loc and not isinstance(got, dict | list) else ""
    return f"{where}: {msg}{shown}"[:500]


def main(argv: list[str]) -> int:
    try:
        cfg = build_config(argv)
        token = cfg.resolve_token()
        if token is None and not cfg.is_loopback():
            raise UsageError(f"--host {cfg.host}: binding anything but loopback needs a token "
                             f"(--token-file FILE or ${cfg.token_env})")
        if cfg.graders:
            import json

            from reward_service.grader_process import check_plugins

            error = check_plugins(json.dumps({"plugins": cfg.graders}), cfg.start_timeout_s)
            if error:
                raise UsageError(f"reward.graders: {error}")
        from reward_service.http import bind

        try:
            sock = bind(cfg.host, cfg.port)
        except OSError as e:
            raise UsageError(f"cannot listen on {cfg.host}:{cfg.port}: "
                             f"{e.strerror or e}") from None
    except (UsageError, ValueError) as e:  # ValueError: ConfigError from resolve_token
        lines = str(e).splitlines()
        print(f"areal-sys: error: {lines[0] if lines else type(e).__name__}", file=sys.stderr)
        return EXIT_USAGE
    import logging

    from reward_service.http import serve
    from reward_service.service import RewardService

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    serve(RewardService(cfg), sock, token)
    return 0
