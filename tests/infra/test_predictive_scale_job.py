"""The predictive-scale CronJob under Pulumi's mocks: absent unless the stack asks for it; when it
does, a schedule that never overlaps itself running the runbook that stands aside for incidents,
on a service account whose IRSA role and Kubernetes Role allow what that runbook does and no more."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from infra.config import ConfigError, StackConfig
from infra.offline import OfflineRun, Registration
from infra.predictive_scale_job import SERVICE_ACCOUNT
from infra.targets import RUNBOOK_LOCK
from runbooks.ports import lease_lock
from tests.infra.conftest import PROJECT_DIR, stack_values

CRON_JOB = "kubernetes:batch/v1:CronJob"
PREDICTIVE = {"image": "123456789012.dkr.ecr.us-west-2.amazonaws.com/peakguard-runbooks:1.4.0", "replicaRps": 210}


def _enable(**changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(values: dict[str, Any]) -> None:
        values["peakguard:kubernetes"]["modelService"]["predictiveScale"] = {**PREDICTIVE, **changes}

    return edit


@pytest.fixture(scope="module")
def dev_predictive() -> OfflineRun:
    from infra.offline import run_offline

    values = stack_values("dev")
    _enable()(values)
    return run_offline("dev", project_dir=PROJECT_DIR, overrides=values)


def _one(run: OfflineRun, type_token: str, name: str | None = None) -> Registration:
    found = [r for r in run.of_type(type_token) if name is None or r.inputs["metadata"]["name"] == name]
    (resource,) = found
    return resource


def test_no_stack_runs_it_unless_asked(runs: dict[str, OfflineRun]) -> None:
    for run in runs.values():
        assert not run.of_type(CRON_JOB)


def test_every_five_minutes_the_runbook_stands_aside_for_incidents_and_never_overlaps(
    dev_predictive: OfflineRun,
) -> None:
    cron = _one(dev_predictive, CRON_JOB).inputs
    spec = cron["spec"]
    job = spec["jobTemplate"]["spec"]
    (container,) = job["template"]["spec"]["containers"]

    assert spec["schedule"] == "*/5 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert job["activeDeadlineSeconds"] < 5 * 60, "a cycle ends before the next may start"
    assert job["backoffLimit"] == 0, "a failed cycle is not retried: the next one forecasts anew"
    args = container["args"]
    assert args[:3] == ["runbook", "run", "predictive-scale"]
    assert {"--yes", "--stand-aside"} <= set(args)
    assert args[args.index("--replica-rps") + 1] == "210" and args[args.index("--horizon") + 1] == "15"
    assert container["image"] == PREDICTIVE["image"]
    assert job["template"]["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_its_iam_role_is_trusted_by_its_service_account_alone_and_allows_only_what_the_runbook_does(
    dev_predictive: OfflineRun,
) -> None:
    (role,) = [r for r in dev_predictive.of_type("aws:iam/role:Role") if SERVICE_ACCOUNT in r.name]
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Condition"]["StringEquals"]
    assert f"system:serviceaccount:peakguard:{SERVICE_ACCOUNT}" in trust.values()
    (policy,) = [p for p in dev_predictive.of_type("aws:iam/rolePolicy:RolePolicy") if SERVICE_ACCOUNT in p.name]
    statements = json.loads(policy.inputs["policy"])["Statement"]
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions == {"cloudwatch:GetMetricData", "elasticloadbalancing:DescribeTargetGroups",
                       "elasticloadbalancing:DescribeTags", "ssm:GetParameter", "eks:DescribeNodegroup",
                       "eks:UpdateNodegroupConfig"}  # fmt: skip
    by_sid = {s["Sid"]: s for s in statements}
    assert all(p.startswith("arn:aws:ssm:us-west-2:") and "/peakguard/dev/" in p
               for p in by_sid["TargetsAndSwitches"]["Resource"])  # fmt: skip
    assert by_sid["NodeGroups"]["Resource"].endswith(":nodegroup/" + _cluster_name(dev_predictive) + "/*/*")
    service_account = _one(dev_predictive, "kubernetes:core/v1:ServiceAccount", SERVICE_ACCOUNT)
    assert service_account.inputs["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == role.outputs["arn"]


def _cluster_name(run: OfflineRun) -> str:
    (cluster,) = run.of_type("aws:eks/cluster:Cluster")
    return str(cluster.outputs["name"])


def test_its_kubernetes_role_reaches_the_hpa_the_runbook_lock_and_the_admin_token_by_name(
    dev_predictive: OfflineRun,
) -> None:
    rules = _one(dev_predictive, "kubernetes:rbac.authorization.k8s.io/v1:Role", SERVICE_ACCOUNT).inputs["rules"]
    named = {(r["resources"][0], tuple(r.get("resourceNames", ())), tuple(r["verbs"])) for r in rules}
    assert named == {
        ("horizontalpodautoscalers", ("model-service-full",), ("get", "patch")),
        ("leases", (), ("create",)),
        ("leases", (RUNBOOK_LOCK,), ("get", "update")),
        ("secrets", ("model-service-admin",), ("get",)),
    }
    assert lease_lock.LEASE_NAME == RUNBOOK_LOCK, "the Role names the lock the runbooks take"
    binding = _one(dev_predictive, "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding", SERVICE_ACCOUNT).inputs
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": "peakguard"}]


def test_a_horizon_shorter_than_the_schedule_is_refused() -> None:
    values = stack_values("dev")
    _enable(horizonMinutes=3, everyMinutes=5)(values)

    with pytest.raises(ConfigError, match=r"predictiveScale.horizonMinutes: must be at least everyMinutes \(5\)"):
        StackConfig.from_mapping(values, stack="dev")


@pytest.mark.parametrize(("key", "value"), [("replicaRps", 0), ("replicaRps", "fast"), ("model", "prophet"),
                                            ("everyMinutes", 0), ("image", "runbooks:latest")])  # fmt: skip
def test_bad_predictive_scale_values_name_the_key(key: str, value: Any) -> None:
    values = stack_values("dev")
    _enable(**{key: value})(values)

    with pytest.raises(ConfigError, match=rf"predictiveScale\.{key}"):
        StackConfig.from_mapping(values, stack="dev")


def test_the_pod_runs_as_the_runbooks_images_user_with_its_journal_directory(dev_predictive: OfflineRun) -> None:
    dockerfile = (PROJECT_DIR / "runbooks" / "Dockerfile").read_text()
    pod = _one(dev_predictive, CRON_JOB).inputs["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    user = int(pod["securityContext"]["runAsUser"])  # numbers cross the mocks as floats
    assert f"USER {user}:{user}" in dockerfile and pod["securityContext"]["runAsNonRoot"] is True
    journals = {e["name"]: e["value"] for e in container["env"]}["PEAKGUARD_JOURNAL_DIR"]
    assert f"PEAKGUARD_JOURNAL_DIR={journals}" in dockerfile
    assert journals in {m["mountPath"] for m in container["volumeMounts"]}, "a writable emptyDir, not the image"
