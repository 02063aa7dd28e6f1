"""The folder source: edits wake the loop once they settle, and the revision names the content."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from controller.sources.watching import FolderSource


def wait_for(event: threading.Event, timeout: float = 20) -> bool:
    return event.wait(timeout)


def test_a_file_change_wakes_once_the_folder_settles_with_a_new_revision(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests/a.yaml").write_text("one\n")
    src = FolderSource(tmp_path, path="manifests", debounce=0.3)
    before = src.fetch()
    assert before.revision.startswith("dirty-") and before.root == tmp_path.absolute()
    woken = threading.Event()
    calls: list[float] = []

    def on_change() -> None:
        calls.append(time.monotonic())
        woken.set()

    src.start(on_change)
    try:
        (tmp_path / "manifests/a.yaml").write_text("two\n")
        (tmp_path / "manifests/b.yaml").write_text("three\n")
        assert wait_for(woken), "no wake-up after editing the folder"
        after = src.fetch()
        assert after.revision != before.revision
    finally:
        src.close()
    assert len(calls) == 1  # a burst of edits is one wake-up


def test_an_unchanged_folder_keeps_its_revision(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("one\n")
    src = FolderSource(tmp_path)
    assert src.fetch() == src.fetch()


def test_edits_to_hidden_files_do_not_wake_the_loop(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("one\n")
    src = FolderSource(tmp_path, debounce=0.1)
    woken = threading.Event()
    src.start(woken.set)
    try:
        (tmp_path / ".a.yaml.swp").write_text("x")
        (tmp_path / "a.yaml").write_text(
            "two\n"
        )  # a real edit after the ignored one: proves the watcher runs
        assert wait_for(woken)
        woken.clear()
        (tmp_path / ".hidden").write_text("y")
        assert not woken.wait(1.0)
    finally:
        src.close()
