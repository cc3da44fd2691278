"""boto3 clients whose every call ends within the current deadline (`runbooks.deadlines`).

botocore fixes a client's connect and read timeouts when the client is made, and by default waits
60 s for a read and tries 3 times in legacy mode: a hung endpoint took about 3 minutes to fail a
30-60 s step. So each service gets a few clients, one per timeout tier, and a call goes to the
largest tier that still fits twice into what is left of its deadline (botocore may try it twice,
for throttling). Outside any deadline (planning, the CLI's own reads) the top tier is used.
"""

from __future__ import annotations

import threading
from typing import Any

from botocore.config import Config

from runbooks.deadlines import call_timeout
from runbooks.ports.aws_errors import translate

__all__ = ["READ_TIMEOUTS", "BoundedClient"]

READ_TIMEOUTS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
"""Read-timeout tiers in seconds; the top one is the cap of a call made with no deadline."""
_ATTEMPTS = 2
"""botocore's own tries per call (standard mode: throttling and 5xx, with backoff); the engine retries
what is still transient after that, within the step's timeout."""


class BoundedClient:
    """Stands for `session.client(service)`: attribute access picks the client of the right tier."""

    def __init__(self, session: Any, service: str) -> None:
        self._session = session
        self._service = service
        self._tiers: dict[float, Any] = {}
        self._lock = threading.Lock()

    @property
    def exceptions(self) -> Any:
        # Modelled error classes are the same for every client of a session; reading them is no call.
        return self._client(READ_TIMEOUTS[-1]).exceptions

    def __getattr__(self, operation: str) -> Any:
        budget = call_timeout(_ATTEMPTS * READ_TIMEOUTS[-1], doing=f"AWS {self._service} {operation}")
        fitting = [tier for tier in READ_TIMEOUTS if _ATTEMPTS * tier <= budget]
        return getattr(self._client(fitting[-1] if fitting else READ_TIMEOUTS[0]), operation)

    def _client(self, read_timeout: float) -> Any:
        with self._lock:
            client = self._tiers.get(read_timeout)
            if client is None:
                config = Config(
                    connect_timeout=min(3.0, read_timeout),
                    read_timeout=read_timeout,
                    retries={"mode": "standard", "total_max_attempts": _ATTEMPTS},
                )
                try:
                    client = self._session.client(self._service, config=config)
                except Exception as exc:
                    raise translate(exc, f"make an AWS {self._service} client") from exc
                self._tiers[read_timeout] = client
            return client
