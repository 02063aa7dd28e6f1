"""The v2 data plane's front: one router (Kubernetes' ``azureml-fe``) in front of every online endpoint.

An endpoint's ``scoringUri`` is ``http://127.0.0.1:{emulator port}/api/v1/endpoint/{name}/score``,
one stable address per endpoint, served on the emulator's own loopback port. Per request the
router checks the endpoint's key (``Authorization: Bearer <primary|secondary>``) or AML token,
picks a deployment (the ``azureml-model-deployment`` header when given, else the traffic table by
smooth weighted round robin, so a 50/50 table splits 50/50), and forwards to that deployment's
real scoring replicas with the deployment's own key. The answer carries the
``azureml-model-deployment`` header naming who answered, as Azure's does.

Only deployments whose provisioning ``Succeeded`` are routable; the traffic table of an endpoint
is replaced as one object (:meth:`Frontend.set_traffic`), which the endpoint's long-running
operation calls at the moment it reaches ``Succeeded``, so a request sees the old table or the
new one, never a mix.

Every answered request is counted per (endpoint, deployment) with its status and latency; the
Azure Monitor-style metrics route (``insights``) reads these counters.
"""

from __future__ import annotations

import hmac
import http.client
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Final
from urllib.parse import urlsplit

from controller.structs import tokens

DEPLOYMENT_HEADER: Final = "azureml-model-deployment"
PATH_PREFIX: Final = "/api/v1/endpoint/"
_KEEP_SAMPLES: Final = 200_000
_FORWARD_TIMEOUT_S: Final = 300.0


@dataclass(frozen=True)
class Upstream:
    """One deployment's replicas: their local scoring URI and the key they accept."""

    uri: str
    key: str | None


@dataclass(frozen=True)
class Route:
    """What the router knows of one endpoint; replaced whole on every change."""

    auth_mode: str  # "Key" | "AMLToken"
    keys: tuple[str, str] = ("", "")
    token_key: bytes | None = None
    traffic: tuple[tuple[str, int], ...] = ()
    upstreams: tuple[tuple[str, Upstream], ...] = ()

    def upstream(self, deployment: str) -> Upstream | None:
        return dict(self.upstreams).get(deployment)


@dataclass(frozen=True)
class Sample:
    """One answered request."""

    at: float
    status: int
    latency_ms: float


@dataclass
class _Balancer:
    """Smooth weighted round robin (as nginx does): exact shares, interleaved."""

    current: dict[str, int] = field(default_factory=dict)

    def pick(self, weights: list[tuple[str, int]]) -> str | None:
        live = [(name, w) for name, w in weights if w > 0]
        if not live:
            return None
        total = sum(w for _, w in live)
        for name, w in live:
            self.current[name] = self.current.get(name, 0) + w
        best = max(live, key=lambda item: self.current[item[0]])[0]
        self.current[best] -= total
        return best


@dataclass(frozen=True)
class Answer:
    """What the router answers a client."""

    status: int
    body: bytes
    headers: dict[str, str]


def _error(status: int, message: str, deployment: str | None = None) -> Answer:
    headers = {"Content-Type": "application/json"}
    if deployment:
        headers[DEPLOYMENT_HEADER] = deployment
    return Answer(status, json.dumps({"message": message}).encode(), headers)


