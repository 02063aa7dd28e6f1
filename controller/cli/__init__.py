"""The ``amlops`` command line: each command parses its flags, calls one core or runtime function and
renders what it returns. ``arguments`` builds the parser; ``checking`` (validate, render, schemas),
``changing`` (plan, apply, delete), ``inspecting`` (status, history, keys, token, rollout, logs) and
``launching`` (serve, run) hold the commands; ``contexts`` what they share.

Exit codes (each command's ``--help`` lists its own): 0 success, 1 an error (invalid manifests, a
failed change, an unreadable backend), 64 a usage error (bad flags; EX_USAGE, never 2). Only
``plan``, and ``apply --detailed-exitcode``, use 2: there are changes (planned, or applied), as
Terraform's ``-detailed-exitcode`` does.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence

from controller.cli.arguments import build_parser
from controller.cli.contexts import EXIT_ERROR, settings_of, use_redactor
from controller.cli.launching import cmd_serve
from controller.runtime.logs import configure_logging
from controller.structs.errors import StateDirFull

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``amlops`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        # Every flag after `serve` belongs to the scoring host, as with `azmlinfsrv`.
        return cmd_serve(argparse.Namespace(rest=argv[1:]))
    if argv[:1] == ["emulator"]:
        # The Azure ML emulator parses its own flags; it is imported only when asked for.
        from controller.emulator.__main__ import main as emulator_main

        return emulator_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":  # run configures its own logging from --log-format / --log-level
        use_redactor(configure_logging(os.environ.get("AMLOPS_LOG_FORMAT", "text"), logging.WARNING))
    handler: Handler = args.handler
    try:
        return handler(args)
    except StateDirFull as exc:  # a write the state dir's filesystem had no room for: one line, no traceback
        print(f"amlops {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"amlops {args.command}: state dir full: {settings_of(args).state_dir}: cannot write "
              f"{exc.filename or 'a file'} ({exc.strerror})", file=sys.stderr)
        return EXIT_ERROR


__all__ = ["build_parser", "main"]
