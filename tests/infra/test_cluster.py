"""The EKS control plane: encryption, logs, endpoint access, IRSA, add-ons, system nodes."""

from __future__ import annotations

import json

from infra import facts
from infra.cluster_addons import FSX_CSI_DRIVER_ADDON
from infra.offline import OfflineRun


def _cluster(run: OfflineRun) -> dict:
    (cluster,) = run.of_type("aws:eks/cluster:Cluster")
    return dict(cluster.inputs)


def test_version_and_name_come_from_config(run: OfflineRun) -> None:
    cluster = _cluster(run)

    assert cluster["version"] == run.config.cluster.kubernetes_version
    assert cluster["name"] == run.config.cluster.name == f"peakguard-{run.config.env}"


def test_secrets_are_envelope_encrypted_with_a_rotating_kms_key(run: OfflineRun) -> None:
    keys = {r.outputs["arn"]: r.inputs for r in run.of_type("aws:kms/key:Key")}
    encryption = _cluster(run)["encryptionConfig"]

    assert encryption["resources"] == ["secrets"]
    assert keys[encryption["provider"]["keyArn"]]["enableKeyRotation"] is True


def test_all_control_plane_logs_go_to_a_log_group_with_retention(run: OfflineRun) -> None:
    (log_group,) = run.of_type("aws:cloudwatch/logGroup:LogGroup")

    assert set(_cluster(run)["enabledClusterLogTypes"]) == {
        "api",
        "audit",
        "authenticator",
        "controllerManager",
        "scheduler",
    }
    assert log_group.inputs["name"] == f"/aws/eks/{run.config.cluster.name}/cluster"
    assert log_group.inputs["retentionInDays"] > 0


def test_endpoint_is_private_and_public_only_to_configured_cidrs(runs: dict[str, OfflineRun]) -> None:
    vpc = _cluster(runs["prod"])["vpcConfig"]

    assert vpc["endpointPrivateAccess"] is True
    assert vpc["endpointPublicAccess"] is True
    assert vpc["publicAccessCidrs"] == list(runs["prod"].config.cluster.public_access_cidrs)
    assert "0.0.0.0/0" not in vpc["publicAccessCidrs"]


def test_a_private_only_endpoint_sends_no_public_cidrs(run_changed) -> None:
    def private_only(values: dict) -> None:
        values["peakguard:cluster"]["endpoint"] = {"publicAccess": False}

    vpc = _cluster(run_changed("prod", private_only))["vpcConfig"]

    assert vpc["endpointPublicAccess"] is False
    assert "publicAccessCidrs" not in vpc


def test_control_plane_sits_in_every_az_private_subnet(run: OfflineRun) -> None:
    private = {
        r.id: r.inputs["availabilityZone"]
        for r in run.of_type("aws:ec2/subnet:Subnet")
        if "kubernetes.io/role/internal-elb" in r.inputs["tags"]
    }
    subnet_ids = _cluster(run)["vpcConfig"]["subnetIds"]

    assert sorted(private[s] for s in subnet_ids) == sorted(run.config.network.availability_zones)


def test_oidc_provider_trusts_the_cluster_issuer_for_sts(run: OfflineRun) -> None:
    (cluster,) = run.of_type("aws:eks/cluster:Cluster")
    (oidc,) = run.of_type("aws:iam/openIdConnectProvider:OpenIdConnectProvider")

    assert oidc.inputs["url"] == cluster.outputs["identities"][0]["oidcs"][0]["issuer"]
    assert oidc.inputs["clientIdLists"] == ["sts.amazonaws.com"]
    assert run.outputs["oidcProviderArn"] == oidc.outputs["arn"]


def test_addons_are_pinned_and_vpc_cni_supports_efa_only(run: OfflineRun) -> None:
    # The FSx CSI driver is the storage's add-on, pinned only when the stack names a version
    # (tests/infra/test_lustre_volume.py).
    addons = {
        r.inputs["addonName"]: r.inputs["addonVersion"]
        for r in run.of_type("aws:eks/addon:Addon")
        if r.inputs["addonName"] != FSX_CSI_DRIVER_ADDON
    }

    assert addons == dict(run.config.cluster.addon_versions)
    version = facts.parse_addon_version(addons["vpc-cni"])
    assert version is not None and version >= facts.VPC_CNI_MIN_EFA_ONLY


