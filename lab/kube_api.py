"""A Kubernetes API on 127.0.0.1 for tests and the local drill, spoken to by the real client.

Built on kmock (its aiohttp server, request parsing and discovery endpoints); the object store
below replaces kmock's, because runbooks rely on semantics kmock does not have. What is
emulated, each as the Kubernetes API reference describes it:

- objects get `uid`, `creationTimestamp` and a cluster-wide increasing `resourceVersion`
  (Deployments also `generation`, bumped on spec changes);
- create of an existing name is 409 AlreadyExists, a missing object 404 NotFound, a missing name
  422 Invalid, an unknown resource type 404 — all as `Status` bodies the client turns into
  `ApiException` with the right `status` and `reason`;
- update (PUT) and patch carrying a `metadata.resourceVersion` that is not the current one are
  409 Conflict (optimistic concurrency; how Lease locking works);
- patch: JSON merge patch, strategic merge patch (lists of named items merged by `name`,
  other lists replaced) and JSON patch, by Content-Type;
- list with label selectors (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and field selectors
  (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`);
- Deployments' `scale` subresource returns and takes an `autoscaling/v1` `Scale`; pods' `log`
  subresource serves the file their played container writes (`ObjectStore.pod_logs`);
- pods' `eviction` subresource honours PodDisruptionBudgets, counting expected pods from the
  owning Deployment's replicas: a Ready pod goes only if one fewer still meets the budget; an
  unready Running pod only if the budget is met now (`unhealthyPodEvictionPolicy`
  IfHealthyBudget, the default) or always (AlwaysAllow); a Pending pod always. A refusal is 429
  TooManyRequests naming the budget in `details.causes`;
- types with a `status` subresource: create starts with an empty status (required fields at 0),
  writes to the main resource leave `.status` alone, and only `/status` changes it;
- graceful pod deletion, when a kubelet is played (`ObjectStore.graceful_pod_deletion`): deleting
  or evicting a pod bound to a node sets `metadata.deletionTimestamp` (now + its grace period) and
  `deletionGracePeriodSeconds`, and the pod stays, terminating, until the kubelet removes it
  (`gracePeriodSeconds: 0` removes it at once, as a forced delete does). Evicting a terminating
  pod succeeds without a budget check; a terminating pod counts as no budget's healthy pod.

Played, for tests and drills: `ObjectStore.faults` answers a chosen (method, resource type) with
a chosen Status (403 Forbidden, 500, 429) to show how runbooks report API errors, after a chosen
delay to play a hung API server.

Not emulated: watches, admission webhooks, server-side apply, field validation, garbage
collection by owner references. The controllers that make pods and mark them Ready are played
separately (`lab/controllers.py`), with realistic delays.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import math
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import jsonpatch
import kmock

__all__ = ["RESOURCES", "ApiStatus", "KubeApi", "LocalKubernetes", "ObjectStore"]


@dataclass(frozen=True)
class _Kind:
    group: str
    version: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES: Mapping[str, _Kind] = {
    "pods": _Kind("", "v1", "Pod"),
    "configmaps": _Kind("", "v1", "ConfigMap"),
    "secrets": _Kind("", "v1", "Secret"),
    "services": _Kind("", "v1", "Service"),
    "nodes": _Kind("", "v1", "Node", namespaced=False),
    "namespaces": _Kind("", "v1", "Namespace", namespaced=False),
    "events": _Kind("", "v1", "Event"),
    "deployments": _Kind("apps", "v1", "Deployment"),
    "replicasets": _Kind("apps", "v1", "ReplicaSet"),
    "horizontalpodautoscalers": _Kind("autoscaling", "v2", "HorizontalPodAutoscaler"),
    "poddisruptionbudgets": _Kind("policy", "v1", "PodDisruptionBudget"),
    "leases": _Kind("coordination.k8s.io", "v1", "Lease"),
    "endpointslices": _Kind("discovery.k8s.io", "v1", "EndpointSlice"),
    "scaledobjects": _Kind("keda.sh", "v1alpha1", "ScaledObject"),
    "jobs": _Kind("batch", "v1", "Job"),
}
"""The resource types served, by plural. Others are 404, as on a cluster without them."""

_WITH_STATUS = frozenset(
    {"pods", "deployments", "replicasets", "horizontalpodautoscalers", "poddisruptionbudgets", "scaledobjects",
     "nodes", "namespaces", "jobs"}
)  # fmt: skip
"""Types with a `status` subresource: writes to the main resource leave `.status` alone."""

_INITIAL_STATUS: Mapping[str, Mapping[str, Any]] = {
    "horizontalpodautoscalers": {"desiredReplicas": 0},
    "poddisruptionbudgets": {"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0, "expectedPods": 0},
}


class ApiStatus(Exception):  # noqa: N818 (it is the API's Status object, raised)
    """An API error, rendered as a `Status` body with its HTTP code."""

    def __init__(
        self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None, *, delay: float = 0.0
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, dict(details or {})
        self.delay = delay
        """As a played fault: seconds the API hangs before answering with it (a stuck etcd ends in
        the API server's own 504 Timeout after its request timeout, 60 s by default)."""

    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _now(*, after: float = 0) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=after)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class ObjectStore:
    """The cluster's objects, thread-safe: the API handler and the controllers share it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._objects: dict[tuple[str, str | None, str], dict[str, Any]] = {}
        self._version = 0
        self.listeners: list[Callable[[str, str, dict[str, Any]], None]] = []
        """Called with (event, plural, object) after every change: ADDED, MODIFIED, DELETED."""
        self.faults: dict[tuple[str, str], ApiStatus | list[ApiStatus | None]] = {}
        """Injected failures for tests and drills: (HTTP method, plural) -> the Status to answer
        every such request with (e.g. 403 Forbidden), or a list answered once each, in order, after
        which requests succeed again (a conflict, a blip of 503s). Played, not emulated."""
        self.pod_logs: dict[tuple[str, str], Any] = {}
        """(namespace, pod) -> the file its container writes to, served as the pod's `log`
        subresource (text/plain, as the API serves it) while the pod exists."""
        self.graceful_pod_deletion = False
        """True while a kubelet is played (controllers.py sets it): a bound pod's deletion only marks it
        terminating, and the kubelet removes it once its container stopped. Off, a deleted pod goes at
        once: with no kubelet, nothing would ever finish the deletion."""

    # --- Plain access (controllers, tests) ------------------------------------------

    def get(self, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        with self._lock:
            found = self._objects.get((plural, self._ns(plural, namespace), name))
            if found is None:
                raise ApiStatus(404, "NotFound", f'{plural} "{name}" not found',
                                {"name": name, "kind": plural, "group": _kind(plural).group})  # fmt: skip
            return copy.deepcopy(found)

    def list(
        self, plural: str, namespace: str | None = None, *, labels: str = "", fields: str = ""
    ) -> list[dict[str, Any]]:
        label_match = _label_selector(labels)
        field_match = _field_selector(fields)
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for (kind, ns, _), obj in sorted(self._objects.items(), key=lambda item: str(item[0]))
                if kind == plural and (namespace is None or ns == namespace)
                and label_match(obj.get("metadata", {}).get("labels") or {}) and field_match(obj)
            ]  # fmt: skip
        return items

    def create(
        self, plural: str, namespace: str | None, body: Mapping[str, Any], *, api: bool = False
    ) -> dict[str, Any]:
        """`api`: as through the HTTP API, where a type with a status subresource starts with an empty
        status (controllers calling the store directly may set it)."""
        kind = _kind(plural)
        obj = copy.deepcopy(dict(body))
        if api and plural in _WITH_STATUS:
            # Required (non-omitempty) status fields start at zero, as the API serves them.
            obj["status"] = copy.deepcopy(_INITIAL_STATUS.get(plural, {}))
        metadata = obj.setdefault("metadata", {})
        name = metadata.get("name")
        if not name and metadata.get("generateName"):
            name = metadata["generateName"] + uuid.uuid4().hex[:5]
            metadata["name"] = name
        if not name:
            raise ApiStatus(422, "Invalid", f"{kind.kind}: metadata.name: Required value", {"kind": kind.kind})
        ns = self._ns(plural, namespace or metadata.get("namespace"))
        if kind.namespaced:
            metadata["namespace"] = ns
        with self._lock:
            key = (plural, ns, name)
            if key in self._objects:
                raise ApiStatus(409, "AlreadyExists", f'{plural} "{name}" already exists',
                                {"name": name, "kind": plural, "group": kind.group})  # fmt: skip
            obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
            metadata.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=self._next())
            if plural in ("deployments", "replicasets"):
                metadata["generation"] = 1
            self._objects[key] = obj
            result = copy.deepcopy(obj)
        self._tell("ADDED", plural, result)
        return result

    def replace(self, plural: str, namespace: str | None, name: str, body: Mapping[str, Any], *,
                only_status: bool = False, api: bool = False) -> dict[str, Any]:  # fmt: skip
        with self._lock:
            current = self._current(plural, namespace, name)
            wanted = copy.deepcopy(dict(body))
            self._check_version(plural, name, current, wanted.get("metadata", {}).get("resourceVersion"))
            if only_status:
                updated = copy.deepcopy(current)
                updated["status"] = wanted.get("status", {})
            else:
                updated = wanted
                updated.setdefault("metadata", {})
                for keep in ("uid", "creationTimestamp", "namespace", "name", "generation"):
                    if keep in current["metadata"]:
                        updated["metadata"][keep] = current["metadata"][keep]
                updated.setdefault("status", current.get("status"))
                if api and plural in _WITH_STATUS:
                    updated["status"] = copy.deepcopy(current.get("status"))
            return self._store(plural, current, updated)

    def patch(self, plural: str, namespace: str | None, name: str, patch: Any, *, content_type: str,
              only_status: bool = False, api: bool = False) -> dict[str, Any]:  # fmt: skip
        with self._lock:
            current = self._current(plural, namespace, name)
            if isinstance(patch, Mapping):
                self._check_version(plural, name, current, patch.get("metadata", {}).get("resourceVersion"))
            if "json-patch" in content_type:
                try:
                    updated = jsonpatch.apply_patch(current, patch)
                except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                    raise ApiStatus(422, "Invalid", f"json patch failed: {exc}") from None
            elif "strategic-merge" in content_type:
                updated = _merge_patch(current, patch, strategic=True)
            else:
                updated = _merge_patch(current, patch)
            if only_status:
                status = updated.get("status")
                updated = copy.deepcopy(current)
                updated["status"] = status
            elif api and plural in _WITH_STATUS:
                updated["status"] = copy.deepcopy(current.get("status"))
            for keep in ("uid", "creationTimestamp", "namespace", "name", "generation"):
                if keep in current["metadata"]:
                    updated.setdefault("metadata", {})[keep] = current["metadata"][keep]
            return self._store(plural, current, updated)

    def delete(
        self, plural: str, namespace: str | None, name: str, *, grace_seconds: int | None = None
    ) -> dict[str, Any]:
        """Remove an object; a pod bound to a node, while a kubelet is played, is only marked
        terminating (see `graceful_pod_deletion`). `grace_seconds` overrides the pod's
        `terminationGracePeriodSeconds`; 0 removes it at once."""
        with self._lock:
            current = self._current(plural, namespace, name)
            if plural == "pods" and self.graceful_pod_deletion and (current.get("spec") or {}).get("nodeName"):
                metadata = current["metadata"]
                if grace_seconds is None:
                    grace_seconds = int((current.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
                if grace_seconds > 0:
                    if metadata.get("deletionTimestamp"):
                        return copy.deepcopy(current)  # already terminating
                    updated = copy.deepcopy(current)
                    updated["metadata"]["deletionTimestamp"] = _now(after=grace_seconds)
                    updated["metadata"]["deletionGracePeriodSeconds"] = grace_seconds
                    return self._store(plural, current, updated)
            del self._objects[(plural, self._ns(plural, namespace), name)]
        self._tell("DELETED", plural, current)
        return current

    # --- Internals -------------------------------------------------------------------

    def _ns(self, plural: str, namespace: str | None) -> str | None:
        return (namespace or "default") if _kind(plural).namespaced else None

    def _next(self) -> str:
        self._version += 1
        return str(self._version)

    def _current(self, plural: str, namespace: str | None, name: str) -> dict[str, Any]:
        found = self._objects.get((plural, self._ns(plural, namespace), name))
        if found is None:
            raise ApiStatus(404, "NotFound", f'{plural} "{name}" not found',
                            {"name": name, "kind": plural, "group": _kind(plural).group})  # fmt: skip
        return found

    def _check_version(self, plural: str, name: str, current: Mapping[str, Any], wanted: Any) -> None:
        have = current["metadata"]["resourceVersion"]
        if wanted not in (None, "") and str(wanted) != have:
            raise ApiStatus(
                409, "Conflict",
                f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "kind": plural},
            )  # fmt: skip

    def _store(self, plural: str, current: dict[str, Any], updated: dict[str, Any]) -> dict[str, Any]:
        kind = _kind(plural)
        updated["apiVersion"], updated["kind"] = kind.api_version, kind.kind
        metadata = updated.setdefault("metadata", {})
        if plural in ("deployments", "replicasets") and updated.get("spec") != current.get("spec"):
            metadata["generation"] = int(current["metadata"].get("generation", 1)) + 1
        metadata["resourceVersion"] = self._next()
        key = (plural, self._ns(plural, metadata.get("namespace")), metadata["name"])
        self._objects[key] = updated
        result = copy.deepcopy(updated)
        self._tell("MODIFIED", plural, result)
        return result

    def _tell(self, event: str, plural: str, obj: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(event, plural, obj)

    def objects(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._lock:
            snapshot = [(key[0], copy.deepcopy(obj)) for key, obj in self._objects.items()]
        yield from snapshot


def _kind(plural: str) -> _Kind:
    kind = RESOURCES.get(plural)
    if kind is None:
        raise ApiStatus(404, "NotFound", f"the server could not find the requested resource ({plural})")
    return kind


# --- Selectors and patches --------------------------------------------------------------

_SET_TERM = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current)
    return terms


def _label_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    terms: list[tuple[str, str, frozenset[str]]] = []
    for raw in _split_terms(text or ""):
        term = raw.strip()
        if match := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in match.group(3).split(","))
            terms.append((match.group(1), match.group(2), values))
        elif "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            terms.append((key, "notin", frozenset([value])))
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            terms.append((key, "in", frozenset([value])))
        elif term.startswith("!"):
            terms.append((term[1:].strip(), "absent", frozenset()))
        elif term:
            terms.append((term, "present", frozenset()))

    def matches(labels: Mapping[str, str]) -> bool:
        for key, operator, values in terms:
            value = labels.get(key)
            if operator == "in" and value not in values:
                return False
            if operator == "notin" and value in values:
                return False
            if operator == "absent" and key in labels:
                return False
            if operator == "present" and key not in labels:
                return False
        return True

    return matches


_FIELDS: Mapping[str, tuple[str, str]] = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "spec.nodeName": ("spec", "nodeName"),
    "status.phase": ("status", "phase"),
}


def _field_selector(text: str) -> Callable[[Mapping[str, Any]], bool]:
    terms: list[tuple[tuple[str, str], str, bool]] = []
    for term in filter(None, (t.strip() for t in (text or "").split(","))):
        negate = "!=" in term
        key, value = (part.strip() for part in term.replace("==", "=").replace("!=", "=").split("=", 1))
        if key not in _FIELDS:
            raise ApiStatus(400, "BadRequest", f'"{key}" is not a known field selector: only {", ".join(_FIELDS)}')
        terms.append((_FIELDS[key], value, negate))

    def matches(obj: Mapping[str, Any]) -> bool:
        for (section, field), value, negate in terms:
            actual = str((obj.get(section) or {}).get(field) or "")
            if (actual == value) == negate:
                return False
        return True

    return matches


def _merge_patch(target: Any, patch: Any, *, strategic: bool = False) -> Any:
    """RFC 7386 JSON merge patch; `strategic`: also merge lists of named items by `name`, as a
    strategic merge patch does for the fields our objects use (containers, env, volumes)."""
    if (
        strategic
        and isinstance(patch, list)
        and isinstance(target, list)
        and all(isinstance(item, Mapping) and "name" in item for item in [*patch, *target])
    ):
        merged = [copy.deepcopy(item) for item in target]
        index = {item["name"]: position for position, item in enumerate(merged)}
        for item in patch:
            if item["name"] in index:
                merged[index[item["name"]]] = _merge_patch(merged[index[item["name"]]], item, strategic=True)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value, strategic=strategic)
    return result


# --- The HTTP side ---------------------------------------------------------------------


class KubeApi(kmock.KubernetesScaffold):
    """kmock's server and request parsing in front of an `ObjectStore`."""

    store: ObjectStore

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is None:
            return await super()._handle(request)
        try:
            fault = self._fault(request)
            if fault is not None:
                # Hung without blocking the server: other requests are answered meanwhile.
                await asyncio.sleep(fault.delay)
                raise fault
            if request.subresource == "log" and str(request.resource.plural) == "pods":
                return aiohttp.web.Response(text=self._log(request.namespace, request.name), content_type="text/plain")
            body, code = self._serve(request)
        except ApiStatus as status:
            return aiohttp.web.json_response(status.body(), status=status.code)
        return aiohttp.web.json_response(body, status=code)

    def _log(self, namespace: str | None, name: str | None) -> str:
        self.store.get("pods", namespace, name or "")  # 404 for a pod that is gone
        path = self.store.pod_logs.get((namespace or "", name or ""))
        try:
            return path.read_text(encoding="utf-8", errors="replace") if path is not None else ""
        except FileNotFoundError:
            return ""

    def _fault(self, request: kmock.Request) -> ApiStatus | None:
        """The played fault for this request's (method, resource type), if any; a list is used up in
        order, one entry a request, a None entry letting that request through."""
        assert request.resource is not None
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        fault = self.store.faults.get((method, str(request.resource.plural)))
        if isinstance(fault, list):
            return fault.pop(0) if fault else None
        return fault

    def _serve(self, request: kmock.Request) -> tuple[Any, int]:
        store = self.store
        assert request.resource is not None  # _handle serves only Kubernetes requests here
        plural = str(request.resource.plural)
        namespace, name = request.namespace, request.name
        sub = request.subresource
        method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
        content_type = request.headers.get("Content-Type", "application/json")
        data = request.data if request.data is not None else (json.loads(request.body) if request.body else None)
        kind = _kind(plural)
        if name is None:
            if method == "GET":
                items = store.list(plural, namespace, labels=request.params.get("labelSelector", ""),
                                   fields=request.params.get("fieldSelector", ""))  # fmt: skip
                return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                        "metadata": {"resourceVersion": str(store._version)}, "items": items}, 200  # fmt: skip
            if method == "POST":
                return store.create(plural, namespace, data or {}, api=True), 201
            raise ApiStatus(405, "MethodNotAllowed", f"{method} is not supported on a {plural} collection")

        if sub == "scale" and plural == "deployments":
            return self._scale(namespace, name, method, data, content_type), 200
        if sub == "eviction" and plural == "pods":
            return self._evict(namespace, name), 201
        if sub not in (None, "status"):
            raise ApiStatus(404, "NotFound", f"the server could not find the requested resource ({plural}/{sub})")
        only_status = sub == "status"
        if method == "GET":
            return store.get(plural, namespace, name), 200
        if method == "PUT":
            return store.replace(plural, namespace, name, data or {}, only_status=only_status, api=True), 200
        if method == "PATCH":
            return (
                store.patch(plural, namespace, name, data, content_type=content_type, only_status=only_status,
                            api=True),
                200,
            )  # fmt: skip
        if method == "DELETE":
            options = data if isinstance(data, dict) else {}
            grace = options.get("gracePeriodSeconds", request.params.get("gracePeriodSeconds"))
            deleted = store.delete(plural, namespace, name, grace_seconds=None if grace is None else int(grace))
            if deleted["metadata"].get("deletionTimestamp"):
                return deleted, 200  # terminating: the API answers with the object, as it now is
            return {"apiVersion": "v1", "kind": "Status", "status": "Success",
                    "details": {"name": name, "kind": plural, "uid": deleted["metadata"]["uid"]}}, 200  # fmt: skip
        raise ApiStatus(405, "MethodNotAllowed", f"{method} is not supported on {plural}/{name}")

    def _scale(self, namespace: str | None, name: str, method: str, data: Any, content_type: str) -> dict[str, Any]:
        store = self.store
        if method in ("PATCH", "PUT"):
            replicas = (data or {}).get("spec", {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise ApiStatus(422, "Invalid", f"Scale.spec.replicas: Invalid value: {replicas!r}")
            store.patch("deployments", namespace, name, {"spec": {"replicas": replicas}},
                        content_type="application/merge-patch+json")  # fmt: skip
        deployment = store.get("deployments", namespace, name)
        spec, status = deployment.get("spec", {}), deployment.get("status") or {}
        selector = spec.get("selector", {}).get("matchLabels", {})
        identity = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {key: deployment["metadata"][key] for key in identity},
            "spec": {"replicas": spec.get("replicas", 1)},
            "status": {
                "replicas": status.get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
            },
        }

    def _evict(self, namespace: str | None, name: str) -> dict[str, Any]:
        store = self.store
        pod = store.get("pods", namespace, name)
        if _terminating(pod):
            return {"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201}  # on its way out
        labels = pod.get("metadata", {}).get("labels") or {}
        for budget in store.list("poddisruptionbudgets", namespace):
            selector = budget.get("spec", {}).get("selector", {}).get("matchLabels", {})
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                continue
            matching = store.list("pods", namespace, labels=",".join(f"{k}={v}" for k, v in selector.items()))
            healthy = sum(1 for p in matching if _ready(p) and not _terminating(p))
            # As the disruption controller counts: the pods the owning workload should have, not
            # the ones that happen to exist (an evicted pod's replacement is not there yet).
            expected = self._expected_pods(namespace, labels) or len(matching)
            spec = budget["spec"]
            if "minAvailable" in spec:
                needed = _count(spec["minAvailable"], expected, round_up=True)
            else:
                needed = expected - _count(spec.get("maxUnavailable", 0), expected, round_up=True)
            # A Ready pod may go if one fewer still meets the budget. An unready Running pod may go
            # only if the budget is met now (the default IfHealthyBudget), or always (AlwaysAllow);
            # a Pending pod always.
            policy = spec.get("unhealthyPodEvictionPolicy", "IfHealthyBudget")
            if _ready(pod):
                refused = healthy - 1 < needed
            elif (pod.get("status") or {}).get("phase") == "Pending" or policy == "AlwaysAllow":
                refused = False
            else:
                refused = healthy < needed
            if refused:
                budget_name = budget["metadata"]["name"]
                raise ApiStatus(
                    429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.",
                    {"causes": [{"reason": "DisruptionBudget",
                                 "message": f"The disruption budget {budget_name} needs {needed} healthy pods and "
                                            f"has {healthy} currently"}]},
                )  # fmt: skip
        store.delete("pods", namespace, name)
        return {"apiVersion": "v1", "kind": "Status", "status": "Success", "code": 201}

    def _expected_pods(self, namespace: str | None, labels: Mapping[str, str]) -> int | None:
        for deployment in self.store.list("deployments", namespace):
            selector = deployment.get("spec", {}).get("selector", {}).get("matchLabels", {})
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                return int(deployment.get("spec", {}).get("replicas", 1))
        return None


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _terminating(pod: Mapping[str, Any]) -> bool:
    return bool(pod.get("metadata", {}).get("deletionTimestamp"))


def _count(value: Any, total: int, *, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        share = int(value[:-1]) * total / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(value)


class LocalKubernetes:
    """The API served on 127.0.0.1 from its own thread and event loop. Use as a context manager."""

    def __init__(self, store: ObjectStore | None = None, *, port: int = 0) -> None:
        """`port`: where to listen on 127.0.0.1 (0: a free port)."""
        self.store = store or ObjectStore()
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-kubernetes", daemon=True)
        self._server: Any = None
        self.url = ""

    def __enter__(self) -> LocalKubernetes:
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> str:
        handler = KubeApi(strict=False)
        handler.store = self.store
        self._handler = handler
        self._server = kmock.Server(handler, port=self._port or None)
        await self._server.__aenter__()
        return str(self._server.url).rstrip("/")

    async def _stop(self) -> None:
        await self._server.__aexit__(None, None, None)
