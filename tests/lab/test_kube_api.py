"""The local Kubernetes API, spoken to by the real official client, against the Kubernetes API reference.

Each behaviour the module docstring of `lab.kube_api` names is exercised here through
`kubernetes.client` with `Configuration().host` pointed at one `LocalKubernetes` per module; every
test works in a namespace of its own, so tests share the server but not the objects.
"""

from __future__ import annotations

import functools
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client  # type: ignore[import-untyped]
from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped]

from lab.kube_api import LocalKubernetes

# --- Server, client and namespaces ----------------------------------------------------------------


@pytest.fixture(scope="module")
def kube() -> Iterator[LocalKubernetes]:
    with LocalKubernetes() as served:
        yield served


def _api_client(kube: LocalKubernetes) -> Any:
    configuration = client.Configuration()
    configuration.host = kube.url
    return client.ApiClient(configuration)


@pytest.fixture(scope="module")
def api(kube: LocalKubernetes) -> Iterator[Any]:
    with _api_client(kube) as api_client:
        yield api_client


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def core(api: Any) -> Any:
    return client.CoreV1Api(api)


@pytest.fixture
def apps(api: Any) -> Any:
    return client.AppsV1Api(api)


@pytest.fixture
def leases(api: Any) -> Any:
    return client.CoordinationV1Api(api)


@pytest.fixture
def policy(api: Any) -> Any:
    return client.PolicyV1Api(api)


# --- Bodies and helpers ----------------------------------------------------------------------------


def _refusal(call: Callable[[], object]) -> tuple[int, dict[str, Any]]:
    """The HTTP status and the decoded `Status` body of a call the API must refuse."""
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value.status, json.loads(caught.value.body)


def _rv(obj: Any) -> int:
    return int(obj.metadata.resource_version)


def _deployment(name: str, *, replicas: int = 3, app: str = "web", labels: dict[str, str] | None = None,
                containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "metadata": {"name": name, "labels": labels or {"app": app}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"containers": containers or [{"name": "server", "image": "model:1"}]},
            },
        },
    }


def _pod_body(name: str, *, labels: dict[str, str] | None = None, node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "server", "image": "model:1"}]}
    if node is not None:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def _pod(core: Any, namespace: str, name: str, *, labels: dict[str, str] | None = None, node: str | None = None,
         phase: str = "Running", ready: bool = True) -> Any:  # fmt: skip
    """A pod as the kubelet leaves it: created, then its status written through the status subresource."""
    core.create_namespaced_pod(namespace, _pod_body(name, labels=labels, node=node))
    status = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    return core.patch_namespaced_pod_status(name, namespace, {"status": status})


def _config_map(name: str, data: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": data or {"x": "1"}}


def _lease(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"leaseDurationSeconds": 30}}


def _hpa(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {"type": "Resource",
                 "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
            ],
        },
    }  # fmt: skip


def _sent_content_types(kube: LocalKubernetes, namespace: str, method: str) -> list[str]:
    """The Content-Type headers of the requests the client sent with `method` into `namespace`, in order.

    kmock records every request on its handler; `LocalKubernetes` keeps the handler as `_handler`.
    """
    handler = kube._handler
    return [
        request.headers.get("Content-Type", "")
        for request in list(handler)
        if request.namespace == namespace and str(request.method.value).upper() == method
    ]


# --- Create, read, list, delete -------------------------------------------------------------------


@dataclass(frozen=True)
class _Resource:
    """One resource type as the client names it: `<verb>_namespaced_<suffix>` on `api`."""

    api: Callable[[Any], Any]
    suffix: str
    body: Callable[[str], dict[str, Any]]
    kind: str


_RESOURCES = [
    _Resource(client.AppsV1Api, "deployment", _deployment, "Deployment"),
    _Resource(client.CoreV1Api, "config_map", _config_map, "ConfigMap"),
    _Resource(client.CoordinationV1Api, "lease", _lease, "Lease"),
    _Resource(client.CoreV1Api, "pod", _pod_body, "Pod"),
    _Resource(client.AutoscalingV2Api, "horizontal_pod_autoscaler", _hpa, "HorizontalPodAutoscaler"),
]


@pytest.mark.parametrize("resource", _RESOURCES, ids=[r.kind for r in _RESOURCES])
def test_create_read_list_delete(api: Any, namespace: str, resource: _Resource) -> None:
    typed = resource.api(api)

    def verb(name: str) -> Callable[..., Any]:
        method: Callable[..., Any] = getattr(typed, f"{name}_namespaced_{resource.suffix}")
        return method

    created = verb("create")(namespace, resource.body("one"))
    verb("create")(namespace, resource.body("two"))
    assert created.kind == resource.kind
    assert created.metadata.name == "one"
    assert created.metadata.namespace == namespace
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    assert _rv(created) > 0

    read = verb("read")("one", namespace)
    assert (read.metadata.uid, read.metadata.resource_version) == (
        created.metadata.uid,
        created.metadata.resource_version,
    )
    listed = verb("list")(namespace)
    assert [item.metadata.name for item in listed.items] == ["one", "two"]
    assert verb("list")(f"{namespace}-other").items == []

    verb("delete")("one", namespace)
    code, status = _refusal(lambda: verb("read")("one", namespace))
    assert (code, status["reason"]) == (404, "NotFound")
    assert [item.metadata.name for item in verb("list")(namespace).items] == ["two"]


