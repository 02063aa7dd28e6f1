"""One reconcile pass of the real engine on the azureml backend, run in a subprocess with the emulator's env.

``python reconcile_driver.py '{"root": ..., "stateDir": ..., "revision": ...}'`` runs
``controller.core.reconciling.reconcile`` with a real ``BackendPool`` and ``Recorder`` (the same
wiring as ``amlops apply``), then prints one ``RESULT {json}`` line: the outcome, the recorded
resource status, optionally the actual state read back, and optionally predictions from the
walk-through's client (``requests.post`` with ``Authorization: Bearer <get_keys()[0]>``).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any


def _predict(pool: Any, service: str, rows: list[list[float]]) -> dict[str, Any]:
    import requests
    from azureml.core.webservice import Webservice

    backend = pool.backends()[0]
    svc = Webservice(backend.ws, service)
    key = svc.get_keys()[0]
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key}
    resp = requests.post(svc.scoring_uri, json.dumps({"data": rows}), headers=headers, timeout=120)
    return {"status": resp.status_code, "body": resp.json() if resp.ok else resp.text, "state": svc.state,
            "models": [m.id for m in svc.models or []], "properties": dict(svc.properties or {})}


def main(args: dict[str, Any]) -> dict[str, Any]:
    from controller.core.connecting import BackendPool
    from controller.core.executing import RetryPolicy
    from controller.core.reconciling import ReconcileOptions, reconcile
    from controller.core.recording import Recorder

    retry = RetryPolicy(**args.get("retry", {"max_attempts": 4, "base_delay_s": 0.05, "max_delay_s": 0.2,
                                             "max_total_s": 60.0}))
    pool = BackendPool(args["stateDir"], "amlops")
    recorder = Recorder(args["stateDir"])
    outcome = reconcile(args["root"], ".", args["revision"], pool.backend_for, recorder,
                        ReconcileOptions(controller_name="amlops", retry=retry, parallelism=2,
                                         source=args.get("source", ""),
                                         allow_mass_delete=args.get("allowMassDelete", False)))
    out: dict[str, Any] = {
        "status": outcome.status.value,
        "errors": list(outcome.errors),
        "plan": [[c.id.kind.value, c.id.name, c.action.value, c.reason] for c in outcome.plan.changes]
        if outcome.plan is not None else [],
        "changes": [{"id": f"{c.id.kind.value}/{c.id.name}", "action": c.action.value, "status": c.status.value,
                     "attempts": c.attempts, "reason": c.reason, "error": c.error} for c in outcome.changes],
        "resources": {f"{rid.kind.value}/{rid.name}": [[c.type, c.status, c.reason, c.message] for c in st.conditions]
                      for rid, st in recorder.resource_status().items()},
    }
    if args.get("readBack"):
        actual = pool.backends()[0].read()
        out["actual"] = {f"{r.id.kind.value}/{r.id.name}": {"spec": dict(r.spec), "tags": dict(r.tags),
                                                            "details": dict(r.details)} for r in actual}
    if args.get("predict"):
        out["predict"] = _predict(pool, args["predict"]["service"], args["predict"]["rows"])
    pool.close()
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print("RESULT " + json.dumps(main(json.loads(sys.argv[1])), default=str), flush=True)
