"""The stack config loader: the real stack files load, and every bad value is refused by name.

Each refusal starts from a copy of a real `Pulumi.<env>.yaml` config map with one value changed,
and checks that the `ConfigError` names the full key path, shows the bad value (`(got ...)`) and
says what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import pytest

from infra import facts
from infra.config import CapacityReservation, ConfigError, StackConfig
from tests.infra.conftest import stack_values

DELETE = object()
"""A change that removes the key."""
NOTHING = object()
"""What a message shows, as `(got nothing)`, for a key that is absent."""

AMI = "ami-0123456789abcdef0"
RESERVATION = "cr-0123456789abcdef0"
NET = "peakguard:network"
CLUSTER = "peakguard:cluster"
FULL = "peakguard:gpuPools.full"
MIG = "peakguard:gpuPools.mig"
FSX = "peakguard:storage.fsx"
RESERVATIONS = f"{FULL}.capacityReservations"


def changed(env: str, changes: Mapping[str, Any]) -> dict[str, Any]:
    """`env`'s config map with each dotted path (`peakguard:gpuPools.full.headroom`) set or deleted."""
    values = stack_values(env)
    for path, new in changes.items():
        *parents, last = path.split(".")
        node = values
        for name in parents:
            node = node[name]
        if new is DELETE:
            del node[last]
        else:
            node[last] = new
    return values


def load(values: Mapping[str, Any], env: str) -> StackConfig:
    return StackConfig.from_mapping(values, stack=env)


def assert_refused(values: Mapping[str, Any], env: str, *, key: str, got: Any, says: str) -> str:
    """Loading must raise ConfigError naming `key`, showing `got` and saying `says`."""
    with pytest.raises(ConfigError) as caught:
        load(values, env)
    message = str(caught.value)
    shown = "nothing" if got is NOTHING else repr(got)
    assert message.startswith(f"{key}: "), message
    assert f"(got {shown})" in message, message
    assert says in message, message
    return message


# --- The real stack files ---------------------------------------------------------------------


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
def test_real_stack_file_loads(env: str) -> None:
    config = load(stack_values(env), env)

    assert config.env == env
    assert config.region == "us-west-2"
    assert config.partition == "aws"
    assert config.cluster.name == f"peakguard-{env}"
    assert config.gpu_pools, "every stack needs a GPU pool"
    for pool in config.gpu_pools:
        assert pool.max_capacity >= facts.capacity_with_headroom(pool.expected_peak_nodes)


def test_prod_stack_has_three_azs_per_az_nat_and_full_and_mig_pools() -> None:
    config = load(stack_values("prod"), "prod")

    assert config.network.availability_zones == ("us-west-2a", "us-west-2b", "us-west-2c")
    assert config.network.nat_gateways == "perAz"
    assert [pool.name for pool in config.gpu_pools] == ["full", "mig"]
    full, mig = config.pool("full"), config.pool("mig")
    assert full.instance_type == "p5.48xlarge"
    assert full.expected_peak_nodes == 11
    assert full.max_capacity == 15 == facts.capacity_with_headroom(11)
    assert full.max_unavailable_percentage == 33
    assert mig.scaling_per_az.min_size == 0
    assert mig.mig_profile == "all-1g.10gb"
    assert config.cluster.public_access_cidrs == ("203.0.113.0/24",)
    assert config.cluster.addon_versions["vpc-cni"] == "v1.20.4-eksbuild.1"
    assert config.storage.fsx is not None
    assert (config.storage.fsx.storage_capacity_gib, config.storage.fsx.throughput_per_tib) == (4800, 1000)


def test_staging_stack_rehearses_prod_shape_on_three_azs() -> None:
    config = load(stack_values("staging"), "staging")

    assert len(config.network.availability_zones) == 3
    assert config.network.nat_gateways == "perAz"
    assert config.pool("mig").availability_zones == ("us-west-2a", "us-west-2b")
    assert config.storage.fsx is not None
    assert config.storage.fsx.storage_capacity_gib == 1200


def test_dev_stack_uses_two_azs_a_single_nat_and_no_fsx() -> None:
    config = load(stack_values("dev"), "dev")

    assert config.network.availability_zones == ("us-west-2a", "us-west-2b")
    assert config.network.nat_gateways == "single"
    assert [pool.name for pool in config.gpu_pools] == ["full"]
    assert config.pool("full").mig_profile is None
    assert config.storage.fsx is None


def test_defaults_fill_what_a_stack_file_leaves_out() -> None:
    config = load(stack_values("dev"), "dev")
    pool = config.pool("full")

    assert config.cluster.service_cidr.with_prefixlen == "172.20.0.0/16"
    assert config.cluster.dns_cluster_ip == "172.20.0.10"
    assert config.cluster.log_types == ("api", "audit", "authenticator", "controllerManager", "scheduler")
    assert pool.availability_zones == config.network.availability_zones
    assert pool.headroom == Fraction(13, 10)
    assert pool.max_unavailable_percentage == 33
    assert pool.root_volume_gib == 200
    assert (pool.gds, pool.pods_need_instance_metadata) == (False, False)
    assert (pool.ami_id, pool.release_version, pool.capacity_reservations) == (None, None, {})
    assert config.tags == {}


@pytest.mark.parametrize(("env", "nat"), [("prod", "perAz"), ("dev", "single")])
def test_nat_gateways_default_follows_the_environment(env: str, nat: str) -> None:
    config = load(changed(env, {f"{NET}.natGateways": DELETE}), env)

    assert config.network.nat_gateways == nat


# --- Stack and region -------------------------------------------------------------------------


def test_unknown_stack_name_is_refused() -> None:
    assert_refused(stack_values("prod"), "qa", key="stack", got="qa", says="must be one of dev, staging, prod")


@pytest.mark.parametrize(
    ("region", "got"),
    [
        pytest.param(DELETE, NOTHING, id="missing"),
        pytest.param("us-west", "us-west", id="no-number"),
        pytest.param("us-west-2a", "us-west-2a", id="an-az-not-a-region"),
        pytest.param(2, 2, id="not-text"),
    ],
)
def test_aws_region_must_name_a_region(region: Any, got: Any) -> None:
    assert_refused(
        changed("prod", {"aws:region": region}),
        "prod",
        key="aws:region",
        got=got,
        says="must name an AWS region, e.g. us-west-2",
    )


