"""GPU pools: per-AZ managed node groups with EFA, placement, IMDSv2, RAID0 and safe updates."""

from __future__ import annotations

import base64
import email
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from infra import facts
from infra.offline import OfflineRun, Registration

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
PLACEMENT_GROUP = "aws:ec2/placementGroup:PlacementGroup"
UBUNTU_AMI = "ami-0abcdef1234567890"


def _gpu_groups(run: OfflineRun) -> list[Registration]:
    return [g for g in run.of_type(NODE_GROUP) if g.inputs["nodeGroupName"].startswith("gpu-")]


def _template_of(run: OfflineRun, group: Registration) -> Registration:
    template_id = group.inputs["launchTemplate"]["id"]
    return next(t for t in run.of_type(LAUNCH_TEMPLATE) if t.id == template_id)


def _az_of(run: OfflineRun, subnet_id: str) -> str:
    return next(s.inputs["availabilityZone"] for s in run.of_type("aws:ec2/subnet:Subnet") if s.id == subnet_id)


def _efa_sg(run: OfflineRun) -> Registration:
    return next(g for g in run.of_type("aws:ec2/securityGroup:SecurityGroup") if g.name.endswith("-gpu-efa"))


def _cluster_sg(run: OfflineRun) -> str:
    (cluster,) = run.of_type("aws:eks/cluster:Cluster")
    return str(cluster.outputs["vpcConfig"]["clusterSecurityGroupId"])


def _user_data(template: Registration) -> str:
    return base64.b64decode(template.inputs["userData"]).decode()


def test_one_node_group_per_pool_and_az_each_in_one_subnet(run: OfflineRun) -> None:
    expected = {(p.name, az) for p in run.config.gpu_pools for az in p.availability_zones}
    seen = set()
    for group in _gpu_groups(run):
        (subnet,) = group.inputs["subnetIds"]
        pool = group.inputs["labels"]["peakguard.io/pool"]
        seen.add((pool, _az_of(run, subnet)))
        generation = run.config.pool(pool).generation
        assert group.inputs["nodeGroupName"] == f"gpu-{pool}-{_az_of(run, subnet)}-{generation}"
        assert group.inputs["labels"]["peakguard.io/generation"] == generation
    assert seen == expected
    assert len(_gpu_groups(run)) == len(expected)


def test_prod_has_a_full_pool_and_a_mig_pool_that_idles_at_zero(runs: dict[str, OfflineRun]) -> None:
    pools: dict[str, list[Registration]] = {}
    for group in _gpu_groups(runs["prod"]):
        pools.setdefault(group.inputs["labels"]["peakguard.io/pool"], []).append(group)

    assert set(pools) == {"full", "mig"}
    assert len({g.inputs["subnetIds"][0] for g in pools["full"]}) == 3
    assert all(g.inputs["scalingConfig"]["minSize"] == 0 for g in pools["mig"])
    assert all(g.inputs["labels"]["nvidia.com/mig.config"] == "all-1g.10gb" for g in pools["mig"])


def test_efa_interfaces_match_the_instance_type_table(run: OfflineRun) -> None:
    for group in _gpu_groups(run):
        template = _template_of(run, group)
        instance = facts.INSTANCE_TYPES[template.inputs["instanceType"]]
        interfaces = template.inputs["networkInterfaces"]
        layout = [(i["networkCardIndex"], i["deviceIndex"], i["interfaceType"]) for i in interfaces]

        assert layout == [
            (s.network_card_index, s.device_index, s.interface_type) for s in facts.efa_interfaces(instance)
        ]
        assert len(interfaces) == instance.efa_interface_count
        assert layout[0] == (0, 0, "efa")
        assert len({(card, device) for card, device, _ in layout}) == len(layout)


