"""The VPC: private and public subnets per AZ, NAT, and the endpoints private nodes need."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra.config import NatGateways

__all__ = ["INTERFACE_ENDPOINTS", "Network", "NetworkArgs", "SubnetPair", "plan_subnets"]

INTERFACE_ENDPOINTS = ("ecr.api", "ecr.dkr", "sts", "ssm", "ssmmessages", "ec2messages", "logs")
"""Services private nodes reach without the internet: image pulls (ECR; layers come from S3
through the gateway endpoint), IRSA token exchange (STS), Session Manager (ssm, ssmmessages,
ec2messages) for the node playbooks, and CloudWatch Logs."""


@dataclass(frozen=True)
class SubnetPair:
    availability_zone: str
    private: ipaddress.IPv4Network
    """Nodes and pods live here; sized large because every pod takes a VPC address."""
    public: ipaddress.IPv4Network
    """Load balancers and NAT gateways only."""


def plan_subnets(cidr: ipaddress.IPv4Network, azs: tuple[str, ...]) -> tuple[SubnetPair, ...]:
    """Split the VPC range: one large private block per AZ, public blocks from the remainder.

    The VPC is cut into a power-of-two number of equal blocks, one more than there are AZs; the
    first blocks become private subnets and the last is split again into the public ones.
    """
    bits = math.ceil(math.log2(len(azs) + 1))
    blocks = list(cidr.subnets(prefixlen_diff=bits))
    public = list(blocks[-1].subnets(prefixlen_diff=math.ceil(math.log2(len(azs))) if len(azs) > 1 else 0))
    return tuple(SubnetPair(availability_zone=az, private=blocks[i], public=public[i]) for i, az in enumerate(azs))


@dataclass(frozen=True)
class NetworkArgs:
    cidr: ipaddress.IPv4Network
    """VPC range."""
    availability_zones: tuple[str, ...]
    """AZs to spread subnets over, in order."""
    nat_gateways: NatGateways
    """`perAz` (an AZ outage keeps the others' egress) or `single`."""
    region: str
    """Region, for endpoint service names."""
    cluster_name: str
    """Tags subnets for EKS and the AWS Load Balancer Controller's subnet discovery."""
    tags: Mapping[str, str] = field(default_factory=dict)


class Network(pulumi.ComponentResource):
    """A VPC whose private subnets reach ECR, STS, SSM, CloudWatch Logs and S3 privately."""

    vpc_id: pulumi.Output[str]
    private_subnet_ids: dict[str, pulumi.Output[str]]
    """Private subnet id per AZ."""
    public_subnet_ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("peakguard:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=str(args.cidr),
            enable_dns_hostnames=True,  # interface endpoints' private DNS needs both
            enable_dns_support=True,
            tags={**tags, "Name": name},
            opts=child,
        )
        self.vpc_id = vpc.id
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags={**tags, "Name": name}, opts=child)
        public_routes = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            tags={**tags, "Name": f"{name}-public"},
            opts=child,
        )

        cluster_tag = {f"kubernetes.io/cluster/{args.cluster_name}": "shared"}
        self.private_subnet_ids = {}
        self.public_subnet_ids = {}
        nat_ids: dict[str, pulumi.Output[str]] = {}
        private_route_tables: list[aws.ec2.RouteTable] = []
        for pair in plan_subnets(args.cidr, args.availability_zones):
            az = pair.availability_zone
            public = aws.ec2.Subnet(
                f"{name}-public-{az}",
                vpc_id=vpc.id,
                availability_zone=az,
                cidr_block=str(pair.public),
                map_public_ip_on_launch=False,
                tags={**tags, **cluster_tag, "Name": f"{name}-public-{az}", "kubernetes.io/role/elb": "1"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{az}", subnet_id=public.id, route_table_id=public_routes.id, opts=child
            )
            self.public_subnet_ids[az] = public.id
            if args.nat_gateways == "perAz" or not nat_ids:
                eip = aws.ec2.Eip(
                    f"{name}-nat-{az}", domain="vpc", tags={**tags, "Name": f"{name}-nat-{az}"}, opts=child
                )
                nat = aws.ec2.NatGateway(
                    f"{name}-nat-{az}",
                    allocation_id=eip.id,
                    subnet_id=public.id,
                    tags={**tags, "Name": f"{name}-nat-{az}"},
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
                )
                nat_ids[az] = nat.id
            # With one NAT, every AZ egresses through the first AZ's gateway.
            nat_id = nat_ids.get(az) or next(iter(nat_ids.values()))

            private = aws.ec2.Subnet(
                f"{name}-private-{az}",
                vpc_id=vpc.id,
                availability_zone=az,
                cidr_block=str(pair.private),
                tags={**tags, **cluster_tag, "Name": f"{name}-private-{az}", "kubernetes.io/role/internal-elb": "1"},
                opts=child,
            )
            routes = aws.ec2.RouteTable(
                f"{name}-private-{az}",
                vpc_id=vpc.id,
                routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat_id)],
                tags={**tags, "Name": f"{name}-private-{az}"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{az}", subnet_id=private.id, route_table_id=routes.id, opts=child
            )
            private_route_tables.append(routes)
            self.private_subnet_ids[az] = private.id

        # S3 through a gateway endpoint: ECR image layers and model artifacts never cross the NAT.
        aws.ec2.VpcEndpoint(
            f"{name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[table.id for table in private_route_tables],
            tags={**tags, "Name": f"{name}-s3"},
            opts=child,
        )
        endpoint_sg = aws.ec2.SecurityGroup(
            f"{name}-endpoints",
            vpc_id=vpc.id,
            description="HTTPS from the VPC to interface endpoints",
            ingress=[
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp",
                    from_port=443,
                    to_port=443,
                    cidr_blocks=[str(args.cidr)],
                    description="HTTPS from inside the VPC",
                )
            ],
            tags={**tags, "Name": f"{name}-endpoints"},
            opts=child,
        )
        for service in INTERFACE_ENDPOINTS:
            aws.ec2.VpcEndpoint(
                f"{name}-{service.replace('.', '-')}",
                vpc_id=vpc.id,
                service_name=f"com.amazonaws.{args.region}.{service}",
                vpc_endpoint_type="Interface",
                private_dns_enabled=True,
                subnet_ids=list(self.private_subnet_ids.values()),
                security_group_ids=[endpoint_sg.id],
                tags={**tags, "Name": f"{name}-{service}"},
                opts=child,
            )

        self.register_outputs(
            {
                "vpcId": self.vpc_id,
                "privateSubnetIds": self.private_subnet_ids,
                "publicSubnetIds": self.public_subnet_ids,
            }
        )
