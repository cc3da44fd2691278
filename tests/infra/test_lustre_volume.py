"""FSx for Lustre as the pods see it (issue 19): linked to the bucket's models/, encrypted with a key
FSx's data-repository role may use, mounted through the FSx CSI driver add-on as a static,
read-only volume the model service's init container copies weights from. Where FSx is off (dev),
none of it exists and weights come from S3 alone."""

from __future__ import annotations

import json
from typing import Any

from infra.cluster_addons import FSX_CSI_CONTROLLER_SERVICE_ACCOUNT, FSX_CSI_DRIVER, FSX_CSI_DRIVER_ADDON
from infra.offline import OfflineRun, Registration
from infra.storage import LUSTRE_MODELS_PATH

FSX = "aws:fsx/lustreFileSystem:LustreFileSystem"
DRA = "aws:fsx/dataRepositoryAssociation:DataRepositoryAssociation"
ADDON = "aws:eks/addon:Addon"
PV = "kubernetes:core/v1:PersistentVolume"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def _one(run: OfflineRun, type_token: str) -> Registration:
    (resource,) = run.of_type(type_token)
    return resource


def _fsx_addon(run: OfflineRun) -> list[Registration]:
    return [a for a in run.of_type(ADDON) if a.inputs["addonName"] == FSX_CSI_DRIVER_ADDON]


def _init_container(deployment: Registration) -> dict[str, Any]:
    (init,) = deployment.inputs["spec"]["template"]["spec"]["initContainers"]
    return dict(init)


def test_dev_has_no_lustre_so_no_driver_volume_or_link(runs: dict[str, OfflineRun]) -> None:
    dev = runs["dev"]
    assert not dev.of_type(DRA) and not dev.of_type(PV) and not dev.of_type(PVC) and not _fsx_addon(dev)
    for deployment in dev.of_type(DEPLOYMENT):
        if "initContainers" in deployment.inputs["spec"]["template"]["spec"]:
            assert "LUSTRE_MODELS_DIR" not in {e["name"] for e in _init_container(deployment)["env"]}


def test_the_bucket_models_prefix_is_linked_into_the_file_system_import_only(runs: dict[str, OfflineRun]) -> None:
    for env in ("staging", "prod"):
        run = runs[env]
        link, fsx, bucket = _one(run, DRA), _one(run, FSX), _one(run, "aws:s3/bucket:Bucket")
        assert link.inputs["fileSystemId"] == fsx.id
        assert link.inputs["fileSystemPath"] == LUSTRE_MODELS_PATH
        assert link.inputs["dataRepositoryPath"] == f"s3://{bucket.outputs['bucket']}/models/"
        assert link.inputs["s3"] == {"autoImportPolicy": {"events": ["NEW", "CHANGED", "DELETED"]}}
        assert link.inputs["batchImportMetaDataOnCreate"] is True
        assert link.inputs["deleteDataInFilesystem"] is True, "the mirror goes with the link"


def test_the_data_key_lets_fsx_data_repository_role_decrypt_and_keeps_the_account_in_charge(
    runs: dict[str, OfflineRun],
) -> None:
    run = runs["prod"]
    (key,) = [k for k in run.of_type("aws:kms/key:Key") if "model artifacts" in k.inputs.get("description", "")]
    statements = {s["Sid"]: s for s in json.loads(key.inputs["policy"])["Statement"]}
    account = key.outputs["arn"].split(":")[4]
    assert statements["AccountAdministers"]["Principal"] == {"AWS": f"arn:aws:iam::{account}:root"}
    lustre = statements["LustreReadsTheModelBucket"]
    assert lustre["Action"] == ["kms:Decrypt", "kms:DescribeKey"], "import only: FSx never writes the bucket"
    assert lustre["Condition"]["StringEquals"] == {
        "kms:CallerAccount": account,
        "kms:ViaService": "s3.us-west-2.amazonaws.com",
    }
    assert lustre["Condition"]["ArnLike"]["aws:PrincipalArn"] == (
        f"arn:aws:iam::{account}:role/aws-service-role/s3.data-source.lustre.fsx.amazonaws.com/"
        "AWSServiceRoleForFSxS3Access_*"
    )


