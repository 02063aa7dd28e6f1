"""Models through azureml-core: a new version only when the files' content digest is new."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from controller.backends.azureml.tags import CONTENT_TAG, ownership_tags, split_ownership, user_tags
from controller.backends.azureml.v1.sdk import quiet, register_model
from controller.backends.azureml.v1.sessions import V1Session
from controller.backends.base import ApplyContext
from controller.structs.logformats import event_logger
from controller.structs.manifests import Kind, ModelManifest
from controller.structs.plans import Change
from controller.structs.states import (
    MANAGED_BY_TAG,
    SOURCE_TAG,
    ActualResource,
    Condition,
    ConditionType,
    DesiredResource,
    ResourceId,
)

log = event_logger(__name__)


def model_source(resource: DesiredResource, root: str) -> Path:
    """The folder to register: the model's folder, or the one folder it holds.

    Azure keeps the registered folder's name under AZUREML_MODEL_DIR; amlops (like the local
    backend) puts a folder's contents there. A folder holding one folder registers that one,
    so ``tf-dnn-mnist/model/...`` is ``$AZUREML_MODEL_DIR/model/...`` on every backend.
    """
    m = resource.manifest
    assert isinstance(m, ModelManifest)
    source = (Path(root) / resource.files.get("path", m.spec.path)).resolve()
    children = [c for c in source.iterdir() if not c.name.startswith(".")] if source.is_dir() else []
    if len(children) == 1 and children[0].is_dir():
        source = children[0]
    return source


class ModelHandler:
    """Model on v1."""

    kind = Kind.MODEL
    replace_fields: frozenset[str] = frozenset()

    def __init__(self, session: V1Session) -> None:
        self.session = session

    def read(self) -> Iterable[ActualResource]:
        """One list call: the latest version of every model this controller registered."""
        from azureml.core import Model

        s = self.session
        ws = s.ws
        models = s.call("list models", lambda: Model.list(ws, tags=[[MANAGED_BY_TAG, s.controller_name]], latest=True))
        return [_observe(m) for m in models]

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Register the model's files, unless a version with the same content exists."""
        from azureml.core import Model

        m = resource.manifest
        assert isinstance(m, ModelManifest)
        s = self.session
        ws = s.ws
        content = resource.content_digests.get("path") or resource.digest
        existing = s.call(f"find model {m.name}", lambda: Model.list(ws, name=m.name, tags=[[CONTENT_TAG, content]]))
        # A version is reused only from this source's inventory (v1 models cannot be re-tagged in place).
        existing = [e for e in existing if not ctx.source or (e.tags or {}).get(SOURCE_TAG, "") == ctx.source]
        if existing:
            log.info("model.unchanged", name=m.name, version=existing[0].version)
            return
        source = model_source(resource, ctx.root)
        tags = {**m.spec.tags, **ownership_tags(resource, ctx), CONTENT_TAG: content}
        ctx.progress(f"uploading model {m.name}", None)
        with quiet():
            model = s.call(f"register model {m.name}", lambda: register_model(
                ws, source, m.name, tags=tags, description=m.spec.description,
                model_framework=m.spec.framework, model_framework_version=m.spec.frameworkVersion))
        log.info("model.registered", name=m.name, version=model.version)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """Register a new version when the content changed (models are versioned, never changed)."""
        self.create(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Only the versions this controller registered: a version registered by hand stays."""
        from azureml.core import Model

        s = self.session
        ws = s.ws
        owned = s.call(f"list model {id.name}", lambda: Model.list(ws, name=id.name, tags=[[MANAGED_BY_TAG, s.controller_name]]))
        # ... and of those, only the versions this source registered (another source's stay).
        owned = [m for m in owned if not ctx.source or (m.tags or {}).get(SOURCE_TAG, "") == ctx.source]
        for model in owned:
            s.call(f"delete model {model.id}", model.delete)


def _observe(m: Any) -> ActualResource:
    own, spec = split_ownership(m.tags)
    spec.update(framework=m.model_framework if m.model_framework != "Custom" else spec.get("framework"),
                frameworkVersion=m.model_framework_version, description=m.description, tags=user_tags(m.tags))
    return ActualResource(ResourceId(Kind.MODEL, m.name), spec, own,
                          (Condition(ConditionType.READY, True, "Registered"),),
                          {"version": m.version, "id": m.id, "contentDigest": (m.tags or {}).get(CONTENT_TAG)})
