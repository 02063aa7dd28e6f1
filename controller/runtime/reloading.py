"""The settings ``amlops run`` re-reads on SIGHUP: interval, secret files, notifications, Git timeout.

Precedence: flag, then the ``--config`` file, then the environment, then the default. Secrets are
read from files (never flags), so a reload picks up a rotated secret without a restart.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from controller.runtime.notifying import ConfigError, parse_notifications, resolve_credentials
from controller.sources.gitting import GIT_TIMEOUT_S
from controller.structs.notifications import Credentials, Notifications

DEFAULT_INTERVAL_S: Final = 60.0


@dataclass(frozen=True)
class Reloadable:
    """Settings SIGHUP re-reads. Precedence: flag, then config file, then environment, then default."""

    interval: float
    webhook_secret: str | None
    api_token: str | None
    git_token: str | None
    notifications: Notifications = field(default_factory=Notifications)
    notification_credentials: dict[str, Credentials] = field(default_factory=dict)
    git_timeout: float = GIT_TIMEOUT_S

    @property
    def secrets(self) -> list[str]:
        found = [s for s in (self.webhook_secret, self.api_token, self.git_token) if s]
        return found + [v for c in self.notification_credentials.values() for v in c.values()]


def _read_secret(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_text().strip() or None
    except OSError as exc:
        raise SystemExit(f"amlops run: cannot read secret file {path}: {exc.strerror}") from None


def load_reloadable(args: argparse.Namespace) -> Reloadable:
    """Resolve the reloadable settings from flags, ``--config`` and the environment."""
    config: dict[str, Any] = {}
    if args.config:
        try:
            loaded = yaml.safe_load(Path(args.config).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SystemExit(f"amlops run: cannot read --config {args.config}: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SystemExit(f"amlops run: --config {args.config} must be a mapping")
        config = loaded or {}

    def secret(flag: str | None, key: str, env: str) -> str | None:
        file = flag or config.get(key)
        return _read_secret(str(file)) if file else (os.environ.get(env) or None)

    interval = float(
        args.interval if args.interval is not None else config.get("interval", DEFAULT_INTERVAL_S)
    )
    if interval <= 0:
        raise SystemExit("amlops run: --interval must be positive")
    try:
        notifications = parse_notifications(args.config) if args.config else Notifications()
        credentials = resolve_credentials(notifications)
    except ConfigError as exc:
        raise SystemExit(f"amlops run: --config: {exc}") from None
    flag_timeout = getattr(args, "git_timeout", None)
    try:
        git_timeout = float(flag_timeout if flag_timeout is not None else config.get("gitTimeout", GIT_TIMEOUT_S))
    except (TypeError, ValueError):
        raise SystemExit(f"amlops run: gitTimeout in --config {args.config} must be a number of seconds") from None
    if git_timeout <= 0:
        raise SystemExit("amlops run: --git-timeout must be positive")
    return Reloadable(
        interval=interval,
        webhook_secret=secret(args.webhook_secret_file, "webhookSecretFile", "AMLOPS_WEBHOOK_SECRET"),
        api_token=secret(args.api_token_file, "apiTokenFile", "AMLOPS_API_TOKEN"),
        git_token=secret(args.git_token_file, "gitTokenFile", "AMLOPS_GIT_TOKEN"),
        notifications=notifications,
        notification_credentials=credentials,
        git_timeout=git_timeout,
    )
