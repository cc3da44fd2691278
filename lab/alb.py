"""The ALB in front of the model service, as the AWS Load Balancer Controller makes it from the
Ingress, played in moto (moto runs no controller); and the request history CloudWatch keeps for it.

predictive-scale finds the target group by the tags the controller puts on it (`elbv2.k8s.aws/cluster`,
`ingress.k8s.aws/stack`, runbooks/ports/request_history.py) and reads its `RequestCount`, whose
dimensions are the target group's and the load balancer's ARN suffixes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

import boto3  # type: ignore[import-untyped, unused-ignore]

__all__ = ["PERIOD", "play_ingress_alb", "write_request_count"]

PERIOD = dt.timedelta(minutes=5)
"""The period the history is written at: what predictive-scale reads (runbooks.ports.request_history)."""
_PUT_AT_ONCE = 500
"""Datapoints a PutMetricData call carries here (AWS allows 1000)."""


def play_ingress_alb(
    client_args: Mapping[str, Any], *, cluster: str, namespace: str, ingress: str
) -> list[dict[str, str]]:
    """The target group and ALB the controller makes for `namespace/ingress`; RequestCount's dimensions."""
    ec2, elbv2 = (boto3.client(name, **client_args) for name in ("ec2", "elbv2"))
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    region = client_args["region_name"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{i}.0/24", AvailabilityZone=f"{region}{zone}")
               ["Subnet"]["SubnetId"] for i, zone in ((1, "a"), (2, "b"))]  # fmt: skip
    # The controller's names: k8s-<namespace>-<ingress>, each cut to 8 characters, and a hash.
    prefix = f"k8s-{namespace[:8]}-{ingress[:8]}"
    group = elbv2.create_target_group(Name=f"{prefix}-0a1b2c3d4e", Protocol="HTTP", Port=8080, VpcId=vpc,
                                      TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]  # fmt: skip
    elbv2.add_tags(ResourceArns=[group], Tags=[
        {"Key": "elbv2.k8s.aws/cluster", "Value": cluster},
        {"Key": "ingress.k8s.aws/stack", "Value": f"{namespace}/{ingress}"},
    ])  # fmt: skip
    balancer = elbv2.create_load_balancer(Name=prefix, Subnets=subnets)["LoadBalancers"][0]
    elbv2.create_listener(LoadBalancerArn=balancer["LoadBalancerArn"], Protocol="HTTP", Port=80,
                          DefaultActions=[{"Type": "forward", "TargetGroupArn": group}])  # fmt: skip
    arn = balancer["LoadBalancerArn"]
    return [{"Name": "TargetGroup", "Value": group[group.index("targetgroup/"):]},
            {"Name": "LoadBalancer", "Value": arn[arn.index("app/"):]}]  # fmt: skip


def write_request_count(
    client_args: Mapping[str, Any],
    dimensions: list[dict[str, str]],
    rate: Callable[[dt.datetime], float],
    *,
    days: float,
    end: dt.datetime | None = None,
    skip_zero: bool = False,
) -> int:
    """`days` of RequestCount, one datum every 5 minutes up to `end` (default now, on the 5-minute
    grid), of `rate(period start)` requests/s; with `skip_zero`, periods without requests have no
    datum, as an ALB reports them. The data written."""
    end = (end or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).replace(second=0, microsecond=0)
    end -= dt.timedelta(minutes=end.minute % 5)
    count = int(days * dt.timedelta(days=1) / PERIOD)
    starts = [end - PERIOD * k for k in range(count, -1, -1)]
    data = [(t, rate(t) * PERIOD.total_seconds()) for t in starts]
    data = [(t, value) for t, value in data if not (skip_zero and value == 0)]
    cloudwatch = boto3.client("cloudwatch", **client_args)
    for first in range(0, len(data), _PUT_AT_ONCE):
        cloudwatch.put_metric_data(Namespace="AWS/ApplicationELB", MetricData=[
            {"MetricName": "RequestCount", "Dimensions": dimensions, "Timestamp": t, "Value": value, "Unit": "Count"}
            for t, value in data[first : first + _PUT_AT_ONCE]
        ])  # fmt: skip
    return len(data)
