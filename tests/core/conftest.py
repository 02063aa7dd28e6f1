"""Fixtures for core tests: a manifest repo in a temp folder and an in-memory backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from .memories import MemoryBackend
from .repos import Repo


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend()