def test_coredns_waits_for_nodes_and_gpu_groups_wait_for_the_cni(run: OfflineRun) -> None:
    addons = {r.inputs["addonName"]: r for r in run.of_type("aws:eks/addon:Addon")}
    system = run.named("aws:eks/nodeGroup:NodeGroup", f"{run.config.env}-system")

    assert system.urn in addons["coredns"].dependencies
    for group in run.of_type("aws:eks/nodeGroup:NodeGroup"):
        assert addons["vpc-cni"].urn in group.dependencies, group.name


def test_system_node_group_spans_all_azs_and_owns_no_desired_size(run: OfflineRun) -> None:
    group = run.named("aws:eks/nodeGroup:NodeGroup", f"{run.config.env}-system")
    cluster_subnets = _cluster(run)["vpcConfig"]["subnetIds"]
    scaling = run.config.cluster.system_nodes.scaling

    assert sorted(group.inputs["subnetIds"]) == sorted(cluster_subnets)
    assert group.inputs["scalingConfig"] == {
        "minSize": scaling.min_size,
        "desiredSize": scaling.desired_size,
        "maxSize": scaling.max_size,
    }
    assert group.inputs["updateConfig"]["maxUnavailablePercentage"] <= 33
    assert "scalingConfig.desiredSize" in group.ignore_changes


def test_nodes_use_imdsv2_and_encrypted_roots_on_system_nodes_too(run: OfflineRun) -> None:
    template = run.named("aws:ec2/launchTemplate:LaunchTemplate", f"{run.config.env}-system")

    assert template.inputs["metadataOptions"]["httpTokens"] == "required"
    assert template.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert template.inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"


def test_roles_trust_only_their_service(run: OfflineRun) -> None:
    # Roles trusted by an AWS service; the IRSA roles of the Kubernetes side trust the cluster's
    # OIDC issuer instead (tests/infra/test_cluster_addons.py, test_model_workload.py).
    statements = {
        r.name: json.loads(r.inputs["assumeRolePolicy"])["Statement"][0] for r in run.of_type("aws:iam/role:Role")
    }
    principals = {name: s["Principal"]["Service"] for name, s in statements.items() if "Service" in s["Principal"]}
    assert all(
        s["Action"] == "sts:AssumeRoleWithWebIdentity" for name, s in statements.items() if name not in principals
    )
    env = run.config.env

    assert principals == {
        f"{env}-cluster": "eks.amazonaws.com",
        f"{env}-node": "ec2.amazonaws.com",
        f"{env}-chaos-fis": "fis.amazonaws.com",  # infra/chaos.py; tests/infra/test_chaos.py
    }


def test_service_range_is_pinned_outside_the_vpc(run: OfflineRun) -> None:
    import ipaddress

    service = _cluster(run)["kubernetesNetworkConfig"]["serviceIpv4Cidr"]

    assert service == "172.20.0.0/16"
    assert not ipaddress.IPv4Network(service).overlaps(run.config.network.vpc_cidr)
    assert run.config.cluster.dns_cluster_ip == "172.20.0.10"


def test_the_vpc_cni_enforces_network_policies(run: OfflineRun) -> None:
    # Without its network-policy agent the model service's NetworkPolicy is accepted and does nothing.
    (cni,) = [r for r in run.of_type("aws:eks/addon:Addon") if r.inputs["addonName"] == "vpc-cni"]
    assert json.loads(cni.inputs["configurationValues"]) == {"enableNetworkPolicy": "true"}
    others = [r for r in run.of_type("aws:eks/addon:Addon") if r.inputs["addonName"] != "vpc-cni"]
    assert all("configurationValues" not in r.inputs for r in others)
