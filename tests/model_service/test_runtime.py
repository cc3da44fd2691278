"""The loaded models: which version, switching versions, and per-layer timing."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from model_service.artifacts import ArtifactError, newest_version
from model_service.modes import OperatingMode
from model_service.runtime import ModelRuntime
from tests.model_service.conftest import write_tiny_artifacts


def test_the_newest_version_is_the_latest_timestamp(tmp_path: Path) -> None:
    for version in ("20261124T100000Z", "20261125T090000Z", "20261125T080000Z"):
        write_tiny_artifacts(tmp_path, version, names=("full",))
    (tmp_path / "20261126T000000Z").mkdir()  # a folder without a manifest is not a version
    assert newest_version(tmp_path) == "20261125T090000Z"


def test_no_version_is_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"no model versions under .*run peakguard train"):
        newest_version(tmp_path)


def test_switching_versions_keeps_serving_the_old_one_until_the_new_one_is_warm(tmp_path: Path) -> None:
    write_tiny_artifacts(tmp_path, "v1")
    write_tiny_artifacts(tmp_path, "v2")
    runtime = ModelRuntime(tmp_path, "v1", device="cpu")

    runtime.switch_version("v9")
    assert runtime.version == "v1"
    assert runtime.last_error is not None and "v9" in runtime.last_error

    runtime.switch_version("v2")
    assert runtime.version == "v2" and runtime.last_error is None
    predictions, _ = runtime.infer([[101, 2026, 102]], OperatingMode())
    assert predictions[0].version == "v2"


def test_a_version_already_loading_is_not_loaded_twice(tmp_path: Path) -> None:
    write_tiny_artifacts(tmp_path, "v1")
    write_tiny_artifacts(tmp_path, "v2")
    runtime = ModelRuntime(tmp_path, "v1", device="cpu")
    runtime._switching_to = "v2"  # another thread is loading v2

    runtime.switch_version("v2")

    assert runtime.version == "v1"  # returned at once instead of loading v2 again


def test_layer_times_belong_to_the_model_that_ran(tmp_path: Path) -> None:
    write_tiny_artifacts(tmp_path, "v1")
    timed: list[str] = []
    runtime = ModelRuntime(tmp_path, "v1", device="cpu", layer_sample_every=1,
                           on_layer_time=lambda model, layer, _: timed.append(model))  # fmt: skip
    barrier = threading.Barrier(2)

    def run(model: str) -> None:
        barrier.wait()
        for _ in range(20):
            runtime.infer([[101, 2026, 2003, 102]] * 8, OperatingMode(model=model, precision="fp32"))  # type: ignore[arg-type]

    threads = [threading.Thread(target=run, args=(model,)) for model in ("full", "light")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Each batch times all of its own layers (2 blocks + head) and none of the other model's.
    assert timed.count("full") == timed.count("light") == 20 * 3
