"""Desired state (what Git says) and actual state (what a backend reports), as plain data."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import PurePosixPath
from typing import Any, Final, NamedTuple

from controller.structs.manifests import KIND_ORDER, AnyManifest, Kind, WorkspaceManifest

# Keys of the ownership tags every backend records on what amlops creates.
MANAGED_BY_TAG: Final = "amlops.dev/managed-by"
MANIFEST_PATH_TAG: Final = "amlops.dev/manifest-path"
REVISION_TAG: Final = "amlops.dev/revision"
DIGEST_TAG: Final = "amlops.dev/digest"
# Which source applied the resource: a controller's inventory is what its own source applied.
SOURCE_TAG: Final = "amlops.dev/source"
OWNERSHIP_TAGS: Final = (MANAGED_BY_TAG, MANIFEST_PATH_TAG, REVISION_TAG, DIGEST_TAG, SOURCE_TAG)


def source_id(url: str, branch: str | None, path: str) -> str:
    """One name for a source (repo URL or folder, branch, path inside), as kustomize writes a remote target.

    ``https://git.example.com/ml/deploy//manifests?ref=main``; no ``?ref`` when the default branch
    is followed. Two controllers (or an ``amlops apply`` from the repo root and a controller on the
    same repo) name the same source alike, so they share one inventory.
    """
    clean = url.rstrip("/").removesuffix(".git")
    inside = PurePosixPath(path or ".").as_posix().strip("/") or "."
    return f"{clean}//{inside}" + (f"?ref={branch}" if branch else "")


class ResourceId(NamedTuple):
    """A resource's identity: its kind and its name (unique per kind)."""

    kind: Kind
    name: str

    def __str__(self) -> str:
        return f"{self.kind.value}/{self.name}"

    def order(self) -> int:
        """Position of this resource's kind in dependency order."""
        return KIND_ORDER.index(self.kind)


@dataclass(frozen=True)
class Origin:
    """Where a manifest came from: repo-relative file, the line of its document, and each field's line.

    ``field_files`` names another file for fields set elsewhere (an overlay's patch): a field's
    file is that of the nearest ancestor with a line, ``file`` unless ``field_files`` says otherwise.
    """

    file: str
    line: int
    field_lines: Mapping[tuple[str | int, ...], int] = field(default_factory=dict, compare=False, repr=False)
    field_files: Mapping[tuple[str | int, ...], str] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, path: tuple[str | int, ...]) -> int:
        """The line of ``path`` in the document, or of its nearest ancestor that has one."""
        return self.locate(path)[1]

    def file_of(self, path: tuple[str | int, ...]) -> str:
        """The file that set ``path`` (or its nearest ancestor that has a line)."""
        return self.locate(path)[0]

    def locate(self, path: tuple[str | int, ...]) -> tuple[str, int]:
        """``(file, line)`` of ``path``, or of its nearest ancestor that has a line."""
        while path:
            if path in self.field_lines:
                return self.field_files.get(path, self.file), self.field_lines[path]
            path = path[:-1]
        return self.file, self.line


@dataclass(frozen=True)
class DesiredResource:
    """One validated manifest, with where it came from and a digest of everything it deploys.

    ``digest`` covers the normalised spec *and* the content of files the spec points at (model
    files, entry script folder, conda file), so changing a model file changes the digest.
    ``content_digests`` holds the per-file-set hashes (e.g. ``{"path": "sha256:…"}`` for a model).
    ``files`` maps each path field of the spec (``path``, ``entryScript``, ``sourceDirectory``,
    ``condaFile``, ``pipRequirements``) to its location relative to the repo root (manifest paths
    resolve against the manifest file's folder); join it with ``DesiredState.root``.
    """

    manifest: AnyManifest
    origin: Origin
    digest: str
    content_digests: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)

    @property
    def id(self) -> ResourceId:
        return ResourceId(Kind(self.manifest.kind), self.manifest.metadata.name)


def ownership_tags(controller_name: str, source: str, revision: str, resource: DesiredResource) -> dict[str, str]:
    """The tags every backend writes on what it applies: who, from which source, file, revision and digest."""
    tags = {
        MANAGED_BY_TAG: controller_name,
        MANIFEST_PATH_TAG: resource.origin.file,
        REVISION_TAG: revision,
        DIGEST_TAG: resource.digest,
    }
    if source:
        tags[SOURCE_TAG] = source
    return tags


