"""Where model weights live: a versioned, encrypted S3 bucket, and optionally FSx for Lustre with EFA."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.config import FsxConfig

__all__ = ["LUSTRE_MODELS_PATH", "LUSTRE_PORTS", "LustreFileSystem", "Storage", "StorageArgs"]

LUSTRE_PORTS = ((988, 988), (1018, 1023))
"""TCP ports Lustre clients and servers talk on (FSx for Lustre's VPC access-control guide)."""
LUSTRE_MODELS_PATH = "/models"
"""Where the bucket's `models/` prefix appears in the Lustre file system (its data repository
association): version folders, as `peakguard train` wrote them and the bucket holds them."""
_FSX_S3_ROLE = "aws-service-role/s3.data-source.lustre.fsx.amazonaws.com/AWSServiceRoleForFSxS3Access_*"
"""The service-linked role FSx creates per file system to read a linked bucket (FSx for Lustre
User Guide, "Using service-linked roles"): its name ends in the file system's id."""


@dataclass(frozen=True)
class StorageArgs:
    env: str
    vpc_id: pulumi.Input[str]
    fsx: FsxConfig | None
    """None leaves FSx out (dev); weights then load from S3 onto the node's NVMe array."""
    region: str
    """The stack's region: FSx reads the bucket through S3 there."""
    fsx_subnet_id: pulumi.Input[str] | None = None
    """Private subnet of the FSx AZ."""
    efa_security_group_id: pulumi.Input[str] | None = None
    """The GPU nodes' EFA group: Lustre over EFA rides on its all-traffic self rules."""
    node_security_group_id: pulumi.Input[str] | None = None
    """The cluster security group every node carries: TCP Lustre traffic comes from it."""
    partition: str = "aws"
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LustreFileSystem:
    """What a pod's volume needs of the file system: the bucket's model versions are under
    `LUSTRE_MODELS_PATH` in it (its data repository association)."""

    file_system_id: pulumi.Output[str]
    dns_name: pulumi.Output[str]
    mount_name: pulumi.Output[str]
    capacity_gib: int
    model_service_mount: bool
    """The model-service pods mount it (`storage.fsx.modelServiceMount`)."""


def _data_key_policy(partition: str, region: str, account: str) -> str:
    """The account administers the key (KMS's default policy); FSx's data-repository role may use it
    too, because the bucket is SSE-KMS and Lustre reads the weights out of it (FSx for Lustre User
    Guide, "Working with server-side encrypted Amazon S3 buckets"), only through S3 and only to
    decrypt (import only). That role's name carries the file system's id, unknown before the key
    exists, hence the ARN pattern as a condition."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "AccountAdministers", "Effect": "Allow", "Action": "kms:*", "Resource": "*",
             "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"}},
            {"Sid": "LustreReadsTheModelBucket", "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Decrypt", "kms:DescribeKey"], "Resource": "*",
             "Condition": {
                 "StringEquals": {"kms:CallerAccount": account, "kms:ViaService": f"s3.{region}.amazonaws.com"},
                 "ArnLike": {"aws:PrincipalArn": f"arn:{partition}:iam::{account}:role/{_FSX_S3_ROLE}"},
             }},
        ],
    })  # fmt: skip


class Storage(pulumi.ComponentResource):
    """The model artifact bucket and the fast-load Lustre file system."""

    bucket_name: pulumi.Output[str]
    data_key_arn: pulumi.Output[str]
    fsx_dns_name: pulumi.Output[str] | None
    fsx_mount_name: pulumi.Output[str] | None
    lustre: LustreFileSystem | None
    """The file system where FSx is enabled, else None."""

    def __init__(self, name: str, args: StorageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:infra:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        data_key = aws.kms.Key(
            f"{name}-data",
            description=f"peakguard {args.env}: model artifacts in S3 and FSx",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=aws.get_caller_identity_output().account_id.apply(
                lambda account: _data_key_policy(args.partition, args.region, account)
            ),
            tags=tags,
            opts=child,
        )
        self.data_key_arn = data_key.arn

        bucket = aws.s3.Bucket(f"{name}-models", bucket_prefix=f"peakguard-{args.env}-models-", tags=tags, opts=child)
        self.bucket_name = bucket.bucket
        aws.s3.BucketPublicAccessBlock(
            f"{name}-models",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-models",
            bucket=bucket.id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=child,
        )
        # Versioned: a bad model upload is undone by restoring the previous version.
        aws.s3.BucketVersioning(
            f"{name}-models",
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=child,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-models",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="aws:kms", kms_master_key_id=data_key.arn
                    ),
                    # One data key per bucket instead of a KMS call per object: model loads at
                    # surge time do not hit KMS request limits.
                    bucket_key_enabled=True,
                )
            ],
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-models",
            bucket=bucket.id,
            policy=bucket.arn.apply(
                lambda arn: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Sid": "DenyInsecureTransport",
                                "Effect": "Deny",
                                "Principal": "*",
                                "Action": "s3:*",
                                "Resource": [arn, f"{arn}/*"],
                                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                            }
                        ],
                    }
                )
            ),
            opts=child,
        )

        self.fsx_dns_name = None
        self.fsx_mount_name = None
        self.lustre = None
        if args.fsx is not None:
            if args.fsx_subnet_id is None or args.efa_security_group_id is None or args.node_security_group_id is None:
                raise ValueError("FSx needs fsx_subnet_id, efa_security_group_id and node_security_group_id")
            self._lustre(
                name,
                args.fsx,
                vpc_id=args.vpc_id,
                subnet_id=args.fsx_subnet_id,
                efa_security_group_id=args.efa_security_group_id,
                node_security_group_id=args.node_security_group_id,
                tags=tags,
                data_key=data_key,
                bucket=bucket,
            )

        self.register_outputs({"bucket": self.bucket_name, "fsxDnsName": self.fsx_dns_name})

    def _lustre(
        self,
        name: str,
        fsx: FsxConfig,
        *,
        vpc_id: pulumi.Input[str],
        subnet_id: pulumi.Input[str],
        efa_security_group_id: pulumi.Input[str],
        node_security_group_id: pulumi.Input[str],
        tags: dict[str, str],
        data_key: aws.kms.Key,
        bucket: aws.s3.Bucket,
    ) -> None:
        child = pulumi.ResourceOptions(parent=self)
        lustre_rules = [
            (low, high, source)
            for low, high in LUSTRE_PORTS
            for source in ({"self": True}, {"security_groups": [node_security_group_id]})
        ]
        lustre_sg = aws.ec2.SecurityGroup(
            f"{name}-lustre",
            vpc_id=vpc_id,
            description="Lustre (TCP 988, 1018-1023) between FSx and the cluster's nodes",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=low, to_port=high, description="Lustre", **source
                )
                for low, high, source in lustre_rules
            ],
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="tcp", from_port=low, to_port=high, description="Lustre", **source
                )
                for low, high, source in lustre_rules
            ],
            tags={**tags, "Name": f"{name}-lustre"},
            opts=child,
        )
        filesystem = aws.fsx.LustreFileSystem(
            f"{name}-lustre",
            deployment_type="PERSISTENT_2",
            storage_type="SSD",
            storage_capacity=fsx.storage_capacity_gib,
            per_unit_storage_throughput=fsx.throughput_per_tib,
            # EFA (and with it GPUDirect Storage) is fixed at creation and needs PERSISTENT_2 with a
            # metadata configuration and an EFA-enabled security group.
            efa_enabled=True,
            metadata_configuration=aws.fsx.LustreFileSystemMetadataConfigurationArgs(mode="AUTOMATIC"),
            subnet_ids=subnet_id,  # Lustre PERSISTENT_2 is single-AZ: one subnet
            security_group_ids=[lustre_sg.id, efa_security_group_id],
            kms_key_id=data_key.arn,
            data_compression_type="LZ4",
            file_system_type_version="2.15",
            tags={**tags, "Name": f"{name}-lustre"},
            opts=child,
        )
        self.fsx_dns_name = filesystem.dns_name
        self.fsx_mount_name = filesystem.mount_name
        self.lustre = LustreFileSystem(
            file_system_id=filesystem.id,
            dns_name=filesystem.dns_name,
            mount_name=filesystem.mount_name,
            capacity_gib=fsx.storage_capacity_gib,
            model_service_mount=fsx.model_service_mount,
        )
        # The bucket's models/ prefix, as a folder of the file system: a version uploaded to S3
        # appears under /models as soon as FSx imports its metadata, and its bytes are read from S3
        # once, on first access, then served from Lustre. Import only: pods never write weights.
        aws.fsx.DataRepositoryAssociation(
            f"{name}-models",
            file_system_id=filesystem.id,
            file_system_path=LUSTRE_MODELS_PATH,
            data_repository_path=bucket.bucket.apply(lambda name_: f"s3://{name_}/models/"),
            batch_import_meta_data_on_create=True,
            s3=aws.fsx.DataRepositoryAssociationS3Args(
                auto_import_policy=aws.fsx.DataRepositoryAssociationS3AutoImportPolicyArgs(
                    events=["NEW", "CHANGED", "DELETED"]
                )
            ),
            # The file system mirrors the bucket (import only, the bucket is never written): removing
            # the link removes the mirror, so no version the bucket no longer holds lingers in Lustre.
            delete_data_in_filesystem=True,
            tags=tags,
            opts=child,
        )