def test_p5_nodes_get_32_efa_interfaces(runs: dict[str, OfflineRun]) -> None:
    full = [g for g in _gpu_groups(runs["prod"]) if g.inputs["labels"]["peakguard.io/pool"] == "full"]
    template = _template_of(runs["prod"], full[0])

    assert template.inputs["instanceType"] == "p5.48xlarge"
    assert [i["interfaceType"] for i in template.inputs["networkInterfaces"]] == ["efa"] + ["efa-only"] * 31


def test_security_groups_are_on_every_interface_and_not_on_the_template(run: OfflineRun) -> None:
    wanted = {_cluster_sg(run), _efa_sg(run).id}
    for group in _gpu_groups(run):
        template = _template_of(run, group)
        # A template that defines network interfaces may not also set vpc_security_group_ids.
        assert "vpcSecurityGroupIds" not in template.inputs
        for interface in template.inputs["networkInterfaces"]:
            assert set(interface["securityGroups"]) == wanted
            assert "subnetId" not in interface  # the node group places interfaces in its subnet


def test_efa_security_group_allows_all_protocols_to_itself_both_ways(run: OfflineRun) -> None:
    group = _efa_sg(run)
    for direction in ("ingress", "egress"):
        (rule,) = group.inputs[direction]
        assert rule["protocol"] == "-1"
        assert rule["self"] is True
        assert "cidrBlocks" not in rule


def test_each_group_has_its_own_cluster_placement_group(run: OfflineRun) -> None:
    placement = {p.outputs["name"]: p for p in run.of_type(PLACEMENT_GROUP)}
    used = []
    for group in _gpu_groups(run):
        name = _template_of(run, group).inputs["placement"]["groupName"]
        assert placement[name].inputs["strategy"] == "cluster"
        used.append(name)
    assert len(set(used)) == len(used) == len(placement)


def _reserve(kind: str, placement_group: str | None) -> Callable[[dict[str, Any]], None]:
    def edit(values: dict[str, Any]) -> None:
        entry: dict[str, Any] = {"id": "cr-0123456789abcdef0", "type": kind}
        if placement_group:
            entry["placementGroup"] = placement_group
        values["peakguard:gpuPools"]["full"]["capacityReservations"] = {"us-west-2a": entry}

    return edit


def test_a_capacity_reservation_replaces_our_placement_group_and_says_so(run_changed) -> None:
    run = run_changed("prod", _reserve("odcr", None))
    reserved = next(g for g in _gpu_groups(run) if g.inputs["nodeGroupName"] == "gpu-full-us-west-2a-blue")
    template = _template_of(run, reserved)

    assert "placement" not in template.inputs
    target = template.inputs["capacityReservationSpecification"]["capacityReservationTarget"]
    assert target["capacityReservationId"] == "cr-0123456789abcdef0"
    assert reserved.inputs["capacityType"] == "ON_DEMAND"
    assert not [p for p in run.of_type(PLACEMENT_GROUP) if "full-us-west-2a" in p.name]
    assert len([p for p in run.of_type(PLACEMENT_GROUP) if "-full-" in p.name]) == 2
    assert any("cr-0123456789abcdef0" in m and "us-west-2a" in m for m in run.messages)


def test_a_capacity_block_uses_its_market_type_and_its_placement_group(run_changed) -> None:
    run = run_changed("prod", _reserve("capacity-block", "block-pg"))
    reserved = next(g for g in _gpu_groups(run) if g.inputs["nodeGroupName"] == "gpu-full-us-west-2a-blue")
    template = _template_of(run, reserved)

    assert template.inputs["placement"] == {"groupName": "block-pg"}
    assert template.inputs["instanceMarketOptions"] == {"marketType": "capacity-block"}
    assert reserved.inputs["capacityType"] == "CAPACITY_BLOCK"
    assert any("block-pg" in m for m in run.messages)


def test_imdsv2_required_with_hop_limit_1(run: OfflineRun) -> None:
    for group in _gpu_groups(run):
        options = _template_of(run, group).inputs["metadataOptions"]
        assert options == {"httpEndpoint": "enabled", "httpTokens": "required", "httpPutResponseHopLimit": 1}


