"""The benchmark's logic: what it reports, how it judges goals and sustained rates. The figures
themselves are measured by `peakguard bench model`, never asserted here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model_service.benchmark import SEED_MATRIX, BenchSettings, _goals, _sustains, render, run
from model_service.reports import write_json
from peakguard.cli import main
from tests.model_service.conftest import write_tiny_artifacts

REQUIRED = {
    "int8_speedup", "int8_accuracy_loss_pts", "light_param_reduction", "light_speedup", "accuracy",
    "seed_matrix", "latency_ms_batch", "batching_model_ratio", "goals",
}  # fmt: skip


def _load_report(**changes: Any) -> dict[str, Any]:
    report = {
        "sent": 1000, "completed_ok": 1000, "throughput_rps": 99.0, "shed": 0, "errors_5xx": 0, "transport_errors": 0,
        "dropped_by_generator": 0, "latency_ms": {"p99": 80.0},
    }  # fmt: skip
    return report | changes


def test_a_rate_is_sustained_only_with_p99_in_slo_little_refused_and_everything_answered() -> None:
    assert _sustains(_load_report(), 100, slo=0.1)
    assert not _sustains(_load_report(latency_ms={"p99": 120.0}), 100, slo=0.1)
    assert not _sustains(_load_report(latency_ms={"p99": None}), 100, slo=0.1)
    assert not _sustains(_load_report(shed=11), 100, slo=0.1)
    assert not _sustains(_load_report(transport_errors=11), 100, slo=0.1)
    assert _sustains(_load_report(shed=10), 100, slo=0.1)  # 1% is tolerated
    assert not _sustains(_load_report(completed_ok=970), 100, slo=0.1)  # answers went missing
    assert _sustains(_load_report(sent=800, completed_ok=800, throughput_rps=80.0), 100, slo=0.1)  # a short draw


def test_goals_say_met_or_missed() -> None:
    goals = _goals({"int8_speedup": 1.6, "light_speedup": 3.4, "overload_5xx": 0, "light_param_reduction": 0.78})
    assert goals["int8_speedup"]["met"] is False
    assert goals["light_speedup"]["met"] is True
    assert goals["overload_5xx"]["met"] is True
    assert goals["light_param_reduction"]["goal"] == ">= 0.76"
    assert "batching_throughput_ratio" not in goals  # not measured, not judged


def test_models_only_run_reports_every_figure_and_the_seed_matrix(tmp_path: Path) -> None:
    write_tiny_artifacts(tmp_path / "models", names=("full", "light", "pruned"))

    report = run(BenchSettings(artifacts=tmp_path / "models", repeats=2, service=False), log=lambda _: None)

    assert set(report) >= REQUIRED
    assert set(report["latency_ms_batch"]) == {
        "full", "full_int8", "full_int8_torch", "light", "light_int8", "pruned", "pruned_int8"
    }  # fmt: skip
    assert all(value > 0 for value in report["latency_ms_batch"].values())
    assert report["accuracy"]["full"] == 0.9 and report["accuracy"]["full_int8"] == 0.89
    assert abs(report["int8_accuracy_loss_pts"] - 1.0) < 1e-9
    assert [row["optimisation"] for row in report["seed_matrix"]] == list(SEED_MATRIX)
    for row in report["seed_matrix"]:
        assert (row["seed_latency_change_pct"], row["seed_accuracy_change_pts"]) == SEED_MATRIX[row["optimisation"]]
    # Batching must not change answers: the MoE drops no tokens at inference and padding is masked.
    assert report["batch_of_one_agreement"] == 1.0
    assert "structured pruning" in render(report)


def test_the_command_writes_the_json_report(tmp_path: Path, capsys: Any) -> None:
    write_tiny_artifacts(tmp_path / "models")
    out = tmp_path / "reports" / "bench.json"

    code = main(["bench", "model", "--artifacts", str(tmp_path / "models"), "--no-service", "--repeats", "2",
                 "--json", str(out)])  # fmt: skip

    assert code == 0
    assert set(json.loads(out.read_text())) >= REQUIRED
    assert "the seed's optimisation matrix" in capsys.readouterr().out
    assert not list(out.parent.glob(".*partial"))


def test_the_command_names_a_folder_without_models(tmp_path: Path, capsys: Any) -> None:
    assert main(["bench", "model", "--artifacts", str(tmp_path), "--no-service"]) == 2
    assert "no model versions under" in capsys.readouterr().err


def test_write_json_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json({"a": 1}, path)
    write_json({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 2}


def test_the_service_part_runs_the_real_server_through_ramp_and_overloads(tmp_path: Path) -> None:
    write_tiny_artifacts(tmp_path / "models")
    settings = BenchSettings(
        artifacts=tmp_path / "models", repeats=1, unloaded_seconds=2, step_seconds=1.5, overload_seconds=2,
        start_rps=100, overload_factor=3,
    )  # fmt: skip

    report = run(settings, log=lambda _: None)

    assert report["sustainable_rps"] >= 100
    assert report["overload_rps"] == 3 * report["sustainable_rps"]
    assert report["ramp"][-1]["sustained"] is False or len(report["ramp"]) == 12
    for run_ in ("overload_protected", "overload_batch_of_one", "overload_unprotected"):
        assert report[run_]["sent"] > 0
    assert report["overload_protected"]["memory"]["peak_bytes"] > 0
    assert report["overload_5xx"] == 0  # sheds are 429/503 with Retry-After, never a failure
    assert report["goals"]["overload_5xx"]["met"] is True
    assert {"overload_p99_ratio_protected", "overload_p99_ratio_unprotected", "batching_throughput_ratio"} <= set(
        report
    )
    assert "overload at" in render(report)
