"""Key and token auth: a request without the right secret never reaches run()."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from scoring_hosts import StartHost, calls

from controller.structs import tokens

pytestmark = pytest.mark.timeout(60)


def write_keys(path: Path, **keys: str) -> None:
    # Replace atomically, the way a supervisor regenerating keys should.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(keys))
    os.replace(tmp, path)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_key_auth_accepts_both_keys_and_rejects_others_without_calling_run(
    start_host: StartHost, echo_dir: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    write_keys(keys, primaryKey="primary-1", secondaryKey="secondary-1")
    host = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir),
                      "--auth", "key", "--keys-file", str(keys))
    assert host.score({"data": [1]}, headers=bearer("wrong"))[0] == 401
    assert host.score({"data": [1]})[0] == 401
    assert host.score({"data": [1]}, headers={"Authorization": "primary-1"})[0] == 401
    assert calls(echo_dir) == []
    assert host.score({"data": [1]}, headers=bearer("primary-1"))[0] == 200
    assert host.score({"data": [2]}, headers=bearer("secondary-1"))[0] == 200
    assert len(calls(echo_dir)) == 2
    assert host.request("GET", "/")[0] == 200, "health checks need no key"
    assert "primary-1" not in host.log() and "secondary-1" not in host.log()


def test_rotating_the_keys_file_takes_effect_without_restart(
    start_host: StartHost, echo_dir: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    write_keys(keys, primaryKey="old-primary", secondaryKey="old-secondary")
    host = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir),
                      "--auth", "key", "--keys-file", str(keys))
    assert host.score({"data": [1]}, headers=bearer("old-primary"))[0] == 200
    write_keys(keys, primaryKey="new-primary", secondaryKey="old-secondary")
    # The host looks at the file at most every KeyRing check interval: wait for it to notice.
    while host.score({"data": [1]}, headers=bearer("old-primary"))[0] != 401:
        time.sleep(0.1)
    assert host.score({"data": [1]}, headers=bearer("new-primary"))[0] == 200
    assert host.score({"data": [1]}, headers=bearer("old-secondary"))[0] == 200


def test_token_auth_accepts_unexpired_tokens_for_this_service_signed_with_the_key(
    start_host: StartHost, echo_dir: Path, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    write_keys(keys, tokenSigningKey="signing-key-1", primaryKey="not-a-token")
    host = start_host("--entry-script", "score.py", "--source-dir", str(echo_dir),
                      "--auth", "token", "--keys-file", str(keys), "--service-name", "svc-a")
    now = time.time()
    good = tokens.mint(b"signing-key-1", "svc-a", now).access_token
    assert host.score({"data": [1]}, headers=bearer(good))[0] == 200
    refused = {
        "a key is not a token": "not-a-token",
        "another service's token": tokens.mint(b"signing-key-1", "svc-b", now).access_token,
        "expired": tokens.mint(b"signing-key-1", "svc-a", now - 7200, lifetime_s=3600).access_token,
        "signed with another key": tokens.mint(b"signing-key-2", "svc-a", now).access_token,
        "claims edited": good.split(".")[0] + "." + tokens.mint(b"x", "svc-a", now + 9999).access_token.split(".")[1]
        + "." + good.split(".")[2],
    }
    for why, token in refused.items():
        assert host.score({"data": [1]}, headers=bearer(token))[0] == 401, why
    assert len(calls(echo_dir)) == 1  # refused requests never reached run()
    # Rotating the signing key revokes every token signed with the old one.
    write_keys(keys, tokenSigningKey="signing-key-2")
    deadline = time.monotonic() + 10
    while host.score({"data": [1]}, headers=bearer(good))[0] != 401:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert host.score({"data": [1]}, headers=bearer(tokens.mint(b"signing-key-2", "svc-a", now).access_token))[0] == 200