# --- Network ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "changes", "key", "got", "says"),
    [
        pytest.param(
            "prod",
            {f"{NET}.vpcCidr": "10.40.0.0/33"},
            f"{NET}.vpcCidr",
            "10.40.0.0/33",
            "is not an IPv4 network",
            id="vpc-cidr-not-a-network",
        ),
        pytest.param(
            "prod",
            {f"{NET}.vpcCidr": "10.40.0.1/16"},
            f"{NET}.vpcCidr",
            "10.40.0.1/16",
            "is not an IPv4 network",
            id="vpc-cidr-host-bits-set",
        ),
        pytest.param(
            "prod",
            {f"{NET}.vpcCidr": "10.40.0.0/24"},
            f"{NET}.vpcCidr",
            "10.40.0.0/24",
            "must be a /16 to /20",
            id="vpc-cidr-prefix-too-long",
        ),
        pytest.param(
            "prod",
            {f"{NET}.vpcCidr": "10.0.0.0/8"},
            f"{NET}.vpcCidr",
            "10.0.0.0/8",
            "must be a /16 to /20",
            id="vpc-cidr-prefix-too-short",
        ),
        pytest.param(
            "prod",
            {f"{NET}.availabilityZones": ["us-west-2a", "us-west-2b", "us-east-1a"]},
            f"{NET}.availabilityZones",
            "us-east-1a",
            "is not an AZ of region us-west-2 (e.g. us-west-2a)",
            id="az-not-in-region",
        ),
        pytest.param(
            "prod",
            {f"{NET}.availabilityZones": ["us-west-2a", "us-west-2a", "us-west-2b"]},
            f"{NET}.availabilityZones",
            ["us-west-2a", "us-west-2a", "us-west-2b"],
            "lists an AZ twice",
            id="az-listed-twice",
        ),
        pytest.param(
            "prod",
            {f"{NET}.availabilityZones": ["us-west-2a", "us-west-2b"]},
            f"{NET}.availabilityZones",
            ["us-west-2a", "us-west-2b"],
            "must list 3 to 4 AZs in prod",
            id="prod-needs-three-azs",
        ),
        pytest.param(
            "dev",
            {f"{NET}.availabilityZones": ["us-west-2a"]},
            f"{NET}.availabilityZones",
            ["us-west-2a"],
            "must list 2 to 4 AZs in dev",
            id="dev-needs-two-azs",
        ),
        pytest.param(
            "dev",
            {f"{NET}.availabilityZones": [f"us-west-2{z}" for z in "abcde"]},
            f"{NET}.availabilityZones",
            [f"us-west-2{z}" for z in "abcde"],
            "must list 2 to 4 AZs in dev",
            id="at-most-four-azs",
        ),
        pytest.param(
            "prod",
            {f"{NET}.natGateways": "single"},
            f"{NET}.natGateways",
            "single",
            "must be perAz in prod",
            id="prod-nat-must-be-per-az",
        ),
        pytest.param(
            "dev",
            {f"{NET}.natGateways": "none"},
            f"{NET}.natGateways",
            "none",
            "must be one of perAz, single",
            id="nat-unknown-value",
        ),
    ],
)
def test_network_rule_refuses(env: str, changes: dict[str, Any], key: str, got: Any, says: str) -> None:
    assert_refused(changed(env, changes), env, key=key, got=got, says=says)


# --- Cluster ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "changes", "key", "got", "says"),
    [
        pytest.param(
            "prod",
            {f"{CLUSTER}.name": "peakguard_prod"},
            f"{CLUSTER}.name",
            "peakguard_prod",
            "must start with a letter and hold only letters, digits and '-'",
            id="cluster-name-bad-character",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.name": "p" * 64},
            f"{CLUSTER}.name",
            "p" * 64,
            "(max 63)",
            id="cluster-name-too-long",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.kubernetesVersion": "1.33.1"},
            f"{CLUSTER}.kubernetesVersion",
            "1.33.1",
            'must be an EKS version such as "1.33"',
            id="kubernetes-version-format",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.endpoint.publicAccessCidrs": DELETE},
            f"{CLUSTER}.endpoint.publicAccessCidrs",
            [],
            "must list who may reach the public endpoint (or set publicAccess: false)",
            id="public-endpoint-without-cidrs",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.endpoint.publicAccess": False},
            f"{CLUSTER}.endpoint.publicAccessCidrs",
            ["203.0.113.0/24"],
            "is set but publicAccess is false",
            id="cidrs-with-private-endpoint",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.endpoint.publicAccessCidrs": ["203.0.113.0/24", "0.0.0.0/0"]},
            f"{CLUSTER}.endpoint.publicAccessCidrs",
            ["203.0.113.0/24", "0.0.0.0/0"],
            "must not include 0.0.0.0/0 in prod",
            id="prod-endpoint-open-to-the-world",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.endpoint.publicAccessCidrs": ["203.0.113.0/33"]},
            f"{CLUSTER}.endpoint.publicAccessCidrs",
            "203.0.113.0/33",
            "is not an IPv4 network",
            id="endpoint-cidr-invalid",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.serviceIpv4Cidr": "172.20.0.0/33"},
            f"{CLUSTER}.serviceIpv4Cidr",
            "172.20.0.0/33",
            "is not an IPv4 network",
            id="service-cidr-invalid",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.serviceIpv4Cidr": "10.40.128.0/20"},
            f"{CLUSTER}.serviceIpv4Cidr",
            "10.40.128.0/20",
            "must be a /12 to /24 that does not overlap the VPC (10.40.0.0/16)",
            id="service-cidr-overlaps-vpc",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.serviceIpv4Cidr": "172.20.0.0/25"},
            f"{CLUSTER}.serviceIpv4Cidr",
            "172.20.0.0/25",
            "must be a /12 to /24",
            id="service-cidr-too-small",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.logTypes": ["api", "audits"]},
            f"{CLUSTER}.logTypes",
            "audits",
            "must be among api, audit, authenticator, controllerManager, scheduler",
            id="unknown-log-type",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.addons.vpcCni": "1.20.4"},
            f"{CLUSTER}.addons.vpcCni",
            "1.20.4",
            "must be an EKS add-on version like v1.2.3-eksbuild.1 for vpc-cni",
            id="vpc-cni-version-malformed",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.addons.coredns": "v1.12.1"},
            f"{CLUSTER}.addons.coredns",
            "v1.12.1",
            "must be an EKS add-on version like v1.2.3-eksbuild.1 for coredns",
            id="coredns-version-malformed",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.addons.kubeProxy": "latest"},
            f"{CLUSTER}.addons.kubeProxy",
            "latest",
            "must be an EKS add-on version like v1.2.3-eksbuild.1 for kube-proxy",
            id="kube-proxy-version-malformed",
        ),
        pytest.param(
            "prod",
            {f"{CLUSTER}.systemNodes.scaling": {"minSize": 2, "desiredSize": 3, "maxSize": 6}},
            f"{CLUSTER}.systemNodes.scaling.minSize",
            2,
            "must be >= the number of AZs (3) so add-ons run in every AZ",
            id="prod-system-nodes-below-az-count",
        ),
        pytest.param(
            "dev",
            {f"{CLUSTER}.systemNodes.scaling": {"minSize": 1, "desiredSize": 1, "maxSize": 3}},
            f"{CLUSTER}.systemNodes.scaling.minSize",
            1,
            "must be >= the number of AZs (2)",
            id="dev-system-nodes-below-az-count",
        ),
    ],
)
def test_cluster_rule_refuses(env: str, changes: dict[str, Any], key: str, got: Any, says: str) -> None:
    assert_refused(changed(env, changes), env, key=key, got=got, says=says)


