"""Kubernetes client errors as runbook errors: what is worth retrying, and what to do about the rest."""

from __future__ import annotations

import json

from runbooks.errors import RunbookError, TransientError

__all__ = ["status_of", "translate"]


def status_of(exc: Exception) -> int | None:
    """The HTTP status of a client error (`ApiException.status`), None for a transport error."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def translate(exc: Exception, doing: str) -> RunbookError:
    """A Kubernetes client error as a RunbookError that says what failed and what to do."""
    if isinstance(exc, RunbookError):
        return exc  # ours already (a step out of time): it says what it is
    status = status_of(exc)
    message = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            message = str(body)[:200]
    detail = f": {message}" if message else ""
    if status == 403:
        return RunbookError(f"{doing}: forbidden (403){detail}; the runner's identity lacks RBAC for it")
    if status == 404:
        return RunbookError(f"{doing}: not found (404){detail}; check the targets document and `pulumi up`")
    if status == 409:
        return TransientError(f"{doing}: conflict (409){detail}; someone changed it meanwhile")
    if status == 422:
        return RunbookError(f"{doing}: refused as invalid (422){detail}")
    if status is None or status == 429 or status >= 500:
        return TransientError(f"{doing}: {status or type(exc).__name__}{detail or ': ' + str(exc)[:200]}")
    return RunbookError(f"{doing}: HTTP {status}{detail}")