def test_hop_limit_2_only_where_the_pool_says_pods_need_metadata(run_changed) -> None:
    def allow(values: dict[str, Any]) -> None:
        values["peakguard:gpuPools"]["mig"]["podsNeedInstanceMetadata"] = True

    run = run_changed("prod", allow)
    for group in _gpu_groups(run):
        hop = _template_of(run, group).inputs["metadataOptions"]["httpPutResponseHopLimit"]
        assert hop == (2 if group.inputs["labels"]["peakguard.io/pool"] == "mig" else 1)


def test_root_volume_is_encrypted_gp3(run: OfflineRun) -> None:
    for group in _gpu_groups(run):
        (mapping,) = _template_of(run, group).inputs["blockDeviceMappings"]
        assert mapping["deviceName"] == "/dev/xvda"
        assert mapping["ebs"]["volumeType"] == "gp3"
        assert mapping["ebs"]["encrypted"] == "true"


def test_al2023_user_data_asks_nodeadm_for_a_raid0_array(run: OfflineRun) -> None:
    for group in _gpu_groups(run):
        assert group.inputs["amiType"] == "AL2023_x86_64_NVIDIA"
        message = email.message_from_string(_user_data(_template_of(run, group)))
        assert message.is_multipart()
        (part,) = [p for p in message.walk() if p.get_content_type() == "application/node.eks.aws"]
        node_config = yaml.safe_load(part.get_payload())
        assert node_config["apiVersion"] == "node.eks.aws/v1alpha1"
        assert node_config["kind"] == "NodeConfig"
        assert node_config["spec"]["instance"]["localStorage"]["strategy"] == "RAID0"
        # From the kubelet's first registration, not added later through the API.
        assert node_config["spec"]["kubelet"]["config"]["registerWithTaints"] == [
            {"key": "peakguard.io/preflight", "value": "pending", "effect": "NoSchedule"}
        ]


def _ubuntu_gds(values: dict[str, Any]) -> None:
    pool = values["peakguard:gpuPools"]["full"]
    pool.update(amiFamily="ubuntu", amiId=UBUNTU_AMI, gds=True)


def test_ubuntu_pool_bootstraps_itself_and_builds_the_same_raid0(run_changed) -> None:
    run = run_changed("prod", _ubuntu_gds)
    (cluster,) = run.of_type("aws:eks/cluster:Cluster")
    group = next(g for g in _gpu_groups(run) if g.inputs["nodeGroupName"] == "gpu-full-us-west-2b-blue")
    template = _template_of(run, group)
    script = _user_data(template)

    assert group.inputs["amiType"] == "CUSTOM"
    assert template.inputs["imageId"] == UBUNTU_AMI
    assert template.inputs["blockDeviceMappings"][0]["deviceName"] == "/dev/sda1"
    assert script.startswith("#!/bin/bash")
    assert "mdadm" in script and "/mnt/k8s-disks/0" in script
    bootstrap = next(line for line in script.splitlines() if line.startswith("/etc/eks/bootstrap.sh"))
    assert "peakguard-prod" in bootstrap
    assert cluster.outputs["endpoint"] in bootstrap
    assert cluster.outputs["certificateAuthority"]["data"] in bootstrap
    assert (
        "--register-with-taints=nvidia.com/gpu=true:NoSchedule,peakguard.io/preflight=pending:NoSchedule" in bootstrap
    )
    assert bootstrap.count("--register-with-taints") == 1
    assert "eks.amazonaws.com/nodegroup=gpu-full-us-west-2b-blue" in bootstrap
    assert f"eks.amazonaws.com/nodegroup-image={UBUNTU_AMI}" in bootstrap
    assert "eks.amazonaws.com/capacityType=ON_DEMAND" in bootstrap
    assert "--dns-cluster-ip 172.20.0.10" in bootstrap
    assert "vpc.amazonaws.com/efa.present=true" in bootstrap
    # The RAID0 array is built before the kubelet starts.
    assert script.index("peakguard-nvme-raid0\n") < script.index("/etc/eks/bootstrap.sh")


