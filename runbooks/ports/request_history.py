"""The request rate's history, where a real cluster keeps it: CloudWatch's `RequestCount` of the
model service's ALB target group.

The AWS Load Balancer Controller creates that target group from the Ingress, so its name is not
the program's to know; the controller tags what it creates (`elbv2.k8s.aws/cluster: <cluster>`,
`ingress.k8s.aws/stack: <namespace>/<ingress>`; the controller's tagging scheme, aws-alb-ingress-
controller PR #1469), and the targets document names the cluster, namespace and Ingress. The metric
is per target group and load balancer: its dimensions are the ARN suffixes `targetgroup/<name>/<id>`
and `app/<name>/<id>` (CloudWatch metrics for your Application Load Balancer, ELB user guide).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from runbooks.errors import RunbookError
from runbooks.ports.aws_errors import translate

__all__ = ["PERIOD_SECONDS", "CloudWatchRequestHistory", "RateHistory"]

INGESTION_LAG = dt.timedelta(minutes=3)
"""How long an ALB's datapoints may take to reach CloudWatch: a period that ended less than this ago
may still be filling, and would read low."""
PERIOD_SECONDS = 300
"""One point per 5 minutes: CloudWatch keeps 1-minute ALB data for 15 days and 5-minute data for 63
(GetMetricStatistics, retention), and the forecaster's protocol was measured at 5 minutes."""
CLUSTER_TAG = "elbv2.k8s.aws/cluster"
STACK_TAG = "ingress.k8s.aws/stack"


@dataclass(frozen=True)
class RateHistory:
    """Requests per second, one per period, oldest first; a period without data is absent."""

    times: tuple[dt.datetime, ...]
    rates: tuple[float, ...]
    source: str
    """Where it came from, for the journal: the metric and its dimensions."""
    until: dt.datetime
    """The end of the last complete period (UTC): periods after it are left out, not read low."""


class CloudWatchRequestHistory:
    def __init__(self, cloudwatch: Any, elbv2: Any, *, cluster: str, namespace: str, ingress: str) -> None:
        self._cloudwatch = cloudwatch
        self._elbv2 = elbv2
        self._cluster = cluster
        self._stack = f"{namespace}/{ingress}"

    def dimensions(self) -> dict[str, str]:
        """The TargetGroup and LoadBalancer dimension values of the Ingress's target group."""
        wanted = {CLUSTER_TAG: self._cluster, STACK_TAG: self._stack}
        try:
            groups = [g for page in self._elbv2.get_paginator("describe_target_groups").paginate()
                      for g in page["TargetGroups"]]  # fmt: skip
            ours = []
            for start in range(0, len(groups), 20):  # DescribeTags takes at most 20 ARNs
                arns = [g["TargetGroupArn"] for g in groups[start : start + 20]]
                for described in self._elbv2.describe_tags(ResourceArns=arns)["TagDescriptions"]:
                    tags = {t["Key"]: t["Value"] for t in described.get("Tags", [])}
                    if all(tags.get(key) == value for key, value in wanted.items()):
                        ours.append(described["ResourceArn"])
        except Exception as exc:
            raise translate(exc, "find the model service's target group",
                            permissions="elasticloadbalancing:DescribeTargetGroups, DescribeTags") from exc  # fmt: skip
        if len(ours) != 1:
            found = "no target group" if not ours else f"{len(ours)} target groups ({', '.join(ours)})"
            raise RunbookError(
                f"{found} tagged {CLUSTER_TAG}={self._cluster} and {STACK_TAG}={self._stack}: is the Ingress "
                "served by the AWS Load Balancer Controller, and has it reconciled?"
            )
        group = next(g for g in groups if g["TargetGroupArn"] == ours[0])
        balancers = group.get("LoadBalancerArns", [])
        if not balancers:
            raise RunbookError(f"target group {ours[0]} is attached to no load balancer: no RequestCount to read")
        return {"TargetGroup": _suffix(ours[0], "targetgroup/"), "LoadBalancer": _suffix(balancers[0], "app/")}

    def rates(self, *, now: dt.datetime, hours: float) -> RateHistory:
        """Requests/s per `PERIOD_SECONDS` over the `hours` before the last period complete at `now`
        (one that ended at least `INGESTION_LAG` ago)."""
        dimensions = self.dimensions()
        period = dt.timedelta(seconds=PERIOD_SECONDS)
        lagged = now.astimezone(dt.UTC) - INGESTION_LAG
        end = lagged - (lagged - dt.datetime(2000, 1, 1, tzinfo=dt.UTC)) % period
        query = {
            "Id": "requests",
            "MetricStat": {
                "Metric": {
                    "Namespace": "AWS/ApplicationELB",
                    "MetricName": "RequestCount",
                    # CloudWatch matches a dimension set in any order; moto only in the order put,
                    # so this is the order the ALB publishes them in (TargetGroup, LoadBalancer).
                    "Dimensions": [{"Name": k, "Value": dimensions[k]} for k in ("TargetGroup", "LoadBalancer")],
                },
                "Period": PERIOD_SECONDS,
                "Stat": "Sum",
            },
            "ReturnData": True,
        }
        points: dict[dt.datetime, float] = {}
        kwargs: dict[str, Any] = {"MetricDataQueries": [query], "StartTime": end - dt.timedelta(hours=hours),
                                  "EndTime": end, "ScanBy": "TimestampAscending"}  # fmt: skip
        try:
            while True:
                page = self._cloudwatch.get_metric_data(**kwargs)
                for result in page["MetricDataResults"]:
                    for stamp, value in zip(result["Timestamps"], result["Values"], strict=True):
                        points[stamp] = points.get(stamp, 0.0) + float(value)
                if not page.get("NextToken"):
                    break
                kwargs["NextToken"] = page["NextToken"]
        except Exception as exc:
            raise translate(
                exc, "read the target group's RequestCount", permissions="cloudwatch:GetMetricData"
            ) from exc
        # Keep only periods that start before `end` (so end by it): CloudWatch's end bound, and moto's, may let the
        # period starting at `end` in.
        ordered = sorted(t for t in points if t.astimezone(dt.UTC) < end)
        source = f"AWS/ApplicationELB RequestCount Sum/{PERIOD_SECONDS}s " + ", ".join(
            f"{k}={v}" for k, v in sorted(dimensions.items())
        )
        return RateHistory(tuple(ordered), tuple(points[t] / PERIOD_SECONDS for t in ordered), source, end)


def _suffix(arn: str, marker: str) -> str:
    """`arn:...:targetgroup/name/id` -> `targetgroup/name/id` (CloudWatch's dimension value)."""
    at = arn.find(marker)
    if at < 0:
        raise RunbookError(f"{arn} is not an ELBv2 ARN with {marker!r}")
    return arn[at:]
