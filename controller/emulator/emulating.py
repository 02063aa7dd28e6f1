"""The emulator: every route family over one shared state, and the route table that joins them.

One module per Azure service family, each a mixin over ``records.EmulatorBase``:

- ``identities``: Azure AD login (OpenID configuration, client-credential tokens)
- ``workspaces``: ARM subscriptions, the workspace (v1 and v2 shapes alike), discovery, computes
- ``blobs``: blob storage (SAS or shared key)
- ``v1assets`` / ``v1services``: azureml-core's environment, artifact and model-management services
"""

from __future__ import annotations

from pathlib import Path

from controller.emulator import logins
from controller.emulator.deploying import DataPlane
from controller.emulator.faults import Faults
from controller.emulator.identities import IdentityRoutes
from controller.emulator.stores import Store
from controller.emulator.v1services import V1ServiceRoutes
from controller.emulator.workspaces import WorkspaceRoutes


class Emulator(IdentityRoutes, WorkspaceRoutes, V1ServiceRoutes):
    """Every route, over one store, one token issuer, one fault table and one data plane."""

    def __init__(self, state_dir: Path, store: Store, issuer: logins.Issuer, faults: Faults,
                 dataplane: DataPlane, region: str = "westeurope", deploy_wait_s: float = 120.0) -> None:
        super().__init__(state_dir, store, issuer, faults, dataplane, region, deploy_wait_s)
        self._register_identities(self.router)
        self._register_workspaces(self.router)
        self._register_v1_assets(self.router)
        self._register_v1_services(self.router)
        self._register_blobs(self.router)

    def close(self) -> None:
        """Wait briefly for deployments in flight (they run in daemon threads)."""
        for worker in self._workers:
            worker.join(5)
