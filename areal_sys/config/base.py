"""The base of every configuration section: unknown keys, NaN, infinity and loose types fail.

Strict types (pydantic strict mode): a YAML 1.1 boolean (`yes`, `on`, `true`) is no integer or
float, a quoted number is no number, and an integer is accepted for a float field only. Every
string is free of NUL bytes and every integer fits in 64 bits, so nothing downstream (paths, C
extensions, seeds) meets a value it cannot hold.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

# Integers beyond a signed 64-bit range are refused in every field (C extensions overflow).
INT_LIMIT = 2**63 - 1


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the dotted field."""


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul_or_huge_int(cls, value: Any) -> Any:
        """Refuse NUL bytes in strings and integers that overflow 64 bits, in any field."""
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain a NUL byte")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_LIMIT:
            raise ValueError(f"integer out of range (at most {INT_LIMIT} in magnitude)")
        return value