def test_gpu_taint_and_labels(run: OfflineRun) -> None:
    for group in _gpu_groups(run):
        pool = run.config.pool(group.inputs["labels"]["peakguard.io/pool"])
        # Not the startup taint: EKS applies these through the API after the node joins, and would
        # put it back on a node whose preflight already passed.
        assert group.inputs["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
        labels = group.inputs["labels"]
        assert labels["vpc.amazonaws.com/efa.present"] == "true"
        if pool.instance.mig_profiles:
            assert labels["nvidia.com/mig.config"] == (pool.mig_profile or "all-disabled")
        else:
            assert "nvidia.com/mig.config" not in labels


def test_updates_take_at_most_a_third_and_desired_size_belongs_to_operations(run: OfflineRun) -> None:
    for group in _gpu_groups(run):
        assert 0 < group.inputs["updateConfig"]["maxUnavailablePercentage"] <= 33
        assert "scalingConfig.desiredSize" in group.ignore_changes
        assert group.inputs["nodeRepairConfig"] == {"enabled": True}


def test_each_pool_can_reach_its_peak_plus_30_percent(run: OfflineRun) -> None:
    for pool in run.config.gpu_pools:
        groups = [g for g in _gpu_groups(run) if g.inputs["labels"]["peakguard.io/pool"] == pool.name]
        capacity = sum(int(g.inputs["scalingConfig"]["maxSize"]) for g in groups)
        assert capacity >= facts.capacity_with_headroom(pool.expected_peak_nodes), pool.name
        for group in groups:
            scaling = group.inputs["scalingConfig"]
            assert scaling["minSize"] <= scaling["desiredSize"] <= scaling["maxSize"]


def test_launch_template_version_follows_the_template(run: OfflineRun) -> None:
    for group in _gpu_groups(run):
        template = _template_of(run, group)
        assert group.inputs["launchTemplate"]["version"] == str(int(template.outputs["latestVersion"]))
        assert template.inputs["updateDefaultVersion"] is True


@pytest.mark.parametrize("resource_type", ["instance", "volume"])
def test_gpu_instances_carry_tags_the_node_inventory_finds_them_by(run: OfflineRun, resource_type: str) -> None:
    for group in _gpu_groups(run):
        specs = {s["resourceType"]: s["tags"] for s in _template_of(run, group).inputs["tagSpecifications"]}
        tags = specs[resource_type]
        assert tags["peakguard:env"] == run.config.env
        assert tags["peakguard:pool"] == group.inputs["labels"]["peakguard.io/pool"]
        assert tags["peakguard:az"] == _az_of(run, group.inputs["subnetIds"][0])


# --- Generations (blue/green) ----------------------------------------------------------------

NEXT_RELEASE = "1.33.4-20251010"


def _upgrade_full_pool(values: dict[str, Any]) -> None:
    values["peakguard:gpuPools"]["full"]["next"] = {"releaseVersion": NEXT_RELEASE}


def test_an_upgrade_declares_the_other_generation_empty_at_the_new_release(run_changed) -> None:
    run = run_changed("prod", _upgrade_full_pool)
    pool = run.config.pool("full")
    full = [g for g in _gpu_groups(run) if g.inputs["labels"]["peakguard.io/pool"] == "full"]
    serving = {g.inputs["nodeGroupName"]: g for g in full if g.inputs["tags"]["peakguard:serving"] == "true"}
    incoming = {g.inputs["nodeGroupName"]: g for g in full if g.inputs["tags"]["peakguard:serving"] == "false"}

    zones = pool.availability_zones
    assert set(serving) == {f"gpu-full-{az}-blue" for az in zones}
    assert set(incoming) == {f"gpu-full-{az}-green" for az in zones}
    for az in zones:
        old, new = serving[f"gpu-full-{az}-blue"], incoming[f"gpu-full-{az}-green"]
        assert new.inputs.get("releaseVersion") == NEXT_RELEASE
        assert old.inputs.get("releaseVersion") == pool.release_version
        scaling = pool.scaling_per_az
        assert new.inputs["scalingConfig"] == {"minSize": 0, "desiredSize": 0, "maxSize": scaling.max_size}
        assert old.inputs["scalingConfig"]["minSize"] == scaling.min_size
        assert new.inputs["labels"]["peakguard.io/generation"] == "green"
        assert new.inputs["subnetIds"] == old.inputs["subnetIds"]
        # Own launch templates, one placement group: old and new nodes stay close while they overlap.
        old_template, new_template = _template_of(run, old), _template_of(run, new)
        assert old_template.id != new_template.id
        assert old_template.inputs["placement"] == new_template.inputs["placement"]
    # The mig pool has no `next`: one generation only.
    assert {
        g.inputs["tags"]["peakguard:generation"] for g in _gpu_groups(run) if g.name.startswith("prod-gpu-mig")
    } == {"blue"}


def test_the_targets_document_tells_serving_from_incoming_groups(run_changed) -> None:
    from infra.targets import TargetsDocument

    run = run_changed("prod", _upgrade_full_pool)
    document = TargetsDocument.from_dict(run.outputs["targets"])

    assert {g.name for g in document.node_groups_of("full")} == {
        f"gpu-full-{az}-blue" for az in run.config.pool("full").availability_zones
    }
    assert {g.name for g in document.incoming_of("full")} == {
        f"gpu-full-{az}-green" for az in run.config.pool("full").availability_zones
    }
    assert document.incoming_of("mig") == ()


def test_after_the_upgrade_green_serves_alone(run_changed) -> None:
    def done(values: dict[str, Any]) -> None:
        values["peakguard:gpuPools"]["full"].update(generation="green", releaseVersion=NEXT_RELEASE)

    run = run_changed("prod", done)
    full = [g for g in _gpu_groups(run) if g.inputs["labels"]["peakguard.io/pool"] == "full"]

    assert {g.inputs["nodeGroupName"].rsplit("-", 1)[1] for g in full} == {"green"}
    assert all(g.inputs["releaseVersion"] == NEXT_RELEASE for g in full)
    assert all(g.inputs["scalingConfig"]["minSize"] == run.config.pool("full").scaling_per_az.min_size for g in full)


def test_every_gpu_group_tells_the_cluster_autoscaler_what_a_node_would_hold(runs: dict[str, OfflineRun]) -> None:
    # The mig pool idles at zero nodes: only these tags tell the autoscaler that a node of it would
    # hold 56 `nvidia.com/mig-1g.10gb` (8 A100-80GB, 7 each), so a pending light pod can grow it.
    run = runs["prod"]
    template = "k8s.io/cluster-autoscaler/node-template"
    tags: dict[str, dict[str, str]] = {}
    for tag in run.of_type("aws:autoscaling/tag:Tag"):
        assert tag.inputs["tag"]["propagateAtLaunch"] is False
        tags.setdefault(tag.inputs["autoscalingGroupName"], {})[tag.inputs["tag"]["key"]] = tag.inputs["tag"]["value"]

    for group in _gpu_groups(run):
        pool = group.inputs["labels"]["peakguard.io/pool"]
        asg = group.outputs["resources"][0]["autoscalingGroups"][0]["name"]
        resource = {"full": "nvidia.com/gpu", "mig": "nvidia.com/mig-1g.10gb"}[pool]
        assert tags[asg] == {
            f"{template}/resources/{resource}": {"full": "8", "mig": "56"}[pool],
            f"{template}/label/peakguard.io/pool": pool,
            f"{template}/taint/nvidia.com/gpu": "true:NoSchedule",
        }
    assert len(tags) == len(_gpu_groups(run))
