"""The planner: what a plan says, for each way desired and actual state can differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from controller.core.planning import as_applied, plan, static_replace_fields
from controller.structs.manifests import Kind
from controller.structs.plans import Action, Plan
from controller.structs.states import (
    DIGEST_TAG,
    MANAGED_BY_TAG,
    SOURCE_TAG,
    ActualResource,
    ActualState,
    DesiredState,
    ResourceId,
)

from .repos import Repo

SVC = ResourceId(Kind.WEBSERVICE, "svc-a")


def _plan(desired: DesiredState, actual: ActualState, **kwargs: object) -> Plan:
    return plan(desired, actual, controller_name="amlops", replace_fields=static_replace_fields, **kwargs)  # type: ignore[arg-type]


def _applied(desired: DesiredState) -> ActualState:
    return as_applied(desired, controller_name="amlops")


def _with(actual: ActualState, resource: ActualResource) -> ActualState:
    return ActualState({**actual.resources, resource.id: resource})


def test_an_empty_backend_gets_every_resource_created_in_dependency_order(repo: Repo) -> None:
    desired = repo.standard().load()
    result = _plan(desired, ActualState({}))
    assert [c.action for c in result.changes] == [Action.CREATE] * 5
    assert [c.id.kind for c in result.changes] == [Kind.WORKSPACE, Kind.AKS_CLUSTER, Kind.ENVIRONMENT, Kind.MODEL, Kind.WEBSERVICE]
    service = result.changes[-1]
    assert set(service.depends_on) >= {ResourceId(Kind.AKS_CLUSTER, "aks-cpu"), ResourceId(Kind.MODEL, "linear"),
                                       ResourceId(Kind.ENVIRONMENT, "numpy-env")}
    assert result.held is None


def test_applied_state_plans_no_changes(repo: Repo) -> None:
    desired = repo.standard().load()
    result = _plan(desired, _applied(desired))
    assert not result.has_changes
    assert all(c.action is Action.NOOP for c in result.changes)


def test_a_changed_field_is_an_update_with_before_and_after(repo: Repo) -> None:
    before = repo.standard(replicas=2).load()
    after = repo.standard(replicas=3).load()
    result = _plan(after, _applied(before))
    (change,) = result.effective
    assert change.id == SVC and change.action is Action.UPDATE
    assert [(d.path, d.before, d.after) for d in change.diffs] == [("spec.replicas", 2, 3)]
    assert "spec.replicas" in change.reason


def test_a_replace_field_forces_a_replace_and_says_which(repo: Repo) -> None:
    before = repo.standard().load()
    text = (repo.root / "manifests/services/svc-a.yaml").read_text().replace("cluster: aks-cpu", "cluster: aks-two")
    repo.write("manifests/services/svc-a.yaml", text)
    repo.write("manifests/cluster2.yaml", (repo.root / "manifests/cluster.yaml").read_text().replace("aks-cpu", "aks-two"))
    after = repo.load()
    result = _plan(after, _applied(before))
    replace = next(c for c in result.effective if c.id == SVC)
    assert replace.action is Action.REPLACE
    assert "spec.cluster" in replace.reason
    assert any(d.forces_replace and d.path == "spec.cluster" for d in replace.diffs)


def test_a_replace_never_deletes_a_resource_amlops_did_not_create(repo: Repo) -> None:
    desired = repo.standard().load()
    applied = _applied(desired)
    theirs = applied.resources[SVC]
    # Same name, created by hand (no ownership tags), on another cluster: replacing would delete it.
    unowned = ActualResource(SVC, {**theirs.spec, "cluster": "their-cluster"}, tags={})
    result = _plan(desired, _with(applied, unowned))
    change = next(c for c in result.changes if c.id == SVC)
    assert change.action is Action.NOOP
    assert change.reason.startswith("refused: spec.cluster cannot change in place")
    assert "did not create" in change.reason and not result.has_changes


def test_a_replace_is_refused_for_a_retained_resource(repo: Repo) -> None:
    desired = repo.standard().load()
    applied = _applied(desired)
    cluster_id = ResourceId(Kind.AKS_CLUSTER, "aks-cpu")
    cluster = applied.resources[cluster_id]
    moved = ActualResource(cluster_id, {**cluster.spec, "vmSize": "Standard_NC12"}, tags=dict(cluster.tags))
    result = _plan(desired, _with(applied, moved))
    change = next(c for c in result.changes if c.id == cluster_id)
    assert change.action is Action.NOOP and "deletionPolicy is Retain" in change.reason


def test_fields_the_user_left_out_are_never_diffed_against_backend_defaults(repo: Repo) -> None:
    desired = repo.standard().load()
    actual = _applied(desired)
    observed = actual.resources[SVC]
    # The backend filled in defaults the manifest never mentions, differently from ours.
    spec = {**observed.spec, "scoringTimeoutMs": 12345, "auth": "token", "livenessProbe": {"periodSeconds": 99},
            "resources": {**observed.spec["resources"], "gpu": 0, "memoryGbLimit": 8}}
    result = _plan(desired, _with(actual, ActualResource(SVC, spec, observed.tags, details=observed.details)))
    assert not result.has_changes


def test_units_and_aliases_are_normalised_before_comparing(repo: Repo) -> None:
    desired = repo.standard(cpu="2", image="DEFAULT_CPU_IMAGE").load()
    actual = _applied(desired)
    env_id = ResourceId(Kind.ENVIRONMENT, "numpy-env")
    env = actual.resources[env_id]
    svc = actual.resources[SVC]
    actual = _with(actual, ActualResource(env_id, {**env.spec, "baseImage": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04"},
                                          env.tags, details=env.details))
    actual = _with(actual, ActualResource(SVC, {**svc.spec, "resources": {**svc.spec["resources"], "cpu": 2.0},
                                                "models": ["linear"]}, svc.tags, details=svc.details))
    assert not _plan(desired, actual).has_changes


def test_an_unpinned_model_matches_whatever_version_the_backend_resolved(repo: Repo) -> None:
    desired = repo.standard().load()
    actual = _applied(desired)
    svc = actual.resources[SVC]
    actual = _with(actual, ActualResource(SVC, {**svc.spec, "models": [{"name": "linear", "version": 7}]}, svc.tags, details=svc.details))
    assert not _plan(desired, actual).has_changes


def test_changed_model_file_content_is_an_update_naming_the_content(repo: Repo) -> None:
    before = repo.standard().load()
    np.save(repo.root / "manifests/linear/weights.npy", np.array([[3.0], [4.0]]))
    after = repo.load()
    result = _plan(after, _applied(before))
    model = next(c for c in result.effective if c.id == ResourceId(Kind.MODEL, "linear"))
    assert model.action is Action.UPDATE and not model.diffs
    assert model.reason.startswith("content of spec.path changed (sha256:")
    # The service loads that model, so its digest changed too: it rolls to the new version.
    service = next(c for c in result.effective if c.id == SVC)
    assert "model linear" in service.reason


def test_drift_in_replicas_is_an_update_saying_how_many_run(repo: Repo) -> None:
    desired = repo.standard(replicas=3).load()
    actual = _applied(desired)
    svc = actual.resources[SVC]
    actual = _with(actual, ActualResource(SVC, {**svc.spec, "replicas": 2}, svc.tags, details=svc.details))
    (change,) = _plan(desired, actual).effective
    assert change.action is Action.UPDATE
    assert change.reason == "drift: 2 of 3 replicas running"


def test_a_suspended_resource_is_left_alone(repo: Repo) -> None:
    before = repo.standard(replicas=2).load()
    text = (repo.root / "manifests/services/svc-a.yaml").read_text()
    text = text.replace("  name: svc-a\n", "  name: svc-a\n  annotations:\n    amlops.dev/suspend: \"true\"\n").replace("replicas: 2", "replicas: 5")
    repo.write("manifests/services/svc-a.yaml", text)
    result = _plan(repo.load(), _applied(before))
    change = next(c for c in result.changes if c.id == SVC)
    assert change.action is Action.NOOP and change.reason == "suspended"


def test_removing_a_manifest_prunes_only_owned_resources_with_delete_policy(repo: Repo) -> None:
    before = repo.standard(services=("svc-a", "svc-b", "svc-c")).load()
    actual = _applied(before)
    stranger = ActualResource(ResourceId(Kind.WEBSERVICE, "not-ours"), {"cluster": "aks-cpu"}, {MANAGED_BY_TAG: "someone-else"})
    untagged = ActualResource(ResourceId(Kind.MODEL, "portal-model"), {"path": "x"}, {})
    actual = _with(_with(actual, stranger), untagged)
    repo.remove("manifests/services/svc-b.yaml")
    result = _plan(repo.load(), actual)
    (delete,) = result.effective
    assert delete.id == ResourceId(Kind.WEBSERVICE, "svc-b") and delete.action is Action.DELETE
    assert delete.reason == "manifest removed from manifests/services/svc-b.yaml"
    listed = {c.id for c in result.changes}
    assert stranger.id not in listed and untagged.id not in listed
    assert any("not managed by amlops" in w for w in result.warnings)


def test_a_removed_cluster_is_retained_by_its_default_policy(repo: Repo) -> None:
    before = repo.standard(services=()).load()
    repo.remove("manifests/cluster.yaml")
    result = _plan(repo.load(), _applied(before))
    cluster = next(c for c in result.changes if c.id.kind is Kind.AKS_CLUSTER)
    assert cluster.action is Action.NOOP and cluster.reason == "retained (deletionPolicy: Retain)"


def test_a_removed_service_with_retain_policy_is_kept(repo: Repo) -> None:
    repo.standard(services=("svc-a", "svc-b", "svc-c"))
    path = repo.root / "manifests/services/svc-b.yaml"
    path.write_text(path.read_text() + "  deletionPolicy: Retain\n")
    before = repo.load()
    repo.remove("manifests/services/svc-b.yaml")
    result = _plan(repo.load(), _applied(before))
    change = next(c for c in result.changes if c.id.name == "svc-b")
    assert change.action is Action.NOOP and change.reason == "retained (deletionPolicy: Retain)"


def test_deleting_most_owned_resources_is_held_unless_allowed(repo: Repo) -> None:
    before = repo.standard(services=("svc-a", "svc-b")).load()
    for name in ("model.yaml", "environment.yaml", "services/svc-a.yaml", "services/svc-b.yaml"):
        repo.remove(f"manifests/{name}")
    repo.write("manifests/model.yaml", "")
    after = repo.load()
    held = _plan(after, _applied(before))
    assert held.count(Action.DELETE) == 4
    assert held.held is not None and "4 of 5" in held.held
    assert _plan(after, _applied(before), allow_mass_delete=True).held is None
    # The annotation on any manifest that remains lifts the hold too.
    repo.write("manifests/workspace.yaml", (repo.root / "manifests/workspace.yaml").read_text().replace(
        "  name: local\n", "  name: local\n  annotations:\n    amlops.dev/allow-mass-delete: \"true\"\n"))
    assert _plan(repo.load(), _applied(before)).held is None


def test_deleting_a_few_owned_resources_is_not_held(repo: Repo) -> None:
    before = repo.standard(services=("svc-a", "svc-b")).load()
    repo.remove("manifests/services/svc-b.yaml")
    assert _plan(repo.load(), _applied(before)).held is None


def test_deletes_come_first_in_reverse_dependency_order_then_creates_in_order(repo: Repo) -> None:
    before = repo.standard(services=("svc-a", "svc-b", "svc-c", "svc-d")).load()
    repo.remove("manifests/services/svc-a.yaml")
    repo.remove("manifests/model.yaml")
    repo.write("manifests/model2.yaml", "apiVersion: amlops.dev/v1\nkind: Model\nmetadata:\n  name: linear2\nspec:\n  path: linear\n")
    for name in ("svc-b", "svc-c", "svc-d"):
        path = repo.root / f"manifests/services/{name}.yaml"
        path.write_text(path.read_text().replace("- linear\n", "- linear2\n"))
    repo.write("manifests/services/svc-e.yaml", (repo.root / "manifests/services/svc-b.yaml").read_text().replace("svc-b", "svc-e"))
    result = _plan(repo.load(), _applied(before))
    order = [(c.action, str(c.id)) for c in result.effective]
    assert order[:2] == [(Action.DELETE, "Webservice/svc-a"), (Action.DELETE, "Model/linear")]
    assert order[2] == (Action.CREATE, "Model/linear2")
    assert [a for a, _ in order[3:]] == [Action.UPDATE, Action.UPDATE, Action.UPDATE, Action.CREATE]
    model_delete = result.effective[1]
    assert model_delete.depends_on == (ResourceId(Kind.WEBSERVICE, "svc-a"),)


def test_a_resource_owned_by_another_controller_is_not_fought_over(repo: Repo) -> None:
    desired = repo.standard(replicas=3).load()
    actual = _applied(desired)
    svc = actual.resources[SVC]
    actual = _with(actual, ActualResource(SVC, {**svc.spec, "replicas": 1}, {**svc.tags, MANAGED_BY_TAG: "other"}))
    change = next(c for c in _plan(desired, actual).changes if c.id == SVC)
    assert change.action is Action.NOOP and "other" in change.reason


CANARY_ROLLOUT = """\
  rollout:
    strategy: canary
    steps: [{weight: 10, pauseSeconds: 30}, {weight: 50, minRequests: 200}, {weight: 100}]
    analysis: {maxErrorRate: 0.01, maxP99Ratio: 1.5, minRequests: 100}
