"""The flags of ``amlops run``, in a module that imports nothing heavy (the CLI builds its parser from it)."""

from __future__ import annotations

import argparse


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``amlops run`` to ``parser`` (the CLI calls this for its ``run`` subcommand)."""
    src = parser.add_argument_group("source")
    src.add_argument("--repo", required=True, help="Git URL, local Git repo path, or plain folder to watch")
    src.add_argument(
        "--branch", default=None, help="branch to follow (default: the remote's default branch, e.g. main)"
    )
    src.add_argument("--path", default=".", help="folder of manifests inside the repo (default: .)")
    src.add_argument(
        "--watch",
        action="store_true",
        help="reconcile the folder's working tree as it is (debounced file watch) instead of committed Git history",
    )
    src.add_argument(
        "--git-token-file", default=None, help="file holding an HTTPS token (or env AMLOPS_GIT_TOKEN)"
    )
    src.add_argument(
        "--git-timeout",
        type=float,
        default=None,
        help="seconds a git fetch may take before the remote counts as unreachable (default 30; config gitTimeout)",
    )
    src.add_argument(
        "--ssh-key-file", default=None, help="private key for SSH remotes (sets GIT_SSH_COMMAND)"
    )
    loop = parser.add_argument_group("loop")
    loop.add_argument("--interval", type=float, default=None, help="seconds between reconciles (default 60)")
    loop.add_argument(
        "--once", action="store_true", help="reconcile once and exit (0 ok, 1 failed/invalid, 3 held)"
    )
    loop.add_argument(
        "--detect-only", action="store_true", help="report drift and planned changes; apply nothing"
    )
    loop.add_argument(
        "--allow-mass-delete", action="store_true", help="apply plans that delete most owned resources"
    )
    loop.add_argument("--parallelism", type=int, default=4, help="changes applied at once (default 4)")
    loop.add_argument(
        "--controller-name",
        default=None,
        help="owner name in the tags (default $AMLOPS_CONTROLLER_NAME or amlops)",
    )
    loop.add_argument(
        "--state-dir",
        default=None,
        help="history, Git cache, lock and local backend state (default $AMLOPS_STATE_DIR or the user state dir)",
    )
    srv = parser.add_argument_group("server")
    srv.add_argument(
        "--listen", default="127.0.0.1:8080", help="HOST:PORT of the HTTP endpoints (port 0: any)"
    )
    srv.add_argument(
        "--webhook-secret-file",
        default=None,
        help="file holding the webhook secret (or env AMLOPS_WEBHOOK_SECRET)",
    )
    srv.add_argument(
        "--api-token-file", default=None, help="file holding the API bearer token (or env AMLOPS_API_TOKEN)"
    )
    srv.add_argument(
        "--config", default=None, help="YAML file of settings re-read on SIGHUP (interval, *File keys, notifications)"
    )
    srv.add_argument(
        "--log-format", choices=("text", "json"), default=None, help="default $AMLOPS_LOG_FORMAT or text"
    )
    srv.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
