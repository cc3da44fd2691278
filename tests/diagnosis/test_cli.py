"""`peakguard diagnose`: offline from a recording, and live against a real Prometheus scraping the
lab's kube-state-metrics and a real serving process, with the targets document in moto's SSM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import httpx
import pytest

from diagnosis.cli import prometheus_range
from diagnosis.series import Recording, RecordingError, record
from infra.targets import ClusterTarget, ModelServiceTarget, TargetsDocument, parameter_name
from lab.aws import CREDENTIALS, moto_server
from lab.kube_api import LocalKubernetes
from lab.kube_state_metrics import KubeStateMetrics
from lab.prometheus import Prometheus
from model_service.server import ServiceSettings
from tests.diagnosis.fleet import LAYERS, Pod, build
from tests.model_service.conftest import TOKEN, serving, write_tiny_artifacts

MERGE = "application/merge-patch+json"


def _diagnose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peakguard", "diagnose", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})}, check=False)  # fmt: skip


def test_a_recording_is_diagnosed_offline_with_the_runbook_and_the_exit_status_of_its_verdict(tmp_path: Path) -> None:
    slow = Pod("b", node="node-b", changes=[(40, {"layers": {**dict.fromkeys(LAYERS, 0.01), "block2": 0.4}})])
    build([Pod("a"), slow]).write(tmp_path / "slow.json")
    build([Pod("a"), Pod("b")]).write(tmp_path / "calm.json")
    report = {"recording": json.loads((tmp_path / "slow.json").read_text()), "fault": "slow-layer"}
    (tmp_path / "drill.json").write_text(json.dumps(report))

    slowed = _diagnose("--from-drill", str(tmp_path / "drill.json"), "--json", str(tmp_path / "out.json"))
    calm = _diagnose("--from-drill", str(tmp_path / "calm.json"))

    assert slowed.returncode == 1, slowed.stderr
    assert "verdict: cause: slow-layer: on b the full model's block2" in slowed.stdout
    assert "runbook: none" in slowed.stdout and "diagnosed in" in slowed.stdout
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["cause"] == "slow-layer" and written["findings"][0]["figures"]["pod"] == "b"
    assert calm.returncode == 0 and "verdict: healthy" in calm.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--window", "80:20"], "START before END"),
        (["--window", "soon"], "expected START:END"),
        (["--window", "1:20"], "leaves no baseline"),
    ],
)
def test_a_wrong_window_is_refused_naming_it(tmp_path: Path, args: list[str], message: str) -> None:
    build([Pod("a")]).write(tmp_path / "r.json")
    refused = _diagnose("--from-drill", str(tmp_path / "r.json"), *args)

    assert refused.returncode == 2 and message in refused.stderr


def test_a_drill_report_without_a_recording_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "drill.json").write_text(json.dumps({"recording": None}))

    with pytest.raises(RecordingError, match="answered no query"):
        Recording.read(tmp_path / "drill.json")
    assert "no such file" in _diagnose("--from-drill", str(tmp_path / "none.json")).stderr


def test_live_without_a_prometheus_url_says_how_to_reach_one() -> None:
    refused = _diagnose("--env", "dev", env={"PEAKGUARD_PROMETHEUS_URL": ""})

    assert refused.returncode == 2 and "port-forward svc/kube-prometheus-stack-prometheus" in refused.stderr


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A serving process and kube-state-metrics over a Kubernetes API holding its pod and node, both
    scraped by a real Prometheus every second, as kube-prometheus-stack scrapes a cluster."""
    write_tiny_artifacts(tmp_path / "models")
    settings = ServiceSettings(artifacts=tmp_path / "models", admin_token=TOKEN, layer_sample_every=1)
    with serving(settings) as service, LocalKubernetes() as kube, KubeStateMetrics(kube.store) as kube_state:
        ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        kube.store.create("nodes", None, {"metadata": {"name": "node-a"}})
        kube.store.patch("nodes", None, "node-a", ready, content_type=MERGE, only_status=True)
        pod = "model-service-full-0"
        kube.store.create("pods", "peakguard", {"metadata": {"name": pod, "namespace": "peakguard"},
                                                "spec": {"nodeName": "node-a"}})  # fmt: skip
        kube.store.patch("pods", "peakguard", pod, ready, content_type=MERGE, only_status=True)
        jobs = {"kube-state-metrics": kube_state.url.removeprefix("http://")}
        with Prometheus(tmp_path / "prometheus", env="dev", namespace="peakguard", slo_seconds=0.5,
                        static_jobs=jobs) as prometheus:  # fmt: skip
            address = service.url.removeprefix("http://")
            prometheus.set_targets([("model-service-full-0", f"http://{address}")])
            yield {"prometheus": prometheus, "service": service, "store": kube.store}


