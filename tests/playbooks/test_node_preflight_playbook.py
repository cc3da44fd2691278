"""node_preflight.yml through ansible-runner against fake nodes on localhost.

Each fake node is a localhost alias with its own fake hardware; the playbook looks up what the
node's instance type must have in vars/instance_types.yml and runs infra/node_scripts/node_preflight.sh.
"""

from __future__ import annotations

import json
from concurrent.futures import Future

import pytest

from .conftest import Lab, Run, fi_info_efa


@pytest.fixture(scope="module")
def runs(lab: Lab) -> dict[str, Future[Run]]:
    # The full pool's p5 (MIG off) and the mig pool's p4de (label all-1g.10gb), labels read from Kubernetes.
    full = lab.node("full-1", instance_type="p5.48xlarge", peakguard_ami_family="al2023")
    full.healthy(gpus=8, efa=32).kubernetes(labels={"nvidia.com/mig.config": "all-disabled"})
    mig = lab.node("mig-1", instance_type="p4de.24xlarge", peakguard_ami_family="al2023")
    mig.healthy(gpus=8, efa=4, model="NVIDIA A100-SXM4-80GB", mig=["1g.10gb"] * 7)
    mig.kubernetes(labels={"nvidia.com/mig.config": "all-1g.10gb", "nvidia.com/mig.config.state": "success"})

    good = lab.node("good", peakguard_ami_family="al2023", peakguard_mig_config="all-disabled")
    good.healthy(gpus=8, efa=32)
    short = lab.node("short-efa", peakguard_ami_family="al2023", peakguard_mig_config="all-disabled")
    short.healthy(gpus=8, efa=32)
    short.set("fi_info", fi_info_efa(30))
    # An instance type infra/facts.py does not know is refused, not guessed.
    unknown = lab.node("unknown-type", instance_type="p3dn.24xlarge", peakguard_ami_family="al2023")
    reports = {"peakguard_preflight_report_dir": str(lab.root / "reports")}

    return {
        "healthy": lab.start("node_preflight.yml", [full, mig]),
        "mixed": lab.start("node_preflight.yml", [good, short, unknown], extravars=reports),
    }


def test_healthy_nodes_pass_and_their_results_are_readable(runs: dict[str, Future[Run]]) -> None:
    run = runs["healthy"].result()

    assert run.status == "successful", run.output()
    assert run.runner.rc == 0
    assert run.changed("full-1") == run.changed("mig-1") == 0
    # Machine-readable: the run's stats (ansible-runner's playbook_on_stats event) hold each result.
    published = run.custom_stats()["peakguard_preflight"]
    for name, efa in (("full-1", 32), ("mig-1", 4)):
        report = published[name]
        assert report["ok"] is True
        by_name = {check["name"]: check for check in report["checks"]}
        assert by_name["efa"]["expected"] == efa
    assert [c["found"] for c in published["mig-1"]["checks"] if c["name"] == "mig"] == ["all-1g.10gb"]


def test_a_node_failing_a_check_fails_the_run_and_says_which(lab: Lab, runs: dict[str, Future[Run]]) -> None:
    run = runs["mixed"].result()

    assert run.status == "failed"
    assert run.runner.rc != 0
    assert run.failed_hosts() == {"short-efa", "unknown-type"}
    failures = run.failures()
    assert "efa: EFA devices:" in failures["short-efa"] and "(expected 32)" in failures["short-efa"]
    assert "p3dn.24xlarge is not in vars/instance_types.yml" in failures["unknown-type"]
    # Also as a JSON file per node on the controller, when asked for.
    reports = lab.root / "reports"
    report = json.loads((reports / "short-efa.json").read_text())
    assert report == run.custom_stats()["peakguard_preflight"]["short-efa"]
    assert report["ok"] is False
    assert [c["name"] for c in report["checks"] if not c["ok"]] == ["efa"]
    assert json.loads((reports / "good.json").read_text())["ok"] is True
    assert not (reports / "unknown-type.json").exists()
