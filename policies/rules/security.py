"""Security baseline: IMDSv2, private and encrypted storage, no open ingress, a private control
plane in prod, no wildcard actions on our IAM policies."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any

from policies.findings import UNKNOWN, Resource, Rule, Violation, known
from policies.wire import env_of, mapping, of_type, sequence, truthy

__all__ = ["IMDS_HOP_TAG", "RULES"]

IMDS_HOP_TAG = "peakguard:pods-need-instance-metadata"
"""Tag the program sets on a launch template whose pods read instance metadata (hop limit 2)."""


def _imdsv2(resource: Resource) -> list[Violation]:
    tokens = resource.get("metadataOptions.httpTokens")
    if tokens is UNKNOWN:
        return [Violation("metadataOptions.httpTokens", None, '"required"', "", status="not-evaluated")]
    if tokens != "required":
        return [
            Violation(
                "metadataOptions.httpTokens",
                tokens,
                '"required"',
                "metadata_options=instance_metadata_options(...) (infra/launch_templates.py)",
            )
        ]
    hops = resource.get("metadataOptions.httpPutResponseHopLimit")
    tags = resource.get("tags")
    allowed = 2 if isinstance(tags, dict) and tags.get(IMDS_HOP_TAG) == "true" else 1
    if hops is UNKNOWN:
        return [Violation("metadataOptions.httpPutResponseHopLimit", None, f"<= {allowed}", "", status="not-evaluated")]
    if hops is None:
        return [
            Violation(
                "metadataOptions.httpPutResponseHopLimit",
                None,
                f"set, <= {allowed}",
                "set it explicitly: AL2023 AMIs default to 2, which lets pods reach the node's role",
            )
        ]
    if int(hops) > allowed:
        return [
            Violation(
                "metadataOptions.httpPutResponseHopLimit",
                hops,
                f"<= {allowed}",
                "hop limit 2 only where the stack config says pods need instance metadata "
                "(gpuPools.<pool>.podsNeedInstanceMetadata)",
            )
        ]
    return []


def _bucket_private(resource: Resource) -> list[Violation]:
    keys = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    if any(resource.get(key) is UNKNOWN for key in keys):
        return [Violation(", ".join(keys), None, "true", "", status="not-evaluated")]
    open_ = {key: resource.get(key) for key in keys if not truthy(resource.get(key))}
    if open_:
        return [
            Violation(
                ", ".join(open_), list(open_.values()), "true", "set all four to True on the BucketPublicAccessBlock"
            )
        ]
    return []


_LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
_LUSTRE = "aws:fsx/lustreFileSystem:LustreFileSystem"
_BUCKET_SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
_BUCKET_SSE_V2 = "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2"
_CLUSTER = "aws:eks/cluster:Cluster"
_SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
_SG_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
_INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
_ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
_POLICY = "aws:iam/policy:Policy"
_ROLE = "aws:iam/role:Role"
_BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
_PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
_LISTENER_PORTS = (80, 443)
"""The load balancer's listeners: the only ports the internet may reach."""
_READ_ONLY_VERBS = ("Describe", "List", "Get")


def _encrypted(resource: Resource) -> list[Violation]:
    if resource.type == _LAUNCH_TEMPLATE:
        return [
            Violation(
                f"blockDeviceMappings[{i}].ebs.encrypted",
                mapping(m).get("ebs", {}).get("encrypted"),
                "true",
                'set encrypted="true" on every EBS mapping (infra/launch_templates.py)',
            )
            for i, m in enumerate(sequence(resource.get("blockDeviceMappings")))
            if "ebs" in mapping(m) and not truthy(mapping(mapping(m)["ebs"]).get("encrypted"))
        ]
    if resource.type == _LUSTRE:
        if not resource.get("kmsKeyId"):  # an unknown key ARN is a key that is set
            return [Violation("kmsKeyId", None, "our KMS key", "pass kms_key_id=<the stack's storage key>")]
        return []
    if resource.type in (_BUCKET_SSE, _BUCKET_SSE_V2):
        if resource.get("rules") is UNKNOWN:
            return [Violation("rules", None, "SSE-KMS", "", status="not-evaluated")]
        rules = [mapping(mapping(r).get("applyServerSideEncryptionByDefault")) for r in sequence(resource.get("rules"))]
        if not rules or any(r.get("sseAlgorithm") not in ("aws:kms", "aws:kms:dsse") for r in rules):
            return [
                Violation(
                    "rules[*].applyServerSideEncryptionByDefault.sseAlgorithm",
                    [r.get("sseAlgorithm") for r in rules],
                    '"aws:kms"',
                    "use SSE-KMS with our key",
                )
            ]
        return []
    if resource.type == _CLUSTER and resource.get("encryptionConfig.resources") is UNKNOWN:
        return [Violation("encryptionConfig.resources", None, '["secrets"]', "", status="not-evaluated")]
    if resource.type == _CLUSTER and "secrets" not in sequence(resource.get("encryptionConfig.resources")):
        return [
            Violation(
                "encryptionConfig.resources",
                resource.get("encryptionConfig.resources"),
                '["secrets"] with a KMS key',
                'set encryption_config with resources=["secrets"]',
            )
        ]
    return []