@dataclass(frozen=True)
class DesiredState:
    """Everything one revision of the repo declares, keyed by resource id."""

    revision: str
    root: str
    resources: Mapping[ResourceId, DesiredResource]

    def __iter__(self) -> Iterator[DesiredResource]:
        return iter(sorted(self.resources.values(), key=lambda r: (r.id.order(), r.id.name)))

    def __len__(self) -> int:
        return len(self.resources)

    def get(self, kind: Kind, name: str) -> DesiredResource | None:
        """The resource of ``kind`` named ``name``, if declared."""
        return self.resources.get(ResourceId(kind, name))

    @cached_property
    def _workspaces(self) -> dict[str, WorkspaceManifest]:
        return {rid.name: r.manifest for rid, r in self.resources.items() if isinstance(r.manifest, WorkspaceManifest)}

    def workspaces(self) -> Mapping[str, WorkspaceManifest]:
        """Declared workspaces by name (computed once: called for every resource)."""
        return self._workspaces


def workspace_of(state: DesiredState, resource: DesiredResource) -> WorkspaceManifest | None:
    """The workspace a resource belongs to: named in its spec, or the only one declared."""
    if isinstance(resource.manifest, WorkspaceManifest):
        return resource.manifest
    wanted = getattr(resource.manifest.spec, "workspace", None)
    workspaces = state.workspaces()
    if wanted is None:
        return next(iter(workspaces.values())) if len(workspaces) == 1 else None
    return workspaces.get(wanted)


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    STALLED = "Stalled"
    GPU_UNAVAILABLE = "GpuUnavailable"
    SUBSTITUTED = "Substituted"


@dataclass(frozen=True)
class Condition:
    """A Kubernetes-style condition: type, status, machine-readable reason, human message."""

    type: str
    status: bool
    reason: str
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        """The condition as stored and shown: ``{"type", "status", "reason", "message"}``."""
        return {"type": self.type, "status": self.status, "reason": self.reason, "message": self.message}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Condition:
        """The condition ``to_json`` wrote."""
        return cls(str(data["type"]), bool(data["status"]), str(data["reason"]), str(data.get("message", "")))


@dataclass(frozen=True)
class ActualResource:
    """What a backend reports for one resource.

    ``spec`` holds the observed values in the manifest's own field names (normalised the same way
    as desired specs), so the planner can diff them field by field. ``tags`` carries the ownership
    tags (managed-by, manifest path, revision, digest). ``details`` is backend-specific read-only
    information for status output (scoring URI, replica pids, model versions…).
    """

    id: ResourceId
    spec: Mapping[str, Any]
    tags: Mapping[str, str] = field(default_factory=dict)
    conditions: tuple[Condition, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def owned_by(self, controller_name: str) -> bool:
        """Whether the controller named ``controller_name`` created this resource."""
        return self.tags.get(MANAGED_BY_TAG) == controller_name

    @property
    def source(self) -> str:
        """The source that applied this resource ('' when none was recorded)."""
        return self.tags.get(SOURCE_TAG, "")

    def claimed_by(self, controller_name: str, source: str) -> bool:
        """Whether this resource is in the inventory of ``source`` under ``controller_name``: it may prune it.

        No ``source`` (a pass run without one, as before sources were recorded) claims everything
        its controller name created.
        """
        return self.owned_by(controller_name) and (not source or self.source == source)

    @property
    def digest(self) -> str | None:
        return self.tags.get(DIGEST_TAG)

    def condition(self, type_: str) -> Condition | None:
        """The condition of ``type_``, if reported."""
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass(frozen=True)
class ActualState:
    """Everything a backend reports, keyed by resource id."""

    resources: Mapping[ResourceId, ActualResource]

    def get(self, kind: Kind, name: str) -> ActualResource | None:
        """The resource of ``kind`` named ``name``, if it exists."""
        return self.resources.get(ResourceId(kind, name))

    def __iter__(self) -> Iterator[ActualResource]:
        return iter(sorted(self.resources.values(), key=lambda r: (r.id.order(), r.id.name)))

    def __len__(self) -> int:
        return len(self.resources)
