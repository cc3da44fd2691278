"""Incident runbooks and the engine that runs them: plan, approve, lock, act, verify, roll back."""
