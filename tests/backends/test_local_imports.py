"""The controller side of the local backend never loads TensorFlow or the scoring host."""

from __future__ import annotations

import subprocess
import sys


def test_the_backend_and_its_supervisor_import_neither_tensorflow_nor_the_scoring_host() -> None:
    code = (
        "import sys, controller.backends.local, controller.backends.local.supervising;"
        "bad = [m for m in sys.modules if m.startswith(('tensorflow', 'controller.scoring'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
