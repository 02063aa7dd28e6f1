"""Validating documents into desired state: schema errors and cross-resource rules, all at once.

Every error names the file, the line and the field path, in words a user can act on; all errors
of a run are reported together, never only the first.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from controller.sources.digests import HASHER, inside
from controller.sources.documents import Document, FieldPath
from controller.structs.errors import ManifestError
from controller.structs.manifests import (
    API_VERSION,
    MANIFEST_TYPES,
    AksClusterManifest,
    AnyManifest,
    Kind,
    WebserviceManifest,
    WorkspaceManifest,
)
from controller.structs.schemas import nested_model
from controller.structs.states import DesiredResource, DesiredState, Origin, ResourceId

# Spec fields that name files, per kind; they resolve against the manifest file's folder.
PATH_FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.ENVIRONMENT: ("condaFile", "pipRequirements"),
    Kind.MODEL: ("path",),
    Kind.WEBSERVICE: ("sourceDirectory", "entryScript"),
}


def format_field(path: Iterable[str | int]) -> str:
    """``('spec', 'models', 0, 'name')`` → ``spec.models[0].name``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_at(model: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    """Field names the model allows at ``path`` (for "did you mean" suggestions)."""
    current: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = nested_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


# pydantic error types, in words a manifest author reads; {got} is the offending value.
_TEMPLATES: dict[str, str] = {
    "greater_than_equal": "must be ≥ {ge} (got {got})",
    "greater_than": "must be > {gt} (got {got})",
    "less_than_equal": "must be ≤ {le} (got {got})",
    "less_than": "must be < {lt} (got {got})",
    "literal_error": "must be one of {expected} (got {got})",
    "int_type": "must be a whole number (got {got})",
    "int_parsing": "must be a whole number (got {got})",
    "int_from_float": "must be a whole number (got {got})",
    "float_type": "must be a number (got {got})",
    "float_parsing": "must be a number (got {got})",
    "bool_type": "must be true or false (got {got})",
    "bool_parsing": "must be true or false (got {got})",
    "string_type": "must be a string (got {got})",
    "dict_type": "must be a mapping (got {got})",
    "model_type": "must be a mapping (got {got})",
    "model_attributes_type": "must be a mapping (got {got})",
    "list_type": "must be a list (got {got})",
    "string_pattern_mismatch": "must match {pattern} (got {got})",
    "string_too_short": "must not be empty (got {got})",
}


def _message(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        loc = tuple(error["loc"])
        allowed = _fields_at(model, loc[:-1])
        unknown = str(loc[-1])
        close = difflib.get_close_matches(unknown, allowed, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else (f"; expected one of {', '.join(sorted(allowed))}" if allowed else "")
        return f"unknown field{hint}"
    template = _TEMPLATES.get(kind)
    if template is not None:
        bounds = {k: _number(v) for k, v in ctx.items() if k in ("ge", "gt", "le", "lt")}
        return template.format(got=_short(got), expected=ctx.get("expected", ""), pattern=ctx.get("pattern"), **bounds)
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])


def _schema_errors(doc: Document, kind: str | None, name: str | None, model: type[BaseModel], exc: ValidationError) -> list[ManifestError]:
    origin = Origin(doc.file, doc.line, doc.field_lines, doc.field_files)
    found = []
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if isinstance(p, str | int))
        file, line = origin.locate(loc)
        found.append(ManifestError(file, line, _message(error, model), kind, name, format_field(loc) or None))
    return found


