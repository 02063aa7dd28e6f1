"""Loading manifests from a folder tree: safe YAML parsing that keeps every field's line.

Hostile input is expected (a repo is user content): files are size-capped, must be UTF-8 text,
symlinks may not leave the repo, nesting depth and alias expansion are bounded, and every
problem becomes a ``ManifestError`` naming file, line and field, never a traceback or a hang.
Cross-resource checks live in ``validating``; this module turns files into documents.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Final

import yaml

from controller.sources.digests import HASHER, inside, walk_files
from controller.sources.documents import Document, FieldPath
from controller.sources.validating import build_desired_state
from controller.structs.errors import ManifestError, ValidationFailed
from controller.structs.states import DesiredState

MAX_FILE_BYTES: Final = 2 * 1024 * 1024
MAX_DEPTH: Final = 48
MAX_NODES_PER_FILE: Final = 200_000
MANIFEST_SUFFIXES: Final = (".yaml", ".yml")
KUSTOMIZATION_FILES: Final = ("kustomization.yaml", "kustomization.yml", "Kustomization")
"""A folder holding one of these is an overlay: rendered by ``overlays``, not walked."""
_FLOW_OPENERS = re.compile(rb"[\[{]")

try:  # libyaml is much faster; marks (lines) are the same
    _BaseLoader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _BaseLoader = yaml.SafeLoader

_RESOLVED_LIMIT: Final = 65_536  # entries; with _RESOLVED_MAX_TEXT, a few MB at most
_RESOLVED_MAX_TEXT: Final = 64  # longer scalars (free text, hostile input) are resolved every time


class _Loader(_BaseLoader):  # type: ignore[misc]
    """The safe loader with scalar tag resolution memoised.

    libyaml parses in C but asks PyYAML's Python resolver for every scalar's tag (regular
    expressions tried by first character); across a repo the same keys and values repeat
    (``apiVersion``, ``spec``, ``replicas``, ``DEFAULT_GPU_IMAGE``...), so the answer for a short
    scalar's (node kind, text, implicit) triple is remembered, up to a bounded number of entries.
    """

    _resolved: ClassVar[dict[tuple[Any, str, tuple[bool, bool]], str]] = {}

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is not yaml.ScalarNode or not isinstance(value, str) or len(value) > _RESOLVED_MAX_TEXT:
            return super().resolve(kind, value, implicit)
        key = (kind, value, implicit)
        tag = self._resolved.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(self._resolved) >= _RESOLVED_LIMIT:
                self._resolved.clear()
            self._resolved[key] = tag
        return tag


# YAML 1.2's core schema for plain scalars, as editors' YAML servers and check-jsonschema read files:
# only true/false are booleans (``yes``, ``on``, ``no`` stay strings), ``010`` is ten, ``1:30`` is text.
_BOOL_TAG, _INT_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _INT_TAG, _FLOAT_TAG)]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_INT_TAG, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"),
)

class _TooLarge(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _to_python(node: yaml.Node, lines: dict[FieldPath, int], path: FieldPath, budget: list[int]) -> Any:
    """Convert a composed node to plain data, recording lines and bounding depth and alias expansion."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge(node.start_mark.line + 1, f"document expands to more than {MAX_NODES_PER_FILE} nodes (alias bomb?)")
    if type(node) is yaml.ScalarNode:  # most nodes: checked first, no depth bookkeeping needed
        return _scalar(node)
    if len(path) > MAX_DEPTH:
        raise _TooLarge(node.start_mark.line + 1, f"nesting deeper than {MAX_DEPTH} levels")
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _TooLarge(key_node.start_mark.line + 1, "merge keys ('<<') are not supported in manifests")
            if type(key_node) is not yaml.ScalarNode:
                raise _TooLarge(key_node.start_mark.line + 1, "mapping keys must be plain scalars")
            budget[0] -= 1
            key = _scalar(key_node)
            if key in result:
                raise _TooLarge(key_node.start_mark.line + 1, f"duplicate key {key!r}")
            child = (*path, str(key))
            lines[child] = key_node.start_mark.line + 1
            result[key] = _to_python(value_node, lines, child, budget)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            lines[child] = item.start_mark.line + 1
            items.append(_to_python(item, lines, child, budget))
        return items
    return _scalar(node)


