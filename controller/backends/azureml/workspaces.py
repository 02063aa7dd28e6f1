"""The Workspace manifest as both API generations read it: the ARM coordinates it must name, and
the workspace as actual state (amlops never creates nor deletes one: it only checks that it answers)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from controller.structs.errors import PermanentError
from controller.structs.manifests import Kind, WorkspaceManifest
from controller.structs.states import (
    DIGEST_TAG,
    MANAGED_BY_TAG,
    ActualResource,
    Condition,
    ConditionType,
    ResourceId,
)


def require_coordinates(workspace: WorkspaceManifest) -> None:
    """Refuse a Workspace manifest that does not say where its workspace is."""
    spec = workspace.spec
    if spec.subscriptionId is None or spec.resourceGroup is None:
        raise PermanentError("the azureml backend needs subscriptionId and resourceGroup", reason="InvalidWorkspace")


def canonical_digest(manifest: WorkspaceManifest) -> str:
    """A workspace's digest, by the same formula as ``sources.validating`` for a resource without files."""
    text = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(text).hexdigest()


def observed_workspace(manifest: WorkspaceManifest, controller_name: str, details: dict[str, Any]) -> ActualResource:
    """The workspace as ``read`` reports it: its manifest's spec, ready, with what the SDK found (``details``)."""
    return ActualResource(ResourceId(Kind.WORKSPACE, manifest.metadata.name), manifest.spec.model_dump(mode="json"),
                          {MANAGED_BY_TAG: controller_name, DIGEST_TAG: canonical_digest(manifest)},
                          (Condition(ConditionType.READY, True, "Succeeded"),), details)
