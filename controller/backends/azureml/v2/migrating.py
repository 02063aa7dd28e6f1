"""Moving a Webservice from a v1 AKS web service to a v2 online endpoint, v1 serving throughout.

Steps, each a precondition of the next: create the v2 endpoint; carry the v1 keys over
(``regenerateKeys`` with ``keyValue``) so clients change only the URL; create the deployment and
wait for ``Succeeded``; ask it the manifest's sample request with the v1 key and compare with the
v1 service's answer; give it all traffic and publish the new scoring URI; only then delete the
v1 web service (kept while ``amlops.dev/keep-v1: "true"`` asks, for clients that have not moved).
A failure anywhere before the last step deletes the v2 endpoint and leaves v1 as it was.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Final

from controller.backends.base import ApplyContext
from controller.structs.errors import PermanentError, TransientError
from controller.structs.logformats import event_logger
from controller.structs.manifests import WebserviceManifest
from controller.structs.states import DesiredResource

if TYPE_CHECKING:
    from controller.backends.azureml.v2.endpoints import EndpointHandler

log = event_logger(__name__)

KEEP_V1_ANNOTATION: Final = "amlops.dev/keep-v1"


def keep_v1(m: WebserviceManifest) -> bool:
    """Whether the manifest asks to keep the v1 web service after the move."""
    return m.metadata.annotations.get(KEEP_V1_ANNOTATION, "").lower() == "true"


def set_keys(handler: EndpointHandler, endpoint: str, primary: str | None, secondary: str | None,
             ctx: ApplyContext) -> None:
    """Set keys of a v2 endpoint to given values (``regenerateKeys`` with ``keyValue``); ``None`` leaves one as it is.

    A ``keyValue`` equal to the key's current value means "regenerate" to Azure, so a key that
    already has the wanted value is not sent.
    """
    from azure.ai.ml._restclient.arm_ml_service.models import KeyType, RegenerateEndpointKeysRequest

    s = handler.session
    ops = s.client.online_endpoints._online_operation
    current = s.call(f"get keys of endpoint {endpoint}", lambda: s.client.online_endpoints.get_keys(endpoint))
    for key_type, value, now in ((KeyType.PRIMARY, primary, current.primary_key),
                                 (KeyType.SECONDARY, secondary, current.secondary_key)):
        if value is None or value == now:
            continue
        request = RegenerateEndpointKeysRequest(key_type=key_type, key_value=value)
        what = f"set the {key_type.value.lower()} key of endpoint {endpoint}"
        poller = s.call(what, functools.partial(
            ops.begin_regenerate_keys, resource_group_name=s.manifest.spec.resourceGroup,
            workspace_name=s.workspace_name, endpoint_name=endpoint, body=request))
        s.wait(what, poller, ctx.progress)


def migrate(handler: EndpointHandler, v1: Any, resource: DesiredResource, m: WebserviceManifest,
            ctx: ApplyContext, v1_service: Any) -> str:
    """Move ``m`` from the v1 web service ``v1_service`` to a new v2 endpoint (see the module docstring).

    Returns the note the history keeps: the new scoring URI, the old one, and whether v1 still runs.
    """
    uri = str(v1_service.scoring_uri)
    credential: str | None = None
    ctx.progress(f"migrating {m.name}: creating the v2 endpoint beside the v1 service", None)
    try:
        handler.create_endpoint(resource, m, ctx)
        if m.spec.auth == "key":
            primary, secondary = v1.get_keys(m.name)
            set_keys(handler, m.name, primary, secondary, ctx)
            credential = primary
        elif m.spec.auth == "token":
            credential = v1.get_token(m.name).access_token
        handler.rollout(resource, m, ctx, live=None, reference=(uri, credential))
    except (PermanentError, TransientError) as exc:
        log.warning("migration.failed", service=m.name, reason=str(exc)[:300])
        ctx.progress(f"migrating {m.name} failed; the v1 service keeps serving", None)
        handler.delete_endpoint(m.name, ctx)
        if isinstance(exc, PermanentError):
            raise PermanentError(f"migration of {m.name} to v2 failed, the v1 service keeps serving at {uri}: {exc}",
                                 reason=exc.reason) from exc
        raise
    new_uri = handler.scoring_uri(m.name)
    log.info("migration.published", service=m.name, scoring_uri=new_uri, previous=uri)
    ctx.progress(f"{m.name} now served by v2 at {new_uri}", 1.0)
    published = f"migrated to Azure ML v2: scoring URI {new_uri} (was {uri}"
    if keep_v1(m):
        log.info("migration.v1_kept", service=m.name, annotation=KEEP_V1_ANNOTATION)
        return f"{published}; the v1 service keeps running while {KEEP_V1_ANNOTATION} asks)"
    ctx.progress(f"deleting the v1 web service {m.name}", None)
    v1.delete(resource.id, ctx)
    return f"{published}; the v1 service is deleted)"
