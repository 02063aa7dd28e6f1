"""The core: planning, rendering, executing, reconciling and recording.

The public surface is small: ``plan`` and the renderers for people reviewing changes,
``reconcile`` + ``Recorder`` for the runtime loop and the CLI.
"""

from controller.core.planning import plan
from controller.core.reconciling import ReconcileOptions, reconcile
from controller.core.recording import Recorder
from controller.core.rendering import render_json, render_markdown, render_text

__all__ = ["ReconcileOptions", "Recorder", "plan", "reconcile", "render_json", "render_markdown", "render_text"]
