"""The local model registry: content-addressed versions of model files, like ``Model.register``.

A version is a copy of the registered files under ``<state>/models/<name>/<version>/`` plus a row
(name, version, sha256, tags, created time). Registering content that some version already holds
returns that version; only new content makes a new version. A registered folder's *contents* go
into the version folder (the walk-through's ``models/tf-dnn-mnist`` holding ``model/…`` becomes
``<version>/model/…``); a registered file goes in by its own name.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from controller.backends.local.stores import LocalStore, ModelVersion
from controller.structs.errors import PermanentError
from controller.structs.logformats import event_logger

log = event_logger(__name__)


def _files(source: Path) -> Iterator[tuple[str, Path]]:
    if source.is_file():
        yield source.name, source
        return
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            yield rel.as_posix(), path


def content_hash(source: Path) -> str:
    """sha256 over the relative names and bytes of every file to register."""
    digest = hashlib.sha256()
    for rel, path in _files(source):
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def register_model(
    store: LocalStore, models_dir: Path, name: str, source: Path, tags: Mapping[str, str] | None = None
) -> ModelVersion:
    """Register the files at ``source`` as model ``name``; the same content always yields the same version."""
    if not source.exists():
        raise PermanentError(f"model path {str(source)!r} does not exist", reason="ModelNotFound")
    sha = content_hash(source)
    tags = dict(tags or {})
    # Content some version already holds needs no copy: the usual case, as every apply registers.
    with store.transaction() as conn:
        same = _same_content(store, conn, name, sha, tags)
    if same is not None:
        return same
    base = models_dir / name
    base.mkdir(parents=True, exist_ok=True)
    staging = base / f".staging-{secrets.token_hex(4)}"
    # Copy outside the write transaction, so a big model does not hold the database lock.
    for rel, path in _files(source):
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        with store.transaction() as conn:
            same = _same_content(store, conn, name, sha, tags)  # registered meanwhile by another writer
            if same is not None:
                return same
            versions = store.model_versions(conn, name)
            version = max((v.version for v in versions), default=0) + 1
            final = base / str(version)
            # A folder without a row is left by a crash between rename and commit.
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            mv = ModelVersion(name, version, sha, tags, time.time(), str(final))
            store.put_model_version(conn, mv)
            log.info("model.registered", name=name, version=version, sha256=sha[:12])
            return mv
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _same_content(store: LocalStore, conn: sqlite3.Connection, name: str, sha: str, tags: dict[str, str]) -> ModelVersion | None:
    """The version of ``name`` holding content ``sha`` (its tags brought to ``tags``), if any."""
    same = next((v for v in store.model_versions(conn, name) if v.sha256 == sha), None)
    if same is not None and same.tags != tags:
        store.update_model_tags(conn, name, same.version, tags)
        same = ModelVersion(same.name, same.version, same.sha256, tags, same.created_at, same.path)
    return same


def resolve_model(store: LocalStore, name: str, version: int | None) -> ModelVersion:
    """The registered version ``name:version``, or the latest when ``version`` is None."""
    with store.snapshot() as conn:
        versions = store.model_versions(conn, name)
    if not versions:
        raise PermanentError(f"model '{name}' is not registered", reason="ModelNotFound")
    if version is None:
        return versions[-1]
    found = next((v for v in versions if v.version == version), None)
    if found is None:
        raise PermanentError(
            f"model '{name}' has no version {version} (versions: {', '.join(str(v.version) for v in versions)})",
            reason="ModelNotFound",
        )
    return found


def delete_model(store: LocalStore, models_dir: Path, name: str) -> None:
    """Forget every version of ``name`` and remove its files."""
    with store.transaction() as conn:
        store.delete_model(conn, name)
    shutil.rmtree(models_dir / name, ignore_errors=True)
