"""``amlops emulator`` / ``python -m controller.emulator``: run the Azure ML emulator in the foreground."""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from controller.emulator.authorities import load_authority
from controller.emulator.deploying import DataPlane, LocalDataPlane, RecordOnlyDataPlane
from controller.emulator.emulating import Emulator
from controller.emulator.faults import Faults, parse_flag
from controller.emulator.logins import Issuer, Principal, new_principal
from controller.emulator.records import WorkspaceRef
from controller.emulator.serving import ProxyServer
from controller.emulator.stores import Store
from controller.emulator.v2computes import parse_cluster_flag
from controller.structs.logformats import event_logger

log = event_logger("controller.emulator")

DEFAULT_WORKSPACE = "00000000-0000-0000-0000-000000000001/amlops-rg/amlops-ws"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def _load_secrets(state: Path) -> tuple[Principal, bytes]:
    """The accepted service principal and the token-signing key, kept across restarts (0600)."""
    path = state / "secrets.json"
    if path.exists():
        data = json.loads(path.read_text())
        return Principal(data["tenantId"], data["clientId"], data["clientSecret"]), bytes.fromhex(data["signingKey"])
    principal, key = new_principal(), secrets.token_bytes(32)
    _write_private(path, json.dumps({"tenantId": principal.tenant_id, "clientId": principal.client_id,
                                     "clientSecret": principal.client_secret, "signingKey": key.hex()}))
    return principal, key


def build_parser() -> argparse.ArgumentParser:
    """The emulator's flags."""
    p = argparse.ArgumentParser(prog="amlops emulator", description="Azure ML (SDK v1 and v2) emulator behind an HTTPS proxy")
    p.add_argument("--listen", default="127.0.0.1:7780", help="proxy + admin address (port 0 picks a free port)")
    p.add_argument("--state-dir", default=".amlops-emulator", help="state folder (SQLite, CA, blobs, env.sh)")
    p.add_argument("--workspace", action="append", default=[], metavar="SUB/RG/NAME",
                   help=f"a workspace to serve (repeatable; default {DEFAULT_WORKSPACE})")
    p.add_argument("--region", default="westeurope", help="region of the workspaces and of the api host")
    p.add_argument("--fault", action="append", default=[], metavar="ROUTE=STATUS[,count=N,retryAfter=S,...]",
                   help="a fault rule (repeatable); see also POST /_emulator/faults")
    p.add_argument("--no-data-plane", action="store_true",
                   help="do not run replicas: services become Healthy without a scoring endpoint")
    p.add_argument("--deploy-wait", type=float, default=120.0,
                   help="seconds a create/update request waits for the deployment before answering 202")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds replicas get to become ready")
    p.add_argument("--poll-ms", type=int, default=1000,
                   help="the retry-after-ms the v2 long-running operations ask clients to wait between polls")
    p.add_argument("--lro-delay", type=float, default=0.2,
                   help="seconds a v2 endpoint update stays InProgress before its traffic table switches")
    p.add_argument("--aks-cluster", action="append", default=[], metavar="NAME=VMSIZE:COUNT",
                   help="an AKS cluster that exists in the first workspace's resource group, for v2 "
                        "KubernetesCompute attach (repeatable; also PUT …/managedClusters/{name} on ARM)")
    p.add_argument("--log-level", default="INFO", help="least severe level logged (default INFO)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    state = Path(args.state_dir).absolute()
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    host, _, port_text = args.listen.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"amlops emulator: refusing to listen on {host!r}; it serves secrets and must stay on loopback",
              file=sys.stderr)
        return 2
    try:
        workspaces = [WorkspaceRef.parse(w) for w in (args.workspace or [DEFAULT_WORKSPACE])]
        faults = Faults([parse_flag(f) for f in args.fault])
        clusters = [parse_cluster_flag(c) for c in args.aks_cluster]
    except ValueError as exc:
        print(f"amlops emulator: {exc}", file=sys.stderr)
        return 2
    principal, key = _load_secrets(state)
    authority = load_authority(state / "ca")
    store = Store(state / "emulator.db")
    dataplane: DataPlane = RecordOnlyDataPlane() if args.no_data_plane else LocalDataPlane(state, args.ready_timeout)
    emulator = Emulator(state, store, Issuer(principal, key), faults, dataplane, args.region, args.deploy_wait,
                        poll_ms=args.poll_ms, lro_delay_s=args.lro_delay)
    for ws in workspaces:
        emulator.ensure_workspace(ws)
    first = workspaces[0]
    for name, vm_size, count in clusters:
        cluster_id = name if name.startswith("/") else (
            f"/subscriptions/{first.subscription}/resourceGroups/{first.resource_group}/providers/"
            f"Microsoft.ContainerService/managedClusters/{name}")
        emulator.add_managed_cluster(cluster_id, vm_size, count)
    server = ProxyServer((host, int(port_text or 0)), emulator, authority)
    port = server.server_address[1]
    emulator.frontend.base_url = f"http://127.0.0.1:{port}"
    emulator.restore_routes()
    env = {
        "HTTPS_PROXY": f"http://127.0.0.1:{port}", "https_proxy": f"http://127.0.0.1:{port}",
        "REQUESTS_CA_BUNDLE": str(authority.bundle_path), "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "AZURE_TENANT_ID": principal.tenant_id, "AZURE_CLIENT_ID": principal.client_id,
        "AZURE_CLIENT_SECRET": principal.client_secret, "AZURE_SUBSCRIPTION_ID": first.subscription,
        "AMLOPS_EMULATOR_ADMIN": f"http://127.0.0.1:{port}/_emulator",
    }
    _write_private(state / "env.sh", "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
    _write_private(state / "config.json", json.dumps({"subscription_id": first.subscription,
                                                      "resource_group": first.resource_group,
                                                      "workspace_name": first.name}, indent=2) + "\n")
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("emulator.listening", port=port, state_dir=state, workspaces=len(workspaces))
    print(f"amlops emulator listening on http://127.0.0.1:{port} (source {state / 'env.sh'})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        emulator.close()
        dataplane.close()
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
