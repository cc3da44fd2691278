"""`peakguard capacity plan` over the real stack files: replicas with headroom, nodes per AZ, the
loss of one AZ, the cost from the stack's own price table, and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from capacity.plan import plan
from infra import facts
from infra.config import StackConfig
from peakguard.cli import main
from tests.infra.conftest import PROJECT_DIR, stack_values

PRICING = {"usdPerHour": {"p5.48xlarge": 55.04}, "source": "https://aws.amazon.com/ec2/pricing/on-demand/",
           "date": "2026-12-01"}  # fmt: skip


def _config(env: str = "prod", **extra: Any) -> StackConfig:
    return StackConfig.from_mapping({**stack_values(env), **extra}, stack=env)


def test_replicas_are_the_models_plus_the_facts_headroom_and_nodes_fill_whole_az_shares() -> None:
    result = plan(_config(), rps=400, p99_ms=300, replica_rps=50.6, replica_rps_source="test")
    assert result.replicas == facts.capacity_with_headroom(result.replicas_modelled)
    assert result.gpus == result.replicas  # one GPU a replica in prod
    assert result.nodes_per_az == math.ceil(math.ceil(result.replicas / 8) / 3)
    assert result.nodes == 3 * result.nodes_per_az
    assert result.replicas_after_losing_an_az == 2 * result.nodes_per_az * 8
    assert result.share_of_peak_after_losing_an_az == result.replicas_after_losing_an_az / result.replicas_modelled
    assert result.warnings == ()


def test_a_peak_beyond_the_stacks_limits_is_planned_and_each_shortfall_named() -> None:
    result = plan(_config(), rps=50_000, p99_ms=300, replica_rps=50.6, replica_rps_source="test")
    assert any("scalingPerAz.maxSize" in w for w in result.warnings)
    assert any("modelService.maxReplicas" in w for w in result.warnings)


def test_cost_comes_from_the_stacks_price_table_with_its_source_and_date() -> None:
    result = plan(_config(**{"peakguard:pricing": PRICING}), rps=400, p99_ms=300, replica_rps=50.6,
                  replica_rps_source="test")  # fmt: skip
    assert result.usd_per_hour == pytest.approx(55.04 * result.nodes)
    assert result.price_source == "https://aws.amazon.com/ec2/pricing/on-demand/ (2026-12-01)"


def test_a_price_table_without_the_pools_type_says_so() -> None:
    pricing = {**PRICING, "usdPerHour": {"p4de.24xlarge": 40.0}}
    result = plan(_config(**{"peakguard:pricing": pricing}), rps=400, p99_ms=300, replica_rps=50.6,
                  replica_rps_source="test")  # fmt: skip
    assert result.usd_per_hour is None
    assert any("no price for p5.48xlarge" in w for w in result.warnings)


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["capacity", "plan", "--project-dir", str(PROJECT_DIR), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_command_prints_the_plan_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--env", "prod", "--rps", "400", "--p99-ms", "300", "--replica-rps", "50.6",
                         "--json", str(tmp_path / "plan.json")], capsys)  # fmt: skip
    assert code == 0
    written = json.loads((tmp_path / "plan.json").read_text())
    assert f"{written['nodes']} x p5.48xlarge" in out and "seed's formula" in out
    assert written["replicas"] == facts.capacity_with_headroom(written["replicas_modelled"])


def _bench(tmp_path: Path, device: str, *, valid: bool = True) -> Path:
    report = {
        "machine": {"device": device},
        "figures": {
            "sustainable_rps": {
                "median": 210.0,
                "valid": valid,
                "values": [200.0, 210.0, 220.0],
                "invalid_because": [] if valid else ["lag"],
            }
        },
    }
    (path := tmp_path / "bench.json").write_text(json.dumps(report))
    return path


def test_a_bench_from_the_pools_gpu_gives_the_replica_rate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench(tmp_path, "NVIDIA H100 80GB HBM3")
    code, out, _ = _run(["--env", "prod", "--rps", "4000", "--p99-ms", "300", "--bench", str(bench)], capsys)
    assert code == 0
    assert "210 requests/s" in out and "NVIDIA H100 80GB HBM3" in out


@pytest.mark.parametrize(
    ("device", "valid", "says"),
    [("cpu", True, "ran on cpu, not on the pool's H100"), ("NVIDIA A100-SXM4-80GB", True, "not on the pool's"),
     ("NVIDIA H100 80GB HBM3", False, "its sustainable rate is invalid")],
)  # fmt: skip
def test_a_bench_that_cannot_speak_for_the_pool_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str, valid: bool, says: str
) -> None:
    bench = _bench(tmp_path, device, valid=valid)
    code, _, err = _run(["--env", "prod", "--rps", "4000", "--p99-ms", "300", "--bench", str(bench)], capsys)
    assert code == 2
    assert says in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rps", "400", "--p99-ms", "50", "--replica-rps", "50.6"], "no number of replicas meets it"),
        (["--rps", "0", "--p99-ms", "300", "--replica-rps", "50.6"], "must be positive"),
        (["--rps", "400", "--p99-ms", "300", "--replica-rps", "-3"], "--replica-rps must be positive"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["--env", "prod", *args], capsys)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1


def test_a_bad_price_table_is_named_by_the_config_loader(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = stack_values("prod") | {"peakguard:pricing": {**PRICING, "date": "last week"}}
    (stack := tmp_path / "Pulumi.prod.yaml").write_text(yaml.safe_dump({"config": values}))
    code, _, err = _run(["--env", "prod", "--stack-file", str(stack), "--rps", "400", "--p99-ms", "300",
                         "--replica-rps", "50.6"], capsys)  # fmt: skip
    assert code == 2 and "peakguard:pricing.date: must be the day the prices were read" in err


def test_an_unwritable_json_file_is_exit_3_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (blocker := tmp_path / "file").write_text("")
    code, _, err = _run(["--env", "prod", "--rps", "400", "--p99-ms", "300", "--replica-rps", "50.6",
                         "--json", str(blocker / "plan.json")], capsys)  # fmt: skip
    assert code == 3 and "cannot write" in err
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
