"""JSON Schemas of the manifest kinds, generated from the pydantic models (editors validate as you type)."""

from __future__ import annotations

from typing import Any

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
