"""The dynamic inventory (amazon.aws.aws_ec2) against moto's EC2 in server mode on 127.0.0.1.

Instances are launched with boto3 into moto, tagged as the Pulumi program tags GPU nodes; the
inventory is listed through ansible-runner's inventory interface with the committed config.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner
import boto3
import pytest

from lab.aws import CREDENTIALS as BOTO_CREDENTIALS
from lab.aws import moto_server

from .conftest import PLAYBOOKS, VENV_BIN

REGION = "us-west-2"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


@dataclass(frozen=True)
class Fleet:
    """EC2 instances in moto, tagged as Pulumi tags GPU nodes, and the ones that must not show."""

    endpoint: str
    full: tuple[str, str]
    mig: str

    def env(self, **extra: str) -> dict[str, str]:
        """What an operator's shell has: credentials, region, the environment; AWS_URL for moto."""
        return {**CREDENTIALS, "AWS_REGION": REGION, "AWS_URL": self.endpoint, "PEAKGUARD_ENV": "prod", **extra}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with moto_server() as endpoint:
        ec2 = boto3.client(
            "ec2", region_name=REGION, endpoint_url=endpoint, aws_session_token="testing", **BOTO_CREDENTIALS
        )
        image = ec2.describe_images()["Images"][0]["ImageId"]
        full_a = launch(ec2, image, "p5.48xlarge", az="us-west-2a", **pulumi_tags("prod", "full"))
        full_b = launch(ec2, image, "p5.48xlarge", az="us-west-2b", **pulumi_tags("prod", "full"))
        mig = launch(ec2, image, "p4de.24xlarge", az="us-west-2a", **pulumi_tags("prod", "mig"))
        # Not prod's GPU nodes: another environment, no pool (not a GPU node), not ours, stopped.
        launch(ec2, image, "g6e.12xlarge", **pulumi_tags("dev", "full"))
        launch(ec2, image, "m7i.xlarge", **pulumi_tags("prod"))
        launch(ec2, image, "p5.48xlarge", **{"peakguard:env": "prod", "peakguard:pool": "full"})
        stopped = launch(ec2, image, "p5.48xlarge", **pulumi_tags("prod", "full"))
        ec2.stop_instances(InstanceIds=[stopped])
        yield Fleet(endpoint=endpoint, full=(full_a, full_b), mig=mig)


def launch(ec2: Any, image: str, instance_type: str, **tags: str) -> str:
    response = ec2.run_instances(
        ImageId=image,
        MinCount=1,
        MaxCount=1,
        InstanceType=instance_type,
        Placement={"AvailabilityZone": tags.pop("az", "us-west-2a")},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )
    return str(response["Instances"][0]["InstanceId"])


def pulumi_tags(env: str, pool: str | None = None) -> dict[str, str]:
    """The tags infra/program.py and infra/gpu_node_groups.py put on GPU node instances."""
    tags = {"peakguard:managed-by": "pulumi", "peakguard:env": env}
    if pool:
        tags["peakguard:pool"] = pool
    return tags


def test_lists_exactly_the_environments_gpu_nodes_grouped_by_pool(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")  # ansible-inventory
    out, err = ansible_runner.get_inventory(
        action="list",
        inventories=[str(PLAYBOOKS / "inventory")],
        response_format="json",
        envvars=fleet.env(),
        playbook_dir=str(PLAYBOOKS / "project"),
        quiet=True,
    )
    assert isinstance(out, dict), err
    inventory: dict[str, Any] = out

    full_a, full_b = fleet.full
    assert sorted(inventory["aws_ec2"]["hosts"]) == sorted([full_a, full_b, fleet.mig])
    assert sorted(inventory["pool_full"]["hosts"]) == sorted([full_a, full_b])
    assert inventory["pool_mig"]["hosts"] == [fleet.mig]
    assert inventory["az_us_west_2b"]["hosts"] == [full_b]
    hostvars = inventory["_meta"]["hostvars"]
    assert set(hostvars) == {full_a, full_b, fleet.mig}
    node = _plain(hostvars[fleet.mig])
    # What the playbooks read: the instance type (facts lookup), the node name (kubectl), where to connect.
    assert node["instance_type"] == "p4de.24xlarge"
    assert node["private_dns_name"].endswith(".us-west-2.compute.internal")
    assert node["ansible_host"] == node["private_ip_address"]
    assert node["ansible_aws_ssm_instance_id"] == fleet.mig
    assert node["ansible_aws_ssm_region"] == REGION
    assert node["ansible_become"] is True


def test_nodes_are_reached_through_ssm_unless_told_ssh(fleet: Fleet, tmp_path: Path) -> None:
    """The connection is templated per host when a play runs: ask Ansible what it resolves to."""

    def connection(**env: str) -> str:
        private_data_dir = tmp_path / (env.get("PEAKGUARD_NODE_CONNECTION") or "default")
        private_data_dir.mkdir()
        runner = ansible_runner.run(
            private_data_dir=str(private_data_dir),
            inventory=str(PLAYBOOKS / "inventory"),
            host_pattern=fleet.mig,
            module="ansible.builtin.debug",
            module_args="msg={{ ansible_connection }}@{{ ansible_aws_ssm_instance_id }}/{{ ansible_user }}",
            envvars={"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", **fleet.env(**env)},
            quiet=True,
            suppress_env_files=True,
        )
        results = [e["event_data"]["res"]["msg"] for e in runner.events if e.get("event") == "runner_on_ok"]
        assert runner.status == "successful" and len(results) == 1, Path(runner.stdout.name).read_text()
        return str(results[0])

    with ThreadPoolExecutor(2) as pool:
        ssm = pool.submit(connection)
        ssh = pool.submit(connection, PEAKGUARD_NODE_CONNECTION="ssh", PEAKGUARD_SSH_USER="ubuntu")
        assert ssm.result() == f"amazon.aws.aws_ssm@{fleet.mig}/ec2-user"
        assert ssh.result() == f"ansible.builtin.ssh@{fleet.mig}/ubuntu"


def _plain(value: Any) -> Any:
    """ansible-inventory marks values that came from AWS as unsafe ({"__ansible_unsafe": ...})."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