def test_vpc_cni_older_than_efa_only_minimum_is_refused() -> None:
    major, minor, patch = facts.VPC_CNI_MIN_EFA_ONLY
    older = f"v{major}.{minor}.{patch - 1}-eksbuild.9"

    assert_refused(
        changed("prod", {f"{CLUSTER}.addons.vpcCni": older}),
        "prod",
        key=f"{CLUSTER}.addons.vpcCni",
        got=older,
        says=f"must be v{major}.{minor}.{patch} or newer: older VPC CNIs do not support the efa-only interfaces",
    )


def test_vpc_cni_at_the_efa_only_minimum_is_accepted() -> None:
    minimum = "v{}.{}.{}-eksbuild.1".format(*facts.VPC_CNI_MIN_EFA_ONLY)

    config = load(changed("prod", {f"{CLUSTER}.addons.vpcCni": minimum}), "prod")

    assert config.cluster.addon_versions["vpc-cni"] == minimum


def test_endpoint_open_to_the_world_is_allowed_outside_prod() -> None:
    config = load(changed("dev", {f"{CLUSTER}.endpoint.publicAccessCidrs": ["0.0.0.0/0"]}), "dev")

    assert config.cluster.public_access_cidrs == ("0.0.0.0/0",)


def test_private_endpoint_without_cidrs_is_accepted() -> None:
    values = changed(
        "prod", {f"{CLUSTER}.endpoint.publicAccess": False, f"{CLUSTER}.endpoint.publicAccessCidrs": DELETE}
    )

    config = load(values, "prod")

    assert (config.cluster.endpoint_public_access, config.cluster.public_access_cidrs) == (False, ())


# --- Node group sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "got", "says"),
    [
        pytest.param(
            {f"{FULL}.scalingPerAz.minSize": 2},
            f"{FULL}.scalingPerAz",
            {"minSize": 2, "desiredSize": 1, "maxSize": 5},
            "must satisfy minSize <= desiredSize <= maxSize",
            id="min-above-desired",
        ),
        pytest.param(
            {f"{FULL}.scalingPerAz.desiredSize": 6},
            f"{FULL}.scalingPerAz",
            {"minSize": 1, "desiredSize": 6, "maxSize": 5},
            "must satisfy minSize <= desiredSize <= maxSize",
            id="desired-above-max",
        ),
        pytest.param(
            {f"{CLUSTER}.systemNodes.scaling.desiredSize": 7},
            f"{CLUSTER}.systemNodes.scaling",
            {"minSize": 3, "desiredSize": 7, "maxSize": 6},
            "must satisfy minSize <= desiredSize <= maxSize",
            id="system-nodes-desired-above-max",
        ),
        pytest.param(
            {f"{FULL}.scalingPerAz.maxSize": 0},
            f"{FULL}.scalingPerAz.maxSize",
            0,
            "must be between 1 and 450",
            id="max-size-zero",
        ),
        pytest.param(
            {f"{FULL}.scalingPerAz.minSize": 451},
            f"{FULL}.scalingPerAz.minSize",
            451,
            "must be between 0 and 450",
            id="min-size-above-450",
        ),
    ],
)
def test_scaling_rule_refuses(changes: dict[str, Any], key: str, got: Any, says: str) -> None:
    assert_refused(changed("prod", changes), "prod", key=key, got=got, says=says)


# --- GPU pools --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Mig", "mig-pool", "m" * 13, "1mig"])
def test_pool_name_must_be_short_lowercase_alphanumeric(name: str) -> None:
    values = stack_values("prod")
    values["peakguard:gpuPools"][name] = values["peakguard:gpuPools"].pop("mig")

    assert_refused(
        values,
        "prod",
        key=f"peakguard:gpuPools.{name}",
        got=name,
        says="pool names are 1-12 lowercase letters and digits, starting with a letter",
    )


def test_instance_type_outside_efa_table_is_refused_listing_supported_types() -> None:
    message = assert_refused(
        changed("prod", {f"{FULL}.instanceType": "p3dn.24xlarge"}),
        "prod",
        key=f"{FULL}.instanceType",
        got="p3dn.24xlarge",
        says="is not in the EFA instance-type table (infra/facts.py); supported: ",
    )

    assert ", ".join(sorted(facts.INSTANCE_TYPES)) in message


