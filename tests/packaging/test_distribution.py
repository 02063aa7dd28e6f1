"""What ``python -m build`` makes: an sdist whose metadata matches its LICENSE and that carries its own tests."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tarfile.TarFile:
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the dev extra installs the build backend, so this needs no index.
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    [archive] = out.glob("amlops-*.tar.gz")
    return tarfile.open(archive)


def _members(sdist: tarfile.TarFile) -> set[str]:
    return {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}


def test_the_license_file_matches_the_license_expression(sdist: tarfile.TarFile) -> None:
    top = sdist.getnames()[0].split("/")[0]
    info = Parser().parsestr(sdist.extractfile(f"{top}/PKG-INFO").read().decode())  # type: ignore[union-attr]
    assert info["License-Expression"] == "MIT"
    assert "LICENSE" in info.get_all("License-File", [])
    text = sdist.extractfile(f"{top}/LICENSE").read().decode()  # type: ignore[union-attr]
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    urls = dict(value.split(", ", 1) for value in info.get_all("Project-URL", []))
    assert {"Homepage", "Source", "Issues", "Documentation"} <= set(urls)
    classifiers = info.get_all("Classifier", [])
    assert "Programming Language :: Python :: 3.11" in classifiers and "Typing :: Typed" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: the expression says it


def test_the_sdist_carries_what_its_tests_need(sdist: tarfile.TarFile) -> None:
    # The tests read files from anywhere in the tree (docs/examples, .github, .ci, the Dockerfile,
    # benchmarks), so the sdist carries every tracked file: git's own settings are all it leaves out.
    members = _members(sdist)
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], check=True, capture_output=True, text=True).stdout.split()
    missing = [path for path in tracked if path not in members and (REPO / path).exists() and path != ".gitignore"]
    assert missing == []
    assert {"pyproject.toml", "LICENSE", "README.md", "Makefile", "tests/golden/plan.json",
            "docs/examples/notifications.yaml"} <= members
