"""The hand-typed instance table against a second source: DescribeInstanceTypes as moto serves it on
127.0.0.1 (real HTTP, real boto3; moto bundles EC2's own instance-type data), and `peakguard facts
verify` as a user with credentials runs it, pointed at that server."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from infra.facts import INSTANCE_TYPES
from infra.instance_types_check import Difference, describe, differences
from lab.aws import CREDENTIALS, moto_server
from tests.infra.conftest import PROJECT_DIR


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def described(endpoint: str) -> dict[str, Any]:
    ec2 = boto3.client("ec2", region_name="us-west-2", endpoint_url=endpoint, **CREDENTIALS)
    return describe(ec2, [*INSTANCE_TYPES, "banana.huge"])


def test_every_row_of_the_table_is_what_ec2_describes(described: dict[str, Any]) -> None:
    assert differences(described) == []


def test_a_type_ec2_does_not_know_is_left_out_not_an_error(described: dict[str, Any]) -> None:
    assert "banana.huge" not in described
    assert set(INSTANCE_TYPES) <= set(described)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"nvme_volume_gb": 3840}, "instance-store volume GB"),  # p5's disks as they were typed once
        ({"nvme_volumes": 1}, "instance-store volumes"),
        ({"network_cards": 16}, "network cards"),
        ({"max_efa_interfaces": 4}, "EFA interfaces"),
        ({"gpus": 4}, "GPUs"),
        ({"gpu_model": "A100-SXM4-80GB"}, "GPU model"),
        ({"gpu_model": "H100-SXM5-94GB"}, "GPU memory"),
    ],
)
def test_a_wrong_field_is_named_with_both_values(described: dict[str, Any], change: dict[str, Any], field: str) -> None:
    table = {"p5.48xlarge": dataclasses.replace(INSTANCE_TYPES["p5.48xlarge"], **change)}

    found = differences(described, table)

    assert [d.field for d in found] == [field]
    assert found[0].instance_type == "p5.48xlarge"


def test_gpu_memory_in_decimal_and_binary_units_both_match(described: dict[str, Any]) -> None:
    # EC2 gives the L40S 45776 MiB (48e9 bytes) and the H200 144384 MiB (141 GiB).
    table = {name: INSTANCE_TYPES[name] for name in ("g6e.12xlarge", "p5e.48xlarge")}
    assert differences(described, table) == []


def test_a_row_ec2_does_not_describe_is_a_difference(described: dict[str, Any]) -> None:
    table = {"p9.banana": dataclasses.replace(INSTANCE_TYPES["p5.48xlarge"], name="p9.banana")}
    assert differences(described, table) == [
        Difference("p9.banana", "instance type", "listed", "not described (unknown here)")
    ]


def _verify(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=CREDENTIALS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=CREDENTIALS["aws_secret_access_key"],
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return subprocess.run(
        [sys.executable, "-m", "peakguard", "facts", "verify", *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_facts_verify_agrees_with_ec2_and_says_how_many(endpoint: str) -> None:
    done = _verify(endpoint, "--region", "us-west-2")

    assert done.returncode == 0, done.stderr
    assert f"{len(INSTANCE_TYPES)} instance types agree with DescribeInstanceTypes in us-west-2" in done.stdout


def test_facts_verify_without_a_region_says_how_to_give_one(endpoint: str) -> None:
    done = _verify(endpoint)

    assert done.returncode == 2
    assert "pass --region or set AWS_REGION" in done.stderr
    assert "Traceback" not in done.stderr


def test_facts_verify_that_cannot_reach_ec2_exits_2_naming_why() -> None:
    done = _verify("http://127.0.0.1:9", "--region", "us-west-2")

    assert done.returncode == 2
    assert "EC2 could not be asked" in done.stderr
