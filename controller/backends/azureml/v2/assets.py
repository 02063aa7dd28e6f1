"""Environments, models and code on v2: assets with content-hash versions.

A version is derived from the content it holds (files, image, conda/pip spec), so re-applying the
same content names an existing version and registers nothing; a change of content is a new
version. Code is registered under a name and a hash version, never as an anonymous asset (those
get a fresh name on every call and re-upload every time). Ownership tags sit on each version.

``read`` lists the containers of a kind (one call). The ownership tags live on the versions, and
azure-ai-ml has no public call that writes a container's tags, so a container whose latest version
has amlops's shape (a content hash) needs its versions listed to be observed. A handler keeps, as
an informer's cache does, what the last list of each container's versions gave, keyed by what the
container list reports about it (latest version, creation and modification times); it lists a
container's versions again only when that key changed, when amlops itself wrote to the asset since
(create, update and delete forget the entry before and after writing), or when the entry is older
than ``ASSET_RESYNC_S``. The first read of a session reads everything; a steady no-op pass makes
one request per kind.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from controller.backends.azureml.tags import CONTENT_TAG, ownership_tags, split_ownership, user_tags
from controller.backends.azureml.v1.environments import pip_and_conda
from controller.backends.azureml.v1.models import model_source
from controller.backends.azureml.v2.sessions import V2Session
from controller.backends.base import ApplyContext
from controller.structs.errors import PermanentError
from controller.structs.logformats import event_logger
from controller.structs.manifests import EnvironmentManifest, Kind, ModelManifest, canonical_base_image
from controller.structs.plans import Change
from controller.structs.states import (
    MANAGED_BY_TAG,
    ActualResource,
    Condition,
    ConditionType,
    DesiredResource,
    ResourceId,
)

log = event_logger(__name__)

# Azure ML's current inference base images for the manifest's base-image names (v1 names kept).
V2_BASE_IMAGES: Final[dict[str, str]] = {
    "DEFAULT_GPU_IMAGE": "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cuda11.8-gpu-inference:latest",
    "DEFAULT_CPU_IMAGE": "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py39-cpu-inference:latest",
}
ASSET_RESYNC_S: Final = 600.0
"""The longest a container's cached versions are trusted without listing them again (as an informer's resync)."""
_HASH_VERSION = re.compile(r"^[0-9]{13,16}$")


def hash_version(digest: str) -> str:
    """An asset version from a content digest (``sha256:…``): digits only, as Azure ML versions sort."""
    hexa = digest.partition(":")[2] or digest
    return str(int(hashlib.sha256(hexa.encode()).hexdigest()[:13], 16) % 10**15 + 10**15)


def is_hash_version(version: str | None) -> bool:
    """Whether ``version`` has the shape ``hash_version`` gives."""
    return bool(version) and bool(_HASH_VERSION.match(str(version)))


def v2_image(base_image: str) -> str:
    """The image a manifest's ``baseImage`` stands for on v2."""
    return V2_BASE_IMAGES.get(base_image.strip(), canonical_base_image(base_image))


def environment_content(resource: DesiredResource, root: str) -> tuple[str, dict[str, Any] | None]:
    """``(image, conda spec)`` of an Environment manifest on v2 (pip requirements folded into conda)."""
    m = resource.manifest
    assert isinstance(m, EnvironmentManifest)
    conda, pip = pip_and_conda(resource, root)
    if pip:
        conda = dict(conda or {"name": m.name, "dependencies": ["python=3.11", "pip"]})
        deps = list(conda.get("dependencies") or [])
        deps.append({"pip": pip})
        conda["dependencies"] = deps
    return v2_image(m.spec.baseImage), conda


def environment_version(resource: DesiredResource, root: str) -> str:
    """The content-hash version of an environment (image + conda spec)."""
    image, conda = environment_content(resource, root)
    text = json.dumps({"image": image, "conda": conda}, sort_keys=True)
    return hash_version("sha256:" + hashlib.sha256(text.encode()).hexdigest())


def model_version(resource: DesiredResource) -> str:
    """The content-hash version of a model (its files)."""
    return hash_version(resource.content_digests.get("path") or resource.digest)


def _list_versions(ops: Any, name: str) -> list[Any]:
    return list(ops.list(name=name))


def _modified(asset: Any) -> str:
    context = getattr(asset, "creation_context", None)
    when = getattr(context, "last_modified_at", None) or getattr(context, "created_at", None)
    return str(when or "")


