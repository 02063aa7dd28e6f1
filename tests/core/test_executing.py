"""The executor: order, retries with backoff, and failure isolation."""

from __future__ import annotations

import time

from controller.backends.base import ApplyContext
from controller.core.executing import RetryPolicy, execute
from controller.core.planning import plan, static_replace_fields
from controller.structs.errors import PermanentError, TransientError
from controller.structs.manifests import Kind
from controller.structs.results import ChangeStatus, ExecutionEvent, ExecutionPhase
from controller.structs.states import ActualState, DesiredResource, DesiredState, ResourceId

from .memories import MemoryBackend
from .repos import Repo

MODEL = ResourceId(Kind.MODEL, "linear")


def _run(desired: DesiredState, backend: MemoryBackend, **kwargs: object) -> tuple:  # type: ignore[type-arg]
    the_plan = plan(desired, backend.read(), controller_name="amlops", replace_fields=static_replace_fields)
    ctx = ApplyContext("amlops", desired.revision, desired.root, desired)
    return execute(the_plan, desired, lambda rid: backend, ctx, sleep=lambda s: None, **kwargs)  # type: ignore[arg-type]


def test_transient_errors_are_retried_until_the_change_succeeds(repo: Repo, backend: MemoryBackend) -> None:
    desired = repo.standard().load()
    backend.failures[MODEL] = [TransientError("throttled", retry_after=0.01), TransientError("503")]
    delays: list[float] = []
    the_plan = plan(desired, ActualState({}), controller_name="amlops", replace_fields=static_replace_fields)
    ctx = ApplyContext("amlops", desired.revision, desired.root, desired)
    outcomes = execute(the_plan, desired, lambda rid: backend, ctx, sleep=delays.append, rng=lambda: 0.5,
                       retry=RetryPolicy(max_attempts=5, base_delay_s=1.0))
    model = next(o for o in outcomes if o.id == MODEL)
    assert model.status is ChangeStatus.SUCCEEDED and model.attempts == 3
    assert all(o.status is ChangeStatus.SUCCEEDED for o in outcomes)
    # Full jitter: rng × min(cap, base × 2^(n-1)), but never below the backend's retry_after.
    assert delays == [0.5, 1.0]


def test_a_retry_waits_at_least_what_the_backends_retry_after_asks(repo: Repo, backend: MemoryBackend) -> None:
    desired = repo.standard().load()
    # Azure said Retry-After: 7 twice; the jittered back-off alone (0.5 × 1 s, then 0.5 × 2 s) is shorter.
    backend.failures[MODEL] = [TransientError("429", retry_after=7.0), TransientError("429", retry_after=7.0),
                               TransientError("503")]
    delays: list[float] = []
    the_plan = plan(desired, ActualState({}), controller_name="amlops", replace_fields=static_replace_fields)
    ctx = ApplyContext("amlops", desired.revision, desired.root, desired)
    outcomes = execute(the_plan, desired, lambda rid: backend, ctx, sleep=delays.append, rng=lambda: 0.5,
                       retry=RetryPolicy(max_attempts=5, base_delay_s=1.0, max_delay_s=30.0))
    assert next(o for o in outcomes if o.id == MODEL).attempts == 4
    assert delays == [7.0, 7.0, 2.0]  # the floor, the floor, then the jitter again (0.5 × 4 s)
    # Past the policy's cap as well: the server's word wins over max_delay_s.
    assert RetryPolicy(max_delay_s=1.0).delay(1, 12.5, lambda: 1.0) == 12.5


def test_retries_stop_at_the_attempt_cap(repo: Repo, backend: MemoryBackend) -> None:
    desired = repo.standard().load()
    backend.failures[MODEL] = [TransientError("503")] * 10
    outcomes = _run(desired, backend, retry=RetryPolicy(max_attempts=3, base_delay_s=0.0))
    model = next(o for o in outcomes if o.id == MODEL)
    assert model.status is ChangeStatus.FAILED and model.attempts == 3 and model.reason == "RetriesExhausted"