def test_uids_are_unique_and_resource_versions_increase_cluster_wide(core: Any, leases: Any, namespace: str) -> None:
    first = core.create_namespaced_config_map(namespace, _config_map("a"))
    second = leases.create_namespaced_lease(namespace, _lease("a"))
    third = core.create_namespaced_config_map(f"{namespace}-b", _config_map("a"))
    assert len({first.metadata.uid, second.metadata.uid, third.metadata.uid}) == 3
    assert _rv(first) < _rv(second) < _rv(third)


def test_resource_version_increases_on_every_change(core: Any, namespace: str) -> None:
    created = core.create_namespaced_config_map(namespace, _config_map("settings"))
    versions = [_rv(created)]

    created.data = {"x": "2"}
    versions.append(_rv(core.replace_namespaced_config_map("settings", namespace, created)))
    versions.append(_rv(core.patch_namespaced_config_map("settings", namespace, {"data": {"y": "3"}})))
    versions.append(_rv(core.patch_namespaced_config_map("settings", namespace, {"metadata": {"labels": {"a": "b"}}})))
    # Unchanged content is still a write here: the counter moves on every accepted request.
    versions.append(_rv(core.patch_namespaced_config_map("settings", namespace, {"data": {"y": "3"}})))

    assert versions == sorted(set(versions)), versions
    read = core.read_namespaced_config_map("settings", namespace)
    assert _rv(read) == versions[-1]
    assert read.metadata.uid == created.metadata.uid
    assert read.data == {"x": "2", "y": "3"}


def test_deployment_generation_bumps_on_spec_change_not_on_metadata_change(apps: Any, namespace: str) -> None:
    created = apps.create_namespaced_deployment(namespace, _deployment("web"))
    assert created.metadata.generation == 1

    relabelled = apps.patch_namespaced_deployment("web", namespace, {"metadata": {"labels": {"team": "ml"}}})
    assert relabelled.metadata.generation == 1
    assert _rv(relabelled) > _rv(created)

    scaled = apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 5}})
    assert scaled.metadata.generation == 2

    scaled.spec.template.spec.containers[0].image = "model:2"
    replaced = apps.replace_namespaced_deployment("web", namespace, scaled)
    assert replaced.metadata.generation == 3

    replaced.metadata.annotations = {"note": "metadata only"}
    annotated = apps.replace_namespaced_deployment("web", namespace, replaced)
    assert annotated.metadata.generation == 3
    assert apps.read_namespaced_deployment("web", namespace).metadata.generation == 3


# --- Errors as Status bodies ------------------------------------------------------------------------


def test_missing_object_is_404_not_found(apps: Any, core: Any, namespace: str) -> None:
    code, status = _refusal(lambda: apps.read_namespaced_deployment("absent", namespace))
    assert (code, status["reason"], status["kind"], status["code"]) == (404, "NotFound", "Status", 404)
    assert status["details"]["name"] == "absent"

    for call in (
        lambda: apps.delete_namespaced_deployment("absent", namespace),
        lambda: core.patch_namespaced_config_map("absent", namespace, {"data": {"x": "1"}}),
        lambda: core.replace_namespaced_config_map("absent", namespace, _config_map("absent")),
    ):
        code, status = _refusal(call)
        assert (code, status["reason"]) == (404, "NotFound")


def test_duplicate_create_is_409_already_exists(core: Any, namespace: str) -> None:
    original = core.create_namespaced_config_map(namespace, _config_map("settings", {"x": "1"}))
    code, status = _refusal(lambda: core.create_namespaced_config_map(namespace, _config_map("settings", {"x": "2"})))
    assert (code, status["reason"]) == (409, "AlreadyExists")
    assert status["details"]["name"] == "settings"
    kept = core.read_namespaced_config_map("settings", namespace)
    assert (kept.data, kept.metadata.uid) == ({"x": "1"}, original.metadata.uid)
    # The same name in another namespace is another object.
    core.create_namespaced_config_map(f"{namespace}-b", _config_map("settings"))


def test_missing_name_is_422_invalid(core: Any, namespace: str) -> None:
    code, status = _refusal(lambda: core.create_namespaced_config_map(namespace, {"metadata": {}, "data": {}}))
    assert (code, status["reason"]) == (422, "Invalid")
    assert core.list_namespaced_config_map(namespace).items == []


