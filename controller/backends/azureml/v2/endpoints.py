"""Webservice on v2: a KubernetesOnlineEndpoint and one KubernetesOnlineDeployment per generation.

Scaling (``replicas``, ``autoscale``) changes the live deployment in place. Anything that needs new
containers (model, environment, code, resources, probes…: a new ``generation``) is a new deployment.
With ``strategy: rolling`` (and for a first deployment) it is created beside the live one with no
traffic, awaited until ``Succeeded``, smoke-tested through the endpoint with the
``azureml-model-deployment`` header, then given all traffic, and the old deployment is deleted.
``canary`` and ``blueGreen`` go through the rollout engine instead, one short step per pass, with
the endpoint's traffic table as the split (``splitting.EndpointSplitting``).
A new deployment that fails or answers wrongly never gets traffic: it is deleted and the error is
permanent (the resource stalls with the reason) while the old one keeps serving.

The endpoint's tags carry ownership, the last-applied spec and the live deployment's name, so
``read`` is one list call for every service.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from controller.backends.azureml.tags import SPEC_TAG, ownership_tags, split_ownership
from controller.backends.azureml.v2.assets import environment_version, model_version, register_code
from controller.backends.azureml.v2.computes import compute_name
from controller.backends.azureml.v2.deployments import (
    SCALING_FIELDS,
    auth_mode,
    build_deployment,
    deployment_name,
    scale_settings,
)
from controller.backends.azureml.v2.migrating import keep_v1, migrate
from controller.backends.azureml.v2.probing import expected_answer, sample_body, score
from controller.backends.azureml.v2.sessions import V2Session
from controller.backends.azureml.v2.splitting import (
    GENERATION_TAG,
    LIVE_TAG,
    EndpointSplitting,
    generation,
    state_of,
)
from controller.backends.base import ApplyContext
from controller.structs.errors import PermanentError, TransientError
from controller.structs.logformats import event_logger
from controller.structs.manifests import Kind, WebserviceManifest
from controller.structs.plans import Action, Change
from controller.structs.rollouts import ROLLOUT_DIGEST_PREFIX
from controller.structs.states import (
    DIGEST_TAG,
    MANAGED_BY_TAG,
    ActualResource,
    Condition,
    ConditionType,
    DesiredResource,
    ResourceId,
)

log = event_logger(__name__)



def _in_place(change: Change) -> bool:
    """Whether every difference is one a deployment takes in place (scaling, description, tags)."""
    if not change.diffs:
        return False  # content changed (a file the manifest points at): new containers
    return all(any(d.path == f or d.path.startswith(f + ".") for f in SCALING_FIELDS) for d in change.diffs)


class EndpointHandler(EndpointSplitting):
    """Webservice on v2 (and its traffic splitting for rollouts)."""

    kind = Kind.WEBSERVICE
    # The endpoint's compute is fixed at creation.
    replace_fields = frozenset({"workspace", "cluster"})

    def __init__(self, session: V2Session, v1: Callable[[], Any] | None = None) -> None:
        self.session = session
        self.v1 = v1 or (lambda: None)

    # -- read ------------------------------------------------------------------------------------

    def read(self) -> Iterable[ActualResource]:
        """One list call: the online endpoints this controller owns."""
        s = self.session
        endpoints = s.call("list endpoints", lambda: list(s.client.online_endpoints.list()))
        found = [_observe(e) for e in endpoints if (e.tags or {}).get(MANAGED_BY_TAG) == s.controller_name]
        # v1 web services of this workspace not moved yet: a manifest now on v2 plans their migration.
        v1 = self.v1()
        if v1 is not None:
            names = {r.id.name for r in found}
            try:
                v1_services = list(v1.handlers[Kind.WEBSERVICE].read())
            except PermanentError as exc:
                # Listing v1 services only finds migrations to plan: never a reason to stop a v2 reconcile.
                log.warning("endpoint.v1_services_unlisted", reason=str(exc)[:300])
                v1_services = []
            for service in v1_services:
                if service.id.name not in names:
                    found.append(ActualResource(service.id, service.spec, service.tags, service.conditions,
                                                {**service.details, "api": "v1"}))
        return found

    # -- create / update / delete ------------------------------------------------------------------

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> str | None:
        """Create the endpoint and its first deployment; traffic goes to it once it is Succeeded and checked.

        A migration from v1 returns its note for the history (where the service is now served).
        """
        m = _manifest(resource)
        endpoint = self._get_endpoint(m.name)
        if endpoint is not None and (endpoint.tags or {}).get(LIVE_TAG):
            return self.update(resource, Change(resource.id, Action.UPDATE), ctx)
        if endpoint is None:
            v1 = self.v1()
            v1_service = self._v1_service(v1, m.name) if v1 is not None else None
            if v1_service is not None:
                return migrate(self, v1, resource, m, ctx, v1_service)
            self.create_endpoint(resource, m, ctx)
        self.rollout(resource, m, ctx, live=None)
        return None

    @staticmethod
    def _v1_service(v1: Any, name: str) -> Any:
        try:
            return v1._access.webservice(name)
        except PermanentError as exc:
            if exc.reason == "NotFound":
                return None
            raise

    def create_endpoint(self, resource: DesiredResource, m: WebserviceManifest, ctx: ApplyContext) -> None:
        """The endpoint with no deployment and no traffic yet."""
        ctx.progress(f"creating endpoint {m.name}", None)
        self._put_endpoint(resource, m, ctx, traffic={}, final=False)

    def update(self, resource: DesiredResource, change: Change, ctx: ApplyContext) -> str | None:
        """Scale in place, or roll out a new deployment blue/green."""
        m = _manifest(resource)
        endpoint = self._get_endpoint(m.name)
        if endpoint is None:
            return self.create(resource, ctx)
        if not (endpoint.tags or {}).get(LIVE_TAG):
            self.rollout(resource, m, ctx, live=None)
            return None
        live = str((endpoint.tags or {})[LIVE_TAG])
        # A deployment left beside the live one by a rollout nobody drives any more goes first.
        self.discard_candidate(m.name)
        recorded = (endpoint.tags or {}).get(GENERATION_TAG)
        if recorded == generation(resource) if recorded else _in_place(change):
            self._scale(resource, m, ctx, live)
        else:
            self.rollout(resource, m, ctx, live=live)
        self._retire_v1(m, ctx)
        return None

    def _retire_v1(self, m: WebserviceManifest, ctx: ApplyContext) -> None:
        """Delete a v1 web service a migration kept (``amlops.dev/keep-v1``) once the annotation is gone."""
        v1 = self.v1()
        if v1 is None or keep_v1(m) or self._v1_service(v1, m.name) is None:
            return
        ctx.progress(f"deleting the v1 web service {m.name} (migrated to v2)", None)
        v1.delete(ResourceId(Kind.WEBSERVICE, m.name), ctx)

    def delete(self, id: ResourceId, ctx: ApplyContext) -> None:
        """Delete the endpoint (Azure deletes its deployments with it), and a v1 web service of the same
        name left by a migration; already gone is fine."""
        self.delete_endpoint(id.name, ctx)
        v1 = self.v1()
        if v1 is not None:
            v1.delete(id, ctx)

    def delete_endpoint(self, name: str, ctx: ApplyContext) -> None:
        """Delete the v2 endpoint and its deployments; already gone is fine."""
        from azure.core.exceptions import ResourceNotFoundError

        s = self.session
        try:
            poller = s.call(f"delete endpoint {name}", lambda: s.client.online_endpoints.begin_delete(name))
        except PermanentError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return
            raise
        s.wait(f"delete endpoint {name}", poller, ctx.progress)

    # -- steps -------------------------------------------------------------------------------------

    def _get_endpoint(self, name: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        s = self.session
        try:
            return s.call(f"get endpoint {name}", lambda: s.client.online_endpoints._online_operation.get(
                resource_group_name=s.manifest.spec.resourceGroup, workspace_name=s.workspace_name,
                endpoint_name=name))
        except PermanentError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return None
            raise

    def _put_endpoint(self, resource: DesiredResource, m: WebserviceManifest, ctx: ApplyContext,
                      traffic: dict[str, int], final: bool, live: str | None = None) -> None:
        """PUT the endpoint (a traffic change is a full PUT); ``final`` records the new digest and live deployment."""
        from azure.ai.ml.entities import KubernetesOnlineEndpoint

        s = self.session
        tags = {**m.spec.tags, **ownership_tags(resource, ctx)}
        if not final:
            tags.pop(DIGEST_TAG, None)
            tags.pop(SPEC_TAG, None)
            previous = self._get_endpoint(m.name)
            for key in (DIGEST_TAG, SPEC_TAG, LIVE_TAG, GENERATION_TAG):
                if previous is not None and (previous.tags or {}).get(key):
                    tags[key] = (previous.tags or {})[key]
        elif live is not None:
            tags[LIVE_TAG] = live
            tags[GENERATION_TAG] = generation(resource)
        endpoint = KubernetesOnlineEndpoint(name=m.name, compute=compute_name(s, m.spec.cluster),
                                            auth_mode=auth_mode(m.spec), tags=tags, traffic=dict(traffic),
                                            description=m.spec.description)
        what = f"update endpoint {m.name} (traffic {json.dumps(traffic, sort_keys=True)})"
        poller = s.call(what, lambda: s.client.online_endpoints.begin_create_or_update(endpoint))
        s.wait(what, poller, ctx.progress)

    def _deployment(self, resource: DesiredResource, m: WebserviceManifest, ctx: ApplyContext, name: str) -> Any:
        """The deployment of this generation: model, environment and code versions by content hash."""
        s, spec = self.session, m.spec
        model = None
        if spec.models:
            ref = spec.models[0]
            if len(spec.models) > 1:
                raise PermanentError("a v2 deployment loads one model; package several into one folder",
                                     reason="InvalidSpec")
            declared = ctx.desired.resources.get(ResourceId(Kind.MODEL, ref.name))
            version = str(ref.version) if ref.version is not None else (
                model_version(declared) if declared is not None else None)
            model = f"{s.scope}/models/{ref.name}/versions/{version}" if version else f"azureml:{ref.name}@latest"
        environment = None
        variables: dict[str, str] = {}
        if spec.environment is not None:
            declared = ctx.desired.resources.get(ResourceId(Kind.ENVIRONMENT, spec.environment))
            if declared is None:
                environment = f"azureml:{spec.environment}@latest"
            else:
                environment = f"{s.scope}/environments/{spec.environment}/versions/{environment_version(declared, ctx.root)}"
                variables.update(getattr(declared.manifest.spec, "environmentVariables", {}) or {})
        code_id = script = None
        if spec.entryScript is not None:
            root = Path(ctx.root)
            if spec.sourceDirectory is not None:
                source, script = root / resource.files["sourceDirectory"], spec.entryScript
            else:
                entry = root / resource.files["entryScript"]
                source, script = entry.parent, entry.name
            code_id = register_code(s, f"{m.name}-code", source, ctx)
        tags = {k: v for k, v in ownership_tags(resource, ctx).items() if k != SPEC_TAG}
        return build_deployment(name, m.name, spec, model=model, environment=environment, code_id=code_id,
                                scoring_script=script, environment_variables=variables, tags=tags)

    def _create_deployment(self, deployment: Any, ctx: ApplyContext) -> None:
        s = self.session
        what = f"deployment {deployment.name} of endpoint {deployment.endpoint_name}"
        ctx.progress(f"creating {what}", None)
        poller = s.call(f"create {what}",
                        lambda: s.client.online_deployments.begin_create_or_update(deployment, skip_script_validation=True))
        s.wait(f"create {what}", poller, ctx.progress)

    def _delete_deployment(self, endpoint: str, name: str, ctx: ApplyContext) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        s = self.session
        try:
            poller = s.call(f"delete deployment {name}", lambda: s.client.online_deployments.begin_delete(name, endpoint))
        except PermanentError as exc:
            if isinstance(exc.__cause__, ResourceNotFoundError):
                return
            raise
        s.wait(f"delete deployment {name}", poller, ctx.progress)

    def _scale(self, resource: DesiredResource, m: WebserviceManifest, ctx: ApplyContext, live: str) -> None:
        """Replicas and autoscale on the live deployment itself (no new containers, no traffic change)."""
        s = self.session
        deployment = s.call(f"get deployment {live}", lambda: s.client.online_deployments.get(live, m.name))
        deployment.instance_count, deployment.scale_settings = scale_settings(m.spec)
        deployment.description = m.spec.description
        deployment.tags = {k: v for k, v in ownership_tags(resource, ctx).items() if k != SPEC_TAG}
        ctx.progress(f"scaling deployment {live} of {m.name}", None)
        self._create_deployment(deployment, ctx)
        self._put_endpoint(resource, m, ctx, traffic={live: 100}, final=True, live=live)

    def key(self, name: str) -> str | None:
        """A credential to call the endpoint with: its primary key, or an aml token."""
        s = self.session
        keys = s.call(f"get keys of endpoint {name}", lambda: s.client.online_endpoints.get_keys(name))
        return getattr(keys, "primary_key", None) or getattr(keys, "access_token", None)

    def scoring_uri(self, name: str) -> str:
        """The endpoint's scoring URI."""
        endpoint = self._get_endpoint(name)
        if endpoint is None:
            raise TransientError(f"endpoint {name} is gone")
        return str(endpoint.properties.scoring_uri)

    def smoke_test(self, resource: DesiredResource, m: WebserviceManifest, ctx: ApplyContext, new: str,
                   live: str | None, reference: tuple[str, str | None] | None = None) -> Any:
        """Ask the new deployment the manifest's sample request; compare as the manifest says.

        ``reference`` is another ``(uri, credential)`` whose answer must match (a v1 service being
        migrated); otherwise, with ``compareWithLive``, the live deployment's answer. Returns the answer.
        """
        sample = m.spec.rollout.sampleRequest
        if sample is None:
            return None
        body = sample_body(sample, resource, ctx.root)
        uri, bearer = self.scoring_uri(m.name), self.key(m.name)
        ctx.progress(f"sample request to deployment {new}", None)
        answer = score(uri, body, bearer, new)
        expected = expected_answer(sample, resource, ctx.root)
        source = "the manifest's expected answer"
        if expected is None and reference is not None:
            expected, source = score(reference[0], body, reference[1]), "the v1 service's answer"
        elif expected is None and sample.compareWithLive and live is not None:
            expected, source = score(uri, body, bearer, live), f"the live deployment {live}'s answer"
        if expected is not None and answer != expected:
            raise PermanentError(f"deployment {new} answered the sample request with {json.dumps(answer)[:200]}, "
                                 f"not {source} {json.dumps(expected)[:200]}", reason="SampleMismatch")
        return answer

    def rollout(self, resource: DesiredResource, m: WebserviceManifest, ctx: ApplyContext, live: str | None,
                reference: tuple[str, str | None] | None = None) -> None:
        """Next deployment at 0 %, Succeeded, smoke-tested, then all traffic; the old one deleted."""
        new = deployment_name(resource.digest)
        if new == live:
            new = deployment_name(resource.digest + ":again")
        deployment = self._deployment(resource, m, ctx, new)
        started = time.monotonic()
        try:
            self._create_deployment(deployment, ctx)
            self.smoke_test(resource, m, ctx, new, live, reference)
        except (PermanentError, TransientError) as exc:
            # The new deployment never got traffic; the old one keeps serving.
            log.warning("deployment.rejected", endpoint=m.name, deployment=new, reason=str(exc)[:300])
            self._delete_deployment(m.name, new, ctx)
            if isinstance(exc, PermanentError):
                raise PermanentError(f"new deployment {new} of {m.name} got no traffic and was deleted"
                                     f"{f'; {live} keeps serving' if live else ''}: {exc}",
                                     reason=exc.reason if exc.reason != "AzureError" else "DeploymentFailed") from exc
            raise
        ready_s = time.monotonic() - started
        # All traffic at once: a first deployment has nothing to share it with, and a rolling update
        # was smoke-tested above (canary and blueGreen steps are the rollout engine's, not this).
        self._put_endpoint(resource, m, ctx, traffic={new: 100}, final=True, live=new)
        ctx.progress(f"{m.name}: 100% of traffic on {new}", 1.0)
        if live is not None:
            self._delete_deployment(m.name, live, ctx)
        log.info("rollout.finished", endpoint=m.name, deployment=new, previous=live, ready_s=round(ready_s, 1),
                 total_s=round(time.monotonic() - started, 1))


