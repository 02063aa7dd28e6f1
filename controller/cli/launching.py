"""``amlops serve`` and ``amlops run``: commands that hand this process over to a long-lived program."""

from __future__ import annotations

import argparse
import os
import sys


def cmd_serve(args: argparse.Namespace) -> int:
    """Run one scoring host in the foreground, in place of this process (TensorFlow stays out of the CLI)."""
    argv = [sys.executable, "-m", "controller.scoring", *args.rest]
    # The scoring host's --help and usage errors name the command the user typed.
    os.execve(sys.executable, argv, {**os.environ, "AMLOPS_PROG": "amlops serve"})
    return 0  # pragma: no cover - execv does not return


def cmd_run(args: argparse.Namespace) -> int:
    """The long-lived controller; its loop lives in ``controller.runtime.running`` (imported only here)."""
    from controller.runtime.running import main_run

    return main_run(args)
