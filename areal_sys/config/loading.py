"""YAML loading and dotted command-line overrides.

`load_config` turns every problem into a `ConfigError` with a one-line message: a path that is
missing, a directory, not a regular file (a FIFO would block) or unreadable; bytes that are not
UTF-8; an empty file or a top level that is not a mapping; YAML syntax, duplicate keys, nesting too
deep, integers too long to convert; and every schema problem (unknown key, wrong type, NaN or
infinity, out-of-range value, a section that is not a mapping), named by its dotted field.

YAML is read with the safe loader plus two changes: `1e-5` is a float (YAML 1.2; PyYAML 1.1 reads
it as a string, which strict float fields would refuse) and a key given twice in one mapping is an
error instead of the last one silently winning. A UTF-8 byte-order mark at the start is accepted
(editors add it; it carries no meaning).
"""

from __future__ import annotations

import math
import re
import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from areal_sys.config.base import ConfigError
from areal_sys.config.schema import ExperimentConfig

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlevel = 2
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 4

# YAML 1.2 floats without a dot (1e-5, -2E+3); the safe loader's own float pattern needs a dot.
_EXP_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$")


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader with exponent floats, duplicate-key errors and a line for huge integers."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool):
                    continue  # unhashable keys: the safe constructor reports them
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]

    def construct_checked_int(self, node: yaml.Node) -> int:
        try:
            return self.construct_yaml_int(node)  # type: ignore[arg-type]
        except ValueError:  # Python's int-string limit (4300 digits)
            raise yaml.constructor.ConstructorError(
                None, None, "integer too long", node.start_mark) from None


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789"))
ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_checked_int)


def parse_yaml(text: str, where: str) -> Any:
    """`text` as YAML (ConfigLoader); ConfigError naming `where` and the line on any problem."""
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        kind = "YAML error" if isinstance(e, yaml.constructor.ConstructorError) else (
            "YAML syntax error")
        raise ConfigError(f"{where}:{line} {kind}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deep") from None


def _short(value: Any) -> str:
    return _SHORT.repr(value)


def _non_finite(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    kind, msg, value = first["type"], first["msg"].removeprefix("Value error, "), first["input"]
    if kind == "float_type" and isinstance(value, str) and _non_finite(value):
        msg = "Input should be a finite number"  # `inf`, `nan` given as words
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind in ("model_type", "model_attributes_type", "dict_type") and loc:
        msg = f"must be a mapping of keys, got {_short(value)}"
    elif kind != "value_error" and isinstance(value, dict) and loc:
        msg = f"{msg}, got a YAML mapping (quote a value that holds ': ' or starts with '{{')"
    elif kind != "value_error" and not isinstance(value, dict):
        msg = f"{msg}, got {_short(value)}"
        if isinstance(value, bool) and kind != "bool_type":
            msg += " (YAML reads yes/no/on/off/true/false as booleans)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if not loc:  # a cross-check of ExperimentConfig: its message names the fields
        return f"{msg}{more}"
    return f"{loc}: {msg}{more}"


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: bad key")
    try:
        value = parse_yaml(raw, f"override {key}") if raw != "" else ""
    except ConfigError as e:
        if "nested too deep" in str(e):
            raise
        value = raw  # not YAML: the text itself (a string field accepts it, others say why)
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set `a.b.c=value` pairs (values parsed as YAML scalars) into a nested dict."""
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML config file; ConfigError (one line) on any problem."""
    name = str(path)
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"config file {name!r} does not exist") from None
    except ValueError:  # a NUL byte in the path
        raise ConfigError(f"config file {name!r}: path contains a NUL byte") from None
    except OSError as e:
        raise ConfigError(f"config file {name!r}: cannot read: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"config file {name!r} is a directory, not a YAML file")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"config file {name!r} is not a regular file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {name!r}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{name}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x})") from None
    loaded = parse_yaml(text.removeprefix("\ufeff"), name)
    if loaded is None:
        raise ConfigError(f"{name}: the file is empty (expected a mapping of sections)")
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{name}: top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML experiment (None: defaults), apply overrides, validate.

    Raises ConfigError (one line).
    """
    data = read_config_file(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None
    except RecursionError:  # deeply nested values given where a section or scalar belongs
        raise ConfigError("config: values nested too deep") from None


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