def test_a_permanent_error_skips_dependents_and_nothing_else(repo: Repo, backend: MemoryBackend) -> None:
    repo.standard(services=("svc-a",))
    repo.write("manifests/services/svc-plain.yaml", (
        "apiVersion: amlops.dev/v1\nkind: Webservice\nmetadata:\n  name: svc-plain\nspec:\n  cluster: aks-cpu\n"
        "  sourceDirectory: ../src\n  entryScript: score.py\n"))
    desired = repo.load()
    backend.failures[MODEL] = [PermanentError("model file is corrupt", reason="InvalidModel")]
    events: list[ExecutionEvent] = []
    outcomes = {o.id.name: o for o in _run(desired, backend, progress=events.append, parallelism=2)}
    assert outcomes["linear"].status is ChangeStatus.FAILED
    assert outcomes["linear"].reason == "InvalidModel" and outcomes["linear"].attempts == 1
    assert outcomes["svc-a"].status is ChangeStatus.SKIPPED and outcomes["svc-a"].reason == "DependencyFailed"
    assert outcomes["svc-plain"].status is ChangeStatus.SUCCEEDED
    assert outcomes["aks-cpu"].status is ChangeStatus.SUCCEEDED
    assert ("create", "Webservice/svc-a") not in backend.writes
    assert any(e.phase is ExecutionPhase.SKIPPED and e.id.name == "svc-a" for e in events)


def test_an_unexpected_exception_fails_only_that_change(repo: Repo, backend: MemoryBackend) -> None:
    desired = repo.standard().load()
    backend.failures[ResourceId(Kind.ENVIRONMENT, "numpy-env")] = [RuntimeError("bug")]
    outcomes = {o.id.name: o for o in _run(desired, backend)}
    assert outcomes["numpy-env"].status is ChangeStatus.FAILED and outcomes["numpy-env"].reason == "Unexpected"
    assert outcomes["linear"].status is ChangeStatus.SUCCEEDED
    assert outcomes["svc-a"].status is ChangeStatus.SKIPPED


class SlowBackend(MemoryBackend):
    """A memory backend whose writes take a while and log when each one starts and ends."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[str, str]] = []

    def create(self, resource: DesiredResource, ctx: ApplyContext) -> None:
        with self._lock:
            self.spans.append(("start", str(resource.id)))
        # Slow dependencies: a dependent started on its dependency's start alone would overlap it.
        time.sleep(0.2 if resource.id.kind is not Kind.WEBSERVICE else 0.0)
        super().create(resource, ctx)
        with self._lock:
            self.spans.append(("end", str(resource.id)))


def test_dependencies_finish_before_their_dependents_start(repo: Repo) -> None:
    desired = repo.standard(services=("svc-a", "svc-b", "svc-c")).load()
    backend = SlowBackend()
    outcomes = _run(desired, backend, parallelism=4)
    assert {o.status for o in outcomes} == {ChangeStatus.SUCCEEDED}
    position = {event: i for i, event in enumerate(backend.spans)}
    for service in ("svc-a", "svc-b", "svc-c"):
        for dependency in ("AksCluster/aks-cpu", "Model/linear", "Environment/numpy-env"):
            assert position[("end", dependency)] < position[("start", f"Webservice/{service}")], backend.spans
    # The independent kinds did run at once (parallelism is real, so the check above can fail).
    first_end = min(i for (what, _), i in position.items() if what == "end")
    assert sum(1 for (what, _), i in position.items() if what == "start" and i < first_end) >= 2, backend.spans


def test_a_stop_lets_the_change_in_flight_finish_and_starts_nothing_new(repo: Repo, backend: MemoryBackend) -> None:
    import threading

    desired = repo.standard().load()
    stop = threading.Event()

    def progress(event: ExecutionEvent) -> None:
        if event.phase is ExecutionPhase.STARTED:
            stop.set()  # SIGTERM arrives while the first change is being applied

    outcomes = _run(desired, backend, parallelism=1, progress=progress, stop=stop)
    assert outcomes[0].status is ChangeStatus.SUCCEEDED
    assert {o.status for o in outcomes[1:]} == {ChangeStatus.SKIPPED}
    assert {o.reason for o in outcomes[1:]} == {"Interrupted"}
    assert len(backend.writes) == 1