"""


def _canary(repo: Repo, replicas: int = 2) -> None:
    repo.standard(replicas=replicas)
    text = (repo.root / "manifests/services/svc-a.yaml").read_text()
    repo.write("manifests/services/svc-a.yaml", text + CANARY_ROLLOUT)


def test_a_new_version_of_a_canary_service_shows_the_steps_and_checks_it_will_go_through(repo: Repo) -> None:
    _canary(repo)
    before = repo.load()
    np.save(repo.root / "manifests/linear/weights.npy", np.array([[3.0], [4.0]]))
    result = _plan(repo.load(), _applied(before))
    service = next(c for c in result.effective if c.id == SVC)
    assert service.rollout == ("canary: 10 % for 30 s → 50 % for 200 requests → 100 %; each step: error rate ≤ 1 %, "
                               "p99 ≤ 1.5 × live, judged after ≥ 100 requests; any failed check rolls back at once")


def test_a_scale_change_of_a_canary_service_goes_out_in_place(repo: Repo) -> None:
    _canary(repo, replicas=2)
    before = repo.load()
    _canary(repo, replicas=3)
    (change,) = _plan(repo.load(), _applied(before)).effective
    assert change.action is Action.UPDATE and change.rollout == ""


def test_a_service_with_a_rollout_in_progress_is_planned_again_until_it_ends(repo: Repo) -> None:
    _canary(repo)
    desired = repo.load()
    applied = _applied(desired)
    svc = applied.resources[SVC]
    rolling = ActualResource(SVC, svc.spec, {**svc.tags, DIGEST_TAG: "rollout:sha256:abc"}, details={
        "rollout": {"strategy": "canary", "phase": "stepping", "step": 2, "weight": 50, "weights": [10, 50, 100],
                    "message": "checks pass over 120 requests; pausing 3/30 s"}})
    (change,) = _plan(desired, _with(applied, rolling)).effective
    assert change.action is Action.UPDATE
    assert change.reason == ("rollout in progress: canary step 2 of 3, 50 % to the new version: "
                             "checks pass over 120 requests; pausing 3/30 s")


def test_an_applied_canary_service_plans_no_changes(repo: Repo) -> None:
    # Its rollout steps are a list of models: the backend reports them with defaults filled in.
    _canary(repo)
    desired = repo.load()
    assert not _plan(desired, _applied(desired)).has_changes
MINE, THEIRS = "/repos/mine//manifests", "/repos/theirs//manifests?ref=main"


def test_only_this_sources_inventory_is_pruned_and_what_another_source_applied_is_left_alone(repo: Repo) -> None:
    applied = as_applied(repo.standard(services=("svc-a", "svc-b")).load(), controller_name="amlops", source=MINE)
    repo.remove("manifests/services/svc-b.yaml")
    desired = repo.load()
    theirs = ActualResource(ResourceId(Kind.WEBSERVICE, "svc-c"), {}, {MANAGED_BY_TAG: "amlops", SOURCE_TAG: THEIRS})
    actual = _with(applied, theirs)
    result = _plan(desired, actual, source=MINE)
    assert [(c.id.name, c.action) for c in result.effective] == [("svc-b", Action.DELETE)]
    assert any("applied by another source" in w for w in result.warnings), result.warnings
    # Without a source (a pass run the way it was before sources were recorded) the name claims all.
    assert {c.id.name for c in _plan(desired, actual).effective} == {"svc-b", "svc-c"}


def test_a_resource_another_source_applied_is_shared_when_equal_and_a_conflict_when_not(repo: Repo) -> None:
    desired = repo.standard().load()
    theirs = as_applied(desired, controller_name="amlops", source=THEIRS)
    shared = _plan(desired, theirs, source=MINE)
    assert not shared.has_changes
    assert all(c.reason.startswith("shared: applied with the same content by " + THEIRS)
               for c in shared.changes if c.id.kind is not Kind.WORKSPACE)

    ours = repo.standard(replicas=3).load()
    conflicted = _plan(ours, theirs, source=MINE)
    assert not conflicted.has_changes, conflicted.effective  # never taken over
    change = next(c for c in conflicted.changes if c.id == SVC)
    assert change.action is Action.NOOP and change.reason.startswith(f"conflict: {SVC} is applied by another source, {THEIRS}")


def test_a_change_that_needs_a_resource_another_source_claims_waits_for_the_conflict(repo: Repo) -> None:
    theirs = as_applied(repo.standard().load(), controller_name="amlops", source=THEIRS)
    model = ResourceId(Kind.MODEL, "linear")
    actual = ActualState({model: theirs.resources[model]})
    np.save(repo.root / "manifests/linear/weights.npy", np.array([[9.0]]))
    result = _plan(repo.load(), actual, source=MINE)
    assert next(c for c in result.changes if c.id == model).reason.startswith("conflict:")
    service = next(c for c in result.changes if c.id == SVC)
    assert service.action is Action.NOOP and service.reason.startswith("conflict: needs Model/linear"), service


def test_a_resource_applied_before_sources_were_recorded_is_adopted_into_the_inventory(repo: Repo) -> None:
    desired = repo.standard().load()
    result = _plan(desired, _applied(desired), source=MINE)
    adopted = {c.id.kind for c in result.effective}
    assert adopted == {Kind.AKS_CLUSTER, Kind.ENVIRONMENT, Kind.MODEL, Kind.WEBSERVICE}  # not the workspace
    assert all(c.action is Action.UPDATE and c.reason.startswith("adopt: recorded without a source") for c in result.effective)


def test_a_requested_delete_waits_only_for_what_uses_each_resource_and_skips_what_is_not_ours(repo: Repo) -> None:
    from controller.core.planning import plan_deletion

    desired = repo.standard(services=("svc-a", "svc-b")).load()
    actual = _applied(desired)
    foreign = ResourceId(Kind.ENVIRONMENT, "other-env")
    actual = _with(actual, ActualResource(foreign, {}, {MANAGED_BY_TAG: "someone-else"}))
    missing = ResourceId(Kind.MODEL, "gone")
    ids = [rid for rid in actual.resources if rid.kind is not Kind.WORKSPACE] + [missing]
    result, notes = plan_deletion(ids, actual, controller_name="amlops", revision="r1")
    assert notes == ("Environment/other-env: not created by controller 'amlops'; skipped (--force deletes it anyway)",
                     "Model/gone: not found")
    assert [str(c.id) for c in result.changes] == ["Webservice/svc-a", "Webservice/svc-b", "Model/linear",
                                                   "Environment/numpy-env", "AksCluster/aks-cpu"]
    assert all(c.action is Action.DELETE and c.reason == "amlops delete" for c in result.changes)
    services = (ResourceId(Kind.WEBSERVICE, "svc-a"), ResourceId(Kind.WEBSERVICE, "svc-b"))
    by_kind = {c.id.kind: c for c in result.changes}
    assert by_kind[Kind.MODEL].depends_on == services  # the model goes once no service runs it
    assert by_kind[Kind.WEBSERVICE].depends_on == ()
    forced, notes = plan_deletion([foreign], actual, controller_name="amlops", revision="r1", force=True)
    assert [str(c.id) for c in forced.changes] == ["Environment/other-env"] and notes == ()
def test_the_planner_asks_each_backends_handler_which_fields_force_a_replace(repo: Repo, tmp_path: Path) -> None:
    # agentCount: Azure ML v1 cannot resize an AKS compute in place; the local backend's cluster is a record.
    from controller.backends.azureml.v1.backend import V1_HANDLERS
    from controller.backends.handling import replace_fields_of
    from controller.backends.local import LocalBackend

    before = repo.standard(agents=3).load()
    after = repo.standard(agents=5).load()
    cluster = ResourceId(Kind.AKS_CLUSTER, "aks-cpu")
    local = LocalBackend(tmp_path / "state", gpus=[])
    try:
        on_local = plan(after, _applied(before), controller_name="amlops", replace_fields=local.replace_fields)
    finally:
        local.close()
    on_v1 = plan(after, _applied(before), controller_name="amlops",
                 replace_fields=lambda kind: replace_fields_of(V1_HANDLERS, kind))
    without_backend = _plan(after, _applied(before))

    def agent_count(result: Plan) -> tuple[Action, bool]:
        change = next(c for c in result.changes if c.id == cluster)
        return change.action, next(d.forces_replace for d in change.diffs if d.path == "spec.agentCount")

    # A forced replace of a cluster (retained by default) is refused and shown: no-op, never an update.
    assert agent_count(on_local) == (Action.UPDATE, False)
    assert agent_count(on_v1) == (Action.NOOP, True)
    assert agent_count(without_backend) == (Action.NOOP, True)  # no backend at hand: the union, the cautious answer
