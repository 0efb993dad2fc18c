"""config.yaml, generated from the schema: every key with its default and its documentation."""

from __future__ import annotations

from typing import Any

from .root import Config
from .schema import schema_fields, yaml_scalar

HEADER = """\
# facestream configuration. Every key is optional: a missing key takes the default shown here.
# facestream reads a file only when named: `facestream --config FILE ...` or FACESTREAM_CONFIG=FILE.
# Generated from pipeline/config/ (the schema: types, allowed values, defaults):
#   python -m facestream.pipeline.config > config.yaml
"""

_COMMENT_COLUMN = 31

def _render(obj: Any, indent: str, lines: list[str]) -> None:
    for f in schema_fields(type(obj)):
        value = getattr(obj, f.name)
        doc = f.metadata.get("doc", "")
        if f.metadata.get("section"):
            if not indent and lines:
                lines.append("")
            if doc:
                lines.extend(f"{indent}# {line}" for line in doc.split("\n"))
            lines.append(f"{indent}{f.name}:")
            _render(value, indent + "  ", lines)
            continue
        text = f"{indent}{f.name}: {yaml_scalar(value)}"
        if not doc:
            lines.append(text)
            continue
        if not indent:  # top-level scalars: comment above, as a paragraph
            lines.append("")
            lines.extend(f"# {line}" for line in doc.split("\n"))
            lines.append(text)
            continue
        first, *rest = doc.split("\n")
        column = max(_COMMENT_COLUMN, len(text) + 2)
        lines.append(f"{text.ljust(column)}# {first}")
        lines.extend(" " * column + f"# {line}" for line in rest)


def render_yaml(config: Config | None = None) -> str:
    """config.yaml's text: every key with its default (or `config`'s value) and its documentation."""
    lines: list[str] = []
    _render(config or Config(), "", lines)
    return HEADER + "\n" + "\n".join(lines) + "\n"

