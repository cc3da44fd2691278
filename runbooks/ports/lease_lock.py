"""The environment's runbook lock as a Kubernetes Lease in the model-service namespace.

Like client-go's leader election: the holder writes its identity, the time it took the lease and
the time it last renewed it; anyone may take a lease whose holder has not renewed within its
duration. Every write carries the `resourceVersion` read just before, so of two runners racing
for the same lease exactly one wins and the other is told who holds it.
"""

from __future__ import annotations

import datetime
from typing import Any

from infra.targets import RUNBOOK_LOCK
from runbooks.engine.locking import LockInfo
from runbooks.errors import LockHeldError, RunbookError
from runbooks.ports.kube_errors import status_of, translate

__all__ = ["LEASE_NAME", "LeaseLock"]

LEASE_NAME = RUNBOOK_LOCK


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _stamp(moment: datetime.datetime) -> str:
    # MicroTime, as the API stores it.
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class LeaseLock:
    """`runbooks.engine.locking.Lock` on a `coordination.k8s.io/v1` Lease."""

    def __init__(self, coordination: Any, *, env: str, namespace: str, name: str = LEASE_NAME) -> None:
        """`coordination` is a `kubernetes.client.CoordinationV1Api`."""
        self._api = coordination
        self._env = env
        self._namespace = namespace
        self._name = name
        self._holder: str | None = None
        self._ttl = 30.0
        self._acquired: datetime.datetime | None = None

    def acquire(self, *, holder: str, ttl: float, force: bool = False) -> LockInfo:
        now = _now()
        self._ttl = ttl
        spec = {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(ttl)),
            "acquireTime": _stamp(now),
            "renewTime": _stamp(now),
        }
        current = self._read()
        if current is None:
            try:
                self._api.create_namespaced_lease(self._namespace, {"metadata": {"name": self._name}, "spec": spec})
            except Exception as exc:
                if status_of(exc) == 409:
                    return self.acquire(holder=holder, ttl=ttl, force=force)
                raise translate(exc, f"create Lease {self._namespace}/{self._name}") from exc
        else:
            other = current.spec.holder_identity or ""
            renewed = _parse(current.spec.renew_time) or _parse(current.spec.acquire_time) or now
            duration = datetime.timedelta(seconds=current.spec.lease_duration_seconds or 0)
            # Compared as a whole: the same person's other runner is another holder (locking.py).
            live = bool(other) and renewed + duration > now
            if live and not force:
                raise LockHeldError(
                    env=self._env,
                    holder=other,
                    since=_stamp(_parse(current.spec.acquire_time) or renewed),
                    expires=_stamp(renewed + duration),
                    seconds_left=(renewed + duration - now).total_seconds(),
                )
            self._replace(current.metadata.resource_version, spec, taking_from=other)
        self._holder, self._acquired = holder, now
        return LockInfo(holder=holder, since=_stamp(now), expires=_stamp(now + datetime.timedelta(seconds=ttl)))

    def renew(self) -> None:
        if self._holder is None:
            raise RunbookError("renew without holding the lock")
        current = self._read()
        holder = current.spec.holder_identity if current is not None else None
        if current is None or holder != self._holder:
            raise RunbookError(f"lock lost: Lease {self._namespace}/{self._name} is now held by {holder or 'nobody'}")
        spec = {
            "holderIdentity": self._holder,
            "leaseDurationSeconds": max(1, round(self._ttl)),
            "acquireTime": _stamp(self._acquired or _now()),
            "renewTime": _stamp(_now()),
        }
        self._replace(current.metadata.resource_version, spec, taking_from=self._holder)

    def release(self) -> None:
        if self._holder is None:
            return
        try:
            current = self._read()
            if current is not None and current.spec.holder_identity == self._holder:
                spec = {"holderIdentity": "", "leaseDurationSeconds": max(1, round(self._ttl))}
                self._replace(current.metadata.resource_version, spec, taking_from=self._holder)
        except RunbookError:
            pass  # it expires by itself; a failed release must not mask the run's outcome
        finally:
            self._holder = None

    def _read(self) -> Any:
        try:
            return self._api.read_namespaced_lease(self._name, self._namespace)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise translate(exc, f"read Lease {self._namespace}/{self._name}") from exc

    def _replace(self, resource_version: str, spec: dict[str, Any], *, taking_from: str) -> None:
        body = {"metadata": {"name": self._name, "resourceVersion": resource_version}, "spec": spec}
        try:
            self._api.replace_namespaced_lease(self._name, self._namespace, body)
        except Exception as exc:
            if status_of(exc) == 409:
                # Someone wrote the lease between our read and write: they hold it now.
                latest = self._read()
                holder = latest.spec.holder_identity if latest is not None else "nobody"
                raise LockHeldError(
                    env=self._env, holder=holder or "nobody", since="just now", expires="unknown"
                ) from None
            raise translate(
                exc, f"update Lease {self._namespace}/{self._name} (held by {taking_from or 'nobody'})"
            ) from exc
