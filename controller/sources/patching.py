"""Patching one document while keeping the file and line of every field: JSON merge patch and JSON patch.

``LocatedDocument`` is a document being changed; each field keeps the location that last set
it, so an error found after patching points at the patch (or the base) that wrote the field.
``merge_patch`` follows RFC 7386 (null removes, mappings merge, anything else replaces);
``json_patch`` follows RFC 6902 (add, remove, replace, move, copy, test; all or nothing).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Final

from controller.sources.documents import Document, FieldPath

JSON_PATCH_OPS: Final = ("add", "remove", "replace", "move", "copy", "test")
# Identity fields of a merge patch: they say which resource it patches, they never change it.
_IDENTITY: Final = (("apiVersion",), ("kind",), ("metadata", "name"))


class PatchFailed(Exception):
    """A patch operation that cannot be applied; ``at`` is its location in the patch."""

    def __init__(self, message: str, at: FieldPath = ()) -> None:
        super().__init__(message)
        self.message = message
        self.at = at


@dataclass
class LocatedDocument:
    """One resource document while it is rendered: its data, and the file and line of every field."""

    file: str
    line: int
    data: Any
    lines: dict[FieldPath, int]
    files: dict[FieldPath, str] = field(default_factory=dict)
    original_name: str | None = None

    @classmethod
    def of(cls, doc: Document) -> LocatedDocument:
        name = name_of(doc.data)
        return cls(doc.file, doc.line, copy.deepcopy(doc.data), dict(doc.field_lines), dict(doc.field_files), name)

    def document(self) -> Document:
        return Document(self.file, self.line, self.data, self.lines, self.files)

    @property
    def kind(self) -> str | None:
        kind = self.data.get("kind") if isinstance(self.data, dict) else None
        return kind if isinstance(kind, str) else None

    @property
    def name(self) -> str | None:
        return name_of(self.data)

    def forget(self, path: FieldPath) -> None:
        """Drop the locations of ``path`` and everything under it."""
        size = len(path)
        for key in [k for k in self.lines if k[:size] == path]:
            del self.lines[key]
            self.files.pop(key, None)

    def locate(self, path: FieldPath, file: str, line: int) -> None:
        """Say that ``file:line`` set ``path`` (and everything under it that has no line of its own)."""
        self.lines[path] = line
        self.files[path] = file

    def graft(self, path: FieldPath, source: Document, source_path: FieldPath, line: int | None = None) -> None:
        """Take the locations under ``source_path`` of a patch document as those under ``path``."""
        self.forget(path)
        self.locate(path, source.file, line or source.field_lines.get(source_path, source.line))
        size = len(source_path)
        for key, at in source.field_lines.items():
            if key[:size] == source_path and len(key) > size:
                moved = (*path, *key[size:])
                self.lines[moved] = at
                self.files[moved] = source.field_files.get(key, source.file)

    def shift(self, path: FieldPath, start: int, delta: int) -> None:
        """Renumber locations of the list at ``path`` from index ``start`` on by ``delta`` (an insert or a removal)."""
        size = len(path)
        moved: list[tuple[FieldPath, FieldPath]] = []
        for key in self.lines:
            if len(key) > size and key[:size] == path:
                index = key[size]
                if isinstance(index, int) and index >= start:
                    moved.append((key, (*path, index + delta, *key[size + 1:])))
        lines = {new: self.lines.pop(old) for old, new in moved}
        files = {new: self.files.pop(old) for old, new in moved if old in self.files}
        self.lines.update(lines)
        self.files.update(files)


def name_of(data: Any) -> str | None:
    meta = data.get("metadata") if isinstance(data, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) else None



def merge_patch(resource: LocatedDocument, patch: Document, path: FieldPath, changes: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch, keeping locations: null removes a field, a mapping merges, anything else replaces."""
    target = _get(resource.data, path)
    if not isinstance(target, dict):
        raise PatchFailed(f"{_pointer_text(path) or 'the document'} is not a mapping", path)
    for key, value in changes.items():
        child = (*path, key)
        if child in _IDENTITY:
            continue
        if value is None:
            target.pop(key, None)
            resource.forget(child)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(resource, patch, child, value)
        else:
            target[key] = _strip_nulls(copy.deepcopy(value))
            resource.graft(child, patch, child)


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    return value


def _get(data: Any, path: FieldPath) -> Any:
    for part in path:
        data = data[part]
    return data


def _pointer_text(path: FieldPath) -> str:
    return "".join(f"/{p}" for p in path)


def _parse_pointer(text: Any, at: FieldPath) -> list[str]:
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise PatchFailed(f"path must be a JSON pointer such as /spec/replicas (got {text!r})", at)
    return [p.replace("~1", "/").replace("~0", "~") for p in text.split("/")[1:]] if text else []


