"""A controller in a process of its own for the kill test: reconcile passes until killed.

``python -m tests.backends.canary_driver STATE_DIR REPO_ROOT REVISION HISTORY_DIR``
"""

from __future__ import annotations

import sys
import time

from controller.backends.local import LocalBackend
from controller.core.reconciling import ReconcileOptions, reconcile
from controller.core.recording import Recorder


def main() -> None:
    state_dir, root, revision, history = sys.argv[1:5]
    backend = LocalBackend(state_dir, "test-controller", ready_timeout=90)
    recorder = Recorder(history)
    options = ReconcileOptions(controller_name="test-controller")
    while True:
        outcome = reconcile(root, ".", revision, lambda _ws: backend, recorder, options)
        print(outcome.status.value, flush=True)
        time.sleep(outcome.requeue_after or 0.5)


if __name__ == "__main__":
    main()
