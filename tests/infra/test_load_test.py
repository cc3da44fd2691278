"""The distributed load's place under Pulumi's mocks: a CPU pool idle at zero that only load workers
land on, a namespace whose quotas bound a run to the pool, a service account that may read its run's
start ConfigMap and nothing else; absent unless the stack asks. loadtest's Job uses the same names."""

from __future__ import annotations

from typing import Any

import pytest

from infra import facts
from infra.config import ConfigError, StackConfig
from infra.load_test import WORKER_ACCOUNT
from infra.offline import OfflineRun
from loadtest.job import WorkerPods, job_manifest
from tests.infra.conftest import stack_values

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"


def _in(run: OfflineRun, kind: str) -> list[Any]:
    return [
        r for r in run.resources if r.type == kind and r.inputs.get("metadata", {}).get("namespace") == "peakguard-load"
    ]


def test_only_a_stack_that_asks_has_a_load_pool(runs: dict[str, OfflineRun]) -> None:
    has = {
        env: any(r.inputs.get("nodeGroupName") == "load" for r in run.of_type(NODE_GROUP)) for env, run in runs.items()
    }
    assert has == {"dev": False, "staging": True, "prod": False}


def test_the_pool_idles_at_zero_takes_only_load_workers_and_can_scale_from_zero(runs: dict[str, OfflineRun]) -> None:
    run = runs["staging"]
    (group,) = [r for r in run.of_type(NODE_GROUP) if r.inputs.get("nodeGroupName") == "load"]
    inputs = group.inputs
    assert inputs["scalingConfig"] == {"minSize": 0, "desiredSize": 0, "maxSize": 8}
    assert inputs["instanceTypes"] == ["c7i.4xlarge"] and inputs["labels"] == {"peakguard.io/pool": "load"}
    assert inputs["taints"] == [{"key": "peakguard.io/load", "value": "true", "effect": "NO_SCHEDULE"}]
    tags = {r.inputs["tag"]["key"]: r.inputs["tag"]["value"] for r in run.of_type("aws:autoscaling/tag:Tag")
            if r.name.startswith("staging-load-test-ca-")}  # fmt: skip
    template = "k8s.io/cluster-autoscaler/node-template"
    assert tags == {f"{template}/label/peakguard.io/pool": "load",
                    f"{template}/taint/peakguard.io/load": "true:NoSchedule",
                    f"{template}/resources/cpu": "16", f"{template}/resources/memory": "32Gi"}  # fmt: skip


def test_the_namespace_bounds_a_run_to_the_pool_and_the_workers_read_only_their_start(
    runs: dict[str, OfflineRun],
) -> None:
    run = runs["staging"]
    (quota,) = _in(run, "kubernetes:core/v1:ResourceQuota")
    hard = quota.inputs["spec"]["hard"]
    assert (hard["requests.cpu"], hard["pods"], hard["count/jobs.batch"]) == ("120", "120", "2"), "8 nodes x 15 workers"
    (role,) = _in(run, "kubernetes:rbac.authorization.k8s.io/v1:Role")
    assert role.inputs["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    (account,) = _in(run, "kubernetes:core/v1:ServiceAccount")
    assert account.inputs["metadata"]["name"] == WorkerPods(image="x").service_account


def test_the_model_service_admits_the_load_workers_only_where_they_exist(runs: dict[str, OfflineRun]) -> None:
    def admits_load(run: OfflineRun) -> bool:
        (policy,) = [r for r in run.of_type("kubernetes:networking.k8s.io/v1:NetworkPolicy")
                     if r.inputs["metadata"]["name"] == "model-service-ingress-sources"]  # fmt: skip
        peers = policy.inputs["spec"]["ingress"][0]["from"]
        namespace = {"kubernetes.io/metadata.name": "peakguard-load"}
        workers = {"app.kubernetes.io/name": "load-worker"}
        return any(p.get("namespaceSelector", {}).get("matchLabels") == namespace
                   and p["podSelector"]["matchLabels"] == workers for p in peers)  # fmt: skip

    assert admits_load(runs["staging"]) and not admits_load(runs["dev"])


def test_the_load_job_lands_on_the_pool_the_program_declares(runs: dict[str, OfflineRun]) -> None:
    pods = WorkerPods(image="registry/load:1")
    spec = job_manifest("run", pods, workers=4, env={}, deadline_seconds=60)["spec"]["template"]["spec"]
    (group,) = [r for r in runs["staging"].of_type(NODE_GROUP) if r.inputs.get("nodeGroupName") == "load"]
    (taint,) = group.inputs["taints"]
    effect = {api: kubernetes for kubernetes, api in facts.EKS_TAINT_EFFECTS.items()}[taint["effect"]]

    assert spec["nodeSelector"].items() <= group.inputs["labels"].items()
    toleration = {"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": effect}
    assert spec["tolerations"] == [toleration]
    assert (spec["serviceAccountName"], pods.namespace) == (WORKER_ACCOUNT, "peakguard-load")
    # What the namespace's restricted Pod Security Standard asks of every pod.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize(("load", "message"), [
    ({"instanceType": "p4d.24xlarge"}, "must be one of c7i.xlarge"),
    ({"maxNodes": 0}, "maxNodes"),
])  # fmt: skip
def test_a_wrong_load_block_is_refused(load: dict[str, Any], message: str) -> None:
    values = stack_values("dev")
    values["peakguard:kubernetes"]["loadTest"] = load

    with pytest.raises(ConfigError, match=message):
        StackConfig.from_mapping(values, stack="dev")
