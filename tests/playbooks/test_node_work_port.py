"""The runbooks' port to the playbooks (`runbooks/ports/node_work.py`), running gpu_driver_upgrade.yml
for real through ansible-runner against the lab's fake nodes: what it reports per host.

A host passes only when the whole run succeeded: in a run that failed on another host, a host
without a failure of its own may have been stopped mid-play (max_fail_percentage), so it is
reported unconfirmed, never passed.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from runbooks.errors import RunbookError
from runbooks.ports.node_work import AnsiblePlaybooks, PlaybookResult

from .conftest import FakeNode, Lab

TARGET = {"peakguard_driver_version": "570.133.20"}


def _at_target(lab: Lab, name: str) -> FakeNode:
    node = lab.node(name, peakguard_ami_family="ubuntu")
    node.healthy(gpus=8, efa=32)
    node.kubernetes(pods=[])
    node.set("driver-version", "570.133.20\n" * 8)
    return node


def _runner(lab: Lab, nodes: list[FakeNode]) -> AnsiblePlaybooks:
    return AnsiblePlaybooks(
        env="dev",
        region="us-west-2",
        private_data_dir=lab.private_data_dir,
        inventory=str(lab.inventory(nodes)),
        timeout_seconds=300,
        envvars={"ANSIBLE_LOCAL_TEMP": str(lab.root / "ansible-tmp")},
    )


@pytest.fixture(scope="module")
def results(lab: Lab) -> dict[str, Future[PlaybookResult]]:
    current = _at_target(lab, "i-0current")
    alone = _at_target(lab, "i-0alone")
    al2023 = lab.node("i-0al2023", peakguard_ami_family="al2023")
    with ThreadPoolExecutor(max_workers=2) as pool:
        return {
            "passing": pool.submit(_runner(lab, [alone]).run, "gpu_driver_upgrade.yml", ["i-0alone"], TARGET),
            "mixed": pool.submit(
                _runner(lab, [current, al2023]).run,
                "gpu_driver_upgrade.yml",
                ["i-0current", "i-0al2023", "i-0ghost"],
                TARGET,
            ),
        }


def test_a_run_that_succeeds_passes_its_hosts(results: dict[str, Future[PlaybookResult]]) -> None:
    result = results["passing"].result()
    assert (result.status, result.passed, dict(result.failed)) == ("successful", ("i-0alone",), {})
    plan = result.stats["peakguard_driver_upgrade"]["i-0alone"]
    assert plan["driver_from"] == plan["driver_to"] == "570.133.20", "what the playbook published is read back"


def test_each_host_of_a_failed_run_says_why_it_did_not_pass(results: dict[str, Future[PlaybookResult]]) -> None:
    result = results["mixed"].result()
    assert result.status == "failed" and result.passed == ()
    assert "Refuse on AL2023" in result.failed["i-0al2023"] and "baked into the AMI" in result.failed["i-0al2023"]
    assert result.failed["i-0ghost"].startswith("not run: no such host in the inventory")
    assert result.failed["i-0current"].startswith("not confirmed: the run ended failed")


def test_no_hosts_is_refused_before_ansible_runs(lab: Lab) -> None:
    with pytest.raises(RunbookError, match="always runs on named nodes"):
        _runner(lab, []).run("gpu_driver_upgrade.yml", [], TARGET)
