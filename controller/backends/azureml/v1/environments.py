"""Environments through azureml-core (conda/pip on a base image).

SDK v1 environments carry no tags, so ownership lives in ``AMLOPS_*`` environment variables, and
they cannot be deleted: a removed manifest leaves its environment registered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from controller.backends.azureml.tags import SPEC_TAG, ownership_tags, split_ownership
from controller.backends.azureml.v1.sessions import V1Session
from controller.backends.base import ApplyContext
from controller.structs.logformats import event_logger
from controller.structs.manifests import BASE_IMAGE_ALIASES, EnvironmentManifest, Kind, canonical_base_image
from controller.structs.plans import Change
from controller.structs.states import (
    DIGEST_TAG,
    MANAGED_BY_TAG,
    MANIFEST_PATH_TAG,
    SOURCE_TAG,
    ActualResource,
    Condition,
    ConditionType,
    DesiredResource,
    ResourceId,
)

log = event_logger(__name__)

_ENV_PREFIX: Final = "AMLOPS_"
_ENV_KEYS: Final = {MANAGED_BY_TAG: "AMLOPS_MANAGED_BY", MANIFEST_PATH_TAG: "AMLOPS_MANIFEST_PATH",
                    DIGEST_TAG: "AMLOPS_DIGEST", SPEC_TAG: "AMLOPS_SPEC", SOURCE_TAG: "AMLOPS_SOURCE"}


def pip_and_conda(resource: DesiredResource, root: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The conda specification and pip requirements an Environment manifest names (files read)."""
    import yaml

    m = resource.manifest
    assert isinstance(m, EnvironmentManifest)
    spec = m.spec
    conda: dict[str, Any] | None = spec.conda
    if spec.condaFile is not None:
        conda = yaml.safe_load((Path(root) / resource.files["condaFile"]).read_text()) or {}
    pip = list(spec.pip or [])
    if spec.pipRequirements is not None:
        pip += [line.strip() for line in (Path(root) / resource.files["pipRequirements"]).read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    return conda, pip


class EnvironmentHandler:
    """Environment on v1."""

    kind = Kind.ENVIRONMENT
    replace_fields: frozenset[str] = frozenset()

    def __init__(self, session: V1Session) -> None:
        self.session = session

    def read(self) -> Iterable[ActualResource]:
        """One list call: every environment of the workspace (latest versions)."""
        from azureml.core import Environment

        ws = self.session.ws
        envs: Mapping[str, Any] = self.session.call("list environments", lambda: Environment.list(ws))
        return [_observe(name, env) for name, env in envs.items()]

    def _environment(self, resource: DesiredResource, m: EnvironmentManifest, ctx: ApplyContext) -> Any:
        from azureml.core import Environment
        from azureml.core.conda_dependencies import CondaDependencies

        spec = m.spec
        env = Environment(name=m.name)
        conda, pip = pip_and_conda(resource, ctx.root)
        if conda is not None or pip:
            deps = CondaDependencies(_underlying_structure=conda) if conda else CondaDependencies.create()
            for req in pip:
                deps.add_pip_package(req)
            env.python.conda_dependencies = deps
        env.docker.base_image = BASE_IMAGE_ALIASES.get(spec.baseImage, spec.baseImage)
        tags = ownership_tags(resource, ctx)
        env.environment_variables = {**spec.environmentVariables,
                                     **{var: tags[tag] for tag, var in _ENV_KEYS.items() if tag in tags}}
        return env

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Register a new version of the environment."""
        m = resource.manifest
        assert isinstance(m, EnvironmentManifest)
        env = self._environment(resource, m, ctx)
        registered = self.session.call(f"register environment {m.name}", lambda: env.register(self.session.ws))
        log.info("environment.registered", name=m.name, version=registered.version)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> None:
        """Register a new version (environments are versioned, never changed)."""
        self.create(resource, ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """SDK v1 environments cannot be deleted: left registered."""
        log.info("environment.delete_skipped", name=id.name, reason="SDK v1 environments cannot be deleted")


def _observe(name: str, env: Any) -> ActualResource:
    variables = dict(env.environment_variables or {})
    tags = {tag: variables.get(var) for tag, var in _ENV_KEYS.items() if variables.get(var)}
    own, spec = split_ownership(tags)
    if not spec:
        spec = {"baseImage": env.docker.base_image if env.docker else None}
        deps = env.python.conda_dependencies if env.python else None
        if deps is not None:
            spec["conda"] = deps._conda_dependencies
    spec["environmentVariables"] = {k: v for k, v in variables.items() if not k.startswith(_ENV_PREFIX)
                                    and k not in ("AZUREML_ENTRY_SCRIPT", "AZUREML_SOURCE_DIRECTORY")}
    if env.docker is not None and env.docker.base_image and spec.get("baseImage") \
            and canonical_base_image(spec["baseImage"]) != canonical_base_image(env.docker.base_image):
        spec["baseImage"] = env.docker.base_image
    return ActualResource(ResourceId(Kind.ENVIRONMENT, name), spec, own,
                          (Condition(ConditionType.READY, True, "Registered"),), {"version": env.version})
