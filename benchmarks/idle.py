"""Idle controller: CPU and memory of ``amlops run`` watching a 1,000-resource repo, and no TensorFlow loaded.

The controller runs ``--watch --interval 5 --detect-only`` on a generated repo (the same generator
as ``benchmarks.reconcile``). ``--detect-only`` because applying 1,000 resources with the local
backend would start ~900 scoring processes on this 2-core machine; the loop still loads, validates,
reads the backend and plans every interval, which is the idle cost being measured. CPU % is the
process tree's CPU time over a window after the first reconcile, RSS is sampled each second.
Baseline in the same run: one load+validate+plan of the same repo timed in a fresh process, divided
by the interval, is the CPU share a loop that re-plans everything each interval must pay.
Targets: below 1 % CPU and 150 MB RSS; ``libtensorflow`` absent from ``/proc/<pid>/maps``.

Run alone: ``python -m benchmarks.idle [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.reconcile import generate_repo
from benchmarks.reports import Skipped, heading, print_machine, table
from benchmarks.workfolders import REPO, project_python, work_folder

RESOURCES = 1_000
INTERVAL_S = 5.0
CPU_TARGET = 1.0
RSS_TARGET_MB = 150.0

ONE_PASS = '''\
import json, sys, time
from controller.core.planning import plan, static_replace_fields
from controller.sources.loading import load_desired_state
from controller.structs.states import ActualState
times = []
for _ in range(3):
    started = time.process_time()
    desired = load_desired_state(sys.argv[1])
    plan(desired, ActualState({}), controller_name="amlops-bench", replace_fields=static_replace_fields)
    times.append(time.process_time() - started)
print("PASS " + json.dumps(sorted(times)))
'''


DIRECT_RUN = (
    "import argparse, sys; from controller.runtime.running import add_run_arguments, main_run; "
    "p = argparse.ArgumentParser(prog='amlops run'); add_run_arguments(p); sys.exit(main_run(p.parse_args()))"
)


def cli_accepts_run_flags() -> bool:
    """Whether ``amlops run --repo X`` gets past the top-level parser (checked in-process, nothing runs)."""
    import contextlib
    import io

    from controller.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args = build_parser().parse_args(["run", "--repo", "x"])
    except SystemExit:
        return False
    return "--repo" in getattr(args, "rest", [])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tree_cpu(proc: Any) -> float:
    """CPU seconds of ``proc`` and its live children."""
    import psutil

    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss_mb(proc: Any) -> float:
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total / 1024 / 1024


def wait_first_sync(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> float:
    """Wait until /readyz answers 200 (first reconcile done) or the timeout; returns seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"amlops run exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.5)
    return time.monotonic() - started


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the controller's process group, SIGKILL it after 20 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s window instead of 60 s")
    parser.add_argument("--seconds", type=float, help="measurement window (overrides --quick)")
    args = parser.parse_args(argv)
    window = args.seconds or (15.0 if args.quick else 60.0)
    print_machine()
    try:
        import psutil

        import controller.runtime.running as running
    except ImportError as exc:
        raise Skipped(f"amlops run (controller/runtime/running.py) or psutil is missing: {exc}") from exc
    if not hasattr(running, "main_run"):
        raise Skipped("controller.runtime.running has no main_run yet")
    import psutil

    repo = work_folder("idle") / f"repo-{RESOURCES}"
    state = work_folder("idle") / "state"
    generate_repo(repo, RESOURCES)
    out = subprocess.run([project_python(), "-c", ONE_PASS, str(repo)], capture_output=True, text=True, cwd=REPO)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PASS ")), None)
    one_pass = json.loads(line[5:])[0] if line else None
    port = free_port()
    log = work_folder("idle") / "controller.log"
    flags = ["--repo", str(repo), "--watch", "--interval", str(INTERVAL_S), "--detect-only", "--state-dir",
             str(state), "--listen", f"127.0.0.1:{port}", "--controller-name", "amlops-bench", "--log-format", "json"]
    if cli_accepts_run_flags():
        argv_run = [project_python(), "-m", "controller", "run", *flags]
    else:
        print("NOTE: `amlops run --repo ...` is rejected by the CLI parser (argparse REMAINDER under a subcommand "
              "does not take leading options); running controller.runtime.running.main_run with the same flags")
        argv_run = [project_python(), "-c", DIRECT_RUN, *flags]
    print("command: amlops run " + " ".join(flags).replace(str(REPO) + "/", ""))
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv_run, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        waited = wait_first_sync(f"http://127.0.0.1:{port}/readyz", proc, log, 120)
        time.sleep(2)  # let the first sync's tail (recording, logging) finish
        ps = psutil.Process(proc.pid)
        cpu0, t0 = tree_cpu(ps), time.monotonic()
        samples = []
        while time.monotonic() - t0 < window:
            time.sleep(1)
            samples.append(tree_rss_mb(ps))
            if proc.poll() is not None:
                raise RuntimeError(f"amlops run exited during the window: {log.read_text()[-2000:]}")
        cpu_pct = (tree_cpu(ps) - cpu0) / (time.monotonic() - t0) * 100
        with open(f"/proc/{proc.pid}/maps") as maps:
            mapped = maps.read()
        tf_loaded = "libtensorflow" in mapped
        children = len(ps.children(recursive=True))
    finally:
        stop(proc)
    syncs = sum(1 for ln in log.read_text().splitlines() if "sync.started" in ln)
    heading(f"Idle controller on {RESOURCES:,} resources, --interval {INTERVAL_S:.0f} --watch --detect-only, "
            f"{window:.0f} s window")
    expected = one_pass / INTERVAL_S * 100 if one_pass else None
    print(table(
        ["figure", "value", "target", "verdict"],
        [("CPU % (process tree)", f"{cpu_pct:.1f}", f"< {CPU_TARGET:.0f} %", "met" if cpu_pct < CPU_TARGET else "MISSED"),
         ("RSS MB (max of 1 s samples)", f"{max(samples):.0f}", f"< {RSS_TARGET_MB:.0f}",
          "met" if max(samples) < RSS_TARGET_MB else "MISSED"),
         ("RSS MB (last sample)", f"{samples[-1]:.0f}", "", ""),
         ("libtensorflow mapped", "yes" if tf_loaded else "no", "no", "MISSED" if tf_loaded else "met"),
         ("child processes", children, "", ""),
         ("syncs started during the run (log)", syncs, "", ""),
         ("first sync ready after s", f"{waited:.1f}", "", ""),
         ("baseline: one load+plan CPU s (fresh process, best of 3)",
          f"{one_pass:.2f}" if one_pass else "failed", "", ""),
         ("baseline ÷ interval = CPU % if every interval re-plans",
          f"{expected:.1f}" if expected is not None else "–", "", ""),
         ("measured ÷ baseline", f"{cpu_pct / expected:.2f}" if expected else "–", "", "")],
    ))
    print(f"controller log: {log}")
    return 0


def run_as_script() -> int:
    try:
        return main()
    except Skipped as exc:
        print(f"SKIPPED idle: {exc}")
        return 0


if __name__ == "__main__":
    sys.exit(run_as_script())