# Resolves scalar tags (ints, floats, bools, timestamps) exactly as safe_load would.
_SCALARS: Final = yaml.SafeLoader("")
_PLAIN_INT = re.compile(r"^[-+]?(0|[1-9][0-9]*)$")
_BOOLS: Final = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _scalar(node: yaml.Node) -> Any:
    """A scalar's value; the common tags directly (most of a manifest), the rest as safe_load does."""
    tag, value = node.tag, node.value
    if tag == "tag:yaml.org,2002:str":
        return value
    if tag == "tag:yaml.org,2002:int" and _PLAIN_INT.match(value):
        return int(value)
    if tag == "tag:yaml.org,2002:int":  # YAML 1.2: 0o17, 0x1F, 007 (decimal)
        prefix = value[:2].lower()
        return int(value[2:], 8) if prefix == "0o" else int(value[2:], 16) if prefix == "0x" else int(value, 10)
    if tag == "tag:yaml.org,2002:null":
        return None
    if tag == "tag:yaml.org,2002:bool":
        return _BOOLS[value.lower()]
    return _SCALARS.construct_object(node, deep=True)


def _flow_depth_exceeded_at(raw: bytes, limit: int) -> int | None:
    """Line where flow nesting (``[`` / ``{``) first exceeds ``limit``, checked before libyaml recurses.

    Brackets inside strings count too, so this over-estimates; only absurd files are refused.
    """
    if len(_FLOW_OPENERS.findall(raw)) <= limit:
        return None
    depth = 0
    for index, byte in enumerate(raw):
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return raw[:index].count(b"\n") + 1
        elif byte in (0x5D, 0x7D):
            depth = max(0, depth - 1)
    return None


def parse_documents(display: str, raw: bytes) -> tuple[list[Document], list[ManifestError]]:
    """Parse every YAML document of one file, or explain why it cannot be parsed."""
    if b"\x00" in raw[:8192]:
        return [], [ManifestError(display, 0, "binary file, not YAML text")]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return [], [ManifestError(display, line, f"not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})")]
    deep_at = _flow_depth_exceeded_at(raw, MAX_DEPTH)
    if deep_at is not None:
        return [], [ManifestError(display, deep_at, f"nesting deeper than {MAX_DEPTH} levels")]
    documents: list[Document] = []
    try:
        for node in yaml.compose_all(text, Loader=_Loader):
            if node is None:
                continue
            lines: dict[FieldPath, int] = {}
            budget = [MAX_NODES_PER_FILE]
            data = _to_python(node, lines, (), budget)
            documents.append(Document(display, node.start_mark.line + 1, data, lines))
    except _TooLarge as exc:
        return documents, [ManifestError(display, exc.line, exc.message)]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or exc.context or "invalid YAML"
        return documents, [ManifestError(display, line, f"YAML syntax error: {problem}")]
    except yaml.YAMLError as exc:
        return documents, [ManifestError(display, 0, f"YAML error: {exc}")]
    except RecursionError:
        return documents, [ManifestError(display, 0, f"nesting deeper than {MAX_DEPTH} levels")]
    return documents, []


def discover_files(root: Path, start: Path) -> tuple[list[Path], list[ManifestError]]:
    """Manifest files under ``start`` (a folder or one file), skipping hidden folders; links must stay in ``root``."""
    errors: list[ManifestError] = []
    if start.is_file() or start.is_symlink():
        candidates: Iterator[Path] = iter([start])
    elif start.is_dir():
        candidates = walk_files(start)
    else:
        return [], [ManifestError(display_path(root, start), 0, "no such file or folder")]
    files: list[Path] = []
    for path in candidates:
        if path.suffix not in MANIFEST_SUFFIXES:
            continue
        if path.is_symlink() and not inside(root, path):
            errors.append(ManifestError(display_path(root, path), 0, "symbolic link points outside the repository; refused"))
            continue
        files.append(path)
    return files, errors