def _resolve(data: Any, parts: list[str], at: FieldPath, *, for_add: bool = False) -> tuple[Any, str | int, FieldPath]:
    """The container holding the pointer's last part, that part (an index for lists), and its field path."""
    if not parts:
        raise PatchFailed("cannot replace the whole document; patch its fields", at)
    container = data
    path: list[str | int] = []
    for part in parts[:-1]:
        key = _step(container, part, at, exists=True)
        container = container[key]
        path.append(key)
    last = parts[-1]
    if isinstance(container, list):
        if for_add and last == "-":
            return container, len(container), tuple(path)
        index = _index(last, at)
        limit = len(container) + (1 if for_add else 0)
        if index >= limit:
            raise PatchFailed(f"/{'/'.join(parts)}: index {index} is out of range (the list has {len(container)} items)", at)
        return container, index, tuple(path)
    if isinstance(container, dict):
        if not for_add and last not in container:
            raise PatchFailed(f"/{'/'.join(parts)} does not exist", at)
        return container, last, tuple(path)
    raise PatchFailed(f"/{'/'.join(parts[:-1])} is not a mapping or a list", at)


def _step(container: Any, part: str, at: FieldPath, exists: bool) -> str | int:
    if isinstance(container, list):
        index = _index(part, at)
        if index >= len(container):
            raise PatchFailed(f"index {index} is out of range (the list has {len(container)} items)", at)
        return index
    if isinstance(container, dict) and part in container:
        return part
    raise PatchFailed(f"{part!r} does not exist", at)


def _index(part: str, at: FieldPath) -> int:
    if not part.isdigit() or (len(part) > 1 and part.startswith("0")):
        raise PatchFailed(f"{part!r} is not a list index", at)
    return int(part)


def json_patch(resource: LocatedDocument, patch: Document) -> None:
    """RFC 6902 JSON patch: all operations or none (a failing operation leaves the resource as it was)."""
    trial = LocatedDocument(resource.file, resource.line, copy.deepcopy(resource.data), dict(resource.lines), dict(resource.files), resource.original_name)
    for number, op in enumerate(patch.data):
        at: FieldPath = (number,)
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise PatchFailed("each operation must be a mapping with op and path", at)
        name = op["op"]
        if name not in JSON_PATCH_OPS:
            raise PatchFailed(f"op must be one of {', '.join(JSON_PATCH_OPS)} (got {name!r})", (number, "op"))
        parts = _parse_pointer(op.get("path"), (number, "path"))
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchFailed(f"{name} needs a value", at)
        if name == "test":
            container, key, _ = _resolve(trial.data, parts, (number, "path"))
            if container[key] != op["value"]:
                raise PatchFailed(f"test failed: {op['path']} is {container[key]!r}, not {op['value']!r}", (number, "value"))
            continue
        if name in ("move", "copy"):
            source_parts = _parse_pointer(op.get("from"), (number, "from"))
            holder, source_key, source_path = _resolve(trial.data, source_parts, (number, "from"))
            value = copy.deepcopy(holder[source_key])
            moved = {k[len(source_path) + 1:]: (v, trial.files.get(k, trial.file)) for k, v in trial.lines.items()
                     if k[:len(source_path) + 1] == (*source_path, source_key)}
            if name == "move":
                _remove(trial, holder, source_key, source_path)
            _relocate(trial, _add(trial, parts, value, (number, "path")), moved)
            continue
        if name == "remove":
            container, key, path = _resolve(trial.data, parts, (number, "path"))
            _remove(trial, container, key, path)
            continue
        if name == "replace":
            container, key, path = _resolve(trial.data, parts, (number, "path"))
            container[key] = copy.deepcopy(op["value"])
            trial.graft((*path, key), patch, (number, "value"))
            continue
        trial.graft(_add(trial, parts, copy.deepcopy(op["value"]), (number, "path")), patch, (number, "value"))
    resource.data, resource.lines, resource.files = trial.data, trial.lines, trial.files


def _relocate(resource: LocatedDocument, path: FieldPath, moved: dict[FieldPath, tuple[int, str]]) -> None:
    resource.forget(path)
    for rest, (line, file) in moved.items():
        resource.locate((*path, *rest), file, line)


def _add(resource: LocatedDocument, parts: list[str], value: Any, at: FieldPath) -> FieldPath:
    """Add ``value`` where ``parts`` points (inserting into a list); the field path it now has."""
    container, key, path = _resolve(resource.data, parts, at, for_add=True)
    if isinstance(container, list):
        assert isinstance(key, int)
        resource.shift(path, key, 1)
        container.insert(key, value)
    else:
        container[key] = value
    return (*path, key)


def _remove(resource: LocatedDocument, container: Any, key: str | int, path: FieldPath) -> None:
    del container[key]
    resource.forget((*path, key))
    if isinstance(container, list):
        assert isinstance(key, int)
        resource.shift(path, key + 1, -1)


