"""Validating configuration: coerce raw YAML/env values to typed fields, collect every problem.

Each problem is one line, ``setting: rule (got value)``; secrets and misplaced values are
described by their type only, never echoed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from authproxy.errors import ConfigError


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"config file: cannot be read ({path}: {exc.strerror})"]) from None
    except yaml.YAMLError as exc:
        # Position and problem only: PyYAML's full message quotes the broken line,
        # which may hold a password.
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError([f"config file: must be valid YAML ({path}{where}: {problem})"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config file: must be a mapping of sections (got {show(data)})"])
    return data


def build_section(cls: type[Any], raw: Any, prefix: str, problems: list[str]) -> Any:
    """Build ``cls`` from ``raw``, recording problems; bad fields keep their defaults so
    that the shape checks still run and every problem is reported in one go."""
    if not isinstance(raw, dict):
        # Only the type: a misplaced value may be a secret (e.g. a URL with a password).
        problems.append(f"{prefix.rstrip('.')}: must be a mapping (got {_kind(raw)})")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for unknown in sorted((k for k in raw if k not in names), key=str):
        problems.append(f"{prefix}{unknown}: unknown setting (got {_kind(raw[unknown])})")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        where = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            section = {} if raw[f.name] is None else raw[f.name]
            values[f.name] = build_section(hints[f.name], section, where + ".", problems)
            continue
        ok, value, rule = _coerce(hints[f.name], raw[f.name])
        if ok:
            rule = _range_problem(f.metadata, value)
        if rule:
            shown = "<redacted>" if f.metadata.get("secret") else show(raw[f.name])
            problems.append(f"{where}: {rule} (got {shown})")
        else:
            values[f.name] = value
    return cls(**values)


def _coerce(hint: Any, value: Any) -> tuple[bool, Any, str]:
    """Return (ok, converted value, rule violated). Environment values arrive as strings."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType) and type(None) in args:
        if value is None or value == "":
            return True, None, ""
        return _coerce(next(a for a in args if a is not type(None)), value)
    if origin is Literal:
        if value in args:
            return True, value, ""
        return False, None, "must be one of " + ", ".join(map(str, args))
    if origin is tuple:
        items = [i for i in value.split(",") if i.strip()] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(i, str) and i.strip() for i in items):
            return True, tuple(i.strip() for i in items), ""
        return False, None, "must be a list of non-empty strings"
    if hint is bool:
        if isinstance(value, bool):
            return True, value, ""
        lowered = str(value).lower()
        if lowered in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return True, lowered in ("true", "1", "yes", "on"), ""
        return False, None, "must be true or false"
    if hint in (int, float):
        if isinstance(value, bool):
            return False, None, f"must be a number{'' if hint is float else ' (whole)'}"
        try:
            number = hint(value)
        except (TypeError, ValueError):
            return False, None, "must be a whole number" if hint is int else "must be a number"
        if hint is int and isinstance(value, float) and value != number:
            return False, None, "must be a whole number"
        if not math.isfinite(number):
            return False, None, "must be a finite number"
        return True, number, ""
    if hint is str:
        if isinstance(value, str) and value:
            return True, value, ""
        return False, None, "must be a non-empty string"
    raise TypeError(f"unsupported setting type {hint!r}")


def _range_problem(metadata: Mapping[str, Any], value: Any) -> str:
    if metadata.get("non_empty") and not value:
        return "must be a non-empty list of non-empty strings"
    low, high = metadata.get("min"), metadata.get("max")
    if value is None or (low is None and high is None):
        return ""
    if (low is not None and value < low) or (high is not None and value > high):
        return f"must be between {low} and {high}"
    return ""


def _kind(value: Any) -> str:
    """What a value is, without showing it (it may be a misplaced secret)."""
    kinds = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }
    return kinds.get(type(value), "null" if value is None else "a value")


def show(value: Any) -> str:
    """A value for an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
