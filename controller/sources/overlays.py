"""Overlays: one base of manifests, rendered per environment by a subset of Kustomize's ``kustomization.yaml``.

A folder holding a ``kustomization.yaml`` is rendered, not walked: its ``resources`` (manifest
files, plain folders, or folders with a kustomization of their own, such as ``../base``) are
loaded, its ``patches`` applied (a mapping is a JSON merge patch, RFC 7386; a list is a JSON
patch, RFC 6902), every name gets ``namePrefix`` / ``nameSuffix`` (and every reference to a
renamed resource follows: a service's cluster, environment and models, any resource's
workspace), and ``commonLabels`` join every resource's labels.

Every field remembers the file and line that set it, so a validation error in a rendered
resource points at the base's manifest, the patch, or the kustomization, whichever wrote it.
Everything read stays inside the repository; remote bases are refused.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from controller.sources.digests import inside
from controller.sources.documents import Document
from controller.sources.loading import (
    DOCUMENTS,
    KUSTOMIZATION_FILES,
    DocumentCache,
    display_path,
    parse_documents,
    read_documents,
)
from controller.sources.patching import LocatedDocument, PatchFailed, json_patch, merge_patch, name_of
from controller.structs.errors import ManifestError
from controller.structs.manifests import Kind

SUPPORTED_FIELDS: Final = ("resources", "patches", "namePrefix", "nameSuffix", "commonLabels")
_IGNORED_FIELDS: Final = ("apiVersion", "kind", "metadata")
_KUSTOMIZE_KINDS: Final = ("Kustomization",)
_PATCH_FIELDS: Final = ("path", "patch", "target")
_TARGET_FIELDS: Final = ("kind", "name")

# References between resources, per kind: (field path, referenced kind). ``models`` is a list.
_REFERENCES: Final[dict[str, tuple[tuple[str, Kind], ...]]] = {
    Kind.AKS_CLUSTER.value: (("workspace", Kind.WORKSPACE),),
    Kind.ENVIRONMENT.value: (("workspace", Kind.WORKSPACE),),
    Kind.MODEL.value: (("workspace", Kind.WORKSPACE),),
    Kind.WEBSERVICE.value: (
        ("workspace", Kind.WORKSPACE),
        ("cluster", Kind.AKS_CLUSTER),
        ("environment", Kind.ENVIRONMENT),
    ),
}


def kustomization_file(folder: Path) -> Path | None:
    """The kustomization file of ``folder``, if it has one."""
    for name in KUSTOMIZATION_FILES:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


class _Renderer:
    """Renders one kustomization folder (and the ones it includes), collecting every error."""

    def __init__(self, root: Path, cache: DocumentCache) -> None:
        self.root = root.absolute()
        self.cache = cache
        self.errors: list[ManifestError] = []
        self.folders: list[Path] = []

    def error(self, file: str, line: int, message: str, field_name: str | None = None) -> None:
        self.errors.append(ManifestError(file, line, message, "Kustomization" if field_name else None, None, field_name))

    def render(self, folder: Path, stack: tuple[Path, ...] = ()) -> list[LocatedDocument]:
        """The resources of the kustomization in ``folder``, rendered."""
        folder = folder.absolute()
        self.folders.append(folder)
        path = kustomization_file(folder)
        if path is None:
            return [LocatedDocument.of(d) for d in self._plain_folder(folder)]
        display = display_path(self.root, path)
        found, problems = self.cache.load(path, display)
        self.errors.extend(problems)
        if problems:
            return []
        if len(found) != 1 or not isinstance(found[0].data, dict):
            self.error(display, found[0].line if found else 0, "a kustomization must be one YAML mapping")
            return []
        spec = found[0]
        if not self._check_fields(spec):
            return []
        resources = self._resources(folder, spec, (*stack, folder))
        self._patches(folder, spec, resources)
        self._rename(spec, resources)
        self._label(spec, resources)
        return resources

    def _at(self, spec: Document, *path: str | int) -> int:
        line = spec.line
        for size in range(len(path), 0, -1):
            if path[:size] in spec.field_lines:
                return spec.field_lines[path[:size]]
        return line

    def _check_fields(self, spec: Document) -> bool:
        ok = True
        data = spec.data
        for key in data:
            if key not in SUPPORTED_FIELDS and key not in _IGNORED_FIELDS:
                self.error(spec.file, self._at(spec, str(key)),
                           f"Kustomize field {key!r} is not supported by amlops (supported: {', '.join(SUPPORTED_FIELDS)})", str(key))
                ok = False
        kind = data.get("kind")
        if kind is not None and kind not in _KUSTOMIZE_KINDS:
            self.error(spec.file, self._at(spec, "kind"), f"must be Kustomization (got {kind!r})", "kind")
            ok = False
        expected: dict[str, tuple[type, str]] = {
            "resources": (list, "a list of files and folders"),
            "patches": (list, "a list of patches"),
            "namePrefix": (str, "a string"),
            "nameSuffix": (str, "a string"),
            "commonLabels": (dict, "a mapping of label to value"),
        }
        for key, (wanted, words) in expected.items():
            if key in data and not isinstance(data[key], wanted):
                self.error(spec.file, self._at(spec, key), f"must be {words}", key)
                ok = False
        labels = data.get("commonLabels")
        if isinstance(labels, dict):
            for label, value in labels.items():
                if not isinstance(value, str):
                    self.error(spec.file, self._at(spec, "commonLabels", str(label)), f"must be a string (got {value!r}); quote it", f"commonLabels.{label}")
                    ok = False
        return ok

    def _local(self, folder: Path, spec: Document, entry: Any, where: tuple[str | int, ...]) -> Path | None:
        """``entry`` (relative to ``folder``) as a path inside the repository, or None after an error."""
        label = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in where).replace(".[", "[")
        if not isinstance(entry, str) or not entry:
            self.error(spec.file, self._at(spec, *where), f"must be a relative path (got {entry!r})", label)
            return None
        if "://" in entry or entry.startswith(("github.com/", "git@")):
            self.error(spec.file, self._at(spec, *where), f"remote bases are not supported (got {entry!r}); vendor the base into this repository", label)
            return None
        if entry.startswith("/"):
            self.error(spec.file, self._at(spec, *where), f"must be a path inside the repository, not absolute (got {entry!r})", label)
            return None
        target = Path(os.path.normpath(folder / entry))
        if not inside(self.root, target):
            self.error(spec.file, self._at(spec, *where), f"leaves the repository (got {entry!r})", label)
            return None
        if not target.exists():
            self.error(spec.file, self._at(spec, *where), f"{display_path(self.root, target.resolve())} does not exist", label)
            return None
        return target

    def _plain_folder(self, folder: Path) -> list[Document]:
        documents, errors = read_documents(self.root, folder, self.cache)
        self.errors.extend(errors)
        return documents

    def _resources(self, folder: Path, spec: Document, stack: tuple[Path, ...]) -> list[LocatedDocument]:
        resources: list[LocatedDocument] = []
        for index, entry in enumerate(spec.data.get("resources") or []):
            target = self._local(folder, spec, entry, ("resources", index))
            if target is None:
                continue
            if target.is_dir():
                if target.resolve() in {s.resolve() for s in stack}:
                    chain = " -> ".join(display_path(self.root, s) or "." for s in (*stack, target.resolve()))
                    self.error(spec.file, self._at(spec, "resources", index), f"kustomizations include each other: {chain}", f"resources[{index}]")
                    continue
                resources.extend(self.render(target, stack))
                continue
            self.folders.append(target.parent)
            documents, problems = self.cache.load(target, display_path(self.root, target))
            self.errors.extend(problems)
            resources.extend(LocatedDocument.of(d) for d in documents)
        return resources

    # -- patches ------------------------------------------------------------------------------

    def _patch_documents(self, folder: Path, spec: Document, index: int, entry: dict[str, Any]) -> list[Document]:
        """The documents of one ``patches`` entry: from its ``path`` file, or its inline ``patch`` text."""
        where = ("patches", index)
        if ("path" in entry) == ("patch" in entry):
            self.error(spec.file, self._at(spec, *where), "set exactly one of path or patch", f"patches[{index}]")
            return []
        if "path" in entry:
            target = self._local(folder, spec, entry["path"], (*where, "path"))
            if target is None:
                return []
            self.folders.append(target.parent)
            found, problems = self.cache.load(target, display_path(self.root, target))
            self.errors.extend(problems)
            return found
        text = entry["patch"]
        if not isinstance(text, str):
            self.error(spec.file, self._at(spec, *where, "patch"), "must be the patch as YAML text (use `patch: |`)", f"patches[{index}].patch")
            return []
        # Lines inside the inline text count from the kustomization's own: a block scalar (`|`)
        # starts on the line after its key, a one-line string on the key's line.
        key_line = self._at(spec, *where, "patch")
        offset = key_line if _block_scalar_at(self.root / spec.file, key_line) else key_line - 1
        found, problems = parse_documents(spec.file, text.encode())
        for problem in problems:
            self.errors.append(ManifestError(spec.file, problem.line + offset if problem.line else key_line, problem.message))
        return [Document(d.file, d.line + offset, d.data, {k: v + offset for k, v in d.field_lines.items()}) for d in found]

    def _patches(self, folder: Path, spec: Document, resources: list[LocatedDocument]) -> None:
        for index, entry in enumerate(spec.data.get("patches") or []):
            where = ("patches", index)
            if not isinstance(entry, dict):
                self.error(spec.file, self._at(spec, *where), "must be a mapping with path or patch (and target)", f"patches[{index}]")
                continue
            unknown = [k for k in entry if k not in _PATCH_FIELDS]
            if unknown:
                self.error(spec.file, self._at(spec, *where, str(unknown[0])),
                           f"unknown field {unknown[0]!r}; a patch has {', '.join(_PATCH_FIELDS)}", f"patches[{index}].{unknown[0]}")
                continue
            target = entry.get("target")
            if target is not None and not self._check_target(spec, index, target):
                continue
            for patch in self._patch_documents(folder, spec, index, entry):
                self._apply(spec, index, target, patch, resources)

    def _check_target(self, spec: Document, index: int, target: Any) -> bool:
        where = ("patches", index, "target")
        if not isinstance(target, dict) or not target:
            self.error(spec.file, self._at(spec, *where), "must be a mapping with kind and/or name", f"patches[{index}].target")
            return False
        for key, value in target.items():
            if key not in _TARGET_FIELDS:
                self.error(spec.file, self._at(spec, *where, str(key)),
                           f"target field {key!r} is not supported (supported: kind, name)", f"patches[{index}].target.{key}")
                return False
            if not isinstance(value, str):
                self.error(spec.file, self._at(spec, *where, key), f"must be a string (got {value!r})", f"patches[{index}].target.{key}")
                return False
        try:
            re.compile(target.get("name", ""))
        except re.error as exc:
            self.error(spec.file, self._at(spec, *where, "name"), f"is not a valid regular expression: {exc}", f"patches[{index}].target.name")
            return False
        return True

    def _apply(self, spec: Document, index: int, target: dict[str, str] | None, patch: Document, resources: list[LocatedDocument]) -> None:
        is_json_patch = isinstance(patch.data, list)
        if target is None:
            if is_json_patch or not isinstance(patch.data, dict) or name_of(patch.data) is None or "kind" not in patch.data:
                self.error(patch.file, patch.line,
                           "a patch without a target must be a mapping naming its resource (kind and metadata.name); "
                           "a JSON patch (a list of operations) needs a target")
                return
            target = {"kind": str(patch.data["kind"]), "name": re.escape(str(name_of(patch.data)))}
        elif not is_json_patch and not isinstance(patch.data, dict):
            self.error(patch.file, patch.line, "a patch must be a mapping (JSON merge patch) or a list of operations (JSON patch)")
            return
        chosen = [r for r in resources if _matches(target, r)]
        if not chosen:
            wanted = ", ".join(f"{k} {v}" for k, v in target.items())
            known = ", ".join(sorted(f"{r.kind}/{r.name}" for r in resources if r.kind and r.name)) or "none"
            line = self._at(spec, "patches", index, "target") if "target" in spec.data["patches"][index] else patch.line
            file = spec.file if "target" in spec.data["patches"][index] else patch.file
            self.error(file, line, f"the patch matches no resource ({wanted}); resources here: {known}")
            return
        for resource in chosen:
            try:
                if is_json_patch:
                    json_patch(resource, patch)
                else:
                    merge_patch(resource, patch, (), patch.data)
            except PatchFailed as exc:
                line = patch.field_lines.get(exc.at, patch.line)
                self.errors.append(ManifestError(patch.file, line, f"cannot patch {resource.kind} {resource.name}: {exc.message}"))

    # -- names and labels ---------------------------------------------------------------------

    def _rename(self, spec: Document, resources: list[LocatedDocument]) -> None:
        prefix = spec.data.get("namePrefix") or ""
        suffix = spec.data.get("nameSuffix") or ""
        if not prefix and not suffix:
            return
        line = self._at(spec, "namePrefix" if prefix else "nameSuffix")
        renamed: dict[tuple[str, str], str] = {}
        for resource in resources:
            name, kind = resource.name, resource.kind
            if name is None or kind is None:
                continue
            new = f"{prefix}{name}{suffix}"
            resource.data["metadata"]["name"] = new
            resource.locate(("metadata", "name"), spec.file, line)
            renamed[(kind, name)] = new
        for resource in resources:
            _rename_references(resource, lambda kind, old: renamed.get((kind.value, old)))

    def _label(self, spec: Document, resources: list[LocatedDocument]) -> None:
        labels = spec.data.get("commonLabels") or {}
        if not labels:
            return
        for resource in resources:
            meta = resource.data.get("metadata") if isinstance(resource.data, dict) else None
            if not isinstance(meta, dict):
                continue
            current = meta.setdefault("labels", {})
            if not isinstance(current, dict):
                continue  # the validator reports the bad labels field where it is
            for key, value in labels.items():
                current[key] = value
                resource.locate(("metadata", "labels", key), spec.file, self._at(spec, "commonLabels", str(key)))


def _block_scalar_at(path: Path, line: int) -> bool:
    try:
        text = path.read_text(encoding="utf-8").splitlines()[line - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return True
    value = text.split(":", 1)[1].strip() if ":" in text else ""
    return value[:1] in ("|", ">")


def _matches(target: dict[str, str], resource: LocatedDocument) -> bool:
    if "kind" in target and resource.kind != target["kind"]:
        return False
    if "name" not in target:
        return True
    names = {resource.name, resource.original_name} - {None}
    return any(re.fullmatch(target["name"], n) for n in names if n is not None)


def _rename_references(resource: LocatedDocument, renamed: Callable[[Kind, str], str | None]) -> None:
    """Point ``resource``'s references at the new names of resources that were renamed."""
    spec = resource.data.get("spec") if isinstance(resource.data, dict) else None
    kind = resource.kind
    if not isinstance(spec, dict) or kind is None:
        return
    for key, referenced in _REFERENCES.get(kind, ()):
        value = spec.get(key)
        if isinstance(value, str) and (new := renamed(referenced, value)) is not None:
            spec[key] = new
    models = spec.get("models") if kind == Kind.WEBSERVICE.value else None
    if not isinstance(models, list):
        return
    for index, ref in enumerate(models):
        if isinstance(ref, str):
            name, sep, version = ref.partition(":")
            if (new := renamed(Kind.MODEL, name)) is not None:
                models[index] = f"{new}{sep}{version}"
        elif isinstance(ref, dict) and isinstance(ref.get("name"), str) and (new := renamed(Kind.MODEL, ref["name"])) is not None:
            ref["name"] = new


