"""The VPC: subnets in every AZ, NAT per AZ in prod, and private paths to AWS services."""

from __future__ import annotations

import ipaddress

import pytest

from infra.network import INTERFACE_ENDPOINTS, plan_subnets
from infra.offline import OfflineRun

SUBNET = "aws:ec2/subnet:Subnet"


def _subnets(run: OfflineRun, kind: str) -> list[dict]:
    role = "kubernetes.io/role/elb" if kind == "public" else "kubernetes.io/role/internal-elb"
    return [r.inputs for r in run.of_type(SUBNET) if role in r.inputs["tags"]]


def test_a_private_and_a_public_subnet_in_every_configured_az(run: OfflineRun) -> None:
    azs = list(run.config.network.availability_zones)

    assert sorted(s["availabilityZone"] for s in _subnets(run, "private")) == sorted(azs)
    assert sorted(s["availabilityZone"] for s in _subnets(run, "public")) == sorted(azs)


def test_prod_spans_three_azs(runs: dict[str, OfflineRun]) -> None:
    assert len({s["availabilityZone"] for s in _subnets(runs["prod"], "private")}) == 3


def test_subnets_do_not_overlap_and_fit_the_vpc(run: OfflineRun) -> None:
    vpc = ipaddress.IPv4Network(run.of_type("aws:ec2/vpc:Vpc")[0].inputs["cidrBlock"])
    networks = [ipaddress.IPv4Network(r.inputs["cidrBlock"]) for r in run.of_type(SUBNET)]

    assert all(n.subnet_of(vpc) for n in networks)
    assert not any(a.overlaps(b) for i, a in enumerate(networks) for b in networks[i + 1 :])


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_subnet_plan_gives_private_subnets_the_larger_blocks(count: int) -> None:
    azs = tuple(f"us-west-2{c}" for c in "abcd"[:count])
    plan = plan_subnets(ipaddress.IPv4Network("10.0.0.0/16"), azs)

    assert [p.availability_zone for p in plan] == list(azs)
    assert all(p.private.num_addresses > p.public.num_addresses or count == 1 for p in plan)
    blocks = [p.private for p in plan] + [p.public for p in plan]
    assert not any(a.overlaps(b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])


def test_nat_gateway_per_az_in_prod_and_one_in_dev(runs: dict[str, OfflineRun]) -> None:
    def nat_azs(run: OfflineRun) -> list[str]:
        subnets = {r.id: r.inputs["availabilityZone"] for r in run.of_type(SUBNET)}
        return [subnets[r.inputs["subnetId"]] for r in run.of_type("aws:ec2/natGateway:NatGateway")]

    assert sorted(nat_azs(runs["prod"])) == sorted(runs["prod"].config.network.availability_zones)
    assert len(nat_azs(runs["dev"])) == 1


def test_nat_gateways_sit_in_public_subnets_and_private_routes_use_their_own_az(runs: dict[str, OfflineRun]) -> None:
    run = runs["prod"]
    subnets = {r.id: r.inputs for r in run.of_type(SUBNET)}
    nats = {r.id: subnets[r.inputs["subnetId"]] for r in run.of_type("aws:ec2/natGateway:NatGateway")}
    assert all("kubernetes.io/role/elb" in s["tags"] for s in nats.values())

    tables = {r.id: r for r in run.of_type("aws:ec2/routeTable:RouteTable")}
    for association in run.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation"):
        subnet = subnets[association.inputs["subnetId"]]
        if "kubernetes.io/role/internal-elb" not in subnet["tags"]:
            continue
        route = tables[association.inputs["routeTableId"]].inputs["routes"][0]
        assert route["cidrBlock"] == "0.0.0.0/0"
        assert nats[route["natGatewayId"]]["availabilityZone"] == subnet["availabilityZone"]


def test_private_nodes_reach_ecr_sts_ssm_logs_and_s3_without_the_internet(run: OfflineRun) -> None:
    region = run.config.region
    endpoints = {r.inputs["serviceName"]: r.inputs for r in run.of_type("aws:ec2/vpcEndpoint:VpcEndpoint")}
    private_subnets = {r.id for r in run.of_type(SUBNET) if "kubernetes.io/role/internal-elb" in r.inputs["tags"]}
    private_tables = {
        a.inputs["routeTableId"]
        for a in run.of_type("aws:ec2/routeTableAssociation:RouteTableAssociation")
        if a.inputs["subnetId"] in private_subnets
    }

    s3 = endpoints[f"com.amazonaws.{region}.s3"]
    assert s3["vpcEndpointType"] == "Gateway"
    assert set(s3["routeTableIds"]) == private_tables
    for service in ("ecr.api", "ecr.dkr", "sts", "ssm", "logs"):
        assert service in INTERFACE_ENDPOINTS
        endpoint = endpoints[f"com.amazonaws.{region}.{service}"]
        assert endpoint["vpcEndpointType"] == "Interface"
        assert endpoint["privateDnsEnabled"] is True
        assert set(endpoint["subnetIds"]) == private_subnets


def test_endpoint_security_group_admits_only_https_from_the_vpc(run: OfflineRun) -> None:
    group = next(r for r in run.of_type("aws:ec2/securityGroup:SecurityGroup") if r.name.endswith("-endpoints"))
    (rule,) = group.inputs["ingress"]

    assert (rule["protocol"], rule["fromPort"], rule["toPort"]) == ("tcp", 443, 443)
    assert rule["cidrBlocks"] == [str(run.config.network.vpc_cidr)]
