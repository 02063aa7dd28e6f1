"""Idle controller: CPU and memory of ``amlops run`` watching a 1,000-resource repo, and no TensorFlow loaded.

The controller runs ``amlops run --watch --interval N --detect-only`` on a generated repo (the same
generator as ``benchmarks.reconcile``), once per interval (default 5 s and the default 60 s). ``--detect-only`` because applying 1,000 resources with the local
backend would start ~900 scoring processes on this 2-core machine; the loop still loads, validates,
reads the backend and plans every interval, which is the idle cost being measured. CPU % is the
process tree's CPU time over a window after the first reconcile, RSS is sampled each second.
Baseline in the same run: one load+validate+plan of the same repo timed in a fresh process, divided
by the interval, is the CPU share a loop that re-plans everything each interval must pay. The loop
reuses an unchanged revision's validated state, so it pays less; CPU per pass (the window's CPU
divided by the passes the log shows in it) tells how much.
Targets: below 1 % CPU and 150 MB RSS; ``libtensorflow`` absent from ``/proc/<pid>/maps``.

Run alone: ``python -m benchmarks.idle [--quick] [--seconds S] [--intervals 5,60]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
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
from benchmarks.reports import Skipped, heading, print_machine, run_script, table
from benchmarks.workfolders import REPO, project_python, work_folder

RESOURCES = 1_000
INTERVALS_S = (5.0, 60.0)
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


def amlops_argv() -> list[str]:
    """The ``amlops`` console script of this virtualenv (``python -m controller`` without one)."""
    script = Path(project_python()).parent / "amlops"
    return [str(script)] if script.exists() else [project_python(), "-m", "controller"]


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


def measure(repo: Path, interval: float, window: float) -> dict[str, Any]:
    """Start ``amlops run`` on ``repo`` at ``interval``; CPU, RSS and passes over ``window`` after the first sync."""
    import psutil

    state = work_folder("idle") / f"state-{interval:g}"
    shutil.rmtree(state, ignore_errors=True)
    port = free_port()
    log = work_folder("idle") / f"controller-{interval:g}.log"
    flags = ["--repo", str(repo), "--watch", "--interval", f"{interval:g}", "--detect-only", "--state-dir",
             str(state), "--listen", f"127.0.0.1:{port}", "--controller-name", "amlops-bench", "--log-format", "json"]
    print("command: amlops run " + " ".join(flags).replace(str(REPO) + "/", ""), flush=True)
    with log.open("wb") as sink:
        proc = subprocess.Popen([*amlops_argv(), "run", *flags], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        waited = wait_first_sync(f"http://127.0.0.1:{port}/readyz", proc, log, 120)
        time.sleep(2)  # let the first sync's tail (recording, logging) finish
        ps = psutil.Process(proc.pid)
        passes0 = _finished_passes(log)
        cpu0, t0 = tree_cpu(ps), time.monotonic()
        samples = []
        while time.monotonic() - t0 < window:
            time.sleep(1)
            samples.append(tree_rss_mb(ps))
            if proc.poll() is not None:
                raise RuntimeError(f"amlops run exited during the window: {log.read_text()[-2000:]}")
        cpu_s = tree_cpu(ps) - cpu0
        elapsed = time.monotonic() - t0
        passes = _finished_passes(log) - passes0
        with open(f"/proc/{proc.pid}/maps") as maps:
            tf_loaded = "libtensorflow" in maps.read()
        children = len(ps.children(recursive=True))
    finally:
        stop(proc)
    return {"interval": interval, "cpu_pct": cpu_s / elapsed * 100, "cpu_s": cpu_s, "elapsed": elapsed,
            "passes": passes, "rss_max": max(samples), "rss_last": samples[-1], "tf": tf_loaded,
            "children": children, "waited": waited, "log": log}


def _finished_passes(log: Path) -> int:
    return sum(1 for ln in log.read_text().splitlines() if "sync.finished" in ln)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 s window instead of 60 s")
    parser.add_argument("--seconds", type=float, help="measurement window (overrides --quick)")
    parser.add_argument("--intervals", default=",".join(f"{i:g}" for i in INTERVALS_S),
                        help="comma-separated --interval values, one controller each (default 5,60)")
    args = parser.parse_args(argv)
    window = args.seconds or (15.0 if args.quick else 60.0)
    intervals = [float(v) for v in args.intervals.split(",") if v]
    print_machine()
    try:
        import psutil  # noqa: F401
    except ImportError as exc:
        raise Skipped(f"psutil is missing: {exc}") from exc
    if not Path(amlops_argv()[0]).exists():
        raise Skipped("no amlops console script in this venv")

    repo = work_folder("idle") / f"repo-{RESOURCES}"
    generate_repo(repo, RESOURCES)
    out = subprocess.run([project_python(), "-c", ONE_PASS, str(repo)], capture_output=True, text=True, cwd=REPO)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PASS ")), None)
    one_pass = json.loads(line[5:])[0] if line else None
    results = [measure(repo, interval, window) for interval in intervals]

    heading(f"Idle controller on {RESOURCES:,} resources, amlops run --watch --detect-only, {window:.0f} s window")

    shortest = min(results, key=lambda r: r["interval"])
    per_pass = shortest["cpu_s"] / shortest["passes"] if shortest["passes"] else None

    def row(label: str, value: Any, target: str = "", verdict: Any = None) -> tuple[Any, ...]:
        return (label, *(value(r) for r in results), target, verdict or "")

    print(table(
        ["figure", *(f"--interval {r['interval']:g}" for r in results), "target", "verdict (all)"],
        [row("CPU % (process tree)", lambda r: f"{r['cpu_pct']:.2f}", f"< {CPU_TARGET:.0f} %",
             "met" if all(r["cpu_pct"] < CPU_TARGET for r in results) else "MISSED at "
             + ", ".join(f"{r['interval']:g} s" for r in results if r["cpu_pct"] >= CPU_TARGET)),
         row("RSS MB (max of 1 s samples)", lambda r: f"{r['rss_max']:.0f}", f"< {RSS_TARGET_MB:.0f}",
             "met" if all(r["rss_max"] < RSS_TARGET_MB for r in results) else "MISSED"),
         row("RSS MB (last sample)", lambda r: f"{r['rss_last']:.0f}"),
         row("libtensorflow mapped", lambda r: "yes" if r["tf"] else "no", "no",
             "MISSED" if any(r["tf"] for r in results) else "met"),
         row("child processes", lambda r: r["children"]),
         row("passes finished in the window (log)", lambda r: r["passes"]),
         row("CPU s per pass (window CPU ÷ passes)",
             lambda r: f"{r['cpu_s'] / r['passes']:.3f}" if r["passes"] else "– (no pass)"),
         row("CPU % estimated: shortest interval's CPU per pass ÷ interval",
             lambda r: f"{per_pass / r['interval'] * 100:.2f}" if per_pass is not None else "–"),
         row("first sync ready after s", lambda r: f"{r['waited']:.1f}"),
         row("baseline: one fresh load+plan CPU s (best of 3)", lambda r: f"{one_pass:.2f}" if one_pass else "failed"),
         row("baseline ÷ interval = CPU % if every pass re-plans",
             lambda r: f"{one_pass / r['interval'] * 100:.2f}" if one_pass else "–"),
         row("measured ÷ baseline",
             lambda r: f"{r['cpu_pct'] / (one_pass / r['interval'] * 100):.2f}" if one_pass else "–")],
    ))
    for r in results:
        print(f"controller log (--interval {r['interval']:g}): {r['log']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, "idle"))
