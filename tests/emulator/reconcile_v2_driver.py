"""One reconcile pass on the azureml backend (API v2), run in a subprocess with the emulator's env.

The same as ``reconcile_driver.py`` (real ``BackendPool`` and ``Recorder``, as ``amlops apply``
wires them), plus: ``predict`` scores through the v2 endpoint's ``scoring_uri`` with the key from
``get_keys`` (a plain ``requests`` client, as the walk-through's), ``planOnly`` prints the plan
without applying, ``access`` exercises keys / logs through the backend's ServiceAccess, and
``drive`` runs passes as the loop does (sleeping ``requeue_after`` between them) until a rollout is
no longer under way, recording where it stood after each pass (``describe``, as ``amlops rollout
status`` shows it); ``drive.exitAtStep`` ends the process without any cleanup once the rollout has
entered that step (a controller killed mid-rollout).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any


def _v2(pool: Any) -> Any:
    return next(b for b in pool.backends() if getattr(b, "api", "") == "v2")


def _predict(pool: Any, service: str, rows: list[list[float]]) -> dict[str, Any]:
    import requests

    backend = _v2(pool)
    client = backend.session.client
    endpoint = client.online_endpoints.get(service)
    key = client.online_endpoints.get_keys(service).primary_key
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
    resp = requests.post(endpoint.scoring_uri, json.dumps({"data": rows}), headers=headers, timeout=120)
    return {"status": resp.status_code, "body": resp.json() if resp.ok else resp.text, "uri": endpoint.scoring_uri,
            "traffic": dict(endpoint.traffic or {}), "key": key,
            "deployments": sorted(d.name for d in client.online_deployments.list(service))}


def _service_info(pool: Any, service: str) -> dict[str, Any]:
    """Where each API generation serves ``service`` and with which key (absent: not there)."""
    info: dict[str, Any] = {}
    for backend in pool.backends():
        v1 = backend if getattr(backend, "api", "") == "v1" else backend._v1_backend()
        if v1 is not None and "v1" not in info:
            try:
                svc = v1._access.webservice(service)
                info["v1"] = {"uri": svc.scoring_uri, "key": svc.get_keys()[0]}
            except Exception as exc:  # reported, not raised: absence is an answer
                info["v1_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        if getattr(backend, "api", "") == "v2":
            try:
                client = backend.session.client
                info["v2"] = {"uri": client.online_endpoints.get(service).scoring_uri,
                              "key": client.online_endpoints.get_keys(service).primary_key}
            except Exception as exc:
                info["v2_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return info


def _admin(url: str, method: str) -> Any:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, method=method), timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def _by_hand(action: dict[str, Any]) -> None:
    """What a user does to the workspace with plain azure-ai-ml between two passes (not through amlops)."""
    import os

    from azure.ai.ml import MLClient
    from azure.identity import ClientSecretCredential

    cfg = action["workspace"]
    client = MLClient(ClientSecretCredential(os.environ["AZURE_TENANT_ID"], os.environ["AZURE_CLIENT_ID"],
                                             os.environ["AZURE_CLIENT_SECRET"]),
                      cfg["subscription_id"], cfg["resource_group"], cfg["workspace_name"])
    ops = client.models if action["kind"] == "model" else client.environments
    asset = ops.get(action["name"], label="latest")
    if action["do"] == "retag":
        asset.tags = {**(asset.tags or {}), **action["tags"]}
        ops.create_or_update(asset)
    elif action["do"] == "register":  # the same content under a version of the user's own
        asset.version, asset.tags = action["version"], dict(action["tags"])
        ops.create_or_update(asset)
    elif action["do"] == "archive":
        ops.archive(action["name"], version=asset.version)
    else:
        raise ValueError(action["do"])


def main(args: dict[str, Any]) -> dict[str, Any]:
    """One pass as ``args`` says, or (``passes``) several with one backend pool, as ``amlops run`` keeps it.

    Each entry of ``passes`` may name its own ``root``, a ``byHand`` change made first, and whether the
    emulator's request counters (``admin``) are reset before and read after the pass (``count``).
    """
    if "passes" not in args:
        return _passes(args, [{}])[0]
    return {"passes": _passes(args, list(args["passes"]))}


def _passes(common: dict[str, Any], passes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from controller.core.connecting import BackendPool

    pool = BackendPool(common["stateDir"], "amlops")
    try:
        out = []
        for n, each in enumerate(passes):
            args = {**common, **each, "revision": f"{common['revision']}.{n}" if len(passes) > 1 else common["revision"]}
            if each.get("byHand"):
                _by_hand(each["byHand"])
            if each.get("count"):
                _admin(common["admin"] + "requests", "DELETE")
            result = _one(args, pool)
            if each.get("count"):
                result["counts"] = _admin(common["admin"] + "requests", "GET")
            out.append(result)
        return out
    finally:
        pool.close()


def _one(args: dict[str, Any], pool: Any) -> dict[str, Any]:
    from controller.core.executing import RetryPolicy
    from controller.core.reconciling import ReconcileOptions, reconcile
    from controller.core.recording import Recorder

    retry = RetryPolicy(**args.get("retry", {"max_attempts": 3, "base_delay_s": 0.05, "max_delay_s": 0.2,
                                             "max_total_s": 60.0}))
    recorder = Recorder(args["stateDir"])
    options = ReconcileOptions(controller_name="amlops", retry=retry, parallelism=2,
                               detect_only=bool(args.get("planOnly")), source=args.get("source", ""),
                               allow_mass_delete=args.get("allowMassDelete", False))
    outcome = reconcile(args["root"], ".", args["revision"], pool.backend_for, recorder, options)
    passes: list[dict[str, Any]] = []
    drive = args.get("drive")
    if drive:
        from controller.core.rolling_out import describe
        from controller.structs.results import ReconcileStatus

        deadline = time.monotonic() + float(drive.get("deadline", 300))
        while True:
            where = describe(_v2(pool), drive["service"])
            passes.append({"status": outcome.status.value, "rollout": where})
            if outcome.status is not ReconcileStatus.PROGRESSING or time.monotonic() > deadline:
                break
            if drive.get("exitAtStep") and where is not None and where.get("step") == drive["exitAtStep"]:
                print("\nRESULT " + json.dumps({"status": "killed", "passes": passes}, default=str), flush=True)
                os._exit(0)  # no cleanup, no closing: as if killed
            time.sleep(outcome.requeue_after or 0.5)
            outcome = reconcile(args["root"], ".", args["revision"], pool.backend_for, recorder, options)
    out: dict[str, Any] = {
        "status": outcome.status.value,
        "errors": list(outcome.errors),
        "plan": [{"id": f"{c.id.kind.value}/{c.id.name}", "action": c.action.value, "reason": c.reason,
                  "diffs": [[d.path, d.before, d.after] for d in c.diffs]}
                 for c in outcome.plan.changes] if outcome.plan is not None else [],
        "changes": [{"id": f"{c.id.kind.value}/{c.id.name}", "action": c.action.value, "status": c.status.value,
                     "attempts": c.attempts, "reason": c.reason, "error": c.error, "rollout": list(c.rollout)}
                    for c in outcome.changes],
        "passes": passes,
        "resources": {f"{rid.kind.value}/{rid.name}": [[c.type, c.status, c.reason, c.message] for c in st.conditions]
                      for rid, st in recorder.resource_status().items()},
    }
    if args.get("readBack"):
        actual = _v2(pool).read()
        out["actual"] = {f"{r.id.kind.value}/{r.id.name}": {"spec": dict(r.spec), "tags": dict(r.tags),
                                                            "details": dict(r.details)} for r in actual}
    if args.get("predict"):
        asked = args["predict"]
        rows = asked["rows"] if "rows" in asked else json.loads(Path(asked["rowsFile"]).read_text())  # many rows: a file
        out["predict"] = _predict(pool, asked["service"], rows)
    if args.get("serviceInfo"):
        out["serviceInfo"] = _service_info(pool, args["serviceInfo"])
    if args.get("token"):
        import requests

        backend = _v2(pool)
        token = backend.get_token(args["token"])
        uri = backend.session.client.online_endpoints.get(args["token"]).scoring_uri
        resp = requests.post(uri, json.dumps({"data": [[1, 1]]}), timeout=60,
                             headers={"Content-Type": "application/json", "Authorization": "Bearer " + token.access_token})
        out["token"] = {"status": resp.status_code, "body": resp.text, "expires": token.expiry_on,
                        "refresh": token.refresh_after, "uri": uri}
    if args.get("access"):
        backend = _v2(pool)
        name = args["access"]
        before = backend.get_keys(name)
        backend.regenerate_key(name, "secondary")
        after = backend.get_keys(name)
        out["access"] = {"primary_kept": before[0] == after[0], "secondary_changed": before[1] != after[1],
                         "log": backend.tail_log(name, lines=20)[:2000]}
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print("\nRESULT " + json.dumps(main(json.loads(sys.argv[1])), default=str), flush=True)
