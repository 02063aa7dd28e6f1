"""Pure data: manifests, states, plans, errors. Nothing here does I/O or imports other amlops layers."""