def _wait_scraped(prometheus: Prometheus, expr: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not prometheus.query(expr):
        assert time.monotonic() < deadline, f"Prometheus did not have {expr} within {timeout:.0f} s"
        time.sleep(0.5)


def test_the_live_path_reads_the_service_and_kube_state_metrics_from_prometheus(cluster: dict[str, Any]) -> None:
    prometheus, service = cluster["prometheus"], cluster["service"]
    start = time.time()
    with service.client() as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert client.post("/v1/intent", json={"text": "my card has not arrived"}).status_code == 200
            time.sleep(0.02)
    _wait_scraped(prometheus, "peakguard_layer_seconds_count")
    _wait_scraped(prometheus, "kube_pod_created")
    time.sleep(2.5)  # two more scrapes

    recording = record(prometheus_range(prometheus.url), namespace="peakguard", start=start, end=time.time(), step=1.0)

    pods = {s.labels["pod"] for s in recording.of("responses")}
    assert pods == {"model-service-full-0"}, recording.of("responses")
    assert {s.labels["layer"] for s in recording.of("layer_count")} >= {"block0", "head"}
    assert [s.labels for s in recording.of("pod_node")] == [{"pod": "model-service-full-0", "node": "node-a"}]
    assert recording.of("node_ready")[0].samples[-1][1] == 1.0
    assert recording.has("pod_created") and not recording.has("gpu_memory")  # no DCGM exporter on CPU


def test_the_live_command_reads_the_env_from_ssm_and_its_metrics_from_prometheus(cluster: dict[str, Any]) -> None:
    prometheus = cluster["prometheus"]
    service = ModelServiceTarget(
        namespace="peakguard", deployments={"full": "model-service-full"}, hpa="model-service-full",
        scaled_objects={}, mode_config_maps={}, admin_token_secret="model-service-admin", service="model-service",
        url="http://model-service.peakguard.svc", slo_p99_ms=500,
    )  # fmt: skip
    targets = TargetsDocument("dev", ClusterTarget("peakguard-dev", "https://x", "us-west-2"), (), service)
    with moto_server() as url:
        ssm = boto3.client("ssm", endpoint_url=url, region_name="us-west-2", **CREDENTIALS)
        ssm.put_parameter(Name=parameter_name("dev"), Value=targets.to_json(), Type="String", Overwrite=True)
        # On a busy machine Prometheus's first scrapes lag seconds: answers made before its first sample
        # are in that sample and increase nothing after it, so the answers come once it scrapes the pod.
        _wait_scraped(prometheus, "peakguard_request_seconds_count")
        with cluster["service"].client() as client:
            for _ in range(30):
                client.post("/v1/intent", json={"text": "where is my card"})
        _wait_scraped(prometheus, 'sum(peakguard_request_seconds_count{outcome="answered"}) >= 30')
        _wait_scraped(prometheus, "kube_node_status_condition")
        aws = {"AWS_ENDPOINT_URL": url, "AWS_DEFAULT_REGION": "us-west-2",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # fmt: skip
        ran = _diagnose("--env", "dev", "--prometheus", prometheus.url, "--minutes", "2", "--recent-minutes", "1",
                        env=aws)  # fmt: skip

    # The env's SLO came from SSM, the pod and its figures from Prometheus; 30 answers are too few for
    # a p99, which the verdict says rather than judging the SLO.
    assert ran.returncode in (1, 3), (ran.stdout, ran.stderr)
    assert "1 pod(s) serving" in ran.stdout and "p99 n/a (SLO 500 ms)" in ran.stdout, ran.stdout
    assert ran.returncode == 1 or "too few answers for a p99" in ran.stdout, ran.stdout
    assert httpx.get(f"{prometheus.url}/-/ready").status_code == 200
