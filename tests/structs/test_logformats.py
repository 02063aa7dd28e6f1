"""The one logging style (``controller.structs.logformats``) holds across the controller."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})


def _old_style_log_calls(path: Path) -> list[str]:
    """Log calls in ``path`` (relative to the repository) that are not an event name plus keyword fields."""
    found = []
    for node in ast.walk(ast.parse((REPO / path).read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _LOG_METHODS
                and isinstance(node.func.value, ast.Name) and node.func.value.id in {"log", "logger"} and node.args):
            continue
        event = node.args[0]
        formatted = isinstance(event, ast.JoinedStr) or (isinstance(event, ast.Constant) and "%" in str(event.value))
        if formatted or len(node.args) > 1 or any(k.arg == "extra" for k in node.keywords):
            found.append(f"{path.as_posix()}:{node.lineno}")
    return found


def test_every_log_line_in_the_controller_is_an_event_name_with_fields() -> None:
    offenders = [hit for path in sorted((REPO / "controller").rglob("*.py"))
                 for hit in _old_style_log_calls(path.relative_to(REPO))]
    assert offenders == [], "log with event_logger: log.info(\"area.event\", key=value)\n" + "\n".join(offenders)
