"""JSON Schemas of the manifest kinds, generated from the pydantic models (editors validate as you type)."""

from __future__ import annotations

import types
import typing
from typing import Any, Final

from pydantic import BaseModel

from controller.structs.manifests import API_VERSION, MANIFEST_TYPES, Kind


def schema_file_name(kind: Kind) -> str:
    """File name of a kind's schema under ``schemas/``: ``webservice.json``."""
    return f"{kind.value.lower()}.json"


ANY_KIND_SCHEMA: Final = "amlops.json"
_DRAFT: Final = "https://json-schema.org/draft/2020-12/schema"


def manifest_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema per kind, keyed by file name, and ``amlops.json``, which picks the kind's by ``kind``."""
    schemas: dict[str, dict[str, Any]] = {}
    for kind, model in MANIFEST_TYPES.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = _DRAFT
        schema["$id"] = f"https://amlops.dev/schemas/{API_VERSION}/{schema_file_name(kind)}"
        schema["title"] = f"amlops {kind.value}"
        schemas[schema_file_name(kind)] = schema
    schemas[ANY_KIND_SCHEMA] = any_kind_schema()
    return schemas


def any_kind_schema() -> dict[str, Any]:
    """One schema for every manifest (for an editor's ``**/manifests/**/*.yaml`` glob, multi-document files too).

    ``kind`` selects the kind's schema with ``if``/``then``, so an error is reported against that
    kind alone rather than as "matches none of five" (what a bare ``oneOf`` gives).
    """
    definitions: dict[str, Any] = {}
    branches = []
    for kind, model in MANIFEST_TYPES.items():
        schema = model.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            if definitions.setdefault(name, definition) != definition:
                raise ValueError(f"two kinds define {name} differently")
        definitions[model.__name__] = schema
        branches.append({"if": {"properties": {"kind": {"const": kind.value}}, "required": ["kind"]},
                         "then": {"$ref": f"#/$defs/{model.__name__}"}})
    return {
        "$schema": _DRAFT,
        "$id": f"https://amlops.dev/schemas/{API_VERSION}/{ANY_KIND_SCHEMA}",
        "title": "amlops manifest (any kind)",
        "type": "object",
        "required": ["apiVersion", "kind"],
        "properties": {"apiVersion": {"const": API_VERSION}, "kind": {"enum": [k.value for k in MANIFEST_TYPES]}},
        "allOf": branches,
        "$defs": dict(sorted(definitions.items())),
    }


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is dict:
        return "map"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if annotation is type(None):
        return "null"
    return str(getattr(annotation, "__name__", annotation))


def nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``Probe | None`` or ``list[ModelRef]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = nested_model(arg)
        if found is not None:
            return found
    return None


def _field_rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        if info.is_required():
            default = "required"
        elif info.default_factory is not None:
            default = ""
        else:
            value = info.default
            default = "" if value is None else f"`{getattr(value, 'value', value)}`"
        rows.append(f"| `{prefix}{name}` | {_type_name(info.annotation)} | {default} |")
        nested = nested_model(info.annotation)
        if nested is not None:
            many = typing.get_origin(info.annotation) is list
            rows.extend(_field_rows(nested, f"{prefix}{name}{'[]' if many else ''}."))
    return rows


def reference_markdown() -> str:
    """The manifest reference for the README: one table of fields per kind, from the models."""
    parts = []
    for kind, model in MANIFEST_TYPES.items():
        spec = nested_model(model.model_fields["spec"].annotation)
        assert spec is not None
        doc = " ".join((spec.__doc__ or "").split())
        table = "\n".join(["| field | type | default |", "|---|---|---|", *_field_rows(spec, "spec.")])
        parts.append(f"#### `{kind.value}`\n\n{doc}\n\n{table}\n")
    return "\n".join(parts)
