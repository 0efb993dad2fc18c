"""How a configuration key is declared and checked: `setting` and `section` (dataclass fields with the key's
default, documentation and allowed values), the check of one value against its field, and the conversions
between a section dataclass and a plain nested dict.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import field
from typing import Any

import yaml

from ...errors import ConfigError


def setting(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """A configuration key: its default, its documentation (one line per `\\n`) and what values are allowed."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str = "") -> Any:
    """A section of the configuration (a nested dataclass); `doc` is the comment above it in config.yaml."""
    return field(default_factory=cls, metadata={"doc": doc, "section": True})


def type_hints(cls: type) -> dict[str, Any]:
    """The field types of a section dataclass, resolved in its own module."""
    return typing.get_type_hints(cls)


def schema_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a section that are configuration keys (not internal bookkeeping such as `Config.source`)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def to_plain_dict(obj: Any) -> dict[str, Any]:
    """A section as a plain JSON/YAML-able nested dict."""
    result: dict[str, Any] = {}
    for f in schema_fields(type(obj)):
        value = getattr(obj, f.name)
        result[f.name] = to_plain_dict(value) if dataclasses.is_dataclass(value) else (
            list(value) if isinstance(value, list) else value)  # fmt: skip
    return result


def _allowed(f: dataclasses.Field, kind: Any) -> str:
    meta = f.metadata
    if meta.get("choices"):
        return "one of " + ", ".join(yaml_scalar(c) for c in meta["choices"])
    if kind is bool:
        return "true or false"
    if kind is str:
        return "a string"
    if kind == list[int]:
        return "[height, width], two positive integers"
    if kind == list[dict]:
        return "a list of mappings"
    bounds = []
    if meta.get("ge") is not None:
        bounds.append(f">= {meta['ge']:g}")
    if meta.get("gt") is not None:
        bounds.append(f"> {meta['gt']:g}")
    if meta.get("le") is not None:
        bounds.append(f"<= {meta['le']:g}")
    what = "an integer" if kind is int else "a finite number"
    return what + (" " + " and ".join(bounds) if bounds else "")


def check_value(f: dataclasses.Field, kind: Any, value: Any, where: str, path: str) -> Any:
    """The value, converted (an int where a float is expected), or ConfigError saying what is allowed."""
    meta = f.metadata
    allowed = _allowed(f, kind)

    def bad(what: str = "not allowed") -> ConfigError:
        return ConfigError(f"{where}: {path}: {value!r} is {what}; allowed: {allowed}")

    if kind == (bool | str):  # a switch with a third setting (gallery.gpu: false, true or auto)
        if not any(value is c or (isinstance(value, str) and value == c) for c in meta["choices"]):
            raise bad()
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("not true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise bad(f"a {type(value).__name__}, not a string")
        if meta.get("choices") and value not in meta["choices"]:
            raise bad()
        return value
    if kind == list[dict]:
        if not (isinstance(value, list) and all(isinstance(v, dict) for v in value)):
            raise bad()
        return [dict(v) for v in value]
    if kind == list[int]:
        if not (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):  # fmt: skip
            raise bad()
        return [int(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"a {type(value).__name__}, not a number")
    if kind is int:
        if isinstance(value, float):
            if not (math.isfinite(value) and value.is_integer()):
                raise bad("not an integer")
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise bad("not a finite number")
    if (meta.get("ge") is not None and value < meta["ge"]) or (meta.get("gt") is not None and value <= meta["gt"]) or (
        meta.get("le") is not None and value > meta["le"]
    ):
        raise bad("out of range")
    return value


def from_mapping(cls: type, data: Any, where: str, prefix: str) -> Any:
    """A `cls` section: its defaults overlaid with `data`, every value checked (`prefix`: the key path so far)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'top level'}: {data!r} is not a mapping; "
                          f"allowed: a mapping of {', '.join(f.name for f in schema_fields(cls))}")  # fmt: skip
    fields = {f.name: f for f in schema_fields(cls)}
    hints = type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            of = f" of {prefix.rstrip('.')}" if prefix else ""
            raise ConfigError(f"{where}: {path}: unknown key; allowed keys{of}: {', '.join(sorted(fields))}")
        f = fields[key]
        if f.metadata.get("section"):
            values[key] = from_mapping(hints[key], value, where, path + ".")
        elif value is not None:  # an empty key in YAML: the default
            values[key] = check_value(f, hints[key], value, where, path)
    return cls(**values)


def yaml_scalar(value: Any) -> str:
    """`value` as config.yaml writes it (quoted only when YAML would read it back differently)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(yaml_scalar(v) for v in value) + "]"
    if value and yaml.safe_load(value) == value and ": " not in value and "#" not in value:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

