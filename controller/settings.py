"""Settings: where state lives, what this controller is called, how it logs.

Each value comes from the first of: a command-line flag, an environment variable, a default.
Plain dataclasses rather than pydantic-settings, which is not a dependency.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import platformdirs

STATE_DIR_ENV: Final = "AMLOPS_STATE_DIR"
CONTROLLER_NAME_ENV: Final = "AMLOPS_CONTROLLER_NAME"
LOG_FORMAT_ENV: Final = "AMLOPS_LOG_FORMAT"
DEFAULT_CONTROLLER_NAME: Final = "amlops"

LogFormat = Literal["text", "json"]


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one amlops process."""

    state_dir: Path
    controller_name: str
    log_format: LogFormat


def resolve_settings(
    state_dir: str | Path | None = None,
    controller_name: str | None = None,
    log_format: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Settings from flags (the arguments), then ``AMLOPS_*`` environment variables, then defaults."""
    environ = os.environ if env is None else env
    directory = state_dir or environ.get(STATE_DIR_ENV) or platformdirs.user_state_dir("amlops")
    name = controller_name or environ.get(CONTROLLER_NAME_ENV) or DEFAULT_CONTROLLER_NAME
    fmt = (log_format or environ.get(LOG_FORMAT_ENV) or "text").lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', not {fmt!r}")
    resolved: LogFormat = "json" if fmt == "json" else "text"
    return Settings(Path(directory).expanduser().absolute(), name, resolved)
