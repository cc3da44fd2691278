"""The engine: what a runbook declares (spec), its plan, the run loop with its rollback, the
journal and the lock. Imports nothing of the ports, nodes or library above it."""