@pytest.mark.parametrize(
    ("env", "changes", "key", "got", "says"),
    [
        pytest.param(
            "dev",
            {"peakguard:gpuPools.full.availabilityZones": ["us-west-2a", "us-west-2c"]},
            "peakguard:gpuPools.full.availabilityZones",
            "us-west-2c",
            "is not one of the network's AZs (us-west-2a, us-west-2b)",
            id="pool-az-not-in-network",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.availabilityZones": ["us-west-2a", "us-west-2b", "us-west-2a"]},
            f"{FULL}.availabilityZones",
            ["us-west-2a", "us-west-2b", "us-west-2a"],
            "lists an AZ twice",
            id="pool-az-listed-twice",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.amiFamily": "bottlerocket"},
            f"{FULL}.amiFamily",
            "bottlerocket",
            "must be one of al2023, ubuntu",
            id="unknown-ami-family",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.amiFamily": "ubuntu"},
            f"{FULL}.amiId",
            NOTHING,
            "is required for the ubuntu AMI family",
            id="ubuntu-without-ami-id",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.amiFamily": "ubuntu", f"{FULL}.amiId": "ami-12345"},
            f"{FULL}.amiId",
            "ami-12345",
            "must be an AMI id (ami-0123456789abcdef0)",
            id="ami-id-malformed",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.amiFamily": "ubuntu", f"{FULL}.amiId": AMI, f"{FULL}.releaseVersion": "1.33.0-20250704"},
            f"{FULL}.releaseVersion",
            "1.33.0-20250704",
            "applies to al2023 only; the ubuntu family pins amiId",
            id="release-version-with-ubuntu",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.amiId": AMI},
            f"{FULL}.amiId",
            AMI,
            "applies to ubuntu only; al2023 pools pin releaseVersion",
            id="ami-id-with-al2023",
        ),
        pytest.param(
            "dev",
            {"peakguard:gpuPools.full.migProfile": "all-1g.10gb"},
            "peakguard:gpuPools.full.migProfile",
            "all-1g.10gb",
            "g6e.12xlarge (L40S-48GB) has no MIG; use none",
            id="mig-profile-on-gpu-without-mig",
        ),
        pytest.param(
            "prod",
            {f"{MIG}.migProfile": "all-1g.5gb"},
            f"{MIG}.migProfile",
            "all-1g.5gb",
            "is not a MIG layout of A100-SXM4-80GB; use all-<profile> with one of 1g.10gb, 1g.20gb",
            id="mig-profile-not-valid-for-gpu",
        ),
        pytest.param(
            "prod",
            {f"{MIG}.migProfile": "all-balanced"},
            "peakguard:kubernetes.modelService.lightPool",
            "mig",
            "is cut all-balanced (three sizes of MIG instance); the light variant asks for one size",
            id="light-pool-cut-all-balanced",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.expectedPeakNodes": -1},
            f"{FULL}.expectedPeakNodes",
            -1,
            "must be >= 0",
            id="negative-expected-peak",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.headroom": "lots"},
            f"{FULL}.headroom",
            "lots",
            "must be a number such as 1.3",
            id="headroom-not-a-number",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.headroom": 1.2},
            f"{FULL}.headroom",
            1.2,
            "may raise the headroom, never lower it below 1.3",
            id="headroom-below-1.3",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.maxUnavailablePercentage": 34},
            f"{FULL}.maxUnavailablePercentage",
            34,
            "must be <= 33: never take more than a third of a group down at once",
            id="max-unavailable-34",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.maxUnavailablePercentage": 0},
            f"{FULL}.maxUnavailablePercentage",
            0,
            "must be between 1 and 100",
            id="max-unavailable-0",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.rootVolumeGiB": 20},
            f"{FULL}.rootVolumeGiB",
            20,
            "must be between 50 and 16384",
            id="root-volume-too-small",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.podsNeedInstanceMetadata": "maybe"},
            f"{FULL}.podsNeedInstanceMetadata",
            "maybe",
            "must be true or false",
            id="pods-need-instance-metadata-not-a-flag",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.generation": "red"},
            f"{FULL}.generation",
            "red",
            "must be one of blue, green",
            id="generation-not-blue-or-green",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.next": {}},
            f"{FULL}.next.releaseVersion",
            NOTHING,
            "is required: an upgrade names the AL2023 release it goes to",
            id="next-without-a-release",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.releaseVersion": "1.33.0-20250704", f"{FULL}.next": {"releaseVersion": "1.33.0-20250704"}},
            f"{FULL}.next",
            "releaseVersion 1.33.0-20250704",
            "is what the serving generation (blue) already runs",
            id="next-is-the-serving-release",
        ),
        pytest.param(
            "prod",
            {
                f"{FULL}.amiFamily": "ubuntu",
                f"{FULL}.amiId": AMI,
                f"{FULL}.next": {"amiId": "ami-0fedcba9876543210", "releaseVersion": "1.33.0-20250704"},
            },
            f"{FULL}.next.releaseVersion",
            "1.33.0-20250704",
            "applies to al2023 only; the ubuntu family pins amiId",
            id="next-release-on-ubuntu",
        ),
        pytest.param(
            "prod",
            {f"{FULL}.next": {"releaseVersion": "1.33.4-20251010", "amiFamily": "ubuntu"}},
            f"{FULL}.next.amiFamily",
            "ubuntu",
            "is not a known key; known keys: amiId, releaseVersion",
            id="next-takes-only-the-image",
        ),
    ],
)
def test_gpu_pool_rule_refuses(env: str, changes: dict[str, Any], key: str, got: Any, says: str) -> None:
    assert_refused(changed(env, changes), env, key=key, got=got, says=says)


def test_max_capacity_below_headroom_rule_suggests_per_az_max_size() -> None:
    # prod's full pool: ceil(1.3 x 11) = 15 nodes over 3 AZs; 4 per AZ gives only 12.
    assert_refused(
        changed("prod", {f"{FULL}.scalingPerAz.maxSize": 4}),
        "prod",
        key=f"{FULL}.scalingPerAz.maxSize",
        got=4,
        says="gives 12 nodes over 3 AZs, below the 15 that an expected peak of 11 needs with 1.3x headroom; "
        "set maxSize >= 5",
    )


def test_raised_headroom_raises_the_capacity_needed() -> None:
    # ceil(1.5 x 11) = 17 over 3 AZs: 6 per AZ.
    assert_refused(
        changed("prod", {f"{FULL}.headroom": 1.5}),
        "prod",
        key=f"{FULL}.scalingPerAz.maxSize",
        got=5,
        says="below the 17 that an expected peak of 11 needs with 1.5x headroom; set maxSize >= 6",
    )


def test_one_az_pool_one_node_short_of_headroom_is_refused() -> None:
    values = changed(
        "prod",
        {
            f"{MIG}.availabilityZones": ["us-west-2a"],
            f"{MIG}.expectedPeakNodes": 10,
            f"{MIG}.scalingPerAz.maxSize": 12,
        },
    )

    assert_refused(values, "prod", key=f"{MIG}.scalingPerAz.maxSize", got=12, says="set maxSize >= 13")


@pytest.mark.parametrize(
    ("changes", "pool", "capacity"),
    [
        # The real prod file sits exactly on the rule: ceil(1.3 x 11) = 15 = 3 x 5.
        pytest.param({}, "full", 15, id="prod-full-15-for-peak-11"),
        # ceil(1.3 x 10) = 13 on the nose: exactly on the rule is enough.
        pytest.param(
            {
                f"{MIG}.availabilityZones": ["us-west-2a"],
                f"{MIG}.expectedPeakNodes": 10,
                f"{MIG}.scalingPerAz.maxSize": 13,
            },
            "mig",
            13,
            id="one-az-13-for-peak-10",
        ),
    ],
)
def test_max_capacity_exactly_meeting_headroom_rule_is_accepted(
    changes: dict[str, Any], pool: str, capacity: int
) -> None:
    config = load(changed("prod", changes), "prod")

    assert config.pool(pool).max_capacity == capacity


def test_max_unavailable_33_is_accepted() -> None:
    config = load(changed("prod", {f"{MIG}.maxUnavailablePercentage": 33}), "prod")

    assert config.pool("mig").max_unavailable_percentage == 33


def test_gds_on_al2023_is_refused_explaining_nvidia_fs() -> None:
    message = assert_refused(
        changed("prod", {f"{FULL}.gds": True}),
        "prod",
        key=f"{FULL}.gds",
        got=True,
        says="needs amiFamily: ubuntu",
    )

    assert "nvidia-fs" in message
    assert "AL2023" in message


