"""The targets document: what the runbooks read from SSM, and its schema."""

from __future__ import annotations

import dataclasses
import json

import pytest

from infra.offline import OfflineRun
from infra.targets import (
    SCHEMA_VERSION,
    ClusterTarget,
    NodeGroupTarget,
    TargetsDocument,
    TargetsDocumentError,
    parameter_name,
)


def _parameter(run: OfflineRun) -> dict:
    (parameter,) = run.of_type("aws:ssm/parameter:Parameter")
    return dict(parameter.inputs)


def test_published_at_the_env_parameter_and_as_a_stack_output(run: OfflineRun) -> None:
    parameter = _parameter(run)
    document = TargetsDocument.from_json(parameter["insecureValue"], source=parameter["name"])

    assert parameter["name"] == parameter_name(run.config.env) == f"/peakguard/{run.config.env}/targets"
    assert parameter["type"] == "String"
    assert document.to_dict() == run.outputs["targets"]
    assert run.outputs["targetsParameter"] == parameter["name"]


def test_names_the_cluster_and_every_node_group_with_its_auto_scaling_group(run: OfflineRun) -> None:
    document = TargetsDocument.from_json(_parameter(run)["insecureValue"])
    (cluster,) = run.of_type("aws:eks/cluster:Cluster")
    # The load pool (infra/load_test.py) is the load test's, not a pool the runbooks act on.
    groups = {g.outputs["nodeGroupName"]: g for g in run.of_type("aws:eks/nodeGroup:NodeGroup")
              if g.outputs["nodeGroupName"] != "load"}  # fmt: skip

    assert document.schema_version == SCHEMA_VERSION
    assert document.env == run.config.env
    assert document.cluster == ClusterTarget(
        name=cluster.outputs["name"], endpoint=cluster.outputs["endpoint"], region=run.config.region
    )
    assert {g.name for g in document.node_groups} == set(groups)
    for target in document.node_groups:
        group = groups[target.name]
        assert target.autoscaling_group == group.outputs["resources"][0]["autoscalingGroups"][0]["name"]
    for pool in run.config.gpu_pools:
        targets = document.node_groups_of(pool.name)
        assert sorted(t.availability_zone or "" for t in targets) == sorted(pool.availability_zones)
        assert {t.instance_type for t in targets} == {pool.instance_type}
        # What the node groups are labelled with: where the runbooks learn how many light replicas a node holds.
        layout = (pool.mig_profile or "all-disabled") if pool.instance.mig_profiles else None
        assert {t.mig_config for t in targets} == {layout}
    (system,) = document.node_groups_of("system")
    assert system.availability_zone is None


def test_fits_a_standard_parameter_with_room_to_grow(runs: dict[str, OfflineRun]) -> None:
    # Standard parameters hold 4 KB; the Kubernetes side adds model-service entries later.
    assert len(_parameter(runs["prod"])["insecureValue"].encode()) < 3000
    assert _parameter(runs["prod"])["tier"] == "Intelligent-Tiering"


def _document() -> TargetsDocument:
    return TargetsDocument(
        env="prod",
        cluster=ClusterTarget(name="peakguard-prod", endpoint="https://example", region="us-west-2"),
        node_groups=(
            NodeGroupTarget(
                pool="full",
                availability_zone="us-west-2a",
                name="gpu-full-us-west-2a-blue",
                autoscaling_group="eks-gpu-full-us-west-2a-blue-1",
                instance_type="p5.48xlarge",
                generation="blue",
                serving=True,
            ),
        ),
    )


def test_round_trips() -> None:
    assert TargetsDocument.from_json(_document().to_json()) == _document()
    mig = dataclasses.replace(_document().node_groups[0], pool="mig", mig_config="all-1g.10gb")
    document = dataclasses.replace(_document(), node_groups=(mig,))
    assert TargetsDocument.from_json(document.to_json()) == document


def test_a_document_published_before_the_mig_layout_was_still_reads() -> None:
    raw = _document().to_dict()
    del raw["nodeGroups"][0]["migConfig"]

    assert TargetsDocument.from_dict(raw).node_groups[0].mig_config is None


def test_chaos_experiments_round_trip_and_older_documents_have_none() -> None:
    document = dataclasses.replace(_document(), chaos_experiments={"model-pod-delete": "EXT1a2b3c"})
    assert TargetsDocument.from_json(document.to_json()) == document
    raw = _document().to_dict()
    del raw["chaosExperiments"]
    assert TargetsDocument.from_dict(raw).chaos_experiments == {}
    raw["chaosExperiments"] = {"model-pod-delete": 7}
    with pytest.raises(TargetsDocumentError, match="chaosExperiments must map names to strings"):
        TargetsDocument.from_dict(raw)


def test_names_the_model_service_objects_the_runbooks_act_on(run: OfflineRun) -> None:
    document = TargetsDocument.from_json(_parameter(run)["insecureValue"])
    service = document.model_service
    assert service is not None
    in_namespace = {
        (r.inputs["kind"], r.inputs["metadata"]["name"])
        for r in run.resources
        if r.type.startswith("kubernetes:") and r.inputs.get("metadata", {}).get("namespace") == service.namespace
    }

    assert service.namespace == run.config.kubernetes.model_service.namespace
    assert {("Deployment", name) for name in service.deployments.values()} <= in_namespace
    assert ("HorizontalPodAutoscaler", service.hpa) in in_namespace
    assert {("ScaledObject", name) for name in service.scaled_objects.values()} <= in_namespace
    assert {("ConfigMap", name) for name in service.mode_config_maps.values()} <= in_namespace
    assert ("Secret", service.admin_token_secret) in in_namespace
    assert ("Service", service.service) in in_namespace
    assert service.url == f"http://{service.service}.{service.namespace}.svc.cluster.local"
    # The light variant exists exactly where the env has a MIG pool.
    assert ("light" in service.deployments) == any(p.mig_profile for p in run.config.gpu_pools)
    assert TargetsDocument.from_json(document.to_json()) == document


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(schemaVersion=99), f"schemaVersion 99 is not the {SCHEMA_VERSION}"),
        (lambda d: d.pop("cluster"), "cluster is missing"),
        (lambda d: d["cluster"].pop("endpoint"), "cluster.endpoint is missing"),
        (lambda d: d["nodeGroups"][0].update(autoscalingGroup=7), "nodeGroups[0].autoscalingGroup must be str"),
        (lambda d: d.update(modelService=[1]), "modelService must be an object"),
        (lambda d: d["nodeGroups"][0].update(migConfig=7), "nodeGroups[0].migConfig must be"),
        (lambda d: d.update(modelService={"namespace": "peakguard"}), "modelService.deployments is missing"),
    ],
    ids=[
        "future-version",
        "no-cluster",
        "no-endpoint",
        "wrong-type",
        "model-service-not-object",
        "mig-config-not-text",
        "model-service-partial",
    ],
)
def test_a_malformed_document_is_refused_naming_the_field_and_the_source(mutate, message: str) -> None:
    raw = _document().to_dict()
    mutate(raw)

    with pytest.raises(TargetsDocumentError) as error:
        TargetsDocument.from_json(json.dumps(raw), source="/peakguard/prod/targets")
    assert message in str(error.value)
    assert str(error.value).startswith("/peakguard/prod/targets: ")


def test_not_json_is_refused() -> None:
    with pytest.raises(TargetsDocumentError, match="not JSON"):
        TargetsDocument.from_json("{", source="p")
