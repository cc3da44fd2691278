"""`peakguard serve` as a child process: ready, pinned, steered through its admin API, stopped."""

from __future__ import annotations

import http.client
import os
import time
from pathlib import Path

import httpx
import pytest

from model_service.service_process import ServiceProcess, ServiceStartError, cpu_seconds, running_on, split_cores
from peakguard.cli import main
from tests.model_service.conftest import write_tiny_artifacts


def test_the_service_starts_ready_pinned_and_steerable(tmp_path: Path) -> None:
    folder = write_tiny_artifacts(tmp_path / "models")
    cpus = {min(os.sched_getaffinity(0))}

    with ServiceProcess({"artifacts": str(folder.parent)}, cpus=cpus, log_dir=tmp_path) as service:
        answer = httpx.post(f"{service.url}/v1/intent", json={"text": "where is my new card"}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model"] == "full"
        assert service.pid is not None and os.sched_getaffinity(service.pid) == cpus
        assert service.rss_bytes() > 50 * 2**20  # torch and two models are resident

        for _ in range(2):  # two 415s and a 422: one counter, two labels (http_415, http_422), summed
            httpx.post(f"{service.url}/v1/intent", content=b"{}", headers={"content-type": "text/plain"}, timeout=10)
        httpx.post(f"{service.url}/v1/intent", json={"text": 5}, timeout=10)
        assert service.counters("peakguard_errors", "peakguard_shed") == {"peakguard_errors": 3.0,
                                                                         "peakguard_shed": 0.0}  # fmt: skip
        assert service.set_mode(model="light")["model"] == "light"
        assert httpx.post(f"{service.url}/v1/intent", json={"text": "top up"}, timeout=10).json()["model"] == "light"
        assert service.status()["mode"]["model"] == "light"
        with service.peak_rss() as memory:
            httpx.get(f"{service.url}/healthz", timeout=10)
        assert memory["peak_bytes"] >= memory["start_bytes"] > 0
        pid = service.pid
        assert service.log_path.is_file()

    assert not service.log_path.parent.exists()  # config and log go with the process
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_service_that_cannot_start_says_why(tmp_path: Path) -> None:
    service = ServiceProcess({"artifacts": str(tmp_path), "no_such_setting": 1}, log_dir=tmp_path)
    with pytest.raises(ServiceStartError, match="exited with code 2") as error:
        service.start()
    assert "unknown setting 'no_such_setting'" in str(error.value)
    assert not service.log_path.parent.exists()


def test_a_service_whose_models_are_missing_exits_with_the_reason(tmp_path: Path) -> None:
    # Before, it served /healthz and never became ready: a pod that waits forever instead of crashing.
    (tmp_path / "empty").mkdir()
    service = ServiceProcess({"artifacts": str(tmp_path / "empty")}, ready_timeout=60, log_dir=tmp_path)
    with pytest.raises(ServiceStartError, match="exited with code 2") as error:
        service.start()
    assert "no model versions under" in str(error.value)
    assert service.rss_bytes() == 0  # stopped, nothing left running
    assert not service.log_path.parent.exists()


def test_a_service_whose_weights_do_not_load_is_never_ready(tmp_path: Path) -> None:
    # What the cheap check before the port opens cannot see (weights that fail their hash) is
    # reported on /readyz, and the process must not be taken as ready.
    folder = write_tiny_artifacts(tmp_path / "models")
    (folder / "light.safetensors").write_bytes(b"not weights")
    service = ServiceProcess({"artifacts": str(folder.parent)}, ready_timeout=8, log_dir=tmp_path)
    with pytest.raises(ServiceStartError, match="not ready after 8 s"):
        service.start()
    assert service.rss_bytes() == 0


def _healthz_on(connection: http.client.HTTPConnection) -> int:
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    response.read()
    return response.status


def test_keep_alive_decides_how_long_an_idle_connection_stays_open(tmp_path: Path) -> None:
    # Behind an ALB the service must close idle connections later than the ALB does (--keep-alive).
    folder = write_tiny_artifacts(tmp_path / "models")
    with ServiceProcess({"artifacts": str(folder.parent)}, log_dir=tmp_path, keep_alive=2.0) as service:
        connection = http.client.HTTPConnection(service.host, service.port, timeout=10)
        assert _healthz_on(connection) == 200
        opened = connection.sock
        time.sleep(0.5)
        assert _healthz_on(connection) == 200
        assert connection.sock is opened  # still the same connection
        time.sleep(3.0)  # past 2 s, short of uvicorn's own default of 5 s
        opened.settimeout(0.5)
        assert opened.recv(1) == b""  # the service closed it already
        connection.close()


def test_process_cpu_counts_every_thread_and_a_thread_its_own() -> None:
    import threading

    before = cpu_seconds(os.getpid())
    worker = threading.Thread(target=lambda: sum(i * i for i in range(3_000_000)))
    worker.start()
    worker.join()

    assert cpu_seconds(os.getpid()) > before
    assert 0 < cpu_seconds(os.getpid(), os.getpid()) <= cpu_seconds(os.getpid())  # the main thread's share


def test_a_bench_on_one_core_is_refused_by_name() -> None:
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(own)})
    try:
        with pytest.raises(RuntimeError, match="bench x needs 2 usable cores"):
            split_cores("bench x")
    finally:
        os.sched_setaffinity(0, own)
    assert split_cores("bench x") == ({min(own)}, own - {min(own)})


def test_running_on_pins_this_process_for_the_block_only() -> None:
    own = os.sched_getaffinity(0)
    with running_on({max(own)}):
        assert os.sched_getaffinity(0) == {max(own)}
    assert os.sched_getaffinity(0) == own


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_serve_refuses_a_port_it_cannot_listen_on_in_one_line(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--artifacts", "models", "--port", port])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "is not a port number (1-65535)" in error and "Traceback" not in error