def test_generate_name_makes_a_unique_name(core: Any, namespace: str) -> None:
    first = core.create_namespaced_config_map(namespace, {"metadata": {"generateName": "run-"}})
    second = core.create_namespaced_config_map(namespace, {"metadata": {"generateName": "run-"}})
    assert first.metadata.name.startswith("run-")
    assert first.metadata.name != second.metadata.name


def test_unknown_resource_type_is_404(api: Any, namespace: str) -> None:
    custom = client.CustomObjectsApi(api)
    calls = (
        lambda: custom.list_namespaced_custom_object("example.com", "v1", namespace, "widgets"),
        lambda: custom.get_namespaced_custom_object("example.com", "v1", namespace, "widgets", "w"),
        lambda: custom.create_namespaced_custom_object(
            "example.com", "v1", namespace, "widgets", {"apiVersion": "example.com/v1", "kind": "Widget",
                                                        "metadata": {"name": "w"}}),
    )  # fmt: skip
    for call in calls:
        code, status = _refusal(call)
        assert (code, status["reason"]) == (404, "NotFound")


# --- Optimistic concurrency -----------------------------------------------------------------------


def test_replace_with_stale_resource_version_is_409_conflict(core: Any, namespace: str) -> None:
    stale = core.create_namespaced_config_map(namespace, _config_map("settings", {"x": "1"}))
    current = core.patch_namespaced_config_map("settings", namespace, {"data": {"x": "2"}})

    stale.data = {"x": "stale"}
    code, status = _refusal(lambda: core.replace_namespaced_config_map("settings", namespace, stale))
    assert (code, status["reason"]) == (409, "Conflict")
    assert core.read_namespaced_config_map("settings", namespace).data == {"x": "2"}

    current.data = {"x": "3"}
    replaced = core.replace_namespaced_config_map("settings", namespace, current)
    assert replaced.data == {"x": "3"}
    assert _rv(replaced) > _rv(current)


def test_replace_without_resource_version_is_unconditional(core: Any, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, _config_map("settings", {"x": "1"}))
    core.patch_namespaced_config_map("settings", namespace, {"data": {"x": "2"}})
    replaced = core.replace_namespaced_config_map("settings", namespace, _config_map("settings", {"x": "3"}))
    assert replaced.data == {"x": "3"}


def test_patch_with_stale_resource_version_is_409_conflict(apps: Any, namespace: str) -> None:
    stale = apps.create_namespaced_deployment(namespace, _deployment("web", replicas=3))
    current = apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 4}})

    stale_patch = {"metadata": {"resourceVersion": stale.metadata.resource_version}, "spec": {"replicas": 9}}
    code, status = _refusal(lambda: apps.patch_namespaced_deployment("web", namespace, stale_patch))
    assert (code, status["reason"]) == (409, "Conflict")
    assert apps.read_namespaced_deployment("web", namespace).spec.replicas == 4

    fresh_patch = {"metadata": {"resourceVersion": current.metadata.resource_version}, "spec": {"replicas": 9}}
    assert apps.patch_namespaced_deployment("web", namespace, fresh_patch).spec.replicas == 9


def test_two_runners_racing_for_a_lease_first_wins_second_conflicts(leases: Any, namespace: str) -> None:
    leases.create_namespaced_lease(namespace, _lease("runbook-lock"))
    seen_by_a = leases.read_namespaced_lease("runbook-lock", namespace)
    seen_by_b = leases.read_namespaced_lease("runbook-lock", namespace)
    assert seen_by_a.metadata.resource_version == seen_by_b.metadata.resource_version

    seen_by_a.spec.holder_identity = "runner-a"
    taken = leases.replace_namespaced_lease("runbook-lock", namespace, seen_by_a)
    assert taken.spec.holder_identity == "runner-a"

    seen_by_b.spec.holder_identity = "runner-b"
    code, status = _refusal(lambda: leases.replace_namespaced_lease("runbook-lock", namespace, seen_by_b))
    assert (code, status["reason"]) == (409, "Conflict")
    assert leases.read_namespaced_lease("runbook-lock", namespace).spec.holder_identity == "runner-a"


