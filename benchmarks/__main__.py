"""``python -m benchmarks [--quick] [--only NAME]``: run every benchmark (or one), each in its own process.

Separate processes keep one benchmark's imports and memory out of the next one's figures. The
scorer runs first: it is the longest, and its baseline venvs are created on first use.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence

from benchmarks.reports import print_machine
from benchmarks.workfolders import REPO

NAMES = ("scorer", "reconcile", "calls", "idle", "commit_to_serving", "rollout", "rollout_v2")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (scorer 3 s per level, idle 15 s, 3 commits per mode)")
    parser.add_argument("--only", choices=NAMES, action="append", help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    print_machine()
    print(f"command: python -m benchmarks{' --quick' if args.quick else ''}"
          + "".join(f" --only {n}" for n in args.only or ()), flush=True)
    failed = []
    for name in args.only or NAMES:
        print(f"\n# {name}\n", flush=True)
        started = time.monotonic()
        code = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *(["--quick"] if args.quick else [])],
                              cwd=REPO).returncode
        print(f"\n({name}: exit {code}, {time.monotonic() - started:.0f} s)", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
