"""Loading the public intent data sets from any folder, and refusing malformed ones by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_service.datasets import DatasetError, load_banking77, load_clinc_out_of_scope


def test_banking77_splits_are_disjoint_stratified_and_deterministic(data_dir: Path) -> None:
    data = load_banking77(data_dir / "banking77")
    again = load_banking77(data_dir / "banking77")

    assert len(data.intents) == 77
    assert len(data.train) + len(data.validation) == 10003
    assert len(data.test) == 3080
    assert set(data.validation.labels) == set(range(77)), "every intent is in the validation split"
    assert not set(data.train.texts) & set(data.validation.texts)
    assert data.validation == again.validation
    assert data.intents[data.train.labels[0]] in data.intents


def test_a_different_seed_gives_a_different_validation_split(data_dir: Path) -> None:
    assert (
        load_banking77(data_dir / "banking77", seed=1).validation != load_banking77(data_dir / "banking77").validation
    )


def test_clinc_out_of_scope_splits(data_dir: Path) -> None:
    validation, test = load_clinc_out_of_scope(data_dir / "clinc150")

    assert (len(validation), len(test)) == (100, 1000)
    assert not set(validation) & set(test)


def test_a_missing_folder_says_where_to_get_the_data(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"train.csv: not found; download banking77 from https://github.com/PolyAI"):
        load_banking77(tmp_path)


def test_wrong_columns_are_named(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("query,label\nhi,greeting\n")
    (tmp_path / "test.csv").write_text("text,category\nhi,greeting\n")

    with pytest.raises(DatasetError, match=r"expected columns text,category, found \['query', 'label'\]"):
        load_banking77(tmp_path)


def test_test_intents_unknown_to_training_are_refused(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,category\nhi,greeting\nbye,farewell\n")
    (tmp_path / "test.csv").write_text("text,category\nwhat,weather\n")

    with pytest.raises(DatasetError, match=r"intents not in train\.csv: weather"):
        load_banking77(tmp_path)


def test_clinc_file_without_oos_splits_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data_full.json").write_text('{"train": []}')

    with pytest.raises(DatasetError, match="oos_val must be a list"):
        load_clinc_out_of_scope(tmp_path)


def test_torch_guard_pins_what_the_project_pins_and_spots_cuda_packages() -> None:
    import tomllib

    from model_service import torch_wheel
    from tests.model_service.conftest import PROJECT_DIR

    extras = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert torch_wheel.TORCH_PIN in extras["model"]
    plan = [("torch", "2.13.0"), ("nvidia-cublas-cu12", "12.8.4.1"), ("triton", "3.5.0"), ("sympy", "1.14.0")]
    assert torch_wheel.cuda_packages(plan) == ["nvidia-cublas-cu12==12.8.4.1", "triton==3.5.0"]
    assert torch_wheel.cuda_packages([("torch", "2.13.0+cpu"), ("sympy", "1.14.0")]) == []