def render_overlay(root: Path, folder: Path, cache: DocumentCache = DOCUMENTS) -> tuple[list[Document], list[ManifestError]]:
    """The documents a kustomization folder renders to, each field located where it was set, and every error."""
    renderer = _Renderer(root, cache)
    resources = renderer.render(folder)
    return [r.document() for r in resources], renderer.errors


def overlay_folders(root: Path, folder: Path) -> list[Path]:
    """Every folder a kustomization reads (itself, its bases, their bases), for watching and hashing."""
    renderer = _Renderer(root, DOCUMENTS)  # parsed files are reused while unchanged (one stat each)
    renderer.render(folder)
    unique: dict[Path, None] = {}
    for path in renderer.folders:
        unique.setdefault(path.resolve(), None)
    return list(unique)


def documents_yaml(documents: list[Document]) -> str:
    """Rendered documents as one multi-document YAML text, each headed by the files that wrote it."""
    import yaml

    parts = []
    for doc in documents:
        others = sorted(set(doc.field_files.values()) - {doc.file})
        source = f"# Source: {doc.file}:{doc.line}" + (f" (patched by {', '.join(others)})" if others else "")
        parts.append("---\n" + source + "\n" + yaml.safe_dump(doc.data, sort_keys=False, default_flow_style=False))
    return "".join(parts)
