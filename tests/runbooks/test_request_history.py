"""The request rate's history from CloudWatch, for the target group the AWS Load Balancer Controller
made from the Ingress, against moto's server on 127.0.0.1 (real boto3)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest

from lab.aws import CREDENTIALS, moto_server
from runbooks.errors import RunbookError
from runbooks.ports.request_history import INGESTION_LAG, PERIOD_SECONDS, CloudWatchRequestHistory


@pytest.fixture(scope="module")
def aws() -> Iterator[dict[str, Any]]:
    with moto_server() as url:
        args = {"endpoint_url": url, "region_name": "us-west-2", **CREDENTIALS}
        yield {name: boto3.client(name, **args) for name in ("ec2", "elbv2", "cloudwatch")}


def _balanced_group(aws: dict[str, Any], *, tags: dict[str, str], attach: bool = True) -> tuple[str, str]:
    """A target group as the controller leaves it (tagged, behind an ALB's listener): its ARN and the ALB's."""
    ec2, elbv2 = aws["ec2"], aws["elbv2"]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"us-west-2{zone}")
               ["Subnet"]["SubnetId"] for i, zone in ((1, "a"), (2, "b"))]  # fmt: skip
    name = f"k8s-{uuid.uuid4().hex[:8]}"
    group = elbv2.create_target_group(Name=name, Protocol="HTTP", Port=8080, VpcId=vpc,
                                      TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]  # fmt: skip
    elbv2.add_tags(ResourceArns=[group], Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
    balancer = elbv2.create_load_balancer(Name=name, Subnets=subnets, Type="application")["LoadBalancers"][0][
        "LoadBalancerArn"
    ]
    if attach:
        elbv2.create_listener(LoadBalancerArn=balancer, Protocol="HTTP", Port=80,
                              DefaultActions=[{"Type": "forward", "TargetGroupArn": group}])  # fmt: skip
    return group, balancer


def _tags(cluster: str, stack: str) -> dict[str, str]:
    return {"elbv2.k8s.aws/cluster": cluster, "ingress.k8s.aws/stack": stack}


def test_the_rate_is_each_periods_request_count_over_its_seconds(aws: dict[str, Any]) -> None:
    cluster = f"c{uuid.uuid4().hex[:6]}"
    group, balancer = _balanced_group(aws, tags=_tags(cluster, "peakguard/model-service"))
    _balanced_group(aws, tags=_tags(cluster, "peakguard/other-ingress"))  # another Ingress of the cluster
    end = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    end -= dt.timedelta(minutes=end.minute % 5)
    dimensions = [{"Name": "TargetGroup", "Value": group[group.index("targetgroup/"):]},
                  {"Name": "LoadBalancer", "Value": balancer[balancer.index("app/"):]}]  # fmt: skip
    counts = [600.0, 1200.0, 3000.0, 90.0]  # the last period, starting at `end`, is still filling
    aws["cloudwatch"].put_metric_data(Namespace="AWS/ApplicationELB", MetricData=[
        {"MetricName": "RequestCount", "Dimensions": dimensions, "Timestamp": end - dt.timedelta(minutes=5 * (3 - i)),
         "Value": count, "Unit": "Count"} for i, count in enumerate(counts)
    ])  # fmt: skip

    history = CloudWatchRequestHistory(aws["cloudwatch"], aws["elbv2"], cluster=cluster, namespace="peakguard",
                                       ingress="model-service").rates(now=end + INGESTION_LAG + dt.timedelta(minutes=4),
                                                                      hours=1)  # fmt: skip

    assert list(history.rates) == [count / PERIOD_SECONDS for count in counts[:3]], "the filling period is left out"
    assert history.until == end
    assert list(history.times) == sorted(history.times)
    assert group[group.index("targetgroup/") :] in history.source


def test_no_target_group_of_the_ingress_names_the_tags_looked_for(aws: dict[str, Any]) -> None:
    history = CloudWatchRequestHistory(aws["cloudwatch"], aws["elbv2"], cluster="nowhere", namespace="peakguard",
                                       ingress="model-service")  # fmt: skip

    with pytest.raises(RunbookError, match=r"no target group tagged elbv2.k8s.aws/cluster=nowhere and "
                                           r"ingress.k8s.aws/stack=peakguard/model-service"):  # fmt: skip
        history.dimensions()


def test_a_target_group_behind_no_load_balancer_has_no_request_count(aws: dict[str, Any]) -> None:
    cluster = f"c{uuid.uuid4().hex[:6]}"
    _balanced_group(aws, tags=_tags(cluster, "peakguard/model-service"), attach=False)
    history = CloudWatchRequestHistory(aws["cloudwatch"], aws["elbv2"], cluster=cluster, namespace="peakguard",
                                       ingress="model-service")  # fmt: skip

    with pytest.raises(RunbookError, match="attached to no load balancer"):
        history.dimensions()
