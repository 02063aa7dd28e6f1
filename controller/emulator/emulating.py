"""The emulator: every route family over one shared state, and the route table that joins them.

One module per Azure service family, each a mixin over ``records.EmulatorBase``:

- ``identities``: Azure AD login (OpenID configuration, client-credential tokens)
- ``workspaces``: ARM subscriptions, the workspace (v1 and v2 read the same one), discovery, computes
- ``blobs``: blob storage (blob or container SAS)
- ``v1assets`` / ``v1services``: azureml-core's environment, artifact and model-management services
- ``v2computes``: Kubernetes compute attach/detach and the AKS clusters behind them
- ``v2assets``: datastores, models / environments / codes (containers and versions)
- ``v2endpoints`` / ``v2deployments``: online endpoints and deployments, their long-running operations
- ``insights``: Azure Monitor metrics of online endpoints

v1 and v2 objects live side by side in one workspace, as in Azure. The v2 data plane (the
endpoints' scoring URIs) is ``frontends.Frontend``, served on the emulator's own loopback port.
"""

from __future__ import annotations

from pathlib import Path

from controller.emulator import logins
from controller.emulator.deploying import DataPlane
from controller.emulator.faults import Faults
from controller.emulator.frontends import Frontend
from controller.emulator.identities import IdentityRoutes
from controller.emulator.insights import InsightRoutes
from controller.emulator.stores import Store
from controller.emulator.v1services import V1ServiceRoutes
from controller.emulator.v2deployments import V2DeploymentRoutes


class Emulator(IdentityRoutes, V2DeploymentRoutes, V1ServiceRoutes, InsightRoutes):
    """Every route, over one store, one token issuer, one fault table and one data plane."""

    def __init__(self, state_dir: Path, store: Store, issuer: logins.Issuer, faults: Faults,
                 dataplane: DataPlane, region: str = "westeurope", deploy_wait_s: float = 120.0,
                 poll_ms: int = 1000, lro_delay_s: float = 0.2) -> None:
        super().__init__(state_dir, store, issuer, faults, dataplane, region, deploy_wait_s)
        self.frontend = Frontend()
        self.poll_ms = poll_ms
        self.lro_delay_s = lro_delay_s
        self._register_identities(self.router)
        self._register_workspaces(self.router)
        self._register_v2_computes(self.router)
        self._register_v1_assets(self.router)
        self._register_v1_services(self.router)
        self._register_v2_assets(self.router)
        self._register_v2_endpoints(self.router)
        self._register_v2_deployments(self.router)
        self._register_insights(self.router)
        self._register_blobs(self.router)

    def close(self) -> None:
        """Wait briefly for deployments in flight (they run in daemon threads)."""
        for worker in self._workers:
            worker.join(5)