def container_key(container: Any) -> tuple[str, str, str]:
    """What the container list says of a container that changes when its versions do."""
    context = getattr(container, "creation_context", None)
    return (str(getattr(container, "latest_version", None) or ""), str(getattr(context, "created_at", None) or ""),
            str(getattr(context, "last_modified_at", None) or ""))


class _AssetHandler:
    """What environments and models share: list containers, get amlops-shaped latest versions."""

    kind: Kind
    replace_fields: frozenset[str] = frozenset({"workspace"})

    def __init__(self, session: V2Session) -> None:
        self.session = session
        # container name (lower case) -> (container key, when listed, what its versions gave, writes seen)
        self._seen: dict[str, tuple[tuple[str, str, str], float, ActualResource | None, int]] = {}
        self._writes: dict[str, int] = {}
        self._lock = threading.Lock()

    def _operations(self) -> Any:
        raise NotImplementedError

    def _observe(self, asset: Any) -> ActualResource:
        raise NotImplementedError

    def _register(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        raise NotImplementedError

    def forget(self, name: str) -> None:
        """Drop what was read of ``name`` (amlops writes to it): the next read lists its versions again."""
        with self._lock:
            self._seen.pop(name.lower(), None)
            self._writes[name.lower()] = self._writes.get(name.lower(), 0) + 1

    def read(self) -> Iterable[ActualResource]:
        """One list call, plus one list of versions per amlops-versioned container that changed since the last read."""
        s = self.session
        ops = self._operations()
        containers = s.call(f"list {self.kind.value.lower()}s", lambda: list(ops.list()))
        found = []
        listed: set[str] = set()
        for container in containers:
            latest = getattr(container, "latest_version", None)
            if not is_hash_version(latest):
                continue
            name = str(container.name).lower()
            listed.add(name)
            key = container_key(container)
            with self._lock:
                seen = self._seen.get(name)
                writes = self._writes.get(name, 0)
            if seen is not None and seen[0] == key and seen[3] == writes \
                    and time.monotonic() - seen[1] < ASSET_RESYNC_S:
                if seen[2] is not None:
                    found.append(copy.deepcopy(seen[2]))
                continue
            started = time.monotonic()
            # The version amlops registered or re-tagged last (a hash version says nothing about order).
            versions = s.call(f"list {self.kind.value.lower()} {container.name}",
                              functools.partial(_list_versions, ops, container.name))
            owned = [v for v in versions if (v.tags or {}).get(MANAGED_BY_TAG) == s.controller_name]
            observed = self._observe(max(owned, key=_modified)) if owned else None
            with self._lock:
                if self._writes.get(name, 0) == writes:  # no write of amlops's overlapped this list
                    self._seen[name] = (key, started, observed, writes)
            if observed is not None:
                found.append(copy.deepcopy(observed))
        with self._lock:
            for gone in set(self._seen) - listed:
                del self._seen[gone]
        return found

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Register the asset under its content-hash version (nothing when that version exists).

        What was read of it is forgotten before and after, so no read overlapping the write keeps it.
        """
        self.forget(resource.id.name)
        try:
            self._register(resource, ctx)
        finally:
            self.forget(resource.id.name)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """Register the new version (assets are versioned, never changed)."""
        self.create(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Archive the versions this controller registered (Azure ML v2 assets are archived, not deleted)."""
        self.forget(id.name)
        try:
            self._archive(id)
        finally:
            self.forget(id.name)

    def _archive(self, id: ResourceId) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        s = self.session
        ops = self._operations()
        try:
            versions = s.call(f"list {id}", lambda: list(ops.list(name=id.name)))
        except PermanentError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return
            raise
        for asset in versions:
            if (asset.tags or {}).get(MANAGED_BY_TAG) == s.controller_name:
                s.call(f"archive {id} version {asset.version}", functools.partial(ops.archive, asset.name, version=asset.version))


class EnvironmentHandler(_AssetHandler):
    """Environment on v2: conda/pip on an Azure ML inference base image."""

    kind = Kind.ENVIRONMENT

    def _operations(self) -> Any:
        return self.session.client.environments

    def _register(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Register the environment under its content-hash version (nothing when that version exists)."""
        from azure.ai.ml.entities import Environment

        m = resource.manifest
        assert isinstance(m, EnvironmentManifest)
        s = self.session
        version = environment_version(resource, ctx.root)
        existing = _existing(s, self._operations(), m.name, version)
        if existing is not None:
            _retag(s, self._operations(), existing, ownership_tags(resource, ctx), f"environment {m.name}:{version}")
            log.info("environment.unchanged", name=m.name, version=version)
            return
        image, conda = environment_content(resource, ctx.root)
        env = Environment(name=m.name, version=version, image=image, conda_file=conda,
                          tags=ownership_tags(resource, ctx))
        s.call(f"register environment {m.name}", lambda: self._operations().create_or_update(env))
        log.info("environment.registered", name=m.name, version=version)

    def _observe(self, asset: Any) -> ActualResource:
        own, spec = split_ownership(asset.tags)
        return ActualResource(ResourceId(Kind.ENVIRONMENT, asset.name), spec, own,
                              (Condition(ConditionType.READY, True, "Registered"),),
                              {"version": asset.version, "image": asset.image, "api": "v2"})


class ModelHandler(_AssetHandler):
    """Model on v2: a custom_model asset of the model's folder."""

    kind = Kind.MODEL

    def _operations(self) -> Any:
        return self.session.client.models

    def _register(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Upload and register the model under its content-hash version (nothing when that version exists)."""
        from azure.ai.ml.entities import Model

        m = resource.manifest
        assert isinstance(m, ModelManifest)
        s = self.session
        version = model_version(resource)
        content = resource.content_digests.get("path") or resource.digest
        tags = {**m.spec.tags, **ownership_tags(resource, ctx), CONTENT_TAG: content}
        existing = _existing(s, self._operations(), m.name, version)
        if existing is not None:
            existing.description = m.spec.description
            _retag(s, self._operations(), existing, tags, f"model {m.name}:{version}")
            log.info("model.unchanged", name=m.name, version=version)
            return
        model = Model(name=m.name, version=version, path=str(model_source(resource, ctx.root)), type="custom_model",
                      description=m.spec.description, tags=tags)
        ctx.progress(f"uploading model {m.name}", None)
        s.call(f"register model {m.name}", lambda: self._operations().create_or_update(model))
        log.info("model.registered", name=m.name, version=version)

    def _observe(self, asset: Any) -> ActualResource:
        own, spec = split_ownership(asset.tags)
        spec.update(description=asset.description, tags=user_tags(asset.tags))
        return ActualResource(ResourceId(Kind.MODEL, asset.name), spec, own,
                              (Condition(ConditionType.READY, True, "Registered"),),
                              {"version": asset.version, "id": asset.id, "api": "v2",
                               "contentDigest": (asset.tags or {}).get(CONTENT_TAG)})


def _existing(session: V2Session, ops: Any, name: str, version: str) -> Any:
    """The asset version, or None when there is none."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        return session.call(f"get {name}:{version}", lambda: ops.get(name, version=version))
    except Exception as exc:  # the classified error keeps the SDK's as its cause
        if isinstance(exc, ResourceNotFoundError) or isinstance(exc.__cause__, ResourceNotFoundError):
            return None
        raise


def _retag(session: V2Session, ops: Any, asset: Any, tags: dict[str, str], what: str) -> None:
    """Put the current ownership tags on an existing version (same content, so the same version).

    Content that comes back to an earlier version (a revert) names that version again; re-tagging
    it makes it the newest-modified one, which is what ``read`` reports. A version pruned earlier
    (archived, so lists leave it out) comes back too: the PUT sends it as not archived, and the new
    revision's tags always differ from the ones it was archived with.
    """
    if dict(asset.tags or {}) == tags:
        return
    asset.tags = tags
    session.call(f"tag {what}", lambda: ops.create_or_update(asset))


def code_version(source: Path) -> str:
    """The content-hash version of a code folder (paths and bytes of its files)."""
    h = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes() + b"\0")
    return hash_version("sha256:" + h.hexdigest())


def register_code(session: V2Session, name: str, source: Path, ctx: ApplyContext) -> str:
    """The ARM id of the code asset ``name`` at the folder's content version, registered if new."""
    from azure.ai.ml.entities._assets import Code

    version = code_version(source)
    ops = session.client._code
    if _existing(session, ops, name, version) is None:
        ctx.progress(f"uploading code {name}", None)
        code = Code(name=name, version=version, path=str(source),
                    tags={MANAGED_BY_TAG: ctx.controller_name})
        session.call(f"register code {name}", lambda: ops.create_or_update(code))
    return f"{session.scope}/codes/{name}/versions/{version}"
