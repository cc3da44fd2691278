"""Operating modes: validation, partial updates, the watched file, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_service.modes import ModeError, ModeStore, OperatingMode, Override


def test_a_partial_document_changes_only_what_it_names() -> None:
    base = OperatingMode(model="full", precision="fp32", batch_min=16, batch_max=128)

    mode = OperatingMode.from_mapping({"precision": "int8", "shedding": True}, base=base)

    assert (mode.model, mode.precision, mode.shedding, mode.batch_min, mode.batch_max) == (
        "full",
        "int8",
        True,
        16,
        128,
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"model": "huge"}, "model='huge' is invalid; must be full or light"),
        ({"precision": "fp16"}, "precision='fp16' is invalid; must be fp32 or int8"),
        ({"shedding": "yes"}, "shedding='yes' is invalid; must be true or false"),
        ({"batch_max": 0}, "batch_max=0 is invalid; must be a whole number from 1 to 256"),
        ({"batch_min": True}, "batch_min=True is invalid"),
        ({"batch_min": 64, "batch_max": 32}, "batch_min=64 exceeds batch_max=32"),
        ({"modle": "light"}, "unknown field 'modle'"),
        (["light"], "must be a JSON object, got list"),
    ],
)
def test_invalid_documents_are_refused_naming_the_field(raw: object, message: str) -> None:
    with pytest.raises(ModeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        OperatingMode.from_mapping(raw, source="admin")


def test_store_keeps_the_old_mode_on_error_and_reports_it() -> None:
    store = ModeStore()
    store.apply({"model": "light"}, source="admin")

    with pytest.raises(ModeError):
        store.apply({"precision": "fp8"}, source="admin")

    assert store.mode.model == "light"
    assert store.mode.precision == "fp32"
    assert "precision='fp8'" in store.status()["last_error"]


def test_listeners_hear_changes_and_not_repeats() -> None:
    store = ModeStore()
    heard: list[OperatingMode] = []
    store.subscribe(heard.append)

    store.apply({"precision": "int8"}, source="admin")
    store.apply({"precision": "int8"}, source="admin")

    assert [m.precision for m in heard] == ["int8"]
    assert store.status()["revision"] == 2


def test_an_override_switches_the_model_until_cleared() -> None:
    store = ModeStore(OperatingMode(precision="int8"))

    store.set_override(Override(model="light", reason="p99 above 0.5 s"))
    assert (store.mode.model, store.mode.precision) == ("light", "int8")
    assert store.status()["configured"]["model"] == "full"

    store.set_override(None)
    assert store.mode.model == "full"


def test_the_mode_file_is_applied_on_content_change_only(tmp_path: Path) -> None:
    path = tmp_path / "mode.json"
    store = ModeStore()

    assert store.reload_file(path) is False  # no file yet: keep the default
    path.write_text(json.dumps({"model": "light", "shedding": True}))
    assert store.reload_file(path) is True
    assert store.reload_file(path) is False
    assert (store.mode.model, store.mode.shedding) == ("light", True)
    assert store.status()["source"] == f"file {path}"


def test_a_broken_mode_file_is_reported_and_ignored(tmp_path: Path) -> None:
    path = tmp_path / "mode.json"
    store = ModeStore()

    path.write_text("{not json")
    assert store.reload_file(path) is False
    assert "not JSON" in store.status()["last_error"]

    path.write_text(json.dumps({"batch_max": 999}))
    assert store.reload_file(path) is False
    assert store.mode == OperatingMode()
    assert "batch_max=999" in store.status()["last_error"]