def _open_to_world(rule: Mapping[str, Any]) -> bool:
    blocks = [*sequence(rule.get("cidrBlocks")), *sequence(rule.get("ipv6CidrBlocks"))]
    blocks += [rule[k] for k in ("cidrIpv4", "cidrIpv6") if isinstance(rule.get(k), str)]
    return any(isinstance(b, str) and ipaddress.ip_network(b, strict=False).prefixlen == 0 for b in blocks)


_TCP = ("tcp", "6")


def _listener_only(rule: Mapping[str, Any]) -> bool:
    protocol = str(rule.get("protocol", rule.get("ipProtocol", "")))
    low, high = rule.get("fromPort"), rule.get("toPort")
    if protocol.lower() not in _TCP or low is None or high is None:
        return False
    return all(port in _LISTENER_PORTS for port in range(int(low), int(high) + 1))


def _no_open_ingress(resource: Resource) -> list[Violation]:
    if resource.type == _SECURITY_GROUP:
        rules = [(f"ingress[{i}]", mapping(r)) for i, r in enumerate(sequence(resource.get("ingress")))]
    elif resource.type == _SG_RULE and resource.get("type") != "ingress":
        rules = []
    else:
        rules = [("", dict(resource.props))]
    return [
        Violation(
            path or ("cidrIpv4" if "cidrIpv4" in rule else "cidrBlocks"),
            {
                k: rule.get(k)
                for k in (
                    "protocol",
                    "ipProtocol",
                    "fromPort",
                    "toPort",
                    "cidrBlocks",
                    "ipv6CidrBlocks",
                    "cidrIpv4",
                    "cidrIpv6",
                )
                if k in rule
            },
            f"no 0.0.0.0/0 or ::/0 except tcp {'/'.join(map(str, _LISTENER_PORTS))} (the load balancer)",
            "allow the VPC CIDR or a security group instead",
        )
        for path, rule in rules
        if _open_to_world(rule) and not _listener_only(rule)
    ]


def _private_endpoint(cluster: Resource) -> list[Violation]:
    if env_of(cluster) != "prod":
        return []
    public = cluster.get("vpcConfig.endpointPublicAccess")
    cidrs = cluster.get("vpcConfig.publicAccessCidrs")
    if public is not None and public is not UNKNOWN and not truthy(public):  # absent means public (EKS's default)
        return []
    if UNKNOWN in (public, cidrs) or any(c is UNKNOWN for c in sequence(cidrs)):
        return [Violation("vpcConfig.publicAccessCidrs", None, "known", "", status="not-evaluated")]
    if not cidrs or any(ipaddress.ip_network(c, strict=False).prefixlen == 0 for c in sequence(cidrs)):
        return [
            Violation(
                "vpcConfig.publicAccessCidrs",
                cidrs,
                "your VPN/CI ranges (never 0.0.0.0/0; absent means 0.0.0.0/0), or endpointPublicAccess false",
                "set peakguard:cluster.endpoint.publicAccessCidrs, or publicAccess: false",
            )
        ]
    return []


def _policy_documents(resource: Resource) -> list[tuple[str, Any]]:
    if resource.type == _ROLE:
        return [
            (f"inlinePolicies[{i}].policy", mapping(p).get("policy"))
            for i, p in enumerate(sequence(resource.get("inlinePolicies")))
        ]
    return [("policy", resource.get("policy"))]


def _too_wide(action: str) -> bool:
    if action == "*":
        return True
    _, _, verb = action.partition(":")
    if "*" not in verb:
        return False
    return verb == "*" or not verb.startswith(_READ_ONLY_VERBS)


def _no_wildcard_actions(resource: Resource) -> list[Violation]:
    found = []
    for path, document in _policy_documents(resource):
        if document is UNKNOWN:
            found.append(Violation(path, None, "a known policy document", "", status="not-evaluated"))
            continue
        if document is None:
            continue
        parsed = json.loads(document) if isinstance(document, str) else document
        statements = mapping(parsed).get("Statement", [])
        for index, statement in enumerate(statements if isinstance(statements, list) else [statements]):
            statement = mapping(statement)
            if statement.get("Effect") != "Allow":
                continue
            if "NotAction" in statement:
                found.append(
                    Violation(
                        f"{path}.Statement[{index}].NotAction",
                        statement["NotAction"],
                        "Action with the actions it needs",
                        "list the actions; Allow + NotAction grants every other action",
                    )
                )
            actions = statement.get("Action", [])
            wide = [a for a in (actions if isinstance(actions, list) else [actions]) if _too_wide(str(a))]
            if wide:
                found.append(
                    Violation(
                        f"{path}.Statement[{index}].Action",
                        wide,
                        "named actions (read-only Describe*/List*/Get* wildcards allowed)",
                        "list the actions the role needs",
                    )
                )
    return found


