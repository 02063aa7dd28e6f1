"""Fixtures of the scoring host tests (defined in scoring_hosts.py, shared with the test modules)."""

from scoring_hosts import echo_dir, echo_host, start_host

__all__ = ["echo_dir", "echo_host", "start_host"]