def test_concurrent_runners_exactly_one_takes_the_lease(kube: LocalKubernetes, leases: Any, namespace: str) -> None:
    leases.create_namespaced_lease(namespace, _lease("runbook-lock"))
    runners = [f"runner-{index}" for index in range(8)]
    start = threading.Barrier(len(runners))
    outcomes: dict[str, int] = {}

    def take(identity: str) -> None:
        with _api_client(kube) as own:  # each runner is its own process with its own connection
            api = client.CoordinationV1Api(own)
            lease = api.read_namespaced_lease("runbook-lock", namespace)
            lease.spec.holder_identity = identity
            start.wait(timeout=10)
            try:
                api.replace_namespaced_lease("runbook-lock", namespace, lease)
                outcomes[identity] = 200
            except ApiException as exc:
                outcomes[identity] = exc.status

    threads = [threading.Thread(target=take, args=(identity,)) for identity in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    winners = [identity for identity, code in outcomes.items() if code == 200]
    assert len(winners) == 1, outcomes
    assert sorted(outcomes.values()) == [200] + [409] * (len(runners) - 1)
    assert leases.read_namespaced_lease("runbook-lock", namespace).spec.holder_identity == winners[0]


# --- Patches ----------------------------------------------------------------------------------------


def test_dict_patch_from_the_typed_client_is_a_strategic_merge(
    kube: LocalKubernetes, apps: Any, namespace: str
) -> None:
    containers = [{"name": "server", "image": "model:1"}, {"name": "sidecar", "image": "proxy:1"}]
    apps.create_namespaced_deployment(namespace, _deployment("web", containers=containers))

    patch = {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "model:2"}]}}}}
    patched = apps.patch_namespaced_deployment("web", namespace, patch)

    assert _sent_content_types(kube, namespace, "PATCH") == ["application/strategic-merge-patch+json"]
    images = {c.name: c.image for c in patched.spec.template.spec.containers}
    assert images == {"server": "model:2", "sidecar": "proxy:1"}
    assert [c.name for c in patched.spec.template.spec.containers] == ["server", "sidecar"]


def test_strategic_merge_appends_a_new_named_item(apps: Any, namespace: str) -> None:
    apps.create_namespaced_deployment(namespace, _deployment("web"))
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "image": "proxy:1"}]}}}}
    patched = apps.patch_namespaced_deployment("web", namespace, patch)
    assert [(c.name, c.image) for c in patched.spec.template.spec.containers] == [
        ("server", "model:1"),
        ("sidecar", "proxy:1"),
    ]


def test_merge_patch_replaces_lists_whole(kube: LocalKubernetes, api: Any, namespace: str) -> None:
    # The client sends CustomObjectsApi patches as JSON merge patches: lists are replaced, not merged.
    custom = client.CustomObjectsApi(api)
    scaled_object = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"name": "web"},
                 "triggers": [{"name": "queue", "type": "prometheus"}, {"name": "cpu", "type": "cpu"}]},
    }  # fmt: skip
    custom.create_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects", scaled_object)

    patch = {"spec": {"triggers": [{"name": "queue", "type": "kafka"}], "maxReplicaCount": 4}}
    patched = custom.patch_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects", "web", patch)

    assert _sent_content_types(kube, namespace, "PATCH") == ["application/merge-patch+json"]
    assert patched["spec"] == {"scaleTargetRef": {"name": "web"}, "triggers": [{"name": "queue", "type": "kafka"}],
                               "maxReplicaCount": 4}  # fmt: skip


def test_forced_merge_patch_content_type_replaces_containers(apps: Any, namespace: str) -> None:
    containers = [{"name": "server", "image": "model:1"}, {"name": "sidecar", "image": "proxy:1"}]
    apps.create_namespaced_deployment(namespace, _deployment("web", containers=containers))
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": "model:2"}]}}}}
    patched = apps.patch_namespaced_deployment("web", namespace, patch, _content_type="application/merge-patch+json")
    assert [(c.name, c.image) for c in patched.spec.template.spec.containers] == [("server", "model:2")]


def test_json_patch_list_body(kube: LocalKubernetes, core: Any, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, _config_map("settings", {"x": "1", "y": "1"}))
    operations = [
        {"op": "replace", "path": "/data/x", "value": "2"},
        {"op": "add", "path": "/data/z", "value": "3"},
        {"op": "remove", "path": "/data/y"},
    ]
    patched = core.patch_namespaced_config_map("settings", namespace, operations)
    assert _sent_content_types(kube, namespace, "PATCH") == ["application/json-patch+json"]
    assert patched.data == {"x": "2", "z": "3"}


def test_json_patch_that_cannot_apply_is_422_invalid(core: Any, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, _config_map("settings", {"x": "1"}))
    for operations in (
        [{"op": "test", "path": "/data/x", "value": "other"}, {"op": "replace", "path": "/data/x", "value": "2"}],
        [{"op": "remove", "path": "/data/absent"}],
    ):
        code, status = _refusal(functools.partial(core.patch_namespaced_config_map, "settings", namespace, operations))
        assert (code, status["reason"]) == (422, "Invalid")
    assert core.read_namespaced_config_map("settings", namespace).data == {"x": "1"}


