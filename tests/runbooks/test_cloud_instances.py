"""Removing one node's instance, against Auto Scaling served by moto on 127.0.0.1 (real boto3): the
instance goes, the group's desired size drops by one, and no replacement is launched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest

from lab.aws import CREDENTIALS, moto_server
from runbooks.errors import RunbookError
from runbooks.ports.cloud import AwsCloud, instance_id_of


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    with moto_server() as url:
        yield boto3.Session(region_name="us-west-2", **CREDENTIALS), url


@pytest.fixture
def group(session: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AwsCloud, Any, str]]:
    boto_session, url = session
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    ec2, autoscaling = boto_session.client("ec2"), boto_session.client("autoscaling")
    image = ec2.describe_images()["Images"][0]["ImageId"]
    data = {"ImageId": image, "InstanceType": "m5.large"}
    template = ec2.create_launch_template(LaunchTemplateName="gpu-full-blue", LaunchTemplateData=data)
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="eks-gpu-full-us-west-2a-blue",
        LaunchTemplate={"LaunchTemplateId": template["LaunchTemplate"]["LaunchTemplateId"], "Version": "$Latest"},
        MinSize=0, MaxSize=6, DesiredCapacity=3, AvailabilityZones=["us-west-2a"],
    )  # fmt: skip
    yield AwsCloud(boto_session, env="dev"), autoscaling, "eks-gpu-full-us-west-2a-blue"
    autoscaling.delete_auto_scaling_group(AutoScalingGroupName="eks-gpu-full-us-west-2a-blue", ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateName="gpu-full-blue")


def _in_service(autoscaling: Any, name: str) -> tuple[int, list[str]]:
    (found,) = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"]
    live = [i["InstanceId"] for i in found["Instances"] if i["LifecycleState"] == "InService"]
    return found["DesiredCapacity"], live


def test_one_instance_goes_and_the_group_does_not_replace_it(group: tuple[AwsCloud, Any, str]) -> None:
    cloud, autoscaling, name = group
    desired, live = _in_service(autoscaling, name)
    assert (desired, len(live)) == (3, 3)

    cloud.remove_instance(instance_id_of(f"aws:///us-west-2a/{live[0]}"))

    desired, after = _in_service(autoscaling, name)
    assert desired == 2
    assert live[0] not in after and sorted(after) == sorted(live[1:])


def test_an_unknown_instance_is_reported_with_what_was_being_done(group: tuple[AwsCloud, Any, str]) -> None:
    cloud, _, _ = group
    with pytest.raises(RunbookError, match="terminate instance i-0000000000000dead"):
        cloud.remove_instance("i-0000000000000dead")


@pytest.mark.parametrize("provider_id", ["", "kind://docker/node-1", "aws:///us-west-2a/"])
def test_a_node_that_is_not_an_ec2_instance_is_refused(provider_id: str) -> None:
    with pytest.raises(RunbookError, match="is not an EC2 instance"):
        instance_id_of(provider_id)