def test_gds_on_ubuntu_with_ami_id_is_accepted() -> None:
    config = load(changed("prod", {f"{FULL}.gds": True, f"{FULL}.amiFamily": "ubuntu", f"{FULL}.amiId": AMI}), "prod")
    pool = config.pool("full")

    assert (pool.gds, pool.ami_family, pool.ami_id) == (True, "ubuntu", AMI)


def test_next_declares_the_upgrade_and_the_generation_that_serves() -> None:
    config = load(
        changed("prod", {f"{FULL}.generation": "green", f"{FULL}.next": {"releaseVersion": "1.33.4-20251010"}}),
        "prod",
    )
    pool = config.pool("full")

    assert (pool.generation, pool.idle_generation) == ("green", "blue")
    assert pool.next_image is not None and pool.next_image.release_version == "1.33.4-20251010"
    assert config.pool("mig").generation == "blue" and config.pool("mig").next_image is None


# --- Capacity reservations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reservations", "key", "got", "says"),
    [
        pytest.param(
            {"us-west-2d": {"id": RESERVATION}},
            f"{RESERVATIONS}.us-west-2d",
            "us-west-2d",
            "is not one of this pool's AZs (us-west-2a, us-west-2b, us-west-2c); a reservation is per AZ",
            id="reservation-az-not-in-pool",
        ),
        pytest.param(
            {"us-west-2a": {"id": "odcr-0123456789abcdef0"}},
            f"{RESERVATIONS}.us-west-2a.id",
            "odcr-0123456789abcdef0",
            "must be a capacity reservation id (cr-...)",
            id="reservation-id-malformed",
        ),
        pytest.param(
            {"us-west-2a": {"id": RESERVATION, "type": "spot"}},
            f"{RESERVATIONS}.us-west-2a.type",
            "spot",
            "must be one of odcr, capacity-block",
            id="reservation-type-unknown",
        ),
        pytest.param(
            {"us-west-2a": {"type": "odcr"}},
            f"{RESERVATIONS}.us-west-2a.id",
            NOTHING,
            "is required",
            id="reservation-id-missing",
        ),
    ],
)
def test_capacity_reservation_rule_refuses(reservations: dict[str, Any], key: str, got: Any, says: str) -> None:
    assert_refused(changed("prod", {RESERVATIONS: reservations}), "prod", key=key, got=got, says=says)


def test_capacity_reservation_is_read_per_az() -> None:
    reservations = {
        "us-west-2a": {"id": RESERVATION},
        "us-west-2b": {"id": "cr-0fedcba9876543210", "type": "capacity-block", "placementGroup": "pg-ml"},
    }

    config = load(changed("prod", {RESERVATIONS: reservations}), "prod")

    assert config.pool("full").capacity_reservations == {
        "us-west-2a": CapacityReservation(RESERVATION, "odcr", None),
        "us-west-2b": CapacityReservation("cr-0fedcba9876543210", "capacity-block", "pg-ml"),
    }


# --- Storage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key", "got", "says"),
    [
        pytest.param(
            {f"{FSX}.availabilityZone": "us-west-2d"},
            f"{FSX}.availabilityZone",
            "us-west-2d",
            "must be an AZ with GPU nodes (us-west-2a, us-west-2b, us-west-2c): Lustre is single-AZ",
            id="fsx-az-without-gpu-nodes",
        ),
        pytest.param(
            {f"{FSX}.storageCapacityGiB": 3600},
            f"{FSX}.storageCapacityGiB",
            3600,
            "must be 1200 or a multiple of 2400 (PERSISTENT_2)",
            id="fsx-capacity-not-a-multiple-of-2400",
        ),
        pytest.param(
            {f"{FSX}.storageCapacityGiB": 1000},
            f"{FSX}.storageCapacityGiB",
            1000,
            "must be between 1200 and 100800",
            id="fsx-capacity-below-1200",
        ),
        pytest.param(
            {f"{FSX}.throughputPerTiB": 200},
            f"{FSX}.throughputPerTiB",
            200,
            "must be one of 125, 250, 500, 1000 (MB/s per TiB, PERSISTENT_2)",
            id="fsx-throughput-not-offered",
        ),
    ],
)
def test_fsx_rule_refuses(changes: dict[str, Any], key: str, got: Any, says: str) -> None:
    assert_refused(changed("prod", changes), "prod", key=key, got=got, says=says)


@pytest.mark.parametrize("capacity", [1200, 2400, 7200])
def test_fsx_capacity_1200_or_multiple_of_2400_is_accepted(capacity: int) -> None:
    config = load(changed("prod", {f"{FSX}.storageCapacityGiB": capacity}), "prod")

    assert config.storage.fsx is not None
    assert config.storage.fsx.storage_capacity_gib == capacity


def test_fsx_can_be_disabled() -> None:
    config = load(changed("prod", {FSX: {"enabled": False}}), "prod")

    assert config.storage.fsx is None


# --- Pools, keys and types --------------------------------------------------------------------


def test_no_gpu_pools_is_refused() -> None:
    assert_refused(
        changed("prod", {"peakguard:gpuPools": {}}),
        "prod",
        key="peakguard:gpuPools",
        got={},
        says="must define at least one GPU pool",
    )


def test_misspelt_top_level_key_is_refused_with_did_you_mean() -> None:
    values = stack_values("prod")
    values["peakguard:gpuPool"] = values.pop("peakguard:gpuPools")

    with pytest.raises(ConfigError) as caught:
        load(values, "prod")

    message = str(caught.value)
    assert message.startswith("peakguard:gpuPool: is not a known key; did you mean 'gpuPools'?"), message
    assert "(got {'full': {" in message, message


def test_unknown_top_level_key_lists_the_known_keys() -> None:
    assert_refused(
        changed("prod", {"peakguard:owner": "ml-platform"}),
        "prod",
        key="peakguard:owner",
        got="ml-platform",
        says="is not a known key; known keys: cluster, gpuPools, kubernetes, network, pricing, storage, tags",
    )


def test_other_namespaces_are_not_ours_to_check() -> None:
    config = load(changed("prod", {"aws:profile": "peakguard-prod", "kubernetes:context": "x"}), "prod")

    assert config.env == "prod"


@pytest.mark.parametrize(
    ("changes", "key", "got", "says"),
    [
        pytest.param(
            {f"{FULL}.expectedPeakNodes": DELETE, f"{FULL}.expectedPeakNode": 11},
            f"{FULL}.expectedPeakNode",
            11,
            "is not a known key; did you mean 'expectedPeakNodes'?",
            id="misspelt-required-key",
        ),
        pytest.param(
            {f"{NET}.natGateway": "perAz"},
            f"{NET}.natGateway",
            "perAz",
            "is not a known key; did you mean 'natGateways'?",
            id="misspelt-optional-key",
        ),
        pytest.param(
            {f"{FULL}.scalingPerAz.desiredSizes": 1},
            f"{FULL}.scalingPerAz.desiredSizes",
            1,
            "is not a known key; did you mean 'desiredSize'?",
            id="misspelt-key-two-levels-down",
        ),
    ],
)
def test_unknown_nested_key_is_refused_with_did_you_mean(
    changes: dict[str, Any], key: str, got: Any, says: str
) -> None:
    assert_refused(changed("prod", changes), "prod", key=key, got=got, says=says)


