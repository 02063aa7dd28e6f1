"""End to end: a broken commit tears nothing down and says where it broke; reverting it restores the state."""

from __future__ import annotations

import re

from runtime.conftest import eventually

from .conftest import SERVICE, World


def test_a_broken_yaml_commit_keeps_services_running_reports_file_and_line_and_revert_clears_it(
    world: World,
) -> None:
    world.example(replicas=2)
    good = world.repo.commit("deploy")
    c = world.controller()
    world.wait_applied(c, good, "first deploy")
    key, pids = world.key(), world.ready_pids()

    world.repo.write(f"manifests/services/{SERVICE}.yaml",
                     "apiVersion: amlops.dev/v1\nkind: Webservice\nmetadata: {name: [\n")
    broken = world.repo.commit("oops")
    status = eventually(lambda: (s := c.status())["lastReconcile"]["revision"] == broken and s, 60, "broken commit")
    assert status["lastReconcile"]["status"] == "invalid"
    where = re.compile(rf"^manifests/services/{SERVICE}\.yaml:\d+")
    assert any(where.match(e) for e in status["lastReconcile"]["errors"]), status["lastReconcile"]["errors"]
    assert status["lastAppliedRevision"] == good
    assert world.score([1, 2], key) == (200, [3.0, 6.0])
    assert world.ready_pids() == pids

    newest = world.history(1)[0]
    assert newest["status"] == "invalid" and any(where.match(e) for e in newest["errors"])
    assert re.search(rf"manifests/services/{SERVICE}\.yaml:\d+", world.amlops("history").stdout)
    assert world.status_json()["lastStatus"] == "invalid"

    world.repo.git("revert", "--no-edit", "HEAD")
    restored = world.repo.head()
    status = world.wait_applied(c, restored, "revert applied")
    assert status["lastReconcile"]["errors"] == []
    assert world.score([1, 2], key) == (200, [3.0, 6.0])
    assert world.ready_pids() == pids, "the revert restarted replicas"
    assert world.history(1)[0]["status"] in ("no-changes", "applied")
    assert world.status_json()["lastStatus"] in ("no-changes", "applied")
