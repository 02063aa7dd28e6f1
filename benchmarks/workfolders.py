"""The benchmarks' work folder (``.bench/`` under the repo, git-ignored, or ``$AMLOPS_BENCH_DIR``) and its virtualenvs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def work_folder(*parts: str) -> Path:
    """A folder under the work folder, created on demand."""
    root = Path(os.environ.get("AMLOPS_BENCH_DIR") or REPO / ".bench")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def project_python() -> str:
    """The interpreter of the project's own virtualenv (the one running this benchmark)."""
    return sys.executable


def ensure_venv(name: str, packages: list[str], probe: str) -> Path:
    """A virtualenv of its own for a baseline, created once and reused while ``packages`` stay the same.

    Each baseline gets isolated site-packages (no ``--system-site-packages``) so its versions are its
    own; pip's wheel cache is shared, which only saves downloads.
    """
    venv = work_folder("venvs") / name
    marker = venv / ".amlops-bench-installed"
    wanted = "\n".join(packages)
    python = venv / "bin" / "python"
    if marker.exists() and marker.read_text() == wanted and python.exists():
        return venv
    if not python.exists():
        print(f"creating virtualenv {venv} (one time; reused by later runs)", flush=True)
        base = os.environ.get("AMLOPS_BENCH_BASE_PYTHON") or _base_python()
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    check = subprocess.run([str(python), "-c", probe], capture_output=True)
    if check.returncode != 0:
        print(f"installing {' '.join(packages)} into {venv} (a few minutes)", flush=True)
        log = work_folder("logs") / f"pip-{name}.log"
        with log.open("w") as out:
            done = subprocess.run([str(python), "-m", "pip", "install", *packages], stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise RuntimeError(f"pip install into {venv} failed; see {log}")
    marker.write_text(wanted)
    return venv


def _base_python() -> str:
    """The interpreter the project's venv was made from (so baselines run the same Python version)."""
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    if cfg.exists():
        values = dict(line.split(" = ", 1) for line in cfg.read_text().splitlines() if " = " in line)
        home = values.get("home")
        if home:
            candidate = Path(home) / f"python{sys.version_info.major}.{sys.version_info.minor}"
            if candidate.exists():
                return str(candidate)
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def venv_version(venv: Path, distribution: str) -> str:
    """Installed version of ``distribution`` inside ``venv``."""
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         f"import importlib.metadata as m; print(m.version({distribution!r}))"],
        capture_output=True, text=True,
    )
    return out.stdout.strip() or "?"
