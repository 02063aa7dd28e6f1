"""Ownership tags on what amlops creates in Azure ML, and reading them back (both API generations).

Besides the tags every backend records (managed-by, source, manifest path, revision, digest), Azure ML
records keep the last-applied spec as JSON (``amlops.dev/spec``) so ``read`` reports specs in the
manifest's field names, and models keep their content digest (``amlops.dev/content``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from controller.backends.base import ApplyContext
from controller.structs.states import OWNERSHIP_TAGS, DesiredResource
from controller.structs.states import ownership_tags as common_tags

SPEC_TAG: Final = "amlops.dev/spec"
CONTENT_TAG: Final = "amlops.dev/content"
OWNERSHIP_KEYS: Final = (*OWNERSHIP_TAGS, CONTENT_TAG)


def spec_json(resource: DesiredResource) -> str:
    """The resource's full spec (defaults included) as compact JSON."""
    return json.dumps(resource.manifest.spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def ownership_tags(resource: DesiredResource, ctx: ApplyContext) -> dict[str, str]:
    """The tags amlops puts on a record it creates: every backend's (source included) and the last-applied spec."""
    return {**common_tags(ctx.controller_name, ctx.source, ctx.revision, resource), SPEC_TAG: spec_json(resource)}


def split_ownership(tags: Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, Any]]:
    """``(ownership tags, last-applied spec)`` from a record's tags."""
    tags = dict(tags or {})
    own = {k: str(v) for k, v in tags.items() if k in OWNERSHIP_KEYS}
    try:
        spec = json.loads(tags.get(SPEC_TAG) or "{}")
    except ValueError:
        spec = {}
    return own, spec if isinstance(spec, dict) else {}


def user_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """The tags a user set (not amlops's own)."""
    return {k: str(v) for k, v in (tags or {}).items() if not k.startswith("amlops.dev/")}
