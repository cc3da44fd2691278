"""`peakguard bench server`: how py-spy's stacks become CPU by category, and one real run of it
against the real server (py-spy attached to a real process). The figures are the command's, never
asserted here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from model_service.server_profile import (
    OTHER,
    ServerProfileSettings,
    attribute,
    category,
    parse_raw,
    render,
    run,
    thread_cpu_seconds,
)
from peakguard.cli import main
from tests.model_service.conftest import write_tiny_artifacts

LOOP = "thread (100): MainThread;run (asyncio/runners.py:118);run_until_complete (asyncio/base_events.py:640)"
FORWARD = (
    "thread (200): infer-full_0;_worker (concurrent/futures/thread.py:83);run (model_service/batcher.py:150);"
    "answer (model_service/runtime.py:120);forward (model_service/classifier.py:90);"
    "_call_impl (torch/nn/modules/module.py:1750)"
)


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        # The innermost frame that names a category decides: the batcher calls the model.
        (
            [
                "_worker (concurrent/futures/thread.py:83)",
                "run (model_service/batcher.py:150)",
                "forward (model_service/moe.py:40)",
            ],
            "model forward",
        ),
        (["run (model_service/batcher.py:150)", "encode (model_service/pretrained.py:60)"], "tokenizer"),
        (
            [
                "run (uvicorn/protocols/http/httptools_impl.py:400)",
                "__call__ (model_service/server.py:80)",
                "_AdmissionGate.__call__ (model_service/server.py:90)",
            ],
            "admission",
        ),
        (["__call__ (starlette/routing.py:700)", "loads (json/__init__.py:346)"], "JSON and validation"),
        (["data_received (uvicorn/protocols/http/httptools_impl.py:120)"], "HTTP parsing and writing"),
        (["_run_once (asyncio/base_events.py:1900)"], "event loop"),
        (["_run_once (asyncio/base_events.py:1900)", "answer (model_service/server.py:300)"], "service code"),
        (["<module> (site.py:1)"], OTHER),
        ([], OTHER),
    ],
)
def test_a_stack_belongs_to_the_category_of_its_innermost_named_frame(frames: list[str], expected: str) -> None:
    assert category(frames) == expected


def test_raw_stacks_are_counted_per_thread_category_and_innermost_frame() -> None:
    run_ = parse_raw(f"{LOOP} 30\n{FORWARD} 60\n{FORWARD} 10\nthread (100): MainThread 5\n")

    assert run_.thread_names == {100: "MainThread", 200: "infer-full_0"}
    assert run_.samples == {100: 35, 200: 70}
    assert run_.by_category[200, "model forward"] == 70
    assert run_.by_category[100, "event loop"] == 30
    assert run_.by_category[100, OTHER] == 5
    assert run_.leaves["_call_impl (torch/nn/modules/module.py:1750)"] == 70


def test_a_line_that_is_not_py_spy_raw_is_named() -> None:
    with pytest.raises(ValueError, match="line 2 is not"):
        parse_raw(f"{LOOP} 3\nsomething else\n")


def test_each_thread_s_cpu_is_split_by_its_own_samples_and_unsampled_cpu_is_kept() -> None:
    run_ = parse_raw(f"{LOOP} 30\n{FORWARD} 60\nthread (100): MainThread;x (json/decoder.py:1) 10\n")

    # The event loop thread used 2 s (3/4 event loop, 1/4 JSON), the model thread 6 s, and a native
    # thread py-spy never saw 0.5 s.
    figures = attribute(run_, {100: 2.0, 200: 6.0, 300: 0.5})

    assert figures["by_category"] == pytest.approx(
        {"model forward": 6.0, "event loop": 1.5, "JSON and validation": 0.5, "threads py-spy did not sample": 0.5}
    )
    assert figures["by_role"] == pytest.approx({"model thread": 6.0, "event loop thread": 2.0, "other threads": 0.5})


def test_thread_cpu_is_read_from_the_kernel_for_every_thread() -> None:
    before = thread_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    after = thread_cpu_seconds(os.getpid())

    assert os.getpid() in after  # the main thread's id is the process id
    assert after[os.getpid()] > before[os.getpid()]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"seconds": 3}, "seconds must be at least 5"),
        ({"rate": 0}, "rate must be"),
        ({"sustainable_rps": -1}, "must be > 0"),
    ],
)
def test_bad_settings_are_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerProfileSettings(artifacts=Path("models"), **changes)


def test_a_real_run_splits_the_real_server_s_cpu_under_overload(tmp_path: Path) -> None:
    write_tiny_artifacts(tmp_path / "models")
    settings = ServerProfileSettings(
        artifacts=tmp_path / "models",
        sustainable_rps=40,
        budget_ms=200,
        overload_factor=4,
        seconds=6,
        rate=200,
        serve_settings=(("batch_budget_share", 0.5), ("max_wait", 0.002)),
    )

    report = run(settings, log=lambda _: None, raw_out=tmp_path / "server.raw.txt")

    assert report["overload_rps"] == 160
    assert 1 <= report["admission_after"]["batch_cap"] <= 128
    assert report["load"]["sent"] > 0 and report["load"]["completed_ok"] > 0
    assert report["py_spy"]["samples"] > 0
    by_category = report["cpu_seconds_by_category"]
    # The model answered on its own thread and the event loop took the HTTP: both show up, and the
    # categories add up to the CPU the kernel counted.
    assert by_category.get("model forward", 0) > 0
    assert sum(by_category.values()) == pytest.approx(report["cpu_seconds"])
    assert {"event loop thread", "model thread"} <= set(report["cpu_seconds_by_thread"])
    assert 0 < report["cpu_busy_share"] <= 1.2
    assert (tmp_path / "server.raw.txt").read_text().startswith("thread (")
    assert "ms/request" in render(report)


def test_the_command_needs_two_cores_and_says_so(tmp_path: Path, capsys: Any) -> None:
    write_tiny_artifacts(tmp_path / "models")
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(own)})
    try:
        code = main(["bench", "server", "--artifacts", str(tmp_path / "models"), "--sustainable", "10",
                     "--budget-ms", "100", "--json", str(tmp_path / "r.json")])  # fmt: skip
    finally:
        os.sched_setaffinity(0, own)

    assert code == 2
    assert "needs 2 usable cores" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()  # a report is written only by a run that measured


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("batch_budget_share", "is not KEY=JSON"),
        ("nonsense=1", "is not KEY=JSON"),
        ("batch_budget_share=half", "is not JSON"),
    ],
)
def test_a_serve_setting_is_a_known_key_with_a_json_value(setting: str, message: str, capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "server", "--artifacts", "models", "--serve-setting", setting])
    assert message in capsys.readouterr().err
