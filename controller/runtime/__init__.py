"""The long-lived controller process: the loop, the leader lock, signals, and the HTTP endpoints."""