@pytest.mark.parametrize(
    "key",
    [
        f"{FULL}.instanceType",
        f"{FULL}.amiFamily",
        f"{FULL}.expectedPeakNodes",
        f"{FULL}.scalingPerAz",
        f"{NET}.vpcCidr",
        f"{CLUSTER}.kubernetesVersion",
        f"{CLUSTER}.addons.coredns",
        f"{FSX}.availabilityZone",
        CLUSTER,
    ],
)
def test_missing_required_key_is_named_as_required(key: str) -> None:
    assert_refused(changed("prod", {key: DELETE}), "prod", key=key, got=NOTHING, says="is required")


@pytest.mark.parametrize(
    ("changes", "key", "got", "says"),
    [
        pytest.param(
            {f"{FULL}.scalingPerAz.maxSize": "five"},
            f"{FULL}.scalingPerAz.maxSize",
            "five",
            "must be a whole number",
            id="string-where-number",
        ),
        pytest.param(
            {f"{FULL}.expectedPeakNodes": 11.5},
            f"{FULL}.expectedPeakNodes",
            11.5,
            "must be a whole number",
            id="fraction-where-whole-number",
        ),
        pytest.param(
            {f"{FULL}.expectedPeakNodes": True},
            f"{FULL}.expectedPeakNodes",
            True,
            "must be a whole number",
            id="bool-where-number",
        ),
        pytest.param(
            {f"{FULL}.scalingPerAz": [1, 1, 5]},
            f"{FULL}.scalingPerAz",
            [1, 1, 5],
            "must be an object (a YAML mapping)",
            id="list-where-object",
        ),
        pytest.param(
            {MIG: ["p4de.24xlarge"]},
            MIG,
            ["p4de.24xlarge"],
            "must be an object (a YAML mapping)",
            id="list-where-pool-object",
        ),
        pytest.param(
            {NET: "10.40.0.0/16"},
            NET,
            "10.40.0.0/16",
            "must be an object (a YAML mapping)",
            id="string-where-top-level-object",
        ),
        pytest.param(
            {f"{NET}.availabilityZones": 3},
            f"{NET}.availabilityZones",
            3,
            "must be a list of strings",
            id="number-where-list",
        ),
        pytest.param(
            {f"{FULL}.availabilityZones": "us-west-2a"},
            f"{FULL}.availabilityZones",
            "us-west-2a",
            "must be a list of strings",
            id="string-where-list",
        ),
        pytest.param(
            {f"{CLUSTER}.logTypes": ["api", 5]},
            f"{CLUSTER}.logTypes",
            ["api", 5],
            "must be a list of strings",
            id="number-in-list-of-strings",
        ),
        pytest.param(
            {f"{FULL}.instanceType": 5},
            f"{FULL}.instanceType",
            5,
            "must be a string: YAML read a number; quote it",
            id="number-where-string",
        ),
        pytest.param(
            {f"{FULL}.amiFamily": ""},
            f"{FULL}.amiFamily",
            "",
            "must be a non-empty string",
            id="empty-string",
        ),
        pytest.param(
            {f"{CLUSTER}.kubernetesVersion": 1.33},
            f"{CLUSTER}.kubernetesVersion",
            1.33,
            "must be a string: YAML read a number; quote it (e.g. '1.33')",
            id="unquoted-kubernetes-version",
        ),
        pytest.param(
            {f"{CLUSTER}.endpoint.publicAccess": "yes"},
            f"{CLUSTER}.endpoint.publicAccess",
            "yes",
            "must be true or false",
            id="string-where-flag",
        ),
        pytest.param(
            {"peakguard:tags": {"team": 7}},
            "peakguard:tags.team",
            7,
            "must be a non-empty string",
            id="number-where-tag-value",
        ),
        pytest.param(
            {"peakguard:tags": {"peakguard:env": "dev"}},
            "peakguard:tags.peakguard:env",
            "dev",
            "is reserved",
            id="program-tag-overridden",
        ),
    ],
)
def test_wrong_type_is_refused(changes: dict[str, Any], key: str, got: Any, says: str) -> None:
    assert_refused(changed("prod", changes), "prod", key=key, got=got, says=says)


def test_numbers_and_flags_as_strings_are_accepted() -> None:
    # `pulumi config set --path` stores every value as a string.
    values = changed(
        "prod",
        {
            f"{FULL}.scalingPerAz": {"minSize": "1", "desiredSize": "2", "maxSize": "5"},
            f"{FULL}.expectedPeakNodes": "11",
            f"{FULL}.maxUnavailablePercentage": "33",
            f"{FULL}.rootVolumeGiB": "500",
            f"{FULL}.podsNeedInstanceMetadata": "true",
            f"{CLUSTER}.endpoint.publicAccess": "True",
            f"{FSX}.storageCapacityGiB": "2400",
            f"{FSX}.throughputPerTiB": "500",
        },
    )

    config = load(values, "prod")
    pool = config.pool("full")

    assert (pool.scaling_per_az.min_size, pool.scaling_per_az.desired_size, pool.scaling_per_az.max_size) == (1, 2, 5)
    assert (pool.expected_peak_nodes, pool.max_unavailable_percentage, pool.root_volume_gib) == (11, 33, 500)
    assert pool.pods_need_instance_metadata is True
    assert config.cluster.endpoint_public_access is True
    assert config.storage.fsx is not None
    assert (config.storage.fsx.storage_capacity_gib, config.storage.fsx.throughput_per_tib) == (2400, 500)


def test_tags_are_read() -> None:
    config = load(changed("prod", {"peakguard:tags": {"team": "ml-platform", "cost-center": "42"}}), "prod")

    assert config.tags == {"team": "ml-platform", "cost-center": "42"}


# --- Edge cases a review found slipping through (each once crashed or misnamed the key) -------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(f"{FULL}.scalingPerAz.minSize", id="pool-min-size-beside-max-size"),
        pytest.param(f"{FULL}.scalingPerAz.maxSize", id="pool-max-size-beside-min-size"),
        pytest.param(f"{CLUSTER}.systemNodes.scaling.minSize", id="system-min-size-beside-max-size"),
        pytest.param(f"{CLUSTER}.endpoint.publicAccess", id="public-access-beside-public-access-cidrs"),
    ],
)
def test_missing_required_key_is_not_blamed_on_a_known_sibling(key: str) -> None:
    # A sibling whose name is close (maxSize vs minSize) is a known key, not a misspelling.
    message = assert_refused(changed("prod", {key: DELETE}), "prod", key=key, got=NOTHING, says="is required")

    assert "is not a known key" not in message