def test_the_csi_driver_add_on_runs_with_a_role_only_its_controller_can_assume(runs: dict[str, OfflineRun]) -> None:
    run = runs["prod"]
    (addon,) = _fsx_addon(run)
    role = next(
        r for r in run.of_type("aws:iam/role:Role") if r.outputs["arn"] == addon.inputs["serviceAccountRoleArn"]
    )
    (statement,) = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    (subject,) = [v for k, v in statement["Condition"]["StringEquals"].items() if k.endswith(":sub")]
    assert subject == f"system:serviceaccount:kube-system:{FSX_CSI_CONTROLLER_SERVICE_ACCOUNT}"
    (policy,) = [p for p in run.of_type("aws:iam/rolePolicy:RolePolicy") if p.inputs["role"] == role.id]
    assert json.loads(policy.inputs["policy"])["Statement"][0]["Action"] == "fsx:DescribeFileSystems"
    assert "addonVersion" not in addon.inputs  # no pin in the stack file: EKS's default for 1.33


def test_a_pinned_driver_version_is_the_add_ons(run_changed: Any) -> None:
    def pin(values: dict[str, Any]) -> None:
        values["peakguard:cluster"]["addons"]["fsxCsiDriver"] = "v1.7.0-eksbuild.1"

    (addon,) = _fsx_addon(run_changed("prod", pin))
    assert addon.inputs["addonVersion"] == "v1.7.0-eksbuild.1"


def test_the_file_system_is_one_static_read_only_volume_bound_to_the_model_service_claim(
    runs: dict[str, OfflineRun],
) -> None:
    run = runs["prod"]
    volume, claim, fsx = _one(run, PV), _one(run, PVC), _one(run, FSX)
    namespace = run.config.kubernetes.model_service.namespace
    spec, claim_spec = volume.inputs["spec"], claim.inputs["spec"]
    assert spec["csi"] == {
        "driver": FSX_CSI_DRIVER,
        "volumeHandle": fsx.id,
        "readOnly": True,
        "volumeAttributes": {"dnsname": fsx.outputs["dnsName"], "mountname": fsx.outputs["mountName"]},
    }
    assert spec["persistentVolumeReclaimPolicy"] == "Retain", "Kubernetes must never delete the file system"
    assert spec["claimRef"] == {"namespace": namespace, "name": claim.inputs["metadata"]["name"]}
    assert spec["storageClassName"] == claim_spec["storageClassName"] == ""
    assert claim_spec["volumeName"] == volume.inputs["metadata"]["name"]
    assert claim.inputs["metadata"]["namespace"] == namespace
    # The FSx driver publishes no ReadOnlyMany volume (it would never mount); read-only is csi.readOnly.
    assert spec["accessModes"] == claim_spec["accessModes"] == ["ReadWriteMany"]
    assert spec["capacity"]["storage"] == "4800Gi"
    # A static claim cannot be resized: the file system's size there would fail the `pulumi up` that grows it.
    assert claim_spec["resources"]["requests"]["storage"] == "1Gi"
    assert "nodeAffinity" not in spec


def _model_service(run: OfflineRun) -> list[Registration]:
    deployments = [d for d in run.of_type(DEPLOYMENT) if d.inputs["metadata"]["name"].startswith("model-service-")]
    assert {d.inputs["metadata"]["name"] for d in deployments} == {
        "model-service-full",
        "model-service-light",
        "model-service-canary",
    }
    return deployments


def test_by_default_no_model_service_pod_depends_on_the_single_az_file_system(runs: dict[str, OfflineRun]) -> None:
    # A pod cannot start until its volumes mount: with Lustre mounted, losing its one AZ would stop
    # new replicas in every AZ, just when the others must scale out.
    for deployment in _model_service(runs["prod"]):
        pod = deployment.inputs["spec"]["template"]["spec"]
        assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert "LUSTRE_MODELS_DIR" not in {e["name"] for e in _init_container(deployment)["env"]}


def test_opted_in_every_variant_copies_weights_from_lustre_first(run_changed: Any) -> None:
    def opt_in(values: dict[str, Any]) -> None:
        values["peakguard:storage"]["fsx"]["modelServiceMount"] = True

    run = run_changed("prod", opt_in)
    claim = _one(run, PVC).inputs["metadata"]["name"]
    for deployment in _model_service(run):
        pod = deployment.inputs["spec"]["template"]["spec"]
        (lustre,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert lustre["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
        init = _init_container(deployment)
        (mount,) = [m for m in init["volumeMounts"] if m["name"] == lustre["name"]]
        assert mount["readOnly"] is True
        env = {e["name"]: e["value"] for e in init["env"]}
        assert env["LUSTRE_MODELS_DIR"] == mount["mountPath"] + LUSTRE_MODELS_PATH
        served = next(c for c in pod["containers"] if c["name"] == "model-service")
        assert lustre["name"] not in {m["name"] for m in served["volumeMounts"]}, "the service reads its own copy"
