"""The local backend as one handler per kind: each kind is read, applied and deleted by its own handler."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from controller.backends.local import LocalBackend
from controller.backends.local.backend import LOCAL_HANDLERS
from controller.backends.local.stores import LocalStore
from controller.structs.errors import PermanentError
from controller.structs.manifests import KIND_ORDER, Kind
from controller.structs.states import ConditionType, ResourceId

from .conftest import Repo


class CountingStore:
    """The real store, counting its read transactions."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.snapshots = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    @contextmanager
    def snapshot(self) -> Iterator[Any]:
        self.snapshots += 1
        with self.store.snapshot() as conn:
            yield conn


def test_every_kind_has_a_handler_that_declares_its_replace_fields() -> None:
    assert set(LOCAL_HANDLERS) == set(KIND_ORDER)
    assert all(handler.kind is kind for kind, handler in LOCAL_HANDLERS.items())
    assert LOCAL_HANDLERS[Kind.WEBSERVICE].replace_fields == frozenset({"cluster"})


def test_a_read_takes_one_snapshot_of_the_store_and_each_kind_reports_its_records(repo: Repo, state_dir: Path) -> None:
    (repo.root / "services" / "numpy-svc.yaml").unlink()  # records only: no process is started
    backend = LocalBackend(state_dir, "test-controller", gpus=[])
    desired = repo.desired()
    ctx = repo.ctx(desired)
    for resource in desired:
        backend.create(resource, ctx)
    counting = CountingStore(backend.store)
    backend.store = counting  # type: ignore[assignment]
    actual = backend.read()
    assert counting.snapshots == 1
    assert set(actual.resources) == {ResourceId(Kind.WORKSPACE, "ws"), ResourceId(Kind.AKS_CLUSTER, "aks-gpu"),
                                     ResourceId(Kind.MODEL, "scaler")}
    cluster = actual.resources[ResourceId(Kind.AKS_CLUSTER, "aks-gpu")]
    assert cluster.details["gpuCapacity"] == 2
    assert cluster.condition(ConditionType.GPU_UNAVAILABLE) is not None  # given no GPUs, it says so
    assert actual.resources[ResourceId(Kind.MODEL, "scaler")].details["version"] == 1
    assert all(r.owned_by("test-controller") for r in actual)


def test_a_cluster_a_service_runs_on_is_not_deleted(repo: Repo, backend: LocalBackend) -> None:
    desired = repo.desired()
    ctx = repo.ctx(desired)
    for resource in desired:
        backend.create(resource, ctx)
    with pytest.raises(PermanentError) as refused:
        backend.delete(ResourceId(Kind.AKS_CLUSTER, "aks-gpu"), ctx)
    assert refused.value.reason == "InUse" and "numpy-svc" in str(refused.value)
    backend.delete(ResourceId(Kind.WEBSERVICE, "numpy-svc"), ctx)
    backend.delete(ResourceId(Kind.AKS_CLUSTER, "aks-gpu"), ctx)
    assert set(backend.read().resources) == {ResourceId(Kind.WORKSPACE, "ws"), ResourceId(Kind.MODEL, "scaler")}
