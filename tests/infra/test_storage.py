"""Model storage: an encrypted, versioned, private bucket, and FSx for Lustre with EFA where enabled."""

from __future__ import annotations

import json

from infra.offline import OfflineRun, Registration
from infra.storage import LUSTRE_PORTS


def _one(run: OfflineRun, type_token: str) -> Registration:
    (resource,) = run.of_type(type_token)
    return resource


def test_bucket_blocks_public_access_and_is_versioned(run: OfflineRun) -> None:
    bucket = _one(run, "aws:s3/bucket:Bucket")
    block = _one(run, "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    versioning = _one(run, "aws:s3/bucketVersioning:BucketVersioning")

    assert block.inputs["bucket"] == versioning.inputs["bucket"] == bucket.id
    assert all(
        block.inputs[k] is True
        for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    assert run.outputs["modelBucket"] == bucket.outputs["bucket"]


def test_bucket_is_kms_encrypted_and_refuses_plain_http(run: OfflineRun) -> None:
    bucket = _one(run, "aws:s3/bucket:Bucket")
    (rule,) = _one(
        run, "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    ).inputs["rules"]
    keys = {k.outputs["arn"] for k in run.of_type("aws:kms/key:Key")}
    policy = json.loads(_one(run, "aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])

    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    assert rule["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"] in keys
    (statement,) = policy["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert bucket.outputs["arn"] in statement["Resource"]


def test_fsx_only_where_the_environment_enables_it(runs: dict[str, OfflineRun]) -> None:
    assert not runs["dev"].of_type("aws:fsx/lustreFileSystem:LustreFileSystem")
    assert runs["dev"].outputs["fsxDnsName"] is None
    for env in ("staging", "prod"):
        assert len(runs[env].of_type("aws:fsx/lustreFileSystem:LustreFileSystem")) == 1


def test_fsx_is_persistent_2_with_efa_in_the_configured_gpu_az(runs: dict[str, OfflineRun]) -> None:
    run = runs["prod"]
    fsx = _one(run, "aws:fsx/lustreFileSystem:LustreFileSystem")
    config = run.config.storage.fsx
    assert config is not None
    subnet = next(s for s in run.of_type("aws:ec2/subnet:Subnet") if s.id == fsx.inputs["subnetIds"])

    assert fsx.inputs["deploymentType"] == "PERSISTENT_2"
    assert fsx.inputs["efaEnabled"] is True
    assert fsx.inputs["metadataConfiguration"]["mode"] == "AUTOMATIC"  # EFA requires a metadata configuration
    assert fsx.inputs["storageCapacity"] == config.storage_capacity_gib
    assert fsx.inputs["perUnitStorageThroughput"] == config.throughput_per_tib
    assert fsx.inputs["kmsKeyId"] in {k.outputs["arn"] for k in run.of_type("aws:kms/key:Key")}
    assert subnet.inputs["availabilityZone"] == config.availability_zone
    assert "kubernetes.io/role/internal-elb" in subnet.inputs["tags"]
    assert run.outputs["fsxDnsName"] == fsx.outputs["dnsName"]


def test_fsx_security_groups_open_lustre_ports_both_ways_and_carry_efa(runs: dict[str, OfflineRun]) -> None:
    run = runs["prod"]
    fsx = _one(run, "aws:fsx/lustreFileSystem:LustreFileSystem")
    groups = {g.id: g for g in run.of_type("aws:ec2/securityGroup:SecurityGroup")}
    lustre = next(g for g in groups.values() if g.name.endswith("-lustre"))
    efa = next(g for g in groups.values() if g.name.endswith("-gpu-efa"))
    (cluster,) = run.of_type("aws:eks/cluster:Cluster")
    nodes = cluster.outputs["vpcConfig"]["clusterSecurityGroupId"]

    assert set(fsx.inputs["securityGroupIds"]) == {lustre.id, efa.id}
    assert LUSTRE_PORTS == ((988, 988), (1018, 1023))
    for direction in ("ingress", "egress"):
        rules = lustre.inputs[direction]
        for low, high in LUSTRE_PORTS:
            matching = [r for r in rules if (r["protocol"], r["fromPort"], r["toPort"]) == ("tcp", low, high)]
            assert any(r.get("self") for r in matching), (direction, low)
            assert any(nodes in r.get("securityGroups", []) for r in matching), (direction, low)
        assert all(r["protocol"] == "tcp" for r in rules)