@pytest.mark.parametrize("content_type", [None, "application/merge-patch+json"], ids=["strategic", "merge"])
def test_null_in_a_merge_patch_removes_the_key(core: Any, namespace: str, content_type: str | None) -> None:
    core.create_namespaced_config_map(namespace, _config_map("settings", {"x": "1", "y": "2"}))
    options = {"_content_type": content_type} if content_type else {}
    patched = core.patch_namespaced_config_map("settings", namespace, {"data": {"x": None}}, **options)
    assert patched.data == {"y": "2"}


def test_patch_keeps_identity_fields(core: Any, namespace: str) -> None:
    created = core.create_namespaced_config_map(namespace, _config_map("settings"))
    patch = {"metadata": {"uid": "forged", "creationTimestamp": "2000-01-01T00:00:00Z"}, "data": {"x": "2"}}
    patched = core.patch_namespaced_config_map("settings", namespace, patch)
    assert patched.metadata.uid == created.metadata.uid
    assert patched.metadata.creation_timestamp == created.metadata.creation_timestamp


# --- Selectors --------------------------------------------------------------------------------------

_LABELLED_PODS = {
    "front": {"app": "web", "tier": "front"},
    "back": {"app": "web", "tier": "back"},
    "db": {"app": "db"},
    "bare": {},
}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", {"front", "back"}),
        ("app==web", {"front", "back"}),
        ("app!=web", {"db", "bare"}),  # != also matches objects without the key
        ("tier in (front,back)", {"front", "back"}),
        ("tier in (front, absent)", {"front"}),
        ("tier notin (front)", {"back", "db", "bare"}),  # notin also matches objects without the key
        ("tier", {"front", "back"}),
        ("!tier", {"db", "bare"}),
        ("app=web,tier!=back", {"front"}),
        ("app in (web,db),!tier", {"db"}),
        ("app=web, tier notin (front,back)", set()),
        ("app,tier=front", {"front"}),
        ("", {"front", "back", "db", "bare"}),
    ],
)
def test_label_selectors(core: Any, namespace: str, selector: str, expected: set[str]) -> None:
    for name, labels in _LABELLED_PODS.items():
        core.create_namespaced_pod(namespace, _pod_body(name, labels=labels))
    listed = core.list_namespaced_pod(namespace, label_selector=selector)
    assert {pod.metadata.name for pod in listed.items} == expected


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("metadata.name=a-running", {"a-running"}),
        ("metadata.name!=a-running", {"a-pending", "b-running", "unscheduled"}),
        ("spec.nodeName=node-a", {"a-running", "a-pending"}),
        ("spec.nodeName==node-b", {"b-running"}),
        ("spec.nodeName=", {"unscheduled"}),
        ("status.phase=Running", {"a-running", "b-running"}),
        ("status.phase!=Running", {"a-pending", "unscheduled"}),
        ("spec.nodeName=node-a,status.phase=Running", {"a-running"}),
    ],
)
def test_field_selectors(core: Any, namespace: str, selector: str, expected: set[str]) -> None:
    _pod(core, namespace, "a-running", node="node-a", phase="Running")
    _pod(core, namespace, "a-pending", node="node-a", phase="Pending", ready=False)
    _pod(core, namespace, "b-running", node="node-b", phase="Running")
    _pod(core, namespace, "unscheduled", phase="Pending", ready=False)
    listed = core.list_namespaced_pod(namespace, field_selector=selector)
    assert {pod.metadata.name for pod in listed.items} == expected


def test_field_selector_metadata_namespace(core: Any, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, _config_map("here"))
    core.create_namespaced_config_map(f"{namespace}-b", _config_map("there"))
    listed = core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={namespace}")
    assert [item.metadata.name for item in listed.items] == ["here"]


def test_label_and_field_selectors_combine(core: Any, namespace: str) -> None:
    _pod(core, namespace, "web-a", labels={"app": "web"}, node="node-a")
    _pod(core, namespace, "web-b", labels={"app": "web"}, node="node-b")
    _pod(core, namespace, "db-a", labels={"app": "db"}, node="node-a")
    listed = core.list_namespaced_pod(namespace, label_selector="app=web", field_selector="spec.nodeName=node-a")
    assert [pod.metadata.name for pod in listed.items] == ["web-a"]


def test_unknown_field_selector_is_400_bad_request(core: Any, namespace: str) -> None:
    core.create_namespaced_pod(namespace, _pod_body("p"))
    code, status = _refusal(lambda: core.list_namespaced_pod(namespace, field_selector="spec.schedulerName=x"))
    assert (code, status["reason"]) == (400, "BadRequest")


# --- Deployment scale subresource -----------------------------------------------------------------