def _bucket_guards(resources: Sequence[Resource]) -> list[tuple[Resource, Violation]]:
    found = []
    for bucket in of_type(resources, *_BUCKETS):
        names = {name for name in (bucket.get("id"), bucket.get("bucket")) if known(name)}
        for kinds, label in (
            ((_PUBLIC_ACCESS_BLOCK,), "BucketPublicAccessBlock"),
            ((_BUCKET_SSE, _BUCKET_SSE_V2), "BucketServerSideEncryptionConfiguration"),
        ):
            guards = [guard.get("bucket") for guard in of_type(resources, *kinds)]
            if any(name in names for name in guards):
                continue
            if not names or UNKNOWN in guards:  # a first preview: names are computed, matching waits
                found.append((bucket, Violation(label, None, f"a {label} for this bucket", "", status="not-evaluated")))
                continue
            fix = f"declare aws.s3.{label}(bucket=<this bucket>.id, ...) (infra/storage.py does)"
            found.append((bucket, Violation(label, None, f"a {label} for this bucket", fix)))
    return found


RULES = (
    Rule(
        id="SEC-001",
        name="imdsv2-required",
        domain="security",
        severity="mandatory",
        rationale="IMDSv1 lets any SSRF in a pod read the node role's credentials.",
        resource_types=("aws:ec2/launchTemplate:LaunchTemplate",),
        check=_imdsv2,
        peers=("CKV_AWS_79", "AVD-AWS-0130"),
    ),
    Rule(
        id="SEC-002",
        name="bucket-public-access-blocked",
        domain="security",
        severity="mandatory",
        rationale="model weights are the business; a public bucket gives them away.",
        resource_types=("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",),
        check=_bucket_private,
        peers=("CKV_AWS_53", "CKV_AWS_54", "CKV_AWS_55", "CKV_AWS_56"),
    ),
    Rule(
        id="SEC-003",
        name="storage-encrypted-at-rest",
        domain="security",
        severity="mandatory",
        rationale="node volumes, the Lustre cache, the model bucket and Kubernetes secrets hold the weights "
        "and the tokens; a lost snapshot must not give them away.",
        resource_types=(_LAUNCH_TEMPLATE, _LUSTRE, _BUCKET_SSE, _BUCKET_SSE_V2, _CLUSTER),
        check=_encrypted,
        peers=("CKV_AWS_58", "AVD-AWS-0039", "CKV_AWS_145"),
    ),
    Rule(
        id="SEC-004",
        name="no-ingress-from-anywhere",
        domain="security",
        severity="mandatory",
        rationale="only the load balancer's listeners face the internet; an open node port is an attack "
        "surface during the surge, when nobody is looking.",
        resource_types=(_SECURITY_GROUP, _SG_RULE, _INGRESS_RULE),
        check=_no_open_ingress,
        peers=("CKV_AWS_24", "CKV_AWS_25", "CKV_AWS_260", "AVD-AWS-0107"),
    ),
    Rule(
        id="SEC-005",
        name="control-plane-private-in-prod",
        domain="security",
        severity="mandatory",
        rationale="an API server open to the internet in prod is one leaked token from a scaled-to-zero fleet.",
        resource_types=(_CLUSTER,),
        check=_private_endpoint,
        peers=("CKV_AWS_38", "CKV_AWS_39", "AVD-AWS-0040", "AVD-AWS-0041"),
    ),
    Rule(
        id="SEC-006",
        name="no-wildcard-iam-actions",
        domain="security",
        severity="mandatory",
        rationale="a wildcard action on a pod's role lets one compromised pod rewrite the fleet it runs on.",
        resource_types=(_ROLE_POLICY, _POLICY, _ROLE),
        check=_no_wildcard_actions,
        peers=("CKV_AWS_63", "AVD-AWS-0057"),
    ),
    Rule(
        id="SEC-007",
        name="bucket-has-its-guards",
        domain="security",
        severity="mandatory",
        rationale="SEC-002 and SEC-003 check the guards that exist; a bucket declared without them passes both.",
        resource_types=(*_BUCKETS, _PUBLIC_ACCESS_BLOCK, _BUCKET_SSE, _BUCKET_SSE_V2),
        stack_check=_bucket_guards,
    ),
)
