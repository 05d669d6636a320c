"""The `reward` section: the one configuration surface of the reward service.

The Ray actor of a run (`controller/runtime.py`), `areal-sys reward-serve` (every flag is one of
these fields, validated here) and the HTTP client of `reward.url` are all built from a
`RewardConfig`. Grading settings apply to both faces; the server settings (`host`, `port`,
limits, auth) only to `reward-serve`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from areal_sys.config.base import ConfigError, Section

# Graders every reward service has (reward_service/graders.py registers exactly these).
BUILTIN_GRADERS: tuple[str, ...] = ("synthetic", "math", "code", "format")
# Answer extractors of the math grader (`math_extract`), as reward_service/graders.py names them.
MATH_EXTRACTORS: tuple[str, ...] = ("gsm8k", "boxed", "last_number")
DEFAULT_TOKEN_ENV = "AREAL_SYS_REWARD_TOKEN"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PLUGIN = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}")


class RewardConfig(Section):
    # --- grading (the Ray actor and reward-serve) -------------------------------------------
    timeout_s: float = Field(5.0, gt=0, le=3600,
                             description="per-item grading time limit (s) when an item sets none")
    min_item_timeout_s: float = Field(
        0.5, gt=0, le=3600, description="lower bound of an item's own timeout_s (s): a smaller "
        "request is raised to it, so a tiny limit cannot restart a grader process per item")
    max_item_timeout_s: float = Field(
        600.0, gt=0, le=3600, description="upper bound of an item's own timeout_s (s)")
    max_concurrency: int = Field(8, ge=1, le=4096, description="items inside grader processes "
                                 "at once")
    num_procs: int = Field(1, ge=1, le=256, description="grader subprocesses (at most "
                           "max_concurrency are used)")
    cache_size: int = Field(65536, ge=0, le=10_000_000, description="LRU results kept (0: off)")
    memory_limit_mb: int = Field(4096, ge=0, le=1 << 20,
                                 description="address-space limit of a grader process (0: none)")
    start_timeout_s: float = Field(60.0, gt=0, le=3600, description="limit for a grader process "
                                   "to start and import its graders (s)")
    retries: int = Field(1, ge=0, le=10, description="re-runs of an item whose grader process "
                         "died (timeouts are never retried)")
    correct_reward: float = Field(1.0, description="reward of a grader's True")
    wrong_reward: float = Field(0.0, description="reward of a grader's False and of failures")
    # --- the built-in graders -----------------------------------------------------------------
    math_extract: str = Field(
        "auto", description="math answer extraction: 'auto' or a comma list of "
        f"{', '.join(MATH_EXTRACTORS)} (the first that finds its marker decides)")
    code_reward: Literal["fraction", "all_or_nothing"] = Field(
        "fraction", description="code grader: fraction of tests passed, or correct/wrong reward")
    code_wall_s: float = Field(2.0, gt=0, le=600, description="sandbox wall clock per test (s)")
    code_memory_mb: int = Field(512, ge=16, le=1 << 20, description="sandbox memory per test")
    code_max_tests: int = Field(32, ge=1, le=4096, description="test cases run per item")
    allow_unsafe_sandbox: bool = Field(
        False, description="let the code grader run programs in a sandbox mode that does not "
        "contain hostile code (uid, rlimits); off: such items fail with a one-line reason")
    graders: dict[str, str] = Field(
        default_factory=dict,
        description="plugin graders registered at start: NAME -> 'package.module:function'; "
        "tasks (data.task, a row's task, an HTTP item's task) name a built-in or one of these",
    )
    # --- the HTTP client (reward.url) and server auth -----------------------------------------
    url: str | None = Field(None, description="remote reward service (http://host:port); "
                            "default: a Ray actor")
    token_file: str | None = Field(None, description="file holding the bearer token (first line)")
    token_env: str = Field(DEFAULT_TOKEN_ENV, description="environment variable holding the "
                           "bearer token when token_file is not set")
    # --- the HTTP server (reward-serve) -------------------------------------------------------
    host: str = Field("127.0.0.1", min_length=1, description="address to bind; anything but "
                      "loopback requires a token")
    port: int = Field(8700, ge=1, le=65535, description="TCP port to listen on")
    max_body_mb: float = Field(16.0, gt=0, le=1024, description="largest request body (MB)")
    max_items: int = Field(4096, ge=1, le=1_000_000, description="items per request")
    max_json_depth: int = Field(32, ge=2, le=1000, description="deepest JSON nesting accepted")
    max_response_mb: float = Field(8.0, gt=0, le=1024, description="largest answer (MB); a "
                                   "request whose answer could exceed it is refused up front")
    max_concurrent_requests: int = Field(
        64, ge=1, le=100_000, description="requests read and graded at once (bounds memory at "
        "about this many bodies); more wait in line")
    max_queued_requests: int = Field(
        4096, ge=0, le=1_000_000, description="requests waiting for a slot; past it: HTTP 503")
    body_timeout_s: float = Field(30.0, gt=0, le=3600,
                                  description="limit for receiving a request's body (s)")

    @field_validator("math_extract")
    @classmethod
    def _math_extract(cls, v: str) -> str:
        order = [x.strip() for x in v.split(",")]
        if v != "auto" and not set(order) <= set(MATH_EXTRACTORS):
            raise ValueError(f"use 'auto' or a comma list of {', '.join(MATH_EXTRACTORS)}")
        return v

    @field_validator("graders")
    @classmethod
    def _graders(cls, v: dict[str, str]) -> dict[str, str]:
        for name, target in v.items():
            if not _NAME.fullmatch(name):
                raise ValueError(f"grader name {name!r}: letters, digits, '_', '-', '.' only "
                                 "(no ':' or '/'), at most 64 characters")
            if name in BUILTIN_GRADERS:
                raise ValueError(f"grader name {name!r} is a built-in grader")
            if not isinstance(target, str) or not _PLUGIN.fullmatch(target):
                raise ValueError(f"grader {name!r}: {target!r} is not 'package.module:function'")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
            raise ValueError(f"expected http://host:port, got {v!r}")
        return v

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, v: str) -> str:
        if not re.fullmatch(_IDENT, v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v

    @model_validator(mode="after")
    def _timeouts(self) -> RewardConfig:
        lo, hi = self.min_item_timeout_s, self.max_item_timeout_s
        if lo > hi:
            raise ValueError(f"min_item_timeout_s ({lo:g}) is above max_item_timeout_s ({hi:g})")
        if not lo <= self.timeout_s <= hi:
            raise ValueError(f"timeout_s ({self.timeout_s:g}) is outside [min_item_timeout_s, "
                             f"max_item_timeout_s] = [{lo:g}, {hi:g}]")
        return self

    def grader_names(self) -> list[str]:
        """Every task name this service grades: the built-ins and the registered plugins."""
        return sorted({*BUILTIN_GRADERS, *self.graders})

    def grader_settings(self) -> dict[str, object]:
        """What the grader processes read (reward_service.graders.GraderSettings)."""
        return {"math_extract": self.math_extract, "code_reward": self.code_reward,
                "code_wall_s": self.code_wall_s, "code_memory_mb": self.code_memory_mb,
                "code_max_tests": self.code_max_tests,
                "allow_unsafe_sandbox": self.allow_unsafe_sandbox, "plugins": dict(self.graders)}

    def clamp_timeout(self, timeout_s: float) -> float:
        """An item's requested limit within the server's [min, max] item timeout bounds."""
        return min(max(timeout_s, self.min_item_timeout_s), self.max_item_timeout_s)

    def resolve_token(self) -> str | None:
        """The bearer token: the first line of `token_file`, else `$token_env`, else None.

        Raises ConfigError (one line) when `token_file` cannot be read or is empty.
        """
        if self.token_file is not None:
            try:
                with Path(self.token_file).expanduser().open("rb") as f:
                    lines = f.read(8192).decode("utf-8").splitlines()  # bounded: not /dev/zero
            except (OSError, UnicodeDecodeError, ValueError) as e:
                reason = type(e).__name__ if not str(e) else str(e).splitlines()[0]
                raise ConfigError(f"reward.token_file: cannot read {self.token_file!r}: "
                                  f"{reason}") from None
            token = lines[0].strip() if lines else ""
            if not token:
                raise ConfigError(f"reward.token_file: {self.token_file!r} is empty")
        else:
            token = os.environ.get(self.token_env, "").strip()
            if not token:
                return None
        if not re.fullmatch(r"[\x21-\x7e]{1,4096}", token):
            where = self.token_file or f"${self.token_env}"
            raise ConfigError(f"reward token from {where}: printable ASCII without spaces only, "
                              "at most 4096 characters")
        return token

    def is_loopback(self) -> bool:
        """Whether `host` is a loopback address (the only binds allowed without a token)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