def test_read_scale_returns_a_scale(apps: Any, namespace: str) -> None:
    created = apps.create_namespaced_deployment(namespace, _deployment("web", replicas=3))
    scale = apps.read_namespaced_deployment_scale("web", namespace)
    assert isinstance(scale, client.V1Scale)
    assert (scale.api_version, scale.kind) == ("autoscaling/v1", "Scale")
    assert scale.spec.replicas == 3
    assert scale.status.selector == "app=web"
    assert (scale.metadata.name, scale.metadata.uid) == ("web", created.metadata.uid)
    assert scale.metadata.resource_version == created.metadata.resource_version


def test_patch_scale_changes_the_deployment_replicas(apps: Any, namespace: str) -> None:
    created = apps.create_namespaced_deployment(namespace, _deployment("web", replicas=3))
    scale = apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": 5}})
    assert isinstance(scale, client.V1Scale)
    assert scale.spec.replicas == 5

    deployment = apps.read_namespaced_deployment("web", namespace)
    assert deployment.spec.replicas == 5
    assert deployment.metadata.generation == 2
    assert _rv(deployment) > _rv(created)
    assert apps.read_namespaced_deployment_scale("web", namespace).spec.replicas == 5


def test_replace_scale_changes_the_deployment_replicas(apps: Any, namespace: str) -> None:
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=3))
    scale = apps.read_namespaced_deployment_scale("web", namespace)
    scale.spec.replicas = 0
    assert apps.replace_namespaced_deployment_scale("web", namespace, scale).spec.replicas == 0
    assert apps.read_namespaced_deployment("web", namespace).spec.replicas == 0


def test_negative_scale_is_422_invalid(apps: Any, namespace: str) -> None:
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=3))
    code, status = _refusal(
        lambda: apps.patch_namespaced_deployment_scale("web", namespace, {"spec": {"replicas": -1}})
    )
    assert (code, status["reason"]) == (422, "Invalid")
    assert apps.read_namespaced_deployment("web", namespace).spec.replicas == 3


def test_scale_of_a_missing_deployment_is_404(apps: Any, namespace: str) -> None:
    code, status = _refusal(lambda: apps.read_namespaced_deployment_scale("absent", namespace))
    assert (code, status["reason"]) == (404, "NotFound")


# --- Eviction and PodDisruptionBudgets -------------------------------------------------------------


def _eviction(name: str, namespace: str) -> Any:
    return client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=namespace))


def _evict(core: Any, namespace: str, name: str) -> Any:
    return core.create_namespaced_pod_eviction(name, namespace, _eviction(name, namespace))


def _eviction_outcome(core: Any, namespace: str, name: str) -> tuple[int, str]:
    """(201, "") for an eviction the API accepted, else the refusal's code and reason."""
    try:
        _evict(core, namespace, name)
    except ApiException as exc:
        return exc.status, json.loads(exc.body)["reason"]
    return 201, ""


def _served_app(apps: Any, core: Any, namespace: str, *, replicas: int = 3, ready: int = 3) -> list[str]:
    """A Deployment `web` of `replicas` pods labelled app=web, the first `ready` of them Ready."""
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=replicas))
    names = [f"web-{index}" for index in range(replicas)]
    for index, name in enumerate(names):
        _pod(core, namespace, name, labels={"app": "web"}, ready=index < ready)
    return names


def _budget(policy: Any, namespace: str, name: str, spec: dict[str, Any], app: str = "web") -> None:
    body = {"metadata": {"name": name}, "spec": {"selector": {"matchLabels": {"app": app}}, **spec}}
    policy.create_namespaced_pod_disruption_budget(namespace, body)


def _pod_names(core: Any, namespace: str) -> list[str]:
    return [pod.metadata.name for pod in core.list_namespaced_pod(namespace).items]


def test_eviction_within_budget_deletes_then_budget_refuses_with_429(
    apps: Any, core: Any, policy: Any, namespace: str
) -> None:
    pods = _served_app(apps, core, namespace)
    _budget(policy, namespace, "web-budget", {"maxUnavailable": 1})

    _evict(core, namespace, pods[0])
    assert _pod_names(core, namespace) == pods[1:]
    code, _ = _refusal(lambda: core.read_namespaced_pod(pods[0], namespace))
    assert code == 404

    code, status = _refusal(lambda: _evict(core, namespace, pods[1]))
    assert (code, status["reason"], status["code"]) == (429, "TooManyRequests", 429)
    causes = status["details"]["causes"]
    assert any(cause.get("reason") == "DisruptionBudget" and "web-budget" in cause["message"] for cause in causes)
    assert _pod_names(core, namespace) == pods[1:]


