"""A local model: a version in the content-addressed registry (``registries``), and its record."""

from __future__ import annotations

from typing import Any

from controller.backends.base import ApplyContext
from controller.backends.local.machines import manifest_dir
from controller.backends.local.records import RecordedKind
from controller.backends.local.registries import delete_model, register_model
from controller.structs.manifests import Kind, ModelManifest
from controller.structs.states import Condition, DesiredResource, ResourceId


class ModelHandler(RecordedKind):
    """Model on the local backend: new content is a new version; old versions stay for the services using them."""

    kind = Kind.MODEL

    def apply(self, resource: DesiredResource, ctx: ApplyContext) -> tuple[list[Condition], dict[str, Any]]:
        """Register the model's files (a version only when their content changed)."""
        manifest = resource.manifest
        assert isinstance(manifest, ModelManifest)
        machine = self.machine
        source = manifest_dir(resource, ctx) / manifest.spec.path
        mv = register_model(machine.store, machine.state_dir / "models", manifest.name, source, manifest.spec.tags)
        return [], {"version": mv.version, "sha256": mv.sha256, "path": mv.path, "createdAt": mv.created_at}

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Every version of the model and its files, then the record."""
        delete_model(self.machine.store, self.machine.state_dir / "models", id.name)
        super().delete(id, ctx)
