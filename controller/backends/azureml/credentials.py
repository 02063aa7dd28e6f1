"""The Workspace manifest's credential references, resolved (both API generations).

``servicePrincipal`` values come inline, from the environment or from a file; with no
``credentials`` at all the usual ``AZURE_TENANT_ID`` / ``AZURE_CLIENT_ID`` / ``AZURE_CLIENT_SECRET``
variables are read. Secrets are returned to the caller, never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.structs.errors import PermanentError
from controller.structs.manifests import WorkspaceManifest


@dataclass(frozen=True)
class ServicePrincipal:
    """A resolved service principal (``secret`` is a secret)."""

    tenant_id: str
    client_id: str
    secret: str

    def __repr__(self) -> str:
        return f"ServicePrincipal(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, secret=***)"


def resolve(ref: Any, environ: Mapping[str, str], what: str) -> str:
    """The value a ``ValueRef`` / ``SecretRef`` points at."""
    if ref is None:
        raise PermanentError(f"{what} is not set", reason="InvalidCredentials")
    if getattr(ref, "value", None) is not None:
        return str(ref.value)
    if ref.fromEnv is not None:
        value = environ.get(ref.fromEnv)
        if not value:
            raise PermanentError(f"{what}: environment variable {ref.fromEnv} is not set", reason="InvalidCredentials")
        return value
    try:
        return Path(ref.fromFile).read_text().strip()
    except OSError as exc:
        raise PermanentError(f"{what}: cannot read {ref.fromFile}: {exc.strerror}", reason="InvalidCredentials") from exc


def credential_type(workspace: WorkspaceManifest) -> str:
    """``servicePrincipal`` (also when no credentials are given), ``managedIdentity`` or ``azureCli``."""
    creds = workspace.spec.credentials
    return creds.type if creds is not None else "servicePrincipal"


def service_principal(workspace: WorkspaceManifest, environ: Mapping[str, str]) -> ServicePrincipal:
    """The service principal the workspace names, or the ``AZURE_*`` variables when it names none."""
    creds = workspace.spec.credentials
    if creds is None:
        missing = [n for n in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET") if not environ.get(n)]
        if missing:
            raise PermanentError(f"no credentials in the Workspace manifest and {', '.join(missing)} not set",
                                 reason="InvalidCredentials")
        return ServicePrincipal(environ["AZURE_TENANT_ID"], environ["AZURE_CLIENT_ID"], environ["AZURE_CLIENT_SECRET"])
    return ServicePrincipal(resolve(creds.tenantId, environ, "credentials.tenantId"),
                            resolve(creds.clientId, environ, "credentials.clientId"),
                            resolve(creds.clientSecret, environ, "credentials.clientSecret"))


def secrets_of(workspace: WorkspaceManifest, environ: Mapping[str, str]) -> tuple[str, ...]:
    """Credential values to keep out of logs: the service principal's secret, when one is used."""
    creds = workspace.spec.credentials
    try:
        if creds is None:
            value = environ.get("AZURE_CLIENT_SECRET")
        elif creds.clientSecret is not None:
            value = resolve(creds.clientSecret, environ, "credentials.clientSecret")
        else:
            value = None
    except PermanentError:
        value = None
    return (value,) if value else ()
