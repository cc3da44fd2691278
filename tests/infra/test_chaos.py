"""Chaos as code under Pulumi's mocks: FIS experiment templates per zone and for the pods, each
stopping on the target group's 5xx and p99 alarms, acting as a role FIS alone may assume and that may
stop only this env's instances; published by name for the chaos-drill runbook."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from infra.chaos import FIS_USER
from infra.config import ConfigError, StackConfig
from infra.offline import OfflineRun
from tests.infra.conftest import stack_values

FIS = "aws:fis/experimentTemplate:ExperimentTemplate"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"


def _templates(run: OfflineRun) -> dict[str, Any]:
    return {r.inputs["tags"]["peakguard:experiment"]: r for r in run.of_type(FIS)}


def test_every_stack_declares_its_experiments_and_publishes_them_by_name(runs: dict[str, OfflineRun]) -> None:
    for env, run in runs.items():
        zones = run.config.network.availability_zones
        expected = {*(f"gpu-zone-stop-{az}" for az in zones), *(f"subnet-disconnect-{az}" for az in zones),
                    "model-pod-delete"}  # fmt: skip
        templates = _templates(run)
        assert set(templates) == expected, env
        published = run.outputs["targets"]["chaosExperiments"]
        assert published == {name: r.id for name, r in templates.items()}, "the runbook finds each by name"


def test_each_experiment_stops_on_both_alarms_of_the_ingress_target_group(runs: dict[str, OfflineRun]) -> None:
    run = runs["prod"]
    alarms = {r.name: r for r in run.of_type(ALARM)}
    assert sorted(alarms) == ["prod-chaos-target-5xx", "prod-chaos-target-p99"]
    arns = {r.outputs["arn"] for r in alarms.values()}
    for template in run.of_type(FIS):
        conditions = template.inputs["stopConditions"]
        assert {c["source"] for c in conditions} == {"aws:cloudwatch:alarm"}
        assert {c["value"] for c in conditions} == arns

    latency, errors = alarms["prod-chaos-target-p99"].inputs, alarms["prod-chaos-target-5xx"].inputs
    assert (latency["metricName"], latency["extendedStatistic"]) == ("TargetResponseTime", "p99")
    assert latency["threshold"] == run.config.kubernetes.model_service.slo_p99_milliseconds / 1000
    # The Load Balancer Controller's target group of the Ingress, by its ARN suffixes.
    assert latency["dimensions"]["TargetGroup"].startswith("targetgroup/k8s-peakguar-model-se-")
    assert latency["dimensions"]["LoadBalancer"].startswith("app/k8s-peakguar-model-se-")
    queries = {q["id"]: q for q in errors["metricQueries"]}
    assert queries["targets"]["metric"]["metricName"] == "HTTPCode_Target_5XX_Count"
    # A lost zone's errors are the ALB's own 502/503/504: counted too, per load balancer.
    assert queries["balancer"]["metric"]["metricName"] == "HTTPCode_ELB_5XX_Count"
    assert queries["balancer"]["metric"]["dimensions"] == {"LoadBalancer": latency["dimensions"]["LoadBalancer"]}
    assert queries["requests"]["metric"]["metricName"] == "RequestCount"
    assert "FILL(balancer, 0)" in queries["share"]["expression"] and queries["share"]["returnData"]
    assert errors["threshold"] == 0.01
    for alarm in (latency, errors):
        assert alarm["treatMissingData"] == "notBreaching", "a minute without requests is not a failure"
        assert (alarm["datapointsToAlarm"], alarm["evaluationPeriods"]) == (2, 3)


def test_a_zone_stop_takes_only_the_full_pools_instances_of_that_zone_and_gives_them_back(
    runs: dict[str, OfflineRun],
) -> None:
    template = _templates(runs["prod"])["gpu-zone-stop-us-west-2b"].inputs
    (action,), (target,) = template["actions"], template["targets"]

    assert action["actionId"] == "aws:ec2:stop-instances"
    assert action["target"] == {"key": "Instances", "value": target["name"]}
    assert {p["key"]: p["value"] for p in action["parameters"]} == {
        "startInstancesAfterDuration": "PT10M",
        "completeIfInstancesTerminated": "true",
    }, "the Auto Scaling group may replace a stopped node: FIS completes instead of failing"
    assert target["resourceType"] == "aws:ec2:instance" and target["selectionMode"] == "ALL"
    assert {t["key"]: t["value"] for t in target["resourceTags"]} == {"peakguard:env": "prod", "peakguard:pool": "full"}
    assert target["filters"] == [{"path": "Placement.AvailabilityZone", "values": ["us-west-2b"]}]
    assert template["experimentOptions"]["emptyTargetResolutionMode"] == "fail", "no fault is no drill"


def test_a_subnet_cut_targets_that_zones_private_subnet(runs: dict[str, OfflineRun]) -> None:
    run = runs["prod"]
    template = _templates(run)["subnet-disconnect-us-west-2c"].inputs
    subnet = run.named("aws:ec2/subnet:Subnet", "prod-private-us-west-2c")
    (action,), (target,) = template["actions"], template["targets"]

    assert action["actionId"] == "aws:network:disrupt-connectivity"
    assert {p["key"]: p["value"] for p in action["parameters"]} == {"duration": "PT10M", "scope": "all"}
    assert target["resourceArns"] == [f"arn:aws:ec2:us-west-2:123456789012:subnet/{subnet.id}"]


def test_pod_delete_acts_in_the_cluster_as_the_fis_user_with_a_role_for_that_alone(
    runs: dict[str, OfflineRun],
) -> None:
    run = runs["prod"]
    template = _templates(run)["model-pod-delete"].inputs
    (action,), (target,) = template["actions"], template["targets"]
    assert action["actionId"] == "aws:eks:pod-delete"
    assert target["selectionMode"] == "PERCENT(33)"
    assert target["parameters"]["selectorValue"] == "app.kubernetes.io/name=model-service"
    assert target["parameters"]["namespace"] == "peakguard"
    parameters = {p["key"]: p["value"] for p in action["parameters"]}
    account = parameters["kubernetesServiceAccount"]
    assert parameters["fisPodSecurityPolicy"] == "restricted", "the model namespace enforces restricted"

    (entry,) = run.of_type("aws:eks/accessEntry:AccessEntry")
    role = next(r for r in run.of_type("aws:iam/role:Role") if r.name == "prod-chaos-fis")
    assert entry.inputs["userName"] == FIS_USER and entry.inputs["principalArn"] == role.outputs["arn"]
    (binding,) = [r for r in run.of_type("kubernetes:rbac.authorization.k8s.io/v1:RoleBinding")
                  if r.inputs["metadata"]["name"] == account]  # fmt: skip
    subjects = {(s["kind"], s["name"]) for s in binding.inputs["subjects"]}
    assert subjects == {("ServiceAccount", account), ("User", FIS_USER)}
    (rbac,) = [r for r in run.of_type("kubernetes:rbac.authorization.k8s.io/v1:Role")
               if r.inputs["metadata"]["name"] == account]  # fmt: skip
    verbs = {(rule["resources"][0], verb) for rule in rbac.inputs["rules"] for verb in rule["verbs"]}
    assert ("pods", "delete") in verbs and not any(res == "secrets" for res, _ in verbs)


def test_only_fis_may_assume_the_role_and_it_may_stop_only_this_envs_instances(runs: dict[str, OfflineRun]) -> None:
    run = runs["staging"]
    role = next(r for r in run.of_type("aws:iam/role:Role") if r.name == "staging-chaos-fis")
    (trust,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert trust["Principal"] == {"Service": "fis.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": "123456789012"}
    policy = json.loads(run.named("aws:iam/rolePolicy:RolePolicy", "staging-chaos-fis").inputs["policy"])
    (stop,) = [s for s in policy["Statement"] if "ec2:StopInstances" in s["Action"]]
    assert stop["Condition"] == {"StringEquals": {"aws:ResourceTag/peakguard:env": "staging"}}
    assert not any(a.endswith(":*") or a == "*" for s in policy["Statement"] for a in s["Action"])


def test_a_stack_may_declare_some_experiments_or_none(run_changed: Callable[..., OfflineRun]) -> None:
    def only_pods(values: dict[str, Any]) -> None:
        values["peakguard:kubernetes"]["modelService"]["chaos"] = {"experiments": ["model-pod-delete"]}

    def none(values: dict[str, Any]) -> None:
        del values["peakguard:kubernetes"]["modelService"]["chaos"]

    pods = run_changed("dev", only_pods)
    assert list(_templates(pods)) == ["model-pod-delete"]
    attached = [r.inputs["policyArn"] for r in pods.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")]
    assert not [arn for arn in attached if "FaultInjection" in arn], "no network access without a subnet experiment"

    nothing = run_changed("dev", none)
    assert not nothing.of_type(FIS) and not nothing.of_type(ALARM)
    assert nothing.outputs["targets"]["chaosExperiments"] == {}


@pytest.mark.parametrize(("chaos", "message"), [
    ({"experiments": ["gpu-zone-stop", "az-melt"]}, "must be among gpu-zone-stop, subnet-disconnect, model-pod-delete"),
    ({"experiments": []}, "is empty: leave chaos out instead"),
    ({"experiments": ["model-pod-delete", "model-pod-delete"]}, "names an experiment twice"),
    ({"podDeletePercent": 50}, "podDeletePercent"),
    ({"durationMinutes": 0}, "durationMinutes"),
])  # fmt: skip
def test_a_wrong_chaos_block_is_refused_naming_the_key(chaos: dict[str, Any], message: str) -> None:
    values = stack_values("dev")
    values["peakguard:kubernetes"]["modelService"]["chaos"] = chaos

    with pytest.raises(ConfigError, match=message):
        StackConfig.from_mapping(values, stack="dev")
