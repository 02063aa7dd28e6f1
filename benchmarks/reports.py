"""Printing figures: fixed-width tables, and the ``Skipped`` signal a part raises when its subject is missing."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any


class Skipped(Exception):
    """Raised by a benchmark whose subject (a module, a command, a tool) does not exist yet."""


def run_script(main: Callable[[], int], name: str) -> int:
    """Run one benchmark's ``main`` as a script: a ``Skipped`` benchmark says why and exits 0."""
    try:
        return main()
    except Skipped as exc:
        print(f"SKIPPED {name}: {exc}")
        return 0


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (also valid Markdown), columns padded to their widest cell."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def heading(title: str) -> None:
    """Print a section title."""
    print(f"\n## {title}\n", flush=True)


def machine() -> dict[str, Any]:
    """Where figures come from: cores, CPU model, memory, load average, kernel, Python, date."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo") as handle:
            memory_gib = round(int(handle.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": memory_gib,
        "loadavg": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": _git_revision(),
    }


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def print_machine() -> None:
    """Print the machine line every benchmark starts with."""
    m = machine()
    print(f"machine: {m['nproc']} cores, {m['cpu']}, {m['memory_gib']} GiB, load average {m['loadavg']}, "
          f"Linux {m['kernel']}, Python {m['python']}, git {m['git']}, {m['date']}", flush=True)
