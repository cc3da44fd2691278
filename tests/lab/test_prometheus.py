"""The lab's Prometheus: the cluster's alert rules, checked by promtool, evaluated by a real
Prometheus scraping a real model-service process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from infra.alerts import ALERTS, alert_rules, detection_bound
from lab.prometheus import Prometheus, find_prometheus
from model_service.service_process import ServiceProcess
from tests.model_service.conftest import write_tiny_artifacts


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    root = tmp_path_factory.mktemp("artifacts")
    write_tiny_artifacts(root)
    with ServiceProcess({"artifacts": str(root), "max_wait": 0.002}, ready_timeout=120) as process:
        yield process


@pytest.mark.parametrize("time_scale", [1.0, 0.1])
def test_promtool_accepts_the_rules_the_cluster_and_the_drill_load(tmp_path: Path, time_scale: float) -> None:
    rules = alert_rules("prod", "peakguard", 1.0, time_scale=time_scale)
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "peakguard.model-service", "rules": rules}]}))
    promtool = find_prometheus().with_name("promtool")

    checked = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


def _rule(name: str, time_scale: float = 1.0) -> dict[str, str]:
    (rule,) = [r for r in alert_rules("dev", "peakguard", 1.0, time_scale=time_scale) if r["alert"] == name]
    return rule


def test_time_scale_shortens_every_window_and_wait_alike() -> None:
    scaled = _rule("ModelServiceP99LatencyHigh", 0.1)
    assert scaled["for"] == "12s"
    assert "[12s]" in scaled["expr"]
    assert "offset 360s" in _rule("ModelServiceTrafficSurge", 0.1)["expr"]
    full = _rule("ModelServiceP99LatencyHigh")
    assert full["for"] == "2m"
    assert "[2m]" in full["expr"]


def test_the_detection_bound_is_for_plus_the_longest_range_plus_an_evaluation() -> None:
    # p99: for 2m over a [2m] rate; shed rate: for 5m over [5m] rates.
    assert detection_bound("ModelServiceP99LatencyHigh") == 120 + 120 + 60
    assert detection_bound("ModelServiceShedRateHigh", evaluation_interval=30) == 300 + 300 + 30
    # Scaled as the rules are: 0.05 x 2m = 6 s each, rounded to whole seconds like the rules.
    assert detection_bound("ModelServiceP99LatencyHigh", time_scale=0.05, evaluation_interval=1) == 6 + 6 + 1
    assert detection_bound("ModelServiceP99LatencyHigh", time_scale=0.01, evaluation_interval=1) == 1 + 1 + 1
    assert detection_bound("ModelServiceP99LatencyHigh", evaluation_interval=30, scrape_interval=5) == 240 + 30 + 5
    with pytest.raises(KeyError, match="no alert named 'Nope'"):
        detection_bound("Nope")


def test_a_real_prometheus_fires_the_p99_alert_on_a_slow_pod_and_not_on_a_fast_one(
    pod: ServiceProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the slow one's folder is relative, as `make demo`'s drill-out is
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=pod.url, timeout=10) as client:
            while not stop.is_set():
                client.post("/v1/intent", json={"text": "I lost my card"})
                stop.wait(0.01)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        # An SLO of 0.1 ms no answer meets, and one of 10 s every answer meets; windows of 5% (6 s for 2m).
        with Prometheus(Path("slow"), env="dev", namespace="peakguard", slo_seconds=0.0001,
                        time_scale=0.05) as slow, Prometheus(tmp_path / "fast", env="dev", namespace="peakguard",
                                                             slo_seconds=10.0, time_scale=0.05) as fast:  # fmt: skip
            for prometheus in (slow, fast):
                prometheus.set_targets([("model-service-full-0", pod.url)])
            started = time.monotonic()
            fired: list[str] = []
            while time.monotonic() - started < 45 and "ModelServiceP99LatencyHigh" not in fired:
                fired = [alert.name for alert in slow.firing()]
                time.sleep(0.5)
            took = time.monotonic() - started
            fast_fired = [alert.name for alert in fast.firing()]
            up = fast.query('up{job="model-service",namespace="peakguard"}')
    finally:
        stop.set()
        sender.join(timeout=10)

    assert "ModelServiceP99LatencyHigh" in fired, f"not firing after {took:.0f} s"
    assert "ModelServiceP99LatencyHigh" not in fast_fired
    assert [sample["metric"]["pod"] for sample in up] == ["model-service-full-0"]
    print(f"\np99 alert fired {took:.1f} s after scraping began (for 6 s over a 6 s range, 1 s evaluations)")


def test_the_fetch_script_passes_shellcheck() -> None:
    script = Path(__file__).resolve().parents[2] / "lab" / "scripts" / "fetch_prometheus.sh"
    shellcheck = Path(sys.executable).parent / "shellcheck"
    checked = subprocess.run([str(shellcheck), str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
