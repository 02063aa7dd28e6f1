"""The core: planning (over diffing and ordering), executing, reconciling, rolling out, recording,
reporting and rendering.

Each module is imported by name (``controller.core.reconciling``); this package re-exports nothing,
so importing one part never loads the others.
"""
