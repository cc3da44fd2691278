"""Shared fixtures: the real data sets, a tiny model the tests can afford to build, and the
service running it over real HTTP (a uvicorn server on 127.0.0.1 and a real client)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from model_service.artifacts import ModelCard, write_version
from model_service.classifier import ClassifierConfig, IntentClassifier
from model_service.modes import OperatingMode
from model_service.server import Service, ServiceSettings, create_app
from model_service.service_process import free_port
from model_service.tracing import Tracing

PROJECT_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The public data sets (not committed: see the README). CI points PEAKGUARD_DATA at them."""
    folder = Path(os.environ.get("PEAKGUARD_DATA", PROJECT_DIR.parent / "shared" / "data"))
    missing = [name for name in ("banking77/train.csv", "clinc150/data_full.json") if not (folder / name).is_file()]
    assert not missing, f"data sets missing under {folder}: {missing}; set PEAKGUARD_DATA (README: Data)"
    return folder


def tiny_config(**changes: object) -> ClassifierConfig:
    config = ClassifierConfig(
        num_labels=5, vocab_size=100, hidden=24, attention_dim=24, heads=4, layers=2, intermediate=48,
        max_positions=32, num_experts=8, top_k=2, dropout=0.0,
    )  # fmt: skip
    return config.replace(**changes)


@pytest.fixture
def tiny_model() -> IntentClassifier:
    torch.manual_seed(3)
    return IntentClassifier(tiny_config()).eval()


TINY_INTENTS = ("card_arrival", "top_up", "exchange_rate", "lost_card", "refund")


def write_tiny_artifacts(
    root: Path, version: str = "v1", names: tuple[str, ...] = ("full", "light"), full: Mapping[str, Any] | None = None
) -> Path:
    """A version folder of tiny untrained models over the real MiniLM vocabulary, as `peakguard
    train` lays it out (full has experts, the others are dense), that never hand over. `full`:
    config changes that make the full model bigger (slower) than the tiny one."""
    torch.manual_seed(11)
    models = []
    for name in names:
        changes = {"vocab_size": 30522, "num_experts": 8 if name == "full" else 0}
        if name == "full":
            changes |= dict(full or {})
        model = IntentClassifier(tiny_config(**changes)).eval()
        card = ModelCard(
            name=name, version=version, created="2026-11-25T00:00:00+00:00", config=model.config,
            intents=TINY_INTENTS, handover_threshold=-1e9, parameters=model.parameter_count(),
            metrics={"test_accuracy": 0.9, "test_accuracy_int8": 0.89, "oos_test_recall": 0.9},
        )  # fmt: skip
        models.append((model, card))
    return write_version(root, version, models)


TOKEN = "s3cret-admin-token"


@dataclass
class Running:
    url: str
    service: Service
    spans: InMemorySpanExporter

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10, **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def serving(settings: ServiceSettings, *, ready: bool = True) -> Iterator[Running]:
    """The service on a free port, until the block ends; with `ready`, once /readyz says 200, else
    once it has answered at all."""
    spans = InMemorySpanExporter()
    app = create_app(settings, tracing=Tracing(exporter=spans))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=url) as client:
        while True:
            try:
                if client.get("/readyz").status_code == 200 or not ready:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.05)
    try:
        yield Running(url, app.state.service, spans)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    write_tiny_artifacts(tmp_path / "models")
    settings = ServiceSettings(
        artifacts=tmp_path / "models", mode_file=tmp_path / "mode", admin_token=TOKEN, max_chars=200,
        layer_sample_every=1, mode_poll_interval=0.05, initial_mode=OperatingMode(batch_min=1),
    )  # fmt: skip
    (tmp_path / "mode").mkdir()
    with serving(settings) as service:
        yield service


def ask(client: httpx.Client, text: str = "my card has not arrived", **headers: str) -> httpx.Response:
    return client.post("/v1/intent", json={"text": text}, headers=headers)
