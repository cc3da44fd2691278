"""The drills' slow layer: `PUT /admin/chaos` on a process whose `chaos` setting is on, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_service.modes import OperatingMode
from model_service.server import ServiceSettings
from tests.model_service.conftest import TOKEN, Running, serving, write_tiny_artifacts
from tests.model_service.conftest import ask as _ask

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def chaotic(tmp_path: Path) -> Iterator[Running]:
    write_tiny_artifacts(tmp_path / "models")
    settings = ServiceSettings(artifacts=tmp_path / "models", admin_token=TOKEN, chaos=True, layer_sample_every=1,
                               initial_mode=OperatingMode(batch_min=1))  # fmt: skip
    with serving(settings) as service:
        yield service


def _median_latency(client: httpx.Client, n: int = 7) -> float:
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        assert _ask(client).status_code == 200
        seconds.append(time.perf_counter() - started)
    return sorted(seconds)[n // 2]


def test_a_slowed_layer_slows_every_answer_and_its_layer_metric_until_ended(chaotic: Running) -> None:
    with chaotic.client() as client:
        before = _median_latency(client)
        slowed = client.put("/admin/chaos", json={"slow_layer": {"layer": "block1", "seconds": 0.2}}, headers=AUTH)
        during = _median_latency(client)
        light = client.put("/admin/mode", json={"model": "light", "precision": "int8"}, headers=AUTH)
        during_light = _median_latency(client)
        status = client.get("/admin/status", headers=AUTH).json()
        ended = client.put("/admin/chaos", json={"slow_layer": None}, headers=AUTH)
        after = _median_latency(client)
        metrics = client.get("/metrics").text

    assert slowed.status_code == 200 and slowed.json() == {"slow_layers": {"block1": 0.2}, "slow_down": 1.0}
    assert during >= 0.2 and during - before >= 0.15
    assert light.status_code == 200 and during_light >= 0.2  # every model and precision of this process
    assert status["chaos"] == {"slow_layers": {"block1": 0.2}, "slow_down": 1.0}
    assert ended.json() == {"slow_layers": {}, "slow_down": 1.0}
    assert after < 0.2
    # The layer-time histogram saw it (fp32 batches are timed layer by layer).
    sums = [line for line in metrics.splitlines() if line.startswith("peakguard_layer_seconds_sum")]
    (block1,) = [line for line in sums if 'model="full"' in line and "block1" in line]
    assert float(block1.rsplit(" ", 1)[1]) >= 0.2 * 5


def _layer_means(metrics: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the full model's per-layer histogram, by layer."""
    found: dict[str, list[float]] = {}
    for line in metrics.splitlines():
        for part, index in (("peakguard_layer_seconds_sum", 0), ("peakguard_layer_seconds_count", 1)):
            if line.startswith(part) and 'model="full"' in line:
                layer = line.split('layer="', 1)[1].split('"', 1)[0]
                found.setdefault(layer, [0.0, 0.0])[index] = float(line.rsplit(" ", 1)[1])
    return {layer: (pair[0], pair[1]) for layer, pair in found.items()}


def test_a_slow_down_stretches_every_layer_by_its_factor_until_ended(chaotic: Running) -> None:
    def mean_per_layer(
        first: dict[str, tuple[float, float]], second: dict[str, tuple[float, float]]
    ) -> dict[str, float]:
        return {layer: (second[layer][0] - first[layer][0]) / (second[layer][1] - first[layer][1]) for layer in second}

    with chaotic.client() as client:
        for _ in range(5):
            _ask(client)
        start = _layer_means(client.get("/metrics").text)
        for _ in range(20):
            _ask(client)
        warm = _layer_means(client.get("/metrics").text)
        slowed = client.put("/admin/chaos", json={"slow_down": {"factor": 6}}, headers=AUTH)
        for _ in range(20):
            _ask(client)
        cold = _layer_means(client.get("/metrics").text)
        ended = client.put("/admin/chaos", json={"slow_down": None}, headers=AUTH)
        for _ in range(20):
            _ask(client)
        after = _layer_means(client.get("/metrics").text)

    assert slowed.json() == {"slow_layers": {}, "slow_down": 6.0} and ended.json()["slow_down"] == 1.0
    before, during, later = mean_per_layer(start, warm), mean_per_layer(warm, cold), mean_per_layer(cold, after)
    # Every layer, not one: each takes several times its time (6x less scheduling noise), and no longer after.
    assert set(during) == {"block0", "block1", "head"}
    for layer in during:
        assert during[layer] >= 3 * before[layer], (layer, before, during)
        assert later[layer] < during[layer] / 2, (layer, during, later)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"slow_layer": {"layer": "block9", "seconds": 0.1}}, 422, "no layer 'block9'; the layers are block0, block1"),
        ({"slow_layer": {"layer": "head", "seconds": 60}}, 422, "seconds must be in (0, 10]"),
        ({"slow": 1}, 422, 'body must be {"slow_layer"'),
        ({"slow_down": {"factor": 0.5}}, 422, "factor must be in [1, 20]"),
    ],
)
def test_a_wrong_chaos_request_is_refused_naming_what_is_wrong(
    chaotic: Running, body: dict[str, object], status: int, message: str
) -> None:
    with chaotic.client() as client:
        refused = client.put("/admin/chaos", json=body, headers=AUTH)

    assert refused.status_code == status
    assert message in refused.json()["error"]


def test_without_the_setting_chaos_is_refused(running: Running) -> None:
    with running.client() as client:
        refused = client.put("/admin/chaos", json={"slow_layer": {"layer": "block0", "seconds": 1}}, headers=AUTH)
        status = client.get("/admin/status", headers=AUTH).json()
        started = time.perf_counter()
        _ask(client)
        took = time.perf_counter() - started

    assert refused.status_code == 403 and "chaos is off" in refused.json()["error"]
    runtime = running.service.runtime
    assert runtime is not None
    with pytest.raises(ValueError, match="loaded without chaos"):  # no delay hook is even on the forward path
        runtime.slow_layer("block0", 1.0)
    assert status["chaos"] is None
    assert took < 1.0


def test_chaos_needs_the_admin_token(chaotic: Running) -> None:
    with chaotic.client() as client:
        assert client.put("/admin/chaos", json={"slow_layer": None}).status_code == 401
