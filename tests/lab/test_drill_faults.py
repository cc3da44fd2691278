"""The drill's faults, each against a real lab: what it breaks is what the runbooks would meet, and
its undo gives it back. (The drill itself, with bad-step, runs in test_drill.py.)"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client as k8s_client

from lab.drill_faults import FAULTS, WHEN, inject
from lab.lab import DELAYS, NAMESPACE, Lab, LabSettings
from peakguard.cli import build_parser
from tests.model_service.conftest import write_tiny_artifacts

ZONE = "topology.kubernetes.io/zone"

# A lab of three serving processes: beside another lab (the e2e runbooks) on two cores it moved their
# gates' p99 (CI: rolling-upgrade's gate found no data); so it runs after them, on its own.
pytestmark = pytest.mark.alone


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("faults")
    artifacts = root / "models"
    write_tiny_artifacts(artifacts)
    settings = LabSettings(artifacts=artifacts, workdir=root / "lab", delays=DELAYS, replicas=2, max_pods=3,
                           warm_spares=1, pod_settings={"chaos": True})  # fmt: skip
    with Lab(settings) as started:
        yield started


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.1)


def _nodes(lab: Lab) -> dict[str, dict[str, str]]:
    return {node["metadata"]["name"]: node["metadata"]["labels"] for node in lab.store.list("nodes")}


def _ready_nodes(lab: Lab) -> set[str]:
    return {
        node["metadata"]["name"]
        for node in lab.store.list("nodes")
        if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    }


def _pods_by_node(lab: Lab) -> dict[str, str]:
    return {p["metadata"]["name"]: p["spec"].get("nodeName", "") for p in lab.store.list("pods", NAMESPACE)}


def test_every_fault_is_offered_by_the_cli_and_has_its_moment() -> None:
    parser = build_parser()
    for name in FAULTS:
        assert parser.parse_args(["drill", "surge", "--fault", name]).fault == name
    with pytest.raises(SystemExit):
        parser.parse_args(["drill", "surge", "--fault", "gpu-fire"])
    assert set(WHEN) == set(FAULTS)


def test_the_fixed_nodes_sit_in_the_pools_zones(lab: Lab) -> None:
    zones = {labels[ZONE] for labels in _nodes(lab).values()}
    assert zones == set(lab.zones()) and len(zones) == 2
    # The two replicas are spread over the two nodes.
    assert len(set(_pods_by_node(lab).values()) - {""}) == 2


def test_node_takes_one_node_and_its_pods_out_until_undone(lab: Lab) -> None:
    notes: list[str] = []
    before = {pod for pod, _ in lab.ready_backends()}

    undo = inject("node", lab, notes.append, slo_seconds=0.3)

    assert undo is not None
    (lost,) = set(_nodes(lab)) - _ready_nodes(lab)
    on_lost = {pod for pod, node in _pods_by_node(lab).items() if node == lost}
    _wait(lambda: not {pod for pod, _ in lab.ready_backends()} & on_lost, "the lost node's pods leave the slices")
    assert {pod for pod, _ in lab.ready_backends()} == before - on_lost
    assert any(lost in note for note in notes)
    undo()
    assert _ready_nodes(lab) == set(_nodes(lab))
    _wait(lambda: {pod for pod, _ in lab.ready_backends()} == before, "the pods come back")


def test_zone_takes_every_node_of_one_zone(lab: Lab) -> None:
    notes: list[str] = []
    undo = inject("zone", lab, notes.append, slo_seconds=0.3)

    assert undo is not None
    lost = set(_nodes(lab)) - _ready_nodes(lab)
    assert len({_nodes(lab)[node][ZONE] for node in lost}) == 1
    assert lost == {name for name, labels in _nodes(lab).items() if labels[ZONE] == _nodes(lab)[next(iter(lost))][ZONE]}
    assert any("goes away" in note for note in notes)
    undo()
    assert _ready_nodes(lab) == set(_nodes(lab))


def test_bad_step_refuses_exactly_the_next_config_map_patch(lab: Lab) -> None:
    api = k8s_client.CoreV1Api(k8s_client.ApiClient(k8s_client.Configuration(host=lab.kube_url)))
    undo = inject("bad-step", lab, lambda _: None, slo_seconds=0.3)
    name = next(cm["metadata"]["name"] for cm in lab.store.list("configmaps", NAMESPACE))

    with pytest.raises(k8s_client.ApiException) as refused:
        api.patch_namespaced_config_map(name, NAMESPACE, {"metadata": {"labels": {"drill": "1"}}})
    api.patch_namespaced_config_map(name, NAMESPACE, {"metadata": {"labels": {"drill": "2"}}})

    assert refused.value.status == 403
    assert lab.store.get("configmaps", NAMESPACE, name)["metadata"]["labels"]["drill"] == "2"
    assert undo is not None
    undo()
    assert ("PATCH", "configmaps") not in lab.store.faults


def test_slow_layer_slows_one_ready_pod_until_undone(lab: Lab) -> None:
    detail: dict[str, object] = {}
    undo = inject("slow-layer", lab, lambda _: None, slo_seconds=0.3, detail=detail)

    urls = dict(lab.ready_backends())
    slowed = str(detail["pod"])
    auth = {"authorization": f"Bearer {lab.token}"}
    chaos = {
        pod: httpx.get(f"{url}/admin/status", headers=auth, timeout=10).json()["chaos"] for pod, url in urls.items()
    }
    assert chaos[slowed] == {"slow_layers": {"block0": 0.3}, "slow_down": 1.0}
    assert all(state == {"slow_layers": {}, "slow_down": 1.0} for pod, state in chaos.items() if pod != slowed)
    started = time.perf_counter()
    httpx.post(f"{urls[slowed]}/v1/intent", json={"text": "my card is lost"}, timeout=10).raise_for_status()
    assert time.perf_counter() - started >= 0.3
    assert undo is not None
    undo()
    assert httpx.get(f"{urls[slowed]}/admin/status", headers=auth, timeout=10).json()["chaos"] == {
        "slow_layers": {},
        "slow_down": 1.0,
    }


def test_cold_leaves_no_warm_spare(lab: Lab) -> None:
    spares = [pod for pod in lab.pods if pod.pod.startswith("spare-")]
    assert spares, "the fixture starts one warm spare"
    pids = [spare.process.pid for spare in spares]
    assert all(pids)

    assert inject("cold", lab, lambda _: None, slo_seconds=0.3) is None

    assert not [pod for pod in lab.pods if pod.pod.startswith("spare-")]
    # Stopped: each process is gone (or a zombie its parent has not reaped yet).
    for pid in pids:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text(), pid


def test_replica_kills_a_ready_pods_process(lab: Lab) -> None:
    # Last: the killed pod stays down (container restarts are not played).
    (pod, url), *_ = lab.ready_backends()
    notes: list[str] = []

    assert inject("replica", lab, notes.append, slo_seconds=0.3) is None

    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=5)
    assert any(pod in note for note in notes)
    _wait(lambda: pod not in {p for p, _ in lab.ready_backends()}, "the killed pod leaves the slices")