@pytest.mark.parametrize(
    ("budget", "allowed"),
    [
        ({"maxUnavailable": 1}, 1),
        ({"maxUnavailable": 0}, 0),
        ({"maxUnavailable": "34%"}, 2),  # 34% of 3 = 1.02, rounded up to 2
        ({"minAvailable": 2}, 1),
        ({"minAvailable": "67%"}, 0),  # 67% of 3 = 2.01, rounded up to 3: no pod may go
        ({"minAvailable": "50%"}, 1),  # 1.5 rounded up to 2
        ({"minAvailable": 0}, 3),
    ],
    ids=str,
)
def test_budget_allows_as_many_evictions_as_it_should(
    apps: Any, core: Any, policy: Any, namespace: str, budget: dict[str, Any], allowed: int
) -> None:
    pods = _served_app(apps, core, namespace)
    _budget(policy, namespace, "web-budget", budget)
    outcomes = [_eviction_outcome(core, namespace, name) for name in pods]
    assert outcomes == [(201, "")] * allowed + [(429, "TooManyRequests")] * (len(pods) - allowed)
    assert _pod_names(core, namespace) == pods[allowed:]


def test_min_available_67_percent_of_3_refuses_the_first_eviction(
    apps: Any, core: Any, policy: Any, namespace: str
) -> None:
    pods = _served_app(apps, core, namespace)
    _budget(policy, namespace, "strict-budget", {"minAvailable": "67%"})
    code, status = _refusal(lambda: _evict(core, namespace, pods[0]))
    assert (code, status["reason"]) == (429, "TooManyRequests")
    assert "strict-budget" in json.dumps(status["details"]["causes"])
    assert _pod_names(core, namespace) == pods


def test_a_pod_that_is_not_ready_can_be_evicted_when_the_budget_is_spent(
    apps: Any, core: Any, policy: Any, namespace: str
) -> None:
    # 2 of 3 Ready, maxUnavailable 1: the budget is exactly met (2 healthy, 2 needed).
    pods = _served_app(apps, core, namespace, ready=2)
    _budget(policy, namespace, "web-budget", {"maxUnavailable": 1})

    code, status = _refusal(lambda: _evict(core, namespace, pods[0]))
    assert (code, status["reason"]) == (429, "TooManyRequests")
    _evict(core, namespace, pods[2])
    assert _pod_names(core, namespace) == pods[:2]


def test_a_pending_pod_can_be_evicted_under_a_disrupted_budget(
    apps: Any, core: Any, policy: Any, namespace: str
) -> None:
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=3))
    _pod(core, namespace, "web-0", labels={"app": "web"})
    _pod(core, namespace, "web-1", labels={"app": "web"}, phase="Pending", ready=False)
    _budget(policy, namespace, "web-budget", {"minAvailable": 3})
    _evict(core, namespace, "web-1")
    assert _pod_names(core, namespace) == ["web-0"]


def test_a_running_unready_pod_of_a_disrupted_budget_is_refused(
    apps: Any, core: Any, policy: Any, namespace: str
) -> None:
    # PodDisruptionBudgetSpec.unhealthyPodEvictionPolicy, default IfHealthyBudget: "running pods
    # (status.phase="Running"), but not yet healthy can be evicted only if the guarded application is
    # not disrupted (status.currentHealthy is at least equal to status.desiredHealthy)". Here 1 of 3 is
    # Ready against 2 desired, so the API refuses evicting a Running, unready pod with 429.
    pods = _served_app(apps, core, namespace, ready=1)
    _budget(policy, namespace, "web-budget", {"maxUnavailable": 1})
    code, status = _refusal(lambda: _evict(core, namespace, pods[2]))
    assert (code, status["reason"]) == (429, "TooManyRequests")
    assert _pod_names(core, namespace) == pods


