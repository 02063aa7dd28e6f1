"""JSON Schemas of the manifest kinds, generated from the pydantic models (editors validate as you type)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

from controller.structs.manifests import API_VERSION, MANIFEST_TYPES, Kind


def schema_file_name(kind: Kind) -> str:
    """File name of a kind's schema under ``schemas/``: ``webservice.json``."""
    return f"{kind.value.lower()}.json"


def manifest_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema per kind, keyed by file name."""
    schemas: dict[str, dict[str, Any]] = {}
    for kind, model in MANIFEST_TYPES.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://amlops.dev/schemas/{API_VERSION}/{schema_file_name(kind)}"
        schema["title"] = f"amlops {kind.value}"
        schemas[schema_file_name(kind)] = schema
    return schemas


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