@pytest.mark.parametrize("peak", [11, 0])
def test_pool_with_no_azs_is_refused(peak: int) -> None:
    values = changed("prod", {f"{FULL}.availabilityZones": [], f"{FULL}.expectedPeakNodes": peak})

    with pytest.raises(ConfigError) as caught:
        load(values, "prod")

    # An empty list would give the pool no node group at all (and divides by zero in the max-size hint).
    assert str(caught.value).startswith(f"{FULL}.availabilityZones: "), str(caught.value)
    assert "(got [])" in str(caught.value)


@pytest.mark.parametrize("text", ["--5", "²"])
def test_malformed_digit_string_is_a_config_error(text: str) -> None:
    assert_refused(
        changed("prod", {f"{FULL}.scalingPerAz.maxSize": text}),
        "prod",
        key=f"{FULL}.scalingPerAz.maxSize",
        got=text,
        says="must be a whole number",
    )


def test_non_string_pool_name_is_a_config_error() -> None:
    values = stack_values("prod")
    values["peakguard:gpuPools"][1] = values["peakguard:gpuPools"].pop("mig")

    assert_refused(values, "prod", key="peakguard:gpuPools.1", got=1, says="pool names are")


def test_disabled_fsx_may_keep_its_settings() -> None:
    # `enabled: false` switches FSx off; availabilityZone and the rest are known keys, not typos.
    config = load(changed("prod", {f"{FSX}.enabled": False}), "prod")

    assert config.storage.fsx is None


def test_huge_headroom_is_a_config_error() -> None:
    # Fraction("1e400") is fine; float() of it in the max-size message overflows.
    with pytest.raises(ConfigError) as caught:
        load(changed("prod", {f"{FULL}.headroom": "1e400"}), "prod")

    assert str(caught.value).startswith(f"{FULL}."), str(caught.value)


@pytest.mark.parametrize(
    ("changes", "key", "got", "says"),
    [
        pytest.param(
            {"aws:region": "us-west-2\n"}, "aws:region", "us-west-2\n", "must name an AWS region", id="region"
        ),
        pytest.param(
            {f"{CLUSTER}.name": "peakguard-prod\n"},
            f"{CLUSTER}.name",
            "peakguard-prod\n",
            "must start with a letter",
            id="cluster-name",
        ),
        pytest.param(
            {f"{CLUSTER}.kubernetesVersion": "1.33\n"},
            f"{CLUSTER}.kubernetesVersion",
            "1.33\n",
            "must be an EKS version",
            id="kubernetes-version",
        ),
        pytest.param(
            {f"{CLUSTER}.addons.coredns": "v1.12.1-eksbuild.2\n"},
            f"{CLUSTER}.addons.coredns",
            "v1.12.1-eksbuild.2\n",
            "must be an EKS add-on version",
            id="addon-version",
        ),
        pytest.param(
            {f"{FULL}.amiFamily": "ubuntu", f"{FULL}.amiId": f"{AMI}\n"},
            f"{FULL}.amiId",
            f"{AMI}\n",
            "must be an AMI id",
            id="ami-id",
        ),
        pytest.param(
            {RESERVATIONS: {"us-west-2a": {"id": f"{RESERVATION}\n"}}},
            f"{RESERVATIONS}.us-west-2a.id",
            f"{RESERVATION}\n",
            "must be a capacity reservation id",
            id="reservation-id",
        ),
    ],
)
def test_trailing_newline_is_refused(changes: dict[str, Any], key: str, got: str, says: str) -> None:
    # A YAML block scalar (`key: |`) ends in a newline; `$` in the patterns lets it through.
    assert_refused(changed("prod", changes), "prod", key=key, got=got, says=says)


def test_trailing_newline_in_pool_name_is_refused() -> None:
    values = stack_values("prod")
    values["peakguard:gpuPools"]["mig\n"] = values["peakguard:gpuPools"].pop("mig")

    assert_refused(values, "prod", key="peakguard:gpuPools.mig\n", got="mig\n", says="pool names are")


def test_a_misspelt_namespace_is_named_with_the_key_it_meant() -> None:
    values = stack_values("prod")
    values["peakgaurd:network"] = values.pop(NET)
    assert_refused(values, "prod", key="peakgaurd:network", got=values["peakgaurd:network"],
                   says="is not a key of this program; did you mean 'peakguard:network'?")  # fmt: skip


MODEL_SERVICE = "peakguard:kubernetes.modelService"
ENDPOINT = f"{CLUSTER}.endpoint.publicAccessCidrs"
MANY_TAGS = {f"team{i}": "x" for i in range(45)}


@pytest.mark.parametrize(
    ("changes", "key", "got", "says"),
    [
        pytest.param({ENDPOINT: ["0.0.0.0/1", "128.0.0.0/1"]}, ENDPOINT, ["0.0.0.0/1", "128.0.0.0/1"],
                     "admit 4294967296 addresses together; prod allows 65536", id="the-internet-in-two-halves"),
        pytest.param({ENDPOINT: ["10.0.0.0/16", "10.1.0.0/16"]}, ENDPOINT, ["10.0.0.0/16", "10.1.0.0/16"],
                     "admit 131072 addresses together", id="two-sixteens"),
        pytest.param({f"{CLUSTER}.logTypes": []}, f"{CLUSTER}.logTypes", [], "must include api and audit in prod",
                     id="control-plane-logs-off"),
        pytest.param({f"{CLUSTER}.logTypes": ["api", "scheduler"]}, f"{CLUSTER}.logTypes", ["api", "scheduler"],
                     "must include api and audit in prod", id="audit-log-off"),
        pytest.param({"peakguard:tags": {"aws:team": "x"}}, "peakguard:tags.aws:team", "x", "is reserved by AWS",
                     id="aws-prefix"),
        pytest.param({"peakguard:tags": {"team": "x" * 300}}, "peakguard:tags.team", "300 characters",
                     "must be at most 256 characters", id="long-tag-value"),
        pytest.param({"peakguard:tags": {"k" * 129: "x"}}, f"peakguard:tags.{'k' * 129}", "x",
                     "has a key of 129 characters; AWS allows 128", id="long-tag-key"),
        pytest.param({"peakguard:tags": MANY_TAGS}, "peakguard:tags", "45 tags", "must be at most 40",
                     id="too-many-tags"),
        pytest.param({f"{MODEL_SERVICE}.cpu": "0"}, f"{MODEL_SERVICE}.cpu", "0", "must be more than zero",
                     id="zero-cpu"),
        pytest.param({f"{MODEL_SERVICE}.memory": "0Gi"}, f"{MODEL_SERVICE}.memory", "0Gi", "must be more than zero",
                     id="zero-memory"),
        pytest.param({f"{MODEL_SERVICE}.ingress": {"host": "not a host!!"}}, f"{MODEL_SERVICE}.ingress.host",
                     "not a host!!", "must be a DNS name", id="bad-host"),
        pytest.param({f"{CLUSTER}.addons.kubeProxy": "v1.31.2-eksbuild.3"}, f"{CLUSTER}.addons.kubeProxy",
                     "v1.31.2-eksbuild.3", "must be a build for Kubernetes 1.33", id="kube-proxy-of-another-minor"),
        pytest.param({f"{FULL}.releaseVersion": "banana"}, f"{FULL}.releaseVersion", "banana",
                     "must be an EKS AMI release version such as 1.33.4-20251010", id="bad-release-version"),
        pytest.param({f"{FULL}.next": {"releaseVersion": "banana"}}, f"{FULL}.next.releaseVersion", "banana",
                     "must be an EKS AMI release version", id="bad-next-release-version"),
    ],
)  # fmt: skip
def test_values_aws_or_an_incident_would_refuse_are_refused_here(
    changes: dict[str, Any], key: str, got: Any, says: str
) -> None:
    assert_refused(changed("prod", changes), "prod", key=key, got=got, says=says)


