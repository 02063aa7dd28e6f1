"""The key ring a scoring host checks requests against."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from controller.scoring.keys import KeyRing

pytestmark = pytest.mark.timeout(30)


def write_keys(path: Path, **keys: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(keys))
    os.replace(tmp, path)


def bearer(secret: str) -> bytes:
    return f"Bearer {secret}".encode()


def test_a_missing_keys_file_accepts_no_key(tmp_path: Path) -> None:
    ring = KeyRing(str(tmp_path / "keys.json"), "key")
    assert not ring.accepts(bearer(""))
    assert not ring.accepts(bearer("anything"))


def test_deleting_the_keys_file_revokes_the_keys_it_held(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    write_keys(keys, primaryKey="primary-1", secondaryKey="secondary-1")
    ring = KeyRing(str(keys), "key")
    assert ring.accepts(bearer("primary-1"))

    keys.unlink()

    while ring.accepts(bearer("primary-1")):  # noticed within one check interval
        time.sleep(0.05)
    assert not ring.accepts(bearer("secondary-1"))
    write_keys(keys, primaryKey="primary-2", secondaryKey="secondary-2")
    while not ring.accepts(bearer("primary-2")):
        time.sleep(0.05)
    assert not ring.accepts(bearer("primary-1"))