class Frontend:
    """Routes scoring requests of every v2 endpoint; thread-safe."""

    def __init__(self) -> None:
        self.base_url = "http://127.0.0.1:0"
        self._lock = threading.Lock()
        self._routes: dict[str, Route] = {}
        self._balancers: dict[str, _Balancer] = {}
        self._samples: dict[tuple[str, str], deque[Sample]] = {}
        self._local = threading.local()

    # -- the control plane's side ----------------------------------------------------------------

    def scoring_uri(self, endpoint: str) -> str:
        """The endpoint's one stable scoring URI."""
        return f"{self.base_url}{PATH_PREFIX}{endpoint}/score"

    def set_endpoint(self, endpoint: str, auth_mode: str, keys: tuple[str, str], token_key: bytes | None) -> None:
        """Create the endpoint's route, or change its auth (keeping traffic and upstreams)."""
        with self._lock:
            old = self._routes.get(endpoint)
            if old is None:
                self._routes[endpoint] = Route(auth_mode, keys, token_key)
            else:
                self._routes[endpoint] = replace(old, auth_mode=auth_mode, keys=keys, token_key=token_key)

    def set_keys(self, endpoint: str, keys: tuple[str, str]) -> None:
        """New keys take effect for the next request."""
        with self._lock:
            if endpoint in self._routes:
                self._routes[endpoint] = replace(self._routes[endpoint], keys=keys)

    def set_traffic(self, endpoint: str, traffic: dict[str, int]) -> None:
        """Switch the whole traffic table at once."""
        with self._lock:
            if endpoint in self._routes:
                self._routes[endpoint] = replace(self._routes[endpoint], traffic=tuple(sorted(traffic.items())))
                self._balancers.pop(endpoint, None)

    def set_upstream(self, endpoint: str, deployment: str, upstream: Upstream | None) -> None:
        """Make a deployment routable (its provisioning succeeded) or not (None)."""
        with self._lock:
            route = self._routes.get(endpoint)
            if route is None:
                return
            ups = {k: v for k, v in route.upstreams if k != deployment}
            if upstream is not None:
                ups[deployment] = upstream
            self._routes[endpoint] = replace(route, upstreams=tuple(sorted(ups.items())))

    def remove_endpoint(self, endpoint: str) -> None:
        """Forget the endpoint (its URI answers 404 from now on)."""
        with self._lock:
            self._routes.pop(endpoint, None)
            self._balancers.pop(endpoint, None)

    def samples(self, endpoint: str) -> dict[str, list[Sample]]:
        """Answered requests per deployment of ``endpoint`` (oldest first)."""
        with self._lock:
            return {dep: list(found) for (ep, dep), found in self._samples.items() if ep == endpoint}

    # -- the client's side ---------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        """Answer one request to ``/api/v1/endpoint/{name}/…``."""
        rest = path[len(PATH_PREFIX):]
        endpoint, _, action = rest.partition("/")
        with self._lock:
            route = self._routes.get(endpoint)
        if route is None:
            return _error(404, f"Endpoint {endpoint} was not found.")
        lower = {k.lower(): v for k, v in headers.items()}
        if not self._authorized(route, endpoint, lower.get("authorization", "")):
            return _error(401, "Authorization failed: the request carries no valid key or token for this endpoint "
                          "(send 'Authorization: Bearer <key>').")
        if action == "swagger.json" and method == "GET":
            return Answer(200, json.dumps({"swagger": "2.0", "info": {"title": endpoint, "version": "1.0"},
                                           "paths": {"/score": {"post": {}}}}).encode(),
                          {"Content-Type": "application/json"})
        if action != "score" or method not in ("POST", "GET"):
            return _error(404, f"No route {method} /{action} on endpoint {endpoint}; POST …/score.")
        wanted = lower.get(DEPLOYMENT_HEADER)
        if wanted:
            deployment = wanted
            if route.upstream(wanted) is None:
                return _error(404, f"Deployment {wanted} of endpoint {endpoint} does not exist or is not ready "
                              "(only deployments whose provisioning succeeded take requests).")
        else:
            with self._lock:
                balancer = self._balancers.setdefault(endpoint, _Balancer())
                picked = balancer.pick([(d, w) for d, w in route.traffic if route.upstream(d) is not None])
            if picked is None:
                return _error(503, "No valid deployments to route to. Please check that the endpoint has at least "
                              "one deployment with positive weight values or use a deployment specific header to route.")
            deployment = picked
        upstream = route.upstream(deployment)
        if upstream is None:
            return _error(503, f"Deployment {deployment} stopped taking requests.")
        started = time.monotonic()
        answer = self._forward(upstream, method, lower, body, deployment)
        self._count(endpoint, deployment, answer.status, (time.monotonic() - started) * 1000.0)
        return answer

    @staticmethod
    def _authorized(route: Route, endpoint: str, header: str) -> bool:
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return False
        if route.auth_mode.lower() == "key":
            given = credential.strip().encode()
            return any(k and hmac.compare_digest(given, k.encode()) for k in route.keys)
        if route.token_key is None:
            return False
        return tokens.verify((route.token_key,), credential.strip().encode(), endpoint, time.time())

    def _connection(self, netloc: str) -> http.client.HTTPConnection:
        pool: dict[str, http.client.HTTPConnection] = getattr(self._local, "pool", None) or {}
        self._local.pool = pool
        conn = pool.get(netloc)
        if conn is None:
            host, _, port = netloc.partition(":")
            conn = pool[netloc] = http.client.HTTPConnection(host, int(port or 80), timeout=_FORWARD_TIMEOUT_S)
        return conn

    def _forward(self, upstream: Upstream, method: str, headers: dict[str, str], body: bytes, deployment: str) -> Answer:
        target = urlsplit(upstream.uri)
        out = {"Content-Type": headers.get("content-type", "application/json")}
        if upstream.key:
            out["Authorization"] = f"Bearer {upstream.key}"
        for attempt in (1, 2):  # a kept-alive connection the replica closed is retried once, fresh
            conn = self._connection(target.netloc)
            try:
                conn.request(method, target.path, body=body, headers=out)
                resp = conn.getresponse()
                data = resp.read()
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._local.pool.pop(target.netloc, None)
                if attempt == 2:
                    return _error(502, f"Deployment {deployment} did not answer: {exc}", deployment)
                continue
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                self._local.pool.pop(target.netloc, None)
            return Answer(resp.status, data, {"Content-Type": resp.getheader("Content-Type") or "application/json",
                                              DEPLOYMENT_HEADER: deployment})
        return _error(502, f"Deployment {deployment} did not answer.", deployment)

    def _count(self, endpoint: str, deployment: str, status: int, latency_ms: float) -> None:
        sample = Sample(time.time(), status, latency_ms)
        with self._lock:
            found = self._samples.get((endpoint, deployment))
            if found is None:
                found = self._samples[(endpoint, deployment)] = deque(maxlen=_KEEP_SAMPLES)
            found.append(sample)
