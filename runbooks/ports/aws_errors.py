"""boto3 errors as runbook errors: what is worth retrying, and what the runner's identity lacks."""

from __future__ import annotations

from botocore.exceptions import (
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
)

from runbooks.errors import RunbookError, TransientError

__all__ = ["translate"]

_TRANSIENT = ("ThrottlingException", "TooManyRequestsException", "ServerException", "InternalServerError")
_DENIED = ("AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException")


def translate(exc: Exception, doing: str, *, permissions: str = "") -> RunbookError:
    """`doing` says what failed; `permissions` names what the identity needs when access is denied."""
    if isinstance(exc, RunbookError):
        return exc  # ours already (a step out of time): it says what it is
    response = getattr(exc, "response", None) or {}
    code = response.get("Error", {}).get("Code", type(exc).__name__)
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    message = response.get("Error", {}).get("Message", str(exc))
    if code in _TRANSIENT or (isinstance(status, int) and status >= 500):
        return TransientError(f"{doing}: {code}: {message}")
    if code in _DENIED:
        lacking = f"needs {permissions}" if permissions else f"lacks the permission: {message}"
        return RunbookError(f"{doing}: {code}; the runner's AWS identity {lacking}")
    if code == "ResourceInUseException":
        return TransientError(f"{doing}: busy ({message})")
    if isinstance(exc, NoRegionError):
        return RunbookError(f"{doing}: no AWS region: pass --region, or set AWS_REGION (or a profile's region)")
    if isinstance(exc, NoCredentialsError):
        return RunbookError(f"{doing}: no AWS credentials: set AWS_PROFILE, or log in (aws sso login)")
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        return TransientError(f"{doing}: {exc}")
    return RunbookError(f"{doing}: {code}: {message}")
