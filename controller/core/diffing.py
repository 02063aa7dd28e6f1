"""Diffing: what the user set in a manifest against what a backend reports. Pure functions, no I/O.

Only what the manifest says is compared. A field the user left out is the backend's business
(Azure fills in defaults), so reporting it would be Argo CD's false *OutOfSync*. Values are
normalised before comparing (``2`` vs ``2.0``, base-image aliases, ``"model"`` vs
``{name: model}``), following Terraform's ``objchange`` habit of comparing meaning, not spelling.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel

from controller.structs.manifests import canonical_base_image
from controller.structs.plans import FieldDiff

_MISSING: Final = object()


# --- what the user set ------------------------------------------------------------------------


def user_set(value: Any) -> Any:
    """Plain data holding only what the user wrote: pydantic fields in ``model_fields_set``, recursively.

    Free-form mappings and lists the user wrote are kept whole (every key is the user's).
    """
    if isinstance(value, BaseModel):
        return {name: user_set(getattr(value, name)) for name in sorted(value.model_fields_set)}
    if isinstance(value, Mapping):
        return {str(k): user_set(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [user_set(v) for v in value]
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), str):  # enums
        return value.value
    return value


def _field_default(model: type[BaseModel] | None, name: str) -> Any:
    if model is None or name not in model.model_fields:
        return _MISSING
    info = model.model_fields[name]
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    if info.is_required():
        return _MISSING
    return info.default


# --- normalising ------------------------------------------------------------------------------


def _normalise(path: tuple[str, ...], value: Any) -> Any:
    """One value in comparable form: numbers as floats, image aliases resolved, model refs as dicts."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if path and path[-1] == "baseImage" and isinstance(value, str):
        return canonical_base_image(value)
    if len(path) >= 1 and path[-1] == "models" and isinstance(value, list):
        return [model_ref(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _normalise((*path, str(k)), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(path, v) for v in value]
    if isinstance(value, str):
        return value.strip()
    return value


def model_ref(value: Any) -> Any:
    """A model reference in comparable form: ``"name:3"`` and ``{name, version: 3}`` alike."""
    if isinstance(value, str):
        name, sep, version = value.partition(":")
        return {"name": name.strip(), "version": float(version)} if sep and version.isdigit() else {"name": name.strip()}
    if isinstance(value, Mapping):
        return {str(k): _normalise((str(k),), v) for k, v in value.items() if v is not None}
    return value


def _equal(path: tuple[str, ...], desired: Any, actual: Any) -> bool:
    if desired == actual:  # equal values normalise alike: most fields of a no-op plan stop here
        return True
    a, b = _normalise(path, desired), _normalise(path, actual)
    if path and path[-1] == "models" and isinstance(a, list) and isinstance(b, list):
        # A model the user did not pin matches whatever version the backend resolved.
        return len(a) == len(b) and all(
            isinstance(x, dict) and isinstance(y, dict) and all(y.get(k) == v for k, v in x.items())
            for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


# --- diffing ----------------------------------------------------------------------------------


def diff_spec(
    desired: BaseModel,
    actual: Mapping[str, Any],
    replace_fields: frozenset[str] = frozenset(),
) -> tuple[FieldDiff, ...]:
    """Field diffs between the fields the user set in ``desired`` and the backend's ``actual`` spec.

    Nested models are compared field by field (``spec.resources.cpu``); free-form mappings key by
    key; lists as a whole. A field missing from ``actual`` is a difference only when the user's
    value is not the default the backend would have applied.
    """
    diffs: list[FieldDiff] = []
    _diff_model(desired, actual, ("spec",), type(desired), replace_fields, diffs)
    return tuple(diffs)


def _forces(path: tuple[str, ...], replace_fields: frozenset[str]) -> bool:
    dotted = ".".join(path[1:])  # relative to spec
    return any(dotted == f or dotted.startswith(f + ".") or f == "spec." + dotted for f in replace_fields)


def _diff_model(
    desired: BaseModel,
    actual: Mapping[str, Any],
    path: tuple[str, ...],
    model: type[BaseModel] | None,
    replace_fields: frozenset[str],
    out: list[FieldDiff],
) -> None:
    for name in sorted(desired.model_fields_set):
        value = getattr(desired, name)
        here = (*path, name)
        observed = actual.get(name, _MISSING) if isinstance(actual, Mapping) else _MISSING
        if observed is _MISSING:
            default = _field_default(model, name)
            if default is not _MISSING and _equal(here, user_set(default), user_set(value)):
                continue
            out.append(FieldDiff(".".join(here), None, user_set(value), _forces(here, replace_fields)))
            continue
        if isinstance(value, BaseModel) and isinstance(observed, Mapping):
            _diff_model(value, observed, here, type(value), replace_fields, out)
            continue
        wanted = user_set(value)
        if _model_list(value) and _same_models(value, observed, here):
            continue  # a list of models (rollout steps) equal field by field, defaults included
        if isinstance(wanted, dict) and isinstance(observed, Mapping) and here[-1] != "models":
            _diff_mapping(wanted, observed, here, replace_fields, out)
            continue
        if not _equal(here, wanted, observed):
            out.append(FieldDiff(".".join(here), _plain(observed), wanted, _forces(here, replace_fields)))


def _model_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, BaseModel) for v in value)


def _same_models(desired: list[BaseModel], observed: Any, path: tuple[str, ...]) -> bool:
    """Whether an observed list matches a list of models, each key either set alike or left at its default."""
    if not isinstance(observed, list) or len(observed) != len(desired):
        return False
    for wanted, seen in zip(desired, observed, strict=True):
        if not isinstance(seen, Mapping):
            return False
        nested: list[FieldDiff] = []
        _diff_model(wanted, seen, path, type(wanted), frozenset(), nested)
        if nested:
            return False
        for key, value in seen.items():
            if key in wanted.model_fields_set:
                continue
            default = _field_default(type(wanted), str(key))
            if default is _MISSING or not _equal((*path, str(key)), user_set(default), value):
                return False
    return True


def _diff_mapping(
    wanted: Mapping[str, Any],
    observed: Mapping[str, Any],
    path: tuple[str, ...],
    replace_fields: frozenset[str],
    out: list[FieldDiff],
) -> None:
    for key in sorted(set(wanted) | {str(k) for k in observed}):
        here = (*path, key)
        a = wanted.get(key, _MISSING)
        b = observed.get(key, _MISSING)
        if a is _MISSING or b is _MISSING or not _equal(here, a, b):
            out.append(
                FieldDiff(
                    ".".join(here),
                    None if b is _MISSING else _plain(b),
                    None if a is _MISSING else a,
                    _forces(here, replace_fields),
                )
            )


def _plain(value: Any) -> Any:
    """JSON-friendly copy of an observed value (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))