def test_what_the_rules_allow_still_loads() -> None:
    ingress = {"scheme": "internet-facing", "host": "intent.example.com"}
    ok = changed("prod", {ENDPOINT: ["203.0.113.0/24", "198.51.100.0/24", "203.0.113.0/25"],
                          "peakguard:tags": {"team": "search", "cost-center": "x" * 256},
                          f"{MODEL_SERVICE}.cpu": "500m", f"{FULL}.releaseVersion": "1.33.4-20251010",
                          f"{MODEL_SERVICE}.ingress": ingress})  # fmt: skip
    config = load(ok, "prod")
    assert config.tags["team"] == "search" and config.cluster.public_access_cidrs[-1] == "203.0.113.0/25"


AUTOSCALER_TAG = "peakguard:kubernetes.clusterAutoscalerImageTag"


@pytest.mark.parametrize(
    ("changes", "got", "says"),
    [
        # Chart 9.52.1's own default: an autoscaler built for 1.34, on a 1.33 cluster.
        ({AUTOSCALER_TAG: "v1.34.0"}, "v1.34.0", "must be a release of the cluster's Kubernetes minor, v1.33.<patch>"),
        ({AUTOSCALER_TAG: "1.33.3"}, "1.33.3", "must be a release of the cluster's Kubernetes minor, v1.33.<patch>"),
        (
            {
                AUTOSCALER_TAG: DELETE,
                f"{CLUSTER}.kubernetesVersion": "1.34",
                f"{CLUSTER}.addons.kubeProxy": "v1.34.0-eksbuild.1",
            },
            None,
            "must be set for Kubernetes 1.34: the cluster autoscaler release of that minor, v1.34.<patch>",
        ),
    ],
    ids=["newer-minor", "no-v", "no-default-for-the-minor"],
)
def test_the_autoscaler_must_be_a_release_of_the_clusters_minor(changes: dict[str, Any], got: Any, says: str) -> None:
    assert_refused(changed("prod", changes), "prod", key=AUTOSCALER_TAG, got=got, says=says)


def test_the_autoscaler_release_defaults_to_the_clusters_minor() -> None:
    config = load(changed("prod", {AUTOSCALER_TAG: DELETE}), "prod")
    assert config.kubernetes.cluster_autoscaler_image_tag == "v1.33.3"


def test_the_efa_plugin_is_pinned_by_its_own_release() -> None:
    key = "peakguard:kubernetes.efaDevicePluginImageTag"
    assert load(changed("prod", {key: DELETE}), "prod").kubernetes.efa_device_plugin_image_tag == "v0.5.13"
    assert_refused(changed("prod", {key: "latest"}), "prod", key=key, got="latest", says="must be a plugin release")


@pytest.mark.parametrize(
    ("peak", "needed"),
    [
        pytest.param(85, 111, id="prod-111-for-peak-85"),  # ceil(110.5): the real prod file sits on the rule
        pytest.param(10, 13, id="13-for-peak-10"),  # 1.3 x 10 is whole: no rounding up to hide an off-by-one
    ],
)
def test_max_replicas_must_cover_the_expected_peak_with_headroom(peak: int, needed: int) -> None:
    assert facts.capacity_with_headroom(peak) == needed
    peak_key, max_key = f"{MODEL_SERVICE}.expectedPeakReplicas", f"{MODEL_SERVICE}.maxReplicas"

    config = load(changed("prod", {peak_key: peak, max_key: needed, f"{MODEL_SERVICE}.minReplicas": 1}), "prod")
    assert config.kubernetes.model_service.max_replicas == needed

    assert_refused(
        changed("prod", {peak_key: peak, max_key: needed - 1, f"{MODEL_SERVICE}.minReplicas": 1}),
        "prod",
        key=max_key,
        got=needed - 1,
        says=f"must be >= {needed}: an expected peak of {peak} replicas needs 1.3x headroom",
    )


def test_an_empty_model_version_means_the_newest_as_it_always_did() -> None:
    config = load(changed("prod", {f"{MODEL_SERVICE}.mode": {"modelVersion": ""}}), "prod")
    assert config.kubernetes.model_service.mode.model_version == ""


def test_the_fsx_driver_pinned_where_there_is_no_fsx_is_named() -> None:
    assert_refused(changed("dev", {f"{CLUSTER}.addons.fsxCsiDriver": "v1.7.0-eksbuild.1"}), "dev",
                   key=f"{CLUSTER}.addons.fsxCsiDriver", got="v1.7.0-eksbuild.1",
                   says="installed only where storage.fsx is enabled")  # fmt: skip


@pytest.mark.parametrize("name", ["m7i.xlarge", "c7gn.16xlarge", "m7i.metal-24xl", "u-6tb1.112xlarge", "t3.micro"])
def test_system_nodes_take_any_ec2_instance_type_name(name: str) -> None:
    assert load(changed("prod", {f"{CLUSTER}.systemNodes.instanceType": name}), "prod").cluster.system_nodes


def test_fsx_stays_out_of_the_model_service_pods_unless_asked() -> None:
    fsx = load(stack_values("prod"), "prod").storage.fsx
    assert fsx is not None and fsx.model_service_mount is False
    opted = load(changed("prod", {f"{FSX}.modelServiceMount": True}), "prod").storage.fsx
    assert opted is not None and opted.model_service_mount is True
