"""The Workspace manifest's credential references, as azure-identity credentials of the v2 backend.

No Azure and no emulator: the credentials are built from real manifests, and the Azure CLI one is
asked for a token on a machine without ``az``, as a controller host without it would be.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.backends.azureml.v2.backend import AzureMLV2Backend
from controller.sources.loading import load_desired_state
from controller.structs.errors import PermanentError
from controller.structs.manifests import Kind, WorkspaceManifest

pytestmark = pytest.mark.azureml


def workspace(tmp_path: Path, credentials: str) -> WorkspaceManifest:
    (tmp_path / "workspace.yaml").write_text(
        "apiVersion: amlops.dev/v1\nkind: Workspace\nmetadata:\n  name: ws\nspec:\n  backend: azureml\n"
        "  api: v2\n  subscriptionId: s\n  resourceGroup: rg\n  credentials:\n" + credentials)
    (manifest,) = [r.manifest for r in load_desired_state(tmp_path) if r.id.kind is Kind.WORKSPACE]
    assert isinstance(manifest, WorkspaceManifest)
    return manifest


def test_a_managed_identity_reference_is_a_managed_identity_credential(tmp_path: Path) -> None:
    from azure.identity import ManagedIdentityCredential

    ws = workspace(tmp_path, "    type: managedIdentity\n    clientId: {fromEnv: AML_IDENTITY}\n")
    backend = AzureMLV2Backend(ws, environ={"AML_IDENTITY": "11111111-2222-3333-4444-555555555555"},
                               list_v1_services=False)
    assert isinstance(backend.session.credential(), ManagedIdentityCredential)
    missing = AzureMLV2Backend(ws, environ={}, list_v1_services=False)
    with pytest.raises(PermanentError, match=r"credentials\.clientId: environment variable AML_IDENTITY is not set"):
        missing.session.credential()


def test_an_azure_cli_reference_without_az_is_a_permanent_login_failure_that_says_why(tmp_path: Path) -> None:
    from azure.identity import AzureCliCredential

    ws = workspace(tmp_path, "    type: azureCli\n")
    backend = AzureMLV2Backend(ws, environ={}, list_v1_services=False)
    assert isinstance(backend.session.credential(), AzureCliCredential)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with pytest.MonkeyPatch.context() as env:  # the process's PATH, where azure-identity looks for `az`
        env.setenv("PATH", str(empty))
        env.setenv("AZUREML_CURRENT_CLOUD", "AzureCloud")  # MLClient sets it; restored with PATH on the way out
        with pytest.raises(PermanentError) as failed:
            backend.read()
    assert failed.value.reason == "AuthenticationFailed"
    assert "login failed" in str(failed.value) and "Azure CLI not found" in str(failed.value)
    backend.close()


def test_a_service_principal_secret_from_a_file_is_used_and_kept_out_of_logs(tmp_path: Path) -> None:
    from azure.identity import ClientSecretCredential

    secret = tmp_path / "sp-secret"
    secret.write_text("s3cret-value\n")
    secret.chmod(0o600)
    ws = workspace(tmp_path, "    tenantId: {value: t}\n    clientId: {value: c}\n"
                             f"    clientSecret: {{fromFile: {secret}}}\n")
    backend = AzureMLV2Backend(ws, environ={}, list_v1_services=False)
    assert isinstance(backend.session.credential(), ClientSecretCredential)
    assert backend.secrets == ("s3cret-value",)
