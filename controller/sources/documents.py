"""Documents as loading hands them to validating, patching and overlays: plain data with line numbers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FieldPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Document:
    """One YAML document: its plain data, the line it starts on and the line of every field.

    ``field_files`` names the file of fields that came from elsewhere (an overlay's patch);
    every other field is in ``file``.
    """

    file: str
    line: int
    data: Any
    field_lines: dict[FieldPath, int]
    field_files: dict[FieldPath, str] = field(default_factory=dict)
