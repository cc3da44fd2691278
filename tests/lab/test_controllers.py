"""The played controllers: autoscaler bounds become pods, pods become Ready endpoints after their
delays, a broken backend turns its pod unready, ConfigMaps reach pods late, eviction stops a pod.

Backends here are small real HTTP servers, each on its own loopback address (the seam the
controllers drive); the model-service backend is exercised end to end in test_emergency_stop.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from kubernetes import client  # type: ignore[import-untyped, unused-ignore]

from lab.controllers import Controllers, Delays
from lab.kube_api import LocalKubernetes

NS = "peakguard"
FAST = Delays(pod_start=0.3, readiness=0.2, config_sync=1.0, tick=0.05)


class TinyBackend:
    """A pod's container: answers /readyz 200 until broken; keeps the ConfigMap files it got."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.broken = False
        self.configs: dict[str, dict[str, str]] = {}
        self.stopped = False
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(503 if backend.broken else 200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((address, 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def ready(self) -> bool:
        return not self.broken and not self.stopped

    def write_config(self, config_map: str, data: Mapping[str, str]) -> None:
        self.configs[config_map] = dict(data)

    def stop(self) -> None:
        self.stopped = True
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def cluster() -> Iterator[tuple[LocalKubernetes, Controllers, list[TinyBackend]]]:
    started: list[TinyBackend] = []

    def factory(pod: str, template: Mapping[str, Any], address: str) -> TinyBackend:
        backend = TinyBackend(address)
        started.append(backend)
        return backend

    with LocalKubernetes() as kubernetes, Controllers(kubernetes.store, backends=factory, delays=FAST) as controllers:
        store = kubernetes.store
        store.create("configmaps", NS, {"metadata": {"name": "mode"}, "data": {"mode.json": '{"model": "full"}'}})
        labels = {"app.kubernetes.io/name": "model-service", "peakguard.io/variant": "full"}
        store.create("deployments", NS, {
            "metadata": {"name": "model-service-full"},
            "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [{"name": "serve", "image": "x"}],
                "volumes": [{"name": "mode", "configMap": {"name": "mode"}}]}}},
        })  # fmt: skip
        store.create("horizontalpodautoscalers", NS, {"metadata": {"name": "model-service-full"}, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "model-service-full"},
            "minReplicas": 2, "maxReplicas": 4}})  # fmt: skip
        store.create("services", NS, {"metadata": {"name": "model-service"},
                                      "spec": {"selector": {"app.kubernetes.io/name": "model-service"}}})  # fmt: skip
        yield kubernetes, controllers, started


def _wait(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout} s")


def _ready_endpoints(kubernetes: LocalKubernetes) -> list[str]:
    slices = kubernetes.store.list("endpointslices", NS)
    return sorted(e["targetRef"]["name"] for s in slices for e in s["endpoints"] if e["conditions"]["ready"])


def test_the_hpa_minimum_becomes_ready_endpoints_after_the_pod_delays(cluster: Any) -> None:
    kubernetes, _, started = cluster

    took = _wait(lambda: len(_ready_endpoints(kubernetes)) == 2)

    assert took >= FAST.pod_start + FAST.readiness - 0.1, "not faster than a pod can start"
    assert kubernetes.store.get("deployments", NS, "model-service-full")["spec"]["replicas"] == 2
    assert len({b.address for b in started}) == 2, "each pod on its own loopback address"
    status = kubernetes.store.get("deployments", NS, "model-service-full")["status"]
    assert status["readyReplicas"] == 2


def test_raising_the_bounds_through_the_real_client_adds_pods(cluster: Any) -> None:
    kubernetes, _, started = cluster
    configuration = client.Configuration()
    configuration.host = kubernetes.url
    autoscaling = client.AutoscalingV2Api(client.ApiClient(configuration))

    autoscaling.patch_namespaced_horizontal_pod_autoscaler("model-service-full", NS, {"spec": {"minReplicas": 3}})

    _wait(lambda: len(_ready_endpoints(kubernetes)) == 3)
    # Pods take the loopback addresses in turn: the lab's warm spares wait on the next ones.
    assert sorted(b.address for b in started) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def test_a_backend_that_breaks_makes_its_pod_unready_and_leaves_the_slice(cluster: Any) -> None:
    kubernetes, _, started = cluster
    _wait(lambda: len(_ready_endpoints(kubernetes)) == 2)
    ready_before = _ready_endpoints(kubernetes)

    started[0].broken = True

    _wait(lambda: len(_ready_endpoints(kubernetes)) == 1)
    assert set(_ready_endpoints(kubernetes)) < set(ready_before)


def test_a_changed_config_map_reaches_pods_only_after_the_sync_delay(cluster: Any) -> None:
    kubernetes, _, started = cluster
    _wait(lambda: len(started) == 2 and all("mode" in b.configs for b in started))

    kubernetes.store.patch("configmaps", NS, "mode", {"data": {"mode.json": '{"model": "light"}'}},
                           content_type="application/merge-patch+json")  # fmt: skip
    changed = time.monotonic()
    _wait(lambda: all(b.configs["mode"]["mode.json"] == '{"model": "light"}' for b in started))

    assert time.monotonic() - changed >= FAST.config_sync - 0.1


def test_evicting_a_pod_stops_its_backend_and_a_replacement_comes(cluster: Any) -> None:
    kubernetes, _, started = cluster
    _wait(lambda: len(_ready_endpoints(kubernetes)) == 2)
    victim = _ready_endpoints(kubernetes)[0]

    kubernetes.store.delete("pods", NS, victim)

    _wait(lambda: any(b.stopped for b in started))
    _wait(lambda: len(_ready_endpoints(kubernetes)) == 2 and victim not in _ready_endpoints(kubernetes))


def test_a_node_that_goes_not_ready_takes_its_pods_out_and_new_pods_go_elsewhere(cluster: Any) -> None:
    kubernetes, controllers, _ = cluster
    _wait(lambda: len(_ready_endpoints(kubernetes)) == 2)
    nodes = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in kubernetes.store.list("pods", NS)}
    assert set(nodes.values()) == {"local-node-1", "local-node-2"}, "spread over both nodes"
    lost = "local-node-1"

    controllers.set_node_ready(lost, False)

    _wait(lambda: _ready_endpoints(kubernetes) == sorted(p for p, n in nodes.items() if n != lost))
    node = kubernetes.store.get("nodes", None, lost)
    assert node["status"]["conditions"] == [{"type": "Ready", "status": "False"}]
    kubernetes.store.patch("horizontalpodautoscalers", NS, "model-service-full", {"spec": {"minReplicas": 3}},
                           content_type="application/merge-patch+json")  # fmt: skip
    _wait(lambda: len(_ready_endpoints(kubernetes)) == 2)
    newest = [p for p in kubernetes.store.list("pods", NS) if p["metadata"]["name"] not in nodes]
    assert [p["spec"]["nodeName"] for p in newest] == ["local-node-2"]

    controllers.set_node_ready(lost, True)
    _wait(lambda: len(_ready_endpoints(kubernetes)) == 3)
