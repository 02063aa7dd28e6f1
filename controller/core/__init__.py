"""The core: planning, rendering, executing, reconciling, rolling out and recording (import the modules)."""
