"""Traffic splitting on v2: the endpoint's traffic table is the split, Azure Monitor the figures.

The rollout engine (``controller.core.rolling_out``) drives canary and blueGreen here exactly as
on the local backend; this module only does and reports:

* the candidate is the next ``KubernetesOnlineDeployment`` of the endpoint, created at 0 % traffic
  (named by the desired digest, so a retried pass finds the same one); its health is its
  provisioning state;
* a weight is a PUT of the endpoint's traffic table ``{live: 100 - w, candidate: w}``; Azure (and
  the emulator) switch the table at once when that operation succeeds, and ``set_weight`` returns
  only then;
* the figures of a step are asked of Azure Monitor over the step's span (``TrafficWindows``), per
  deployment: requests, 5xx and p99 as the endpoint's router measured them;
* the rollout's state is an endpoint tag (``amlops.dev/rollout``), written in the same PUT as the
  traffic it describes is kept, so a restarted controller finds both; a person's ``promote`` or
  ``abort`` is a tag of its own (``amlops.dev/rollout-request``), kept until the rollout ends;
* rolling back puts all traffic on the live deployment and deletes every other deployment;
  promoting names the candidate live (with the new digest and spec) and deletes the old one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from controller.backends.azureml.tags import ownership_tags
from controller.backends.azureml.v2.deployments import SCALING_FIELDS, deployment_name
from controller.backends.azureml.v2.measuring import DeploymentFigures, EndpointMetrics
from controller.backends.azureml.v2.probing import DEPLOYMENT_HEADER
from controller.backends.azureml.v2.sessions import V2Session
from controller.backends.base import ApplyContext
from controller.structs.errors import PermanentError, TransientError
from controller.structs.logformats import event_logger
from controller.structs.manifests import WebserviceManifest
from controller.structs.rollouts import Counters, RolloutState, Traffic, VersionFigures
from controller.structs.states import DesiredResource

if TYPE_CHECKING:
    from controller.backends.azureml.v2.endpoints import EndpointHandler

log = event_logger(__name__)

LIVE_TAG: Final = "amlops.dev/live-deployment"
ROLLOUT_TAG: Final = "amlops.dev/rollout"
REQUEST_TAG: Final = "amlops.dev/rollout-request"
GENERATION_TAG: Final = "amlops.dev/generation"
"""What the live deployment runs, less what a deployment changes in place: a new value needs a new deployment."""
_SAMPLE_TIMEOUT_S: Final = 60.0
_CREATE_GRACE_S: Final = 60.0
"""How long a candidate deployment may be missing after its rollout began (a create just accepted)."""


def generation(resource: DesiredResource) -> str:
    """A digest of what needs new containers: the spec less scaling and rollout fields, and the files' content."""
    spec = resource.manifest.spec.model_dump(mode="json")
    for field in (*SCALING_FIELDS, "spec.rollout"):
        spec.pop(field.removeprefix("spec."), None)
    text = json.dumps({"spec": spec, "content": dict(sorted(resource.content_digests.items()))}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def candidate_name(target: str, live: str | None) -> str:
    """The candidate deployment of the version with digest ``target`` (never the live one's name)."""
    name = deployment_name(target)
    return deployment_name(target + ":again") if name == live else name


def _stored(state: RolloutState) -> dict[str, Any]:
    return {k: v for k, v in state.to_json().items() if k not in ("request", "message")}


class EndpointSplitting:
    """``TrafficSplitting`` and ``TrafficWindows`` of v2 online endpoints (mixed into ``EndpointHandler``)."""

    session: V2Session
    _metrics: EndpointMetrics | None = None

    def _get_endpoint(self, name: str) -> Any: ...  # EndpointHandler's

    @property
    def metrics(self) -> EndpointMetrics:
        if self._metrics is None:
            self._metrics = EndpointMetrics(self.session)
        return self._metrics

    # -- the stored state ----------------------------------------------------------------------

    def _rewrite(self, raw: Any, *, tags: Mapping[str, str] | None = None, traffic: Mapping[str, int] | None = None,
                 what: str) -> None:
        """PUT the endpoint back as read, with ``tags`` and ``traffic`` where given; await the operation."""
        from azure.ai.ml.entities import OnlineEndpoint

        s = self.session
        endpoint = OnlineEndpoint._from_rest_object(raw)
        if tags is not None:
            endpoint.tags = dict(tags)
        if traffic is not None:
            endpoint.traffic = dict(traffic)
        poller = s.call(what, lambda: s.client.online_endpoints.begin_create_or_update(endpoint))
        s.wait(what, poller)

    def _required(self, service: str) -> Any:
        raw = self._get_endpoint(service)
        if raw is None:
            raise PermanentError(f"endpoint {service} is gone", reason="NotFound")
        return raw

    def rollout_state(self, service: str) -> RolloutState | None:
        """The state in the endpoint's rollout tag (with a pending request), or None."""
        raw = self._get_endpoint(service)
        return None if raw is None else state_of(raw.tags)

    def save_rollout(self, service: str, state: RolloutState | None) -> None:
        """Write (or remove) the rollout tag; the PUT keeps the traffic table as it is.

        A pass that changes only the state's message writes nothing: every short pass of a step
        would otherwise be a PUT.
        """
        raw = self._get_endpoint(service)
        if raw is None:
            if state is None:
                return
            raise TransientError(f"endpoint {service} not found while storing its rollout")
        tags = dict(raw.tags or {})
        if state is None:
            if ROLLOUT_TAG not in tags and REQUEST_TAG not in tags:
                return
            tags.pop(ROLLOUT_TAG, None)
            tags.pop(REQUEST_TAG, None)
        else:
            stored = _stored(state)
            previous = tags.get(ROLLOUT_TAG)
            try:
                same = previous is not None and {k: v for k, v in json.loads(previous).items() if k != "message"} == \
                    json.loads(json.dumps(stored))
            except ValueError:
                same = False
            if same:
                return
            tags[ROLLOUT_TAG] = json.dumps({**stored, "message": state.message}, separators=(",", ":"))
        self._rewrite(raw, tags=tags, what=f"store the rollout of endpoint {service}")

    def request_rollout(self, service: str, action: str) -> bool:
        """Tag the endpoint with a person's ``abort`` or ``promote``; False without a rollout."""
        raw = self._get_endpoint(service)
        if raw is None or ROLLOUT_TAG not in (raw.tags or {}):
            return False
        self._rewrite(raw, tags={**(raw.tags or {}), REQUEST_TAG: action},
                      what=f"ask for {action} of the rollout of endpoint {service}")
        return True

    # -- the candidate -------------------------------------------------------------------------

    def needs_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> bool:
        """Whether the desired version needs a new deployment beside the live one (not a change in place)."""
        raw = self._get_endpoint(resource.manifest.name)
        tags = dict(raw.tags or {}) if raw is not None else {}
        if not tags.get(LIVE_TAG):
            return False  # no live deployment yet: the first one takes all traffic once ready
        return tags.get(GENERATION_TAG) != generation(resource)

    def _live(self, service: str) -> tuple[Any, str]:
        raw = self._required(service)
        live = (raw.tags or {}).get(LIVE_TAG)
        if not live:
            raise PermanentError(f"endpoint {service} has no live deployment to roll out beside", reason="NoLive")
        return raw, str(live)

    def start_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Create the candidate deployment at 0 % traffic; its provisioning goes on without us."""
        handler = self._handler()
        m = resource.manifest
        assert isinstance(m, WebserviceManifest)
        _raw, live = self._live(m.name)
        deployment = handler._deployment(resource, m, ctx, candidate_name(resource.digest, live))
        s = self.session
        what = f"create deployment {deployment.name} of endpoint {m.name}"
        ctx.progress(what, None)
        s.call(what, lambda: s.client.online_deployments.begin_create_or_update(deployment, skip_script_validation=True))
        log.info("candidate.started", endpoint=m.name, deployment=deployment.name, live=live)

    def _candidate(self, service: str) -> tuple[Any, str, str]:
        raw, live = self._live(service)
        state = state_of(raw.tags)
        if state is None:
            raise PermanentError(f"endpoint {service} has no rollout in progress", reason="NoRollout")
        return raw, live, candidate_name(state.target, live)

    def candidate_health(self, service: str) -> tuple[str, str]:
        """``starting`` / ``ready`` / ``failed`` from the candidate deployment's provisioning state."""
        from azure.core.exceptions import ResourceNotFoundError

        raw, _live, name = self._candidate(service)
        s = self.session
        try:
            dep = s.call(f"get deployment {name}", lambda: s.client.online_deployments.get(name, service))
        except PermanentError as exc:
            if not isinstance(exc.__cause__, ResourceNotFoundError):
                raise
            rollout = state_of(raw.tags)
            if rollout is not None and time.time() - rollout.started < _CREATE_GRACE_S:
                return "starting", f"deployment {name} not visible yet"
            # The rollout was stored but its deployment never created (a controller stopped in between).
            return "failed", f"deployment {name} does not exist"
        state = str(getattr(dep.provisioning_state, "value", dep.provisioning_state) or "Unknown")
        if state == "Succeeded":
            return "ready", f"deployment {name} Succeeded"
        if state in ("Failed", "Canceled"):
            return "failed", f"deployment {name} {state}{self._log_tail(service, name)}"
        return "starting", f"deployment {name} {state}"

    def _log_tail(self, service: str, name: str) -> str:
        s = self.session
        try:
            text = str(s.call(f"get logs of deployment {name}",
                              lambda: s.client.online_deployments.get_logs(name, service, 5)) or "")
        except (PermanentError, TransientError):
            return ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return f": {lines[-1][:300]}" if lines else ""

    def set_weight(self, service: str, weight: int) -> None:
        """PUT the traffic table ``{live: 100 - weight, candidate: weight}``; in force once it returns."""
        raw, live, name = self._candidate(service)
        traffic = {live: 100 - weight, name: weight} if 0 < weight < 100 else {name: 100} if weight >= 100 else {live: 100}
        self._rewrite(raw, traffic=traffic, what=f"update endpoint {service} (traffic {json.dumps(traffic, sort_keys=True)})")
        log.info("traffic.split", endpoint=service, candidate=name, weight=weight)

    # -- figures -------------------------------------------------------------------------------

    def _split_figures(self, service: str, since: float) -> tuple[DeploymentFigures, DeploymentFigures]:
        _raw, live, name = self._candidate(service)
        found = self.metrics.figures(service, since, time.time())
        return found.get(name, DeploymentFigures()), found.get(live, DeploymentFigures())

    def figures_since(self, service: str, since: float) -> tuple[VersionFigures, VersionFigures]:
        """``(candidate, live)`` requests, 5xx and p99 from Azure Monitor over ``[since, now)``."""
        candidate, live = self._split_figures(service, since)
        return (VersionFigures(candidate.requests, candidate.errors, candidate.p99_ms),
                VersionFigures(live.requests, live.errors, live.p99_ms))

    def traffic(self, service: str) -> Traffic:
        """Each deployment's requests and 5xx since the rollout started (Azure Monitor has no latency histogram)."""
        state = self.rollout_state(service)
        if state is None:
            return Traffic()
        _raw, live, name = self._candidate(service)
        found = self.metrics.figures(service, state.started, time.time())
        counted = {k: Counters(v.requests, v.errors) for k, v in found.items()}
        return Traffic({live: counted.get(live, Counters())}, {name: counted.get(name, Counters())})

    def sample(self, service: str, body: bytes, candidate: bool) -> tuple[int, bytes]:
        """POST ``body`` through the endpoint to the candidate (or live) deployment by the deployment header."""
        import requests

        handler = self._handler()
        _raw, live, name = self._candidate(service)
        headers = {"Content-Type": "application/json", DEPLOYMENT_HEADER: name if candidate else live}
        bearer = handler.key(service)
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        try:
            response = requests.post(handler.scoring_uri(service), data=body, headers=headers, timeout=_SAMPLE_TIMEOUT_S)
        except requests.RequestException as exc:
            return 0, f"no answer: {type(exc).__name__}".encode()
        return int(response.status_code), bytes(response.content)

    # -- ending a rollout ----------------------------------------------------------------------

    def promote_candidate(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        """Name the candidate live (new digest, spec and generation in the tags), then delete the old deployment."""
        m = resource.manifest
        assert isinstance(m, WebserviceManifest)
        raw, live, name = self._candidate(m.name)
        keep = {k: v for k, v in (raw.tags or {}).items() if k in (ROLLOUT_TAG, REQUEST_TAG)}
        tags = {**m.spec.tags, **ownership_tags(resource, ctx), LIVE_TAG: name, GENERATION_TAG: generation(resource),
                **keep}
        self._rewrite(raw, tags=tags, traffic={name: 100}, what=f"make deployment {name} live on endpoint {m.name}")
        self._delete_others(m.name, name, wait=False)
        log.info("candidate.promoted", endpoint=m.name, deployment=name, previous=live)

    def promoted(self, service: str) -> bool:
        """Whether the candidate is live and the only deployment left (deletes interrupted earlier are started again)."""
        raw, live = self._live(service)
        state = state_of(raw.tags)
        if state is not None and live not in (deployment_name(state.target), deployment_name(state.target + ":again")):
            # All traffic went to the candidate, but the controller stopped before naming it live:
            # nothing records the new version as applied, so it is rolled back rather than guessed at.
            raise PermanentError(f"the promotion stopped before the new deployment was named live on {service}",
                                 reason="PromotionInterrupted")
        s = self.session
        deployments = s.call(f"list deployments of {service}", lambda: list(s.client.online_deployments.list(service)))
        others = [d for d in deployments if d.name != live]
        if any(str(getattr(d.provisioning_state, "value", d.provisioning_state)) != "Deleting" for d in others):
            self._delete_others(service, live, wait=False)
        return not others

    def discard_candidate(self, service: str) -> None:
        """All traffic on the live deployment, then every other deployment deleted (idempotent)."""
        raw = self._get_endpoint(service)
        live = (raw.tags or {}).get(LIVE_TAG) if raw is not None else None
        if raw is None or not live:
            return
        traffic = {k: int(v) for k, v in (raw.properties.traffic or {}).items() if int(v) > 0}
        if traffic != {live: 100}:
            self._rewrite(raw, traffic={live: 100}, what=f"return all traffic of endpoint {service} to {live}")
        self._delete_others(service, str(live), wait=True)

    def _delete_others(self, service: str, live: str, wait: bool) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        s = self.session
        others = [d.name for d in s.call(f"list deployments of {service}",
                                         lambda: list(s.client.online_deployments.list(service)))
                  if d.name != live and str(getattr(d.provisioning_state, "value", d.provisioning_state)) != "Deleting"]
        for name in others:
            def begin(name: str = name) -> Any:
                return s.client.online_deployments.begin_delete(name, service)

            try:
                poller = s.call(f"delete deployment {name}", begin)
            except PermanentError as exc:
                if isinstance(exc.__cause__, ResourceNotFoundError):
                    continue
                raise
            if wait:
                s.wait(f"delete deployment {name}", poller)
            log.info("deployment.deleted", endpoint=service, deployment=name)

    def _handler(self) -> EndpointHandler:
        from controller.backends.azureml.v2.endpoints import EndpointHandler

        assert isinstance(self, EndpointHandler)
        return self


def state_of(tags: Mapping[str, Any] | None) -> RolloutState | None:
    """The rollout state an endpoint's tags hold (with the pending request), or None."""
    tags = dict(tags or {})
    text = tags.get(ROLLOUT_TAG)
    if not text:
        return None
    try:
        data = json.loads(text)
        return RolloutState.from_json({**data, "request": tags.get(REQUEST_TAG) or None})
    except (ValueError, TypeError, KeyError):
        log.warning("rollout.tag_unreadable")
        return None