def display_path(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` in POSIX form when inside it, else as given."""
    try:
        return path.absolute().relative_to(root.absolute()).as_posix()
    except ValueError:
        return path.as_posix()


def _looks_like_manifest(data: Any) -> bool:
    return isinstance(data, dict) and ("apiVersion" in data or "kind" in data)


class DocumentCache:
    """Parsed documents per file, reused while its size, mtime and inode are unchanged.

    A controller re-loads the same tree every interval; with this, an unchanged file is read and
    parsed once, and each later pass costs one ``stat`` per file. ``reads`` counts real reads.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[int, int, int], list[Document], list[ManifestError]]] = {}
        self.reads = 0

    def load(self, path: Path, display: str) -> tuple[list[Document], list[ManifestError]]:
        """The documents of ``path`` (read and parsed only if the file changed since last time)."""
        try:
            st = path.stat()
        except OSError as exc:
            return [], [ManifestError(display, 0, f"cannot read: {exc.strerror}")]
        if st.st_size > MAX_FILE_BYTES:
            return [], [ManifestError(display, 0, f"file is {st.st_size} bytes; manifests are limited to {MAX_FILE_BYTES}")]
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        cache_key = f"{path}\0{display}"
        cached = self._entries.get(cache_key)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        try:
            raw = path.read_bytes()
        except OSError as exc:
            return [], [ManifestError(display, 0, f"cannot read: {exc.strerror}")]
        self.reads += 1
        found, problems = parse_documents(display, raw)
        self._entries[cache_key] = (key, found, problems)
        return found, problems

    def retain(self, keep: set[str]) -> None:
        """Forget files not in ``keep`` once the cache holds far more than one tree's worth."""
        if len(self._entries) > 2 * len(keep) + 1000:
            self._entries = {k: v for k, v in self._entries.items() if k in keep}


DOCUMENTS: Final = DocumentCache()


def read_documents(root: Path, start: Path, cache: DocumentCache = DOCUMENTS) -> tuple[list[Document], list[ManifestError]]:
    """Every document of every manifest file under ``start``, with the errors met on the way.

    A YAML file none of whose documents has ``apiVersion`` or ``kind`` is not a manifest (a conda
    file beside the manifests, say) and is skipped; inside a manifest file every document counts.
    """
    files, errors = discover_files(root, start)
    documents: list[Document] = []
    seen: set[str] = set()
    # An overlay's folder is rendered, never walked: one error says so, its files are not read.
    overlays = {path.parent for path in files if path.name in KUSTOMIZATION_FILES}
    for path in files:
        display = display_path(root, path)
        seen.add(f"{path}\0{display}")
        if path.name in KUSTOMIZATION_FILES:
            errors.append(ManifestError(display, 1, "a kustomization inside a folder of plain manifests: point amlops at "
                                        "the overlay's folder itself (e.g. --path prod), which renders it"))
        if overlays and any(parent in overlays for parent in path.parents):
            continue
        found, problems = cache.load(path, display)
        if not problems and found and not any(_looks_like_manifest(d.data) for d in found):
            continue  # a conda file or other YAML data living beside the manifests
        documents.extend(found)
        errors.extend(problems)
    cache.retain(seen)
    return documents, errors


def desired_documents(root: Path, start: Path, cache: DocumentCache = DOCUMENTS) -> tuple[list[Document], list[ManifestError]]:
    """The documents of ``start``: a kustomization folder rendered, any other folder or file read as it is."""
    if start.is_dir() and any((start / name).is_file() for name in KUSTOMIZATION_FILES):
        from controller.sources.overlays import render_overlay

        return render_overlay(root, start, cache)
    return read_documents(root, start, cache)


def load_desired_state(root: str | Path, path: str = ".", revision: str = "working-tree", *, reuse: bool = False) -> DesiredState:
    """Load, validate and digest every manifest under ``root/path``; raise ``ValidationFailed`` with all errors.

    Relative paths inside manifests (model files, entry scripts, conda files) resolve against the
    folder of the manifest that names them and must stay inside ``root``.

    ``reuse``: the caller vouches that ``revision`` names the content of ``root/path`` (a Git
    commit, a folder's content hash), so a state loaded before for the same revision is returned
    as long as the files its manifests point at are unchanged (checked by stat-cached hashes).
    A controller polling an unchanged repo then validates nothing again.
    """
    root_path = Path(root).absolute()
    key = (str(root_path), path, revision)
    if reuse:
        known = _STATES.get(key)
        if known is not None and _contents_unchanged(known):
            return known
    # Loading allocates hundreds of thousands of long-lived, acyclic objects; the cyclic collector
    # would rescan them over and over (a third of the time at 10,000 resources), so it waits.
    collecting = gc.isenabled()
    gc.disable()
    try:
        documents, errors = desired_documents(root_path, root_path / path)
        state, semantic_errors = build_desired_state(root_path, documents, revision)
    finally:
        if collecting:
            gc.enable()
    errors.extend(semantic_errors)
    if errors:
        raise ValidationFailed(errors)
    if reuse:
        if len(_STATES) >= 4:
            _STATES.pop(next(iter(_STATES)))
        _STATES[key] = state
    return state


_STATES: dict[tuple[str, str, str], DesiredState] = {}


def _contents_unchanged(state: DesiredState) -> bool:
    root = Path(state.root)
    digests: dict[str, str] = {}  # many services share one source folder: walk each once
    try:
        for resource in state.resources.values():
            for field, relative in resource.files.items():
                if relative not in digests:
                    digests[relative] = HASHER.tree(root / relative)
                if digests[relative] != resource.content_digests.get(field):
                    return False
    except OSError:
        return False
    return True
