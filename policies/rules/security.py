"""Security baseline: IMDSv2, private buckets."""

from __future__ import annotations

from policies.findings import UNKNOWN, Resource, Rule, Violation

__all__ = ["IMDS_HOP_TAG", "RULES"]

IMDS_HOP_TAG = "peakguard:pods-need-instance-metadata"
"""Tag the program sets on a launch template whose pods read instance metadata (hop limit 2)."""


def _imdsv2(resource: Resource) -> list[Violation]:
    tokens = resource.get("metadataOptions.httpTokens")
    if tokens != "required":
        return [Violation("metadataOptions.httpTokens", None if tokens is UNKNOWN else tokens, '"required"',
                          'metadata_options=instance_metadata_options(...) (infra/launch_templates.py)')]  # fmt: skip
    hops = resource.get("metadataOptions.httpPutResponseHopLimit")
    tags = resource.get("tags")
    allowed = 2 if isinstance(tags, dict) and tags.get(IMDS_HOP_TAG) == "true" else 1
    if hops is not UNKNOWN and int(hops) > allowed:
        return [Violation("metadataOptions.httpPutResponseHopLimit", hops, f"<= {allowed}",
                          "hop limit 2 only where the stack config says pods need instance metadata "
                          "(gpuPools.<pool>.podsNeedInstanceMetadata)")]  # fmt: skip
    return []


def _bucket_private(resource: Resource) -> list[Violation]:
    keys = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    open_ = [key for key in keys if resource.get(key) is not True]
    if open_:
        return [Violation(", ".join(open_), False, "true", "set all four to True on the BucketPublicAccessBlock")]
    return []


RULES = (
    Rule(
        id="SEC-001", name="imdsv2-required", domain="security", severity="mandatory",
        rationale="IMDSv1 lets any SSRF in a pod read the node role's credentials.",
        resource_types=("aws:ec2/launchTemplate:LaunchTemplate",), check=_imdsv2,
        peers=("CKV_AWS_79", "AVD-AWS-0130"),
    ),
    Rule(
        id="SEC-002", name="bucket-public-access-blocked", domain="security", severity="mandatory",
        rationale="model weights are the business; a public bucket gives them away.",
        resource_types=("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",), check=_bucket_private,
        peers=("CKV_AWS_53", "CKV_AWS_54", "CKV_AWS_55", "CKV_AWS_56"),
    ),
)  # fmt: skip
