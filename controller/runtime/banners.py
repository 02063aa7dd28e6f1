"""The ready-to-paste ``curl`` printed when a service is (re)deployed: people want a command to paste.

The key itself is never printed; the command fetches it with ``amlops keys`` when pasted.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Final

from controller.structs.states import ActualResource

# The example's one held-out digit, used in the printed curl when run from this repository.
SAMPLE_REQUEST: Final = "manifests/src/sample-request.json"


def _amlops_command() -> str:
    """How this process was started, so a printed command works without an activated venv."""
    if Path(sys.argv[0]).name == "amlops":
        return shlex.quote(str(Path(sys.argv[0]).absolute()))
    return f"{shlex.quote(sys.executable)} -m controller"


def service_banner(resource: ActualResource, state_dir: Path, controller_name: str, sample: Path | None = None) -> str:
    """A ready-to-paste ``curl`` for a service, with the key fetched by ``amlops keys`` at paste time."""
    uri = resource.details["scoringUri"]
    flags = f"--state-dir {shlex.quote(str(state_dir))}"
    if controller_name != "amlops":
        flags += f" --controller-name {shlex.quote(controller_name)}"
    header = ""
    if resource.spec.get("auth", "key") == "key":
        header = f'-H "Authorization: Bearer $({_amlops_command()} keys {resource.id.name} {flags} --primary)" '
    body = f"@{shlex.quote(str(sample))}" if sample is not None else "'{\"data\": [[...784 floats]]}'"
    return (f"\nService {resource.id.name} is ready: {uri}\n"
            f"  curl -s {uri} {header}-H 'Content-Type: application/json' -d {body}\n")
