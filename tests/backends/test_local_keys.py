"""Service keys on disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from controller.backends.keys import ensure_keys, read_keys, regenerate, write_keys


def test_the_keys_file_is_0600_and_regenerating_one_key_keeps_the_other(tmp_path: Path) -> None:
    path = tmp_path / "svc" / "keys.json"
    old_umask = os.umask(0)  # even a permissive umask must not widen the file's mode
    try:
        ensure_keys(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        primary, secondary = read_keys(path)
        assert primary != secondary and len(primary) >= 40
        regenerate(path, "secondary")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)
    new_primary, new_secondary = read_keys(path)
    assert new_primary == primary and new_secondary != secondary
    ensure_keys(path)  # existing keys are kept
    assert read_keys(path) == (new_primary, new_secondary)
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]  # no temp file left behind


def test_written_keys_round_trip(tmp_path: Path) -> None:
    write_keys(tmp_path / "k.json", "a", "b")
    assert read_keys(tmp_path / "k.json") == ("a", "b")