def test_always_allow_policy_evicts_unready_pods_of_a_disrupted_budget(
    apps: Any, core: Any, policy: Any, namespace: str
) -> None:
    pods = _served_app(apps, core, namespace, ready=1)
    _budget(policy, namespace, "web-budget", {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow"})
    _evict(core, namespace, pods[2])
    assert _pod_names(core, namespace) == pods[:2]


def test_pods_outside_the_budget_selector_are_not_limited(apps: Any, core: Any, policy: Any, namespace: str) -> None:
    pods = _served_app(apps, core, namespace)
    _pod(core, namespace, "batch-0", labels={"app": "batch"})
    _pod(core, namespace, "batch-1", labels={"app": "batch"})
    _budget(policy, namespace, "web-budget", {"maxUnavailable": 0})

    code, _ = _refusal(lambda: _evict(core, namespace, pods[0]))
    assert code == 429
    _evict(core, namespace, "batch-0")
    _evict(core, namespace, "batch-1")
    assert _pod_names(core, namespace) == pods


def test_budget_in_another_namespace_does_not_apply(apps: Any, core: Any, policy: Any, namespace: str) -> None:
    pods = _served_app(apps, core, namespace)
    _budget(policy, f"{namespace}-b", "web-budget", {"maxUnavailable": 0})
    _evict(core, namespace, pods[0])
    assert _pod_names(core, namespace) == pods[1:]


def test_evicting_a_missing_pod_is_404(core: Any, namespace: str) -> None:
    code, status = _refusal(lambda: _evict(core, namespace, "absent"))
    assert (code, status["reason"]) == (404, "NotFound")


# --- Status subresource ---------------------------------------------------------------------------


def test_patch_status_changes_status_only(apps: Any, namespace: str) -> None:
    created = apps.create_namespaced_deployment(namespace, _deployment("web", replicas=3))
    patch = {"spec": {"replicas": 9}, "metadata": {"labels": {"forged": "yes"}},
             "status": {"replicas": 3, "readyReplicas": 2, "observedGeneration": 1}}  # fmt: skip
    patched = apps.patch_namespaced_deployment_status("web", namespace, patch)

    assert (patched.status.replicas, patched.status.ready_replicas, patched.status.observed_generation) == (3, 2, 1)
    assert patched.spec.replicas == 3
    assert patched.metadata.labels == {"app": "web"}
    assert patched.metadata.generation == 1
    assert _rv(patched) > _rv(created)
    read = apps.read_namespaced_deployment("web", namespace)
    assert (read.spec.replicas, read.status.ready_replicas) == (3, 2)


def test_replace_status_changes_status_only(apps: Any, namespace: str) -> None:
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=3))
    current = apps.read_namespaced_deployment("web", namespace)
    current.spec.replicas = 9
    current.status = client.V1DeploymentStatus(replicas=3, available_replicas=3)
    replaced = apps.replace_namespaced_deployment_status("web", namespace, current)
    assert (replaced.spec.replicas, replaced.status.available_replicas) == (3, 3)


def test_patch_status_with_stale_resource_version_is_409(apps: Any, namespace: str) -> None:
    stale = apps.create_namespaced_deployment(namespace, _deployment("web"))
    apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 4}})
    patch = {"metadata": {"resourceVersion": stale.metadata.resource_version}, "status": {"replicas": 1}}
    code, status = _refusal(lambda: apps.patch_namespaced_deployment_status("web", namespace, patch))
    assert (code, status["reason"]) == (409, "Conflict")


def test_patch_of_the_main_resource_leaves_status_alone(apps: Any, namespace: str) -> None:
    # Deployments have a status subresource: the API server resets .status to the stored one on
    # updates of the main resource (deploymentStrategy.PrepareForUpdate), so only /status writes it.
    apps.create_namespaced_deployment(namespace, _deployment("web", replicas=3))
    apps.patch_namespaced_deployment_status("web", namespace, {"status": {"replicas": 3, "readyReplicas": 3}})
    patched = apps.patch_namespaced_deployment("web", namespace, {"spec": {"replicas": 4},
                                                                  "status": {"readyReplicas": 0}})  # fmt: skip
    assert patched.spec.replicas == 4
    assert patched.status.ready_replicas == 3


# --- Store listeners ------------------------------------------------------------------------------


def test_store_listeners_see_added_modified_deleted(kube: LocalKubernetes, core: Any, namespace: str) -> None:
    events: list[tuple[str, str, str]] = []

    def listen(event: str, plural: str, obj: dict[str, Any]) -> None:
        if obj.get("metadata", {}).get("namespace") == namespace:
            events.append((event, plural, obj["metadata"]["name"]))

    kube.store.listeners.append(listen)
    try:
        core.create_namespaced_config_map(namespace, _config_map("settings"))
        core.patch_namespaced_config_map("settings", namespace, {"data": {"x": "2"}})
        core.delete_namespaced_config_map("settings", namespace)
        _pod(core, namespace, "p")
        _evict(core, namespace, "p")
    finally:
        kube.store.listeners.remove(listen)

    assert events == [
        ("ADDED", "configmaps", "settings"),
        ("MODIFIED", "configmaps", "settings"),
        ("DELETED", "configmaps", "settings"),
        ("ADDED", "pods", "p"),
        ("MODIFIED", "pods", "p"),
        ("DELETED", "pods", "p"),
    ]


def test_listener_sees_the_object_as_stored(kube: LocalKubernetes, core: Any, namespace: str) -> None:
    seen: list[dict[str, Any]] = []

    def listen(event: str, plural: str, obj: dict[str, Any]) -> None:
        if obj.get("metadata", {}).get("namespace") == namespace:
            seen.append(obj)

    kube.store.listeners.append(listen)
    try:
        created = core.create_namespaced_config_map(namespace, _config_map("settings", {"x": "1"}))
    finally:
        kube.store.listeners.remove(listen)
    assert len(seen) == 1
    assert seen[0]["data"] == {"x": "1"}
    assert seen[0]["metadata"]["uid"] == created.metadata.uid
    assert seen[0]["metadata"]["resourceVersion"] == created.metadata.resource_version