def _envelope_errors(doc: Document) -> tuple[Kind | None, str | None, list[ManifestError]]:
    data = doc.data
    if not isinstance(data, dict):
        return None, None, [ManifestError(doc.file, doc.line, f"a manifest must be a mapping with apiVersion, kind, metadata and spec (got {type(data).__name__})")]
    errors: list[ManifestError] = []
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) and isinstance(meta.get("name"), str) else None
    raw_kind = data.get("kind")
    kind: Kind | None = None
    if raw_kind is None:
        errors.append(ManifestError(doc.file, doc.line, "is required", None, name, "kind"))
    else:
        try:
            kind = Kind(raw_kind)
        except ValueError:
            known = [k.value for k in Kind]
            close = difflib.get_close_matches(str(raw_kind), known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
            errors.append(ManifestError(doc.file, doc.field_lines.get(("kind",), doc.line), f"unknown kind {_short(raw_kind)}{hint}", None, name, "kind"))
    api = data.get("apiVersion")
    if api != API_VERSION:
        what = "is required" if api is None else f"must be {API_VERSION!r} (got {_short(api)})"
        errors.append(ManifestError(doc.file, doc.field_lines.get(("apiVersion",), doc.line), what, kind.value if kind else None, name, "apiVersion"))
    return kind, name, errors


def _canonical(manifest: AnyManifest) -> bytes:
    return json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


class _Builder:
    """Collects resources and errors over all documents, then runs the cross-resource rules."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.errors: list[ManifestError] = []
        self.resources: dict[ResourceId, tuple[AnyManifest, Origin, dict[str, str]]] = {}
        self._locations: dict[str, tuple[bool, bool]] = {}

    def error(self, origin: Origin, manifest: AnyManifest, field: FieldPath, message: str) -> None:
        file, line = origin.locate(field)
        self.errors.append(ManifestError(file, line, message, manifest.kind, manifest.metadata.name, format_field(field)))

    def add(self, doc: Document) -> None:
        kind, name, errors = _envelope_errors(doc)
        if errors or kind is None:
            self.errors.extend(errors)
            return
        model = MANIFEST_TYPES[kind]
        try:
            # Strict: "3" is not a number and "yes" not a boolean, as for the JSON Schemas editors check with.
            manifest = model.model_validate(doc.data, strict=True)
        except ValidationError as exc:
            self.errors.extend(_schema_errors(doc, kind.value, name, model, exc))
            return
        origin = Origin(doc.file, doc.line, doc.field_lines, doc.field_files)
        rid = ResourceId(kind, manifest.metadata.name)
        if rid in self.resources:
            first = self.resources[rid][1]
            self.error(origin, manifest, ("metadata", "name"), f"duplicate {kind.value} name; first declared at {first.file}:{first.line}")
            return
        self.resources[rid] = (manifest, origin, self._resolve_paths(manifest, origin))

    def _resolve_paths(self, manifest: AnyManifest, origin: Origin) -> dict[str, str]:
        # Plain string path arithmetic (POSIX, repo-relative): this runs for every manifest of a
        # large repo, and pathlib objects cost several times as much here.
        kind = Kind(manifest.kind)
        resolved: dict[str, str] = {}
        spec = manifest.spec
        for field in PATH_FIELDS.get(kind, ()):
            value = getattr(spec, field)
            if value is None:
                continue
            where = ("spec", field)
            # Against the folder of the file that set the field: a base's manifest, or an overlay's patch.
            base = posixpath.dirname(origin.file_of(where) if origin.field_files else origin.file)
            if value.startswith("/"):
                self.error(origin, manifest, where, f"must be a path inside the repository, not absolute (got {value!r})")
                continue
            folder = resolved["sourceDirectory"] if field == "entryScript" and "sourceDirectory" in resolved else base
            normal = _normalise(f"{folder}/{value}" if folder else value)
            if normal is None:
                self.error(origin, manifest, where, f"leaves the repository (got {value!r})")
                continue
            exists, inside = self._locate(normal)
            if not exists:
                self.error(origin, manifest, where, f"{normal} does not exist")
                continue
            if not inside:
                self.error(origin, manifest, where, f"{normal} resolves outside the repository (symbolic link?)")
                continue
            resolved[field] = normal
        return resolved

    def _locate(self, normal: str) -> tuple[bool, bool]:
        """Whether a repo path exists and stays inside the repo; memoised (services share folders)."""
        found = self._locations.get(normal)
        if found is None:
            target = self.root / normal
            exists = target.exists()
            found = self._locations[normal] = (exists, exists and inside(self.root, target))
        return found

    def check_references(self) -> None:
        workspaces = self._names(Kind.WORKSPACE)
        for rid, (manifest, origin, _) in self.resources.items():
            if rid.kind is not Kind.WORKSPACE:
                wanted = getattr(manifest.spec, "workspace", None)
                if wanted is not None and wanted not in workspaces:
                    self.error(origin, manifest, ("spec", "workspace"), self._missing("Workspace", wanted, workspaces))
                elif wanted is None and len(workspaces) > 1:
                    self.error(origin, manifest, ("spec", "workspace"), f"is required when several workspaces are declared ({', '.join(sorted(workspaces))})")
            if isinstance(manifest, WebserviceManifest):
                self._check_service(manifest, origin)

    def _names(self, kind: Kind) -> list[str]:
        return [rid.name for rid in self.resources if rid.kind is kind]

    def _declared(self, kind: Kind, name: str) -> bool:
        # A keyed lookup: a repo of thousands of services checks each reference in O(1).
        return ResourceId(kind, name) in self.resources

    def _missing(self, kind: str, wanted: str, known: list[str]) -> str:
        close = difflib.get_close_matches(wanted, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{kind} {wanted!r} is not declared{hint}"

    def _check_service(self, manifest: WebserviceManifest, origin: Origin) -> None:
        spec = manifest.spec
        if not self._declared(Kind.AKS_CLUSTER, spec.cluster):
            self.error(origin, manifest, ("spec", "cluster"), self._missing("AksCluster", spec.cluster, self._names(Kind.AKS_CLUSTER)))
        if spec.environment is not None and not self._declared(Kind.ENVIRONMENT, spec.environment):
            self.error(origin, manifest, ("spec", "environment"), self._missing("Environment", spec.environment, self._names(Kind.ENVIRONMENT)))
        for index, ref in enumerate(spec.models):
            if not self._declared(Kind.MODEL, ref.name):
                self.error(origin, manifest, ("spec", "models", index), self._missing("Model", ref.name, self._names(Kind.MODEL)))

    def check_gpu_capacity(self) -> None:
        """AKS pods cannot share GPUs: max replicas × GPUs per replica, summed per cluster, must fit."""
        demand: dict[str, list[tuple[WebserviceManifest, Origin]]] = defaultdict(list)
        for manifest, origin, _ in self.resources.values():
            if isinstance(manifest, WebserviceManifest) and manifest.spec.resources.gpu > 0:
                demand[manifest.spec.cluster].append((manifest, origin))
        for cluster_name, services in demand.items():
            found = self.resources.get(ResourceId(Kind.AKS_CLUSTER, cluster_name))
            if found is None or not isinstance(found[0], AksClusterManifest):
                continue
            cluster = found[0].spec
            capacity = cluster.gpu_capacity()
            if capacity == 0:
                for service, origin in services:
                    self.error(origin, service, ("spec", "resources", "gpu"),
                               f"requests {service.spec.resources.gpu} GPU per replica but cluster {cluster_name} "
                               f"({cluster.vmSize}) has no GPUs; use an N-series vmSize or set gpusPerNode")
                continue
            wanted = sum(_replicas_at_most(s) * s.spec.resources.gpu for s, _ in services)
            if wanted <= capacity:
                continue
            breakdown = ", ".join(f"{s.metadata.name}: {_replicas_at_most(s)} × {s.spec.resources.gpu}"
                                  + (f" ({s.spec.rollout.strategy}: its new version runs beside it)"
                                     if s.spec.rollout.strategy != "rolling" else "") for s, _ in services)
            per_node = capacity // cluster.agentCount
            for service, origin in services:
                field = ("spec", "replicas") if service.spec.replicas is not None else ("spec", "resources", "gpu")
                self.error(origin, service, field,
                           f"GPUs cannot be shared between replicas: services on cluster {cluster_name} need up to "
                           f"{wanted} GPUs ({breakdown}) but it has {capacity} ({cluster.agentCount} nodes × {per_node} "
                           f"GPU of {cluster.vmSize}): {wanted - capacity} over")

    def _workspace_api(self, manifest: AnyManifest) -> str | None:
        """The API generation of the azureml workspace ``manifest`` belongs to (None: local or unknown)."""
        wanted = getattr(manifest.spec, "workspace", None)
        workspaces = [m for m, _, _ in self.resources.values() if isinstance(m, WorkspaceManifest)]
        found = [w for w in workspaces if wanted is None or w.metadata.name == wanted]
        if len(found) != 1 or found[0].spec.backend != "azureml":
            return None
        return found[0].spec.api

    def check_api_rules(self) -> None:
        """What one Azure ML API generation cannot do, refused before anything is touched."""
        v2_clusters: dict[str, str] = {}
        for manifest, origin, _ in self.resources.values():
            if not isinstance(manifest, WebserviceManifest):
                continue
            api = manifest.spec.api or self._workspace_api(manifest)
            if api == "v2":
                v2_clusters.setdefault(manifest.spec.cluster, manifest.metadata.name)
                if manifest.spec.auth == "none":
                    self.error(origin, manifest, ("spec", "auth"), "auth: none is not possible on Azure ML v2 "
                               "(online endpoints have no unauthenticated mode); use key or token")
                if len(manifest.spec.models) > 1:
                    self.error(origin, manifest, ("spec", "models"), "an Azure ML v2 deployment loads one model; "
                               "package the models into one folder (one Model manifest)")
            elif api == "v1":
                if manifest.spec.instanceType is not None:
                    self.error(origin, manifest, ("spec", "instanceType"), "instanceType is an Azure ML v2 setting; "
                               "remove it, or set api: v2 on the service or its workspace")
                if manifest.spec.rollout.strategy != "rolling":
                    self.error(origin, manifest, ("spec", "rollout", "strategy"),
                               f"strategy {manifest.spec.rollout.strategy} needs Azure ML v2: a v1 AKS web service "
                               "cannot split traffic between versions under one URI; use rolling, or set api: v2")
        for manifest, origin, _ in self.resources.values():
            if not isinstance(manifest, AksClusterManifest) or manifest.spec.attach is not None:
                continue
            api = self._workspace_api(manifest)
            user = v2_clusters.get(manifest.metadata.name)
            if api == "v2" or user is not None:
                why = "the workspace uses api: v2" if api == "v2" else f"service {user} uses api: v2"
                self.error(origin, manifest, ("spec", "attach"),
                           f"Azure ML v2 cannot create AKS clusters ({why}): create the cluster outside Azure ML "
                           "(az aks create --resource-group RG --name NAME --node-vm-size "
                           f"{manifest.spec.vmSize} --node-count {manifest.spec.agentCount}), install the Azure ML "
                           "extension (az k8s-extension create --name azureml --extension-type Microsoft.AzureML.Kubernetes "
                           "--cluster-type managedClusters --cluster-name NAME --resource-group RG "
                           "--config enableInference=True inferenceRouterServiceType=LoadBalancer), then set "
                           "attach.resourceId to the cluster's resource id (and attach.namespace)")

    def build(self, revision: str) -> DesiredState:
        digests: dict[ResourceId, tuple[str, dict[str, str]]] = {}
        trees: dict[str, str] = {}  # one walk per folder, however many services share it
        order = sorted(self.resources, key=lambda rid: rid.order())
        for rid in order:
            manifest, _, paths = self.resources[rid]
            contents = {field: trees[rel] if rel in trees else trees.setdefault(rel, HASHER.tree(self.root / rel))
                        for field, rel in paths.items()}
            if isinstance(manifest, WebserviceManifest):
                for ref in manifest.spec.models:
                    if (Kind.MODEL, ref.name) in digests:
                        contents[f"model:{ref.name}"] = digests[ResourceId(Kind.MODEL, ref.name)][0]
                if manifest.spec.environment and ResourceId(Kind.ENVIRONMENT, manifest.spec.environment) in digests:
                    contents["environment"] = digests[ResourceId(Kind.ENVIRONMENT, manifest.spec.environment)][0]
            hasher = hashlib.sha256(_canonical(manifest))
            for key in sorted(contents):
                hasher.update(f"\0{key}={contents[key]}".encode())
            digests[rid] = ("sha256:" + hasher.hexdigest(), contents)
        resources = {
            rid: DesiredResource(manifest, origin, digests[rid][0], digests[rid][1], paths)
            for rid, (manifest, origin, paths) in self.resources.items()
        }
        return DesiredState(revision, str(self.root), resources)


def _replicas_at_most(service: WebserviceManifest) -> int:
    """Replicas a service may run at once: during a canary or blue/green its new version's replicas
    (its minimum count) run beside the live ones."""
    surge = service.spec.min_replicas() if service.spec.rollout.strategy != "rolling" else 0
    return service.spec.max_replicas() + surge


def _normalise(path: str) -> str | None:
    """``path`` (POSIX, relative to the repo) without ``.``, ``..`` and empty parts; None if it climbs out."""
    if path.startswith("/"):
        return None
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts) or "."




def build_desired_state(root: Path, documents: list[Document], revision: str) -> tuple[DesiredState, list[ManifestError]]:
    """Validate ``documents`` one by one and against each other; return the state and every error."""
    builder = _Builder(root)
    for doc in documents:
        builder.add(doc)
    builder.check_references()
    builder.check_gpu_capacity()
    builder.check_api_rules()
    return builder.build(revision), builder.errors