def _manifest(resource: DesiredResource) -> WebserviceManifest:
    m = resource.manifest
    assert isinstance(m, WebserviceManifest)
    return m


def _observe(e: Any) -> ActualResource:
    own, spec = split_ownership(e.tags)
    live = (e.tags or {}).get(LIVE_TAG)
    traffic = dict(e.traffic or {})
    rollout = state_of(e.tags)
    state = str(getattr(e.provisioning_state, "value", e.provisioning_state) or "Unknown")
    serving = (bool(live) and traffic.get(live, 0) > 0) or (rollout is not None and sum(traffic.values()) > 0)
    ready = state == "Succeeded" and serving
    reason = state if state != "Succeeded" else ("Succeeded" if serving else "NoTraffic")
    conds = [Condition(ConditionType.READY, ready, reason,
                       "" if ready else f"traffic {json.dumps(traffic)}")]
    details = {"scoringUri": e.scoring_uri, "state": state, "traffic": traffic, "liveDeployment": live, "api": "v2"}
    untracked = rollout is None and bool(live) and any(v > 0 for k, v in traffic.items() if k != live)
    if rollout is not None or untracked:
        # A rollout under way (or a split nobody tracks) is at no desired digest: every pass plans an
        # update, which drives the rollout (or returns all traffic to the live deployment).
        own[DIGEST_TAG] = ROLLOUT_DIGEST_PREFIX + (rollout.target if rollout is not None else "untracked")
        details["rollout"] = rollout.summary() if rollout is not None else {"phase": "untracked", "weight": 0}
        message = (rollout.message or f"{rollout.strategy} {rollout.phase}") if rollout is not None else \
            f"traffic {json.dumps(traffic)} is split without a rollout: the next pass returns it to {live}"
        conds.append(Condition(ConditionType.PROGRESSING, True, "RolloutInProgress", message))
    elif state in ("Creating", "Updating"):
        conds.append(Condition(ConditionType.PROGRESSING, True, state))
    spec["auth"] = "token" if str(e.auth_mode).lower() == "aml_token" else "key"
    return ActualResource(ResourceId(Kind.WEBSERVICE, e.name), spec, own, tuple(conds), details)
