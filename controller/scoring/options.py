"""The command line of the scoring host: a contract shared with ``amlops serve`` and the local backend.

The flags the local backend and its supervisor pass are spelled once, in ``controller.structs.replicas.Flag``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.structs.replicas import Flag


@dataclass(frozen=True)
class ScoringOptions:
    """Everything one scoring host process is told at start."""

    entry_script: str | None
    source_dir: str | None
    model_dir: str | None
    host: str
    port: int
    listen_fd: int | None
    fd_socket: str | None
    defer_accept: bool
    workers: int
    service_name: str | None
    auth: str
    keys_file: str | None
    scoring_timeout_ms: int
    max_concurrent: int
    max_queue_wait_ms: int
    max_request_bytes: int
    max_header_bytes: int
    header_timeout_ms: int
    keepalive_timeout_ms: int
    max_body_bytes_in_flight: int
    status_file: str | None
    split_file: str | None
    tensorflow_compat: str
    log_format: str
    metrics_dir: str | None = None
    replica: str = "0"
    version: str = ""
    worker: int = 0  # set for each pre-forked worker, not a flag

    @property
    def entry_path(self) -> str | None:
        """The entry script's absolute path (relative paths are taken from --source-dir)."""
        if self.entry_script is None:
            return None
        if os.path.isabs(self.entry_script) or not self.source_dir:
            return os.path.abspath(self.entry_script)
        return os.path.abspath(os.path.join(self.source_dir, self.entry_script))

    @property
    def working_dir(self) -> str | None:
        """Where the entry script runs: --source-dir, else the entry script's folder."""
        if self.source_dir:
            return os.path.abspath(self.source_dir)
        entry = self.entry_path
        return os.path.dirname(entry) if entry else None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 64 (EX_USAGE), as every amlops command's do."""

    def error(self, message: str) -> Any:  # argparse types this NoReturn
        self.print_usage(sys.stderr)
        self.exit(64, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m controller.scoring``."""
    parser = _Parser(
        # `amlops serve` execs this module and says so, so --help names the command the user typed.
        prog=os.environ.get("AMLOPS_PROG", "python -m controller.scoring"),
        description="Serve an Azure ML entry script (init/run) or a TensorFlow SavedModel over HTTP.",
        epilog="exit codes:\n  0   drained after SIGTERM\n  1   init() failed or the port could not be opened\n"
               "  64  usage error (unknown flag, missing argument)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(Flag.ENTRY_SCRIPT, help="score.py path, relative to --source-dir or absolute; "
        "without it the built-in TensorFlow SavedModel scorer serves the model dir")
    add(Flag.SOURCE_DIR, help="put on sys.path and used as cwd (default: the entry script's folder)")
    add(Flag.MODEL_DIR, help="exported as AZUREML_MODEL_DIR before init()")
    add("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, default=5001, help="TCP port to listen on (default 5001; 0: any)")
    add(Flag.LISTEN_FD, type=int, help="serve an inherited listening TCP socket instead of binding")
    add(Flag.FD_SOCKET, help="unix socket path that hands out the listening socket (SCM_RIGHTS)")
    add(Flag.DEFER_ACCEPT, action="store_true", help="accept nothing until init() has finished")
    add("--workers", type=_positive, default=1, help="pre-forked processes sharing the socket")
    add(Flag.SERVICE_NAME, help="also serve /api/v1/service/NAME/score")
    add(Flag.AUTH, choices=("key", "token", "none"), default="none",
        help="what a scoring request must carry: a key, a token, or nothing (default none)")
    add(Flag.KEYS_FILE, help='JSON {"primaryKey","secondaryKey"} (or {"token"}), re-read on change')
    add(Flag.SCORING_TIMEOUT_MS, type=_positive, default=60000, help="run() time limit; 504 after it (default 60000)")
    add(Flag.MAX_CONCURRENT, type=_positive, default=1, help="concurrent run() calls per process")
    add(Flag.MAX_QUEUE_WAIT_MS, type=_positive, default=500,
        help="longest wait for a free run() slot; 503 after it (default 500)")
    add("--max-request-bytes", type=_positive, default=100 * 1024 * 1024,
        help="largest request body accepted; 413 above it (default 100 MiB)")
    add("--max-header-bytes", type=_positive, default=64 * 1024,
        help="request line plus headers; longer heads are answered 414 (line) or 431 (headers)")
    add("--header-timeout-ms", type=_positive, default=10000,
        help="time to send a request's head, and the longest pause in its body, before the connection is closed")
    add("--keepalive-timeout-ms", type=_positive, default=75000, help="an idle keep-alive connection is closed after this")
    add("--max-body-bytes-in-flight", type=_positive, default=256 * 1024 * 1024,
        help="request bodies held at once by this process (read or being scored); beyond it 503 + Retry-After")
    add(Flag.STATUS_FILE, help="JSON status, replaced atomically on each change")
    add(Flag.SPLIT_FILE, help="JSON {weight, port}: hand that percentage of scoring requests to the port (a canary)")
    add(Flag.TENSORFLOW_COMPAT, choices=("v1", "none"), default="none",
        help="v1: `import tensorflow` in the entry script gives tensorflow.compat.v1")
    add(Flag.LOG_FORMAT, choices=("text", "json"), default="text", help="log lines on stderr as text or JSON")
    add(Flag.METRICS_DIR, help="folder the service's processes share: each writes its metrics there and "
        "/metrics answers for all of them")
    add(Flag.REPLICA, default="0", help="this replica's name, the replica label of its metrics (default 0)")
    add(Flag.VERSION_LABEL, dest="version", default="",
        help="what this replica serves (its model versions), the version label of its metrics")
    return parser


def parse_options(argv: Sequence[str]) -> ScoringOptions:
    """Parse and check the command line (exits with status 64, EX_USAGE, on a usage error)."""
    parser = build_parser()
    ns = parser.parse_args(list(argv))
    if ns.auth != "none" and not ns.keys_file:
        parser.error(f"{Flag.AUTH} {ns.auth} needs {Flag.KEYS_FILE}")
    values = {name: getattr(ns, name) for name in ScoringOptions.__dataclass_fields__ if hasattr(ns, name)}
    # Absolute paths now: the entry script later runs with --source-dir as its working directory.
    for name in ("source_dir", "model_dir", "keys_file", "status_file", "split_file", "fd_socket", "metrics_dir"):
        if values[name]:
            values[name] = os.path.abspath(values[name])
    options = ScoringOptions(**values)
    if options.entry_script:
        return dataclasses.replace(options, entry_script=options.entry_path)
    return options
