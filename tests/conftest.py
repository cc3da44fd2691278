"""What every test shares: no test writes into the user's home."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _int8_cache_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # The ONNX Runtime INT8 graphs (model_service.onnx_int8) are cached by weights hash; services the
    # tests start inherit the variable, so they share this folder and build each graph once.
    before = os.environ.get("PEAKGUARD_INT8_CACHE")
    os.environ["PEAKGUARD_INT8_CACHE"] = str(tmp_path_factory.mktemp("int8-cache"))
    yield
    if before is None:
        os.environ.pop("PEAKGUARD_INT8_CACHE", None)
    else:
        os.environ["PEAKGUARD_INT8_CACHE"] = before
