"""The Pulumi program: wires the components for one environment and publishes the targets.

`infra/__main__.py` calls `run()` under the Pulumi engine; the offline preview and the tests call
`stack_config()` and `declare()` under Pulumi's mocks, so both paths run the same code.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pulumi
import pulumi_aws as aws
from pulumi.runtime import config as runtime_config

from infra import incident_index
from infra.chaos import ChaosExperiments, ChaosExperimentsArgs
from infra.cluster import Cluster, ClusterArgs
from infra.cluster_addons import RELEASES, ClusterAddons, ClusterAddonsArgs
from infra.config import StackConfig
from infra.gpu_node_groups import GpuNodeGroups, GpuNodeGroupsArgs
from infra.incident_hold import check_incident_hold
from infra.kubernetes_provider import kubernetes_provider
from infra.load_test import LoadTestPool, LoadTestPoolArgs
from infra.model_workload import APP_LABEL, IN_FLIGHT_METRIC, ModelWorkload, ModelWorkloadArgs
from infra.network import Network, NetworkArgs, plan_subnets
from infra.node_preflight import NodePreflight, NodePreflightArgs
from infra.observability import Observability, ObservabilityArgs
from infra.predictive_scale_job import PredictiveScaleJob, PredictiveScaleJobArgs
from infra.storage import Storage, StorageArgs
from infra.targets import (
    SYSTEM_POOL,
    ClusterTarget,
    ModelServiceTarget,
    NodeGroupTarget,
    TargetsDocument,
    parameter_name,
)

__all__ = ["declare", "run", "stack_config"]


def stack_config() -> StackConfig:
    """Read and validate the whole stack config the engine handed this program."""
    # The SDK has no public "all config" call; these are where the engine puts it (the config
    # map and the PULUMI_CONFIG environment variable). Reading them whole lets us reject
    # misspelled keys instead of silently using defaults.
    raw = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    return StackConfig.from_mapping({key: _decode(value) for key, value in raw.items()}, stack=pulumi.get_stack())


def _decode(value: Any) -> Any:
    # Structured config values reach the program as JSON text.
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def load_balancer_cidrs(config: StackConfig) -> tuple[str, ...]:
    """Where the ALB's nodes sit: the public subnets for an internet-facing ALB, the private ones for
    an internal one (the load balancer controller picks subnets by those roles' tags)."""
    pairs = plan_subnets(config.network.vpc_cidr, config.network.availability_zones)
    internal = config.kubernetes.model_service.ingress.scheme == "internal"
    return tuple(str(pair.private if internal else pair.public) for pair in pairs)


def declare(config: StackConfig) -> dict[str, pulumi.Output[Any]]:
    """Declare every resource of the environment; returns the stack outputs."""
    env = config.env
    check_incident_hold(env)
    tags = {"peakguard:env": env, "peakguard:managed-by": "pulumi", **config.tags}

    network = Network(
        env,
        NetworkArgs(
            cidr=config.network.vpc_cidr,
            availability_zones=config.network.availability_zones,
            nat_gateways=config.network.nat_gateways,
            region=config.region,
            cluster_name=config.cluster.name,
            tags=tags,
        ),
    )
    private_subnets = [network.private_subnet_ids[az] for az in config.network.availability_zones]
    cluster = Cluster(
        env,
        ClusterArgs(
            config=config.cluster,
            vpc_id=network.vpc_id,
            private_subnet_ids=private_subnets,
            partition=config.partition,
            tags=tags,
        ),
    )
    gpu = GpuNodeGroups(
        f"{env}-gpu",
        GpuNodeGroupsArgs(
            env=env,
            pools=config.gpu_pools,
            cluster_name=cluster.name,
            cluster_endpoint=cluster.endpoint,
            cluster_certificate_authority=cluster.certificate_authority,
            cluster_security_group_id=cluster.security_group_id,
            dns_cluster_ip=config.cluster.dns_cluster_ip,
            node_role_arn=cluster.node_role_arn,
            vpc_id=network.vpc_id,
            private_subnet_ids=network.private_subnet_ids,
            depends_on=[cluster.vpc_cni],
            tags=tags,
        ),
    )
    fsx = config.storage.fsx
    storage = Storage(
        f"{env}-storage",
        StorageArgs(
            env=env,
            vpc_id=network.vpc_id,
            fsx=fsx,
            fsx_subnet_id=network.private_subnet_ids[fsx.availability_zone] if fsx else None,
            efa_security_group_id=gpu.efa_security_group_id,
            node_security_group_id=cluster.security_group_id,
            partition=config.partition,
            region=config.region,
            tags=tags,
        ),
    )

    service = config.kubernetes.model_service
    provider = kubernetes_provider(
        f"{env}-kubernetes",
        cluster_name=cluster.name,
        endpoint=cluster.endpoint,
        certificate_authority=cluster.certificate_authority,
        region=config.region,
        depends_on=[cluster.system_node_group],
    )
    addons = ClusterAddons(
        f"{env}-addons",
        ClusterAddonsArgs(
            env=env,
            chart_versions=config.kubernetes.chart_versions,
            cluster_autoscaler_image_tag=config.kubernetes.cluster_autoscaler_image_tag,
            efa_device_plugin_image_tag=config.kubernetes.efa_device_plugin_image_tag,
            pools=config.gpu_pools,
            provider=provider,
            cluster_name=cluster.name,
            region=config.region,
            vpc_id=network.vpc_id,
            oidc_provider_arn=cluster.oidc_provider_arn,
            oidc_issuer=cluster.oidc_issuer,
            partition=config.partition,
            in_flight_metric=IN_FLIGHT_METRIC,
            fsx_csi_driver=config.storage.fsx is not None,
            fsx_csi_driver_version=config.cluster.fsx_csi_driver_version,
            depends_on=[cluster.system_node_group],
            tags=tags,
        ),
    )
    load_test = config.kubernetes.load_test
    if load_test is not None:
        LoadTestPool(
            f"{env}-load-test",
            LoadTestPoolArgs(
                env=env,
                config=load_test,
                cluster_name=cluster.name,
                cluster_security_group_id=cluster.security_group_id,
                node_role_arn=cluster.node_role_arn,
                private_subnet_ids=private_subnets,
                provider=provider,
                # Nodes need the CNI to come up; the namespace's objects need a node for the API's webhooks.
                depends_on=[cluster.vpc_cni, cluster.system_node_group],
                tags=tags,
            ),
        )
    NodePreflight(
        f"{env}-node-preflight",
        NodePreflightArgs(
            pools=config.gpu_pools,
            image=service.image,
            provider=provider,
            depends_on=[cluster.system_node_group],
        ),
    )
    workload = ModelWorkload(
        f"{env}-model-service",
        ModelWorkloadArgs(
            env=env,
            config=service,
            full_pool=config.pool(service.pool),
            light_pool=config.pool(service.light_pool) if service.light_pool else None,
            provider=provider,
            bucket_name=storage.bucket_name,
            data_key_arn=storage.data_key_arn,
            oidc_provider_arn=cluster.oidc_provider_arn,
            oidc_issuer=cluster.oidc_issuer,
            partition=config.partition,
            otlp_endpoint=addons.otlp_endpoint,
            prometheus_url=addons.prometheus_url,
            load_balancer_cidrs=load_balancer_cidrs(config),
            monitoring_namespace=RELEASES["kubePrometheusStack"].namespace,
            lustre=storage.lustre,
            load_test_namespace=load_test.namespace if load_test is not None else None,
            depends_on=[addons.releases["keda"], addons.releases["awsLoadBalancerController"]],
            tags=tags,
        ),
    )
    Observability(
        f"{env}-observability",
        ObservabilityArgs(
            env=env,
            config=service,
            provider=provider,
            depends_on=[addons.releases["kubePrometheusStack"], workload],
            incidents=_incident_links(),
        ),
    )
    if service.predictive_scale is not None:
        PredictiveScaleJob(
            f"{env}-predictive-scale",
            PredictiveScaleJobArgs(
                env=env,
                config=service.predictive_scale,
                namespace=workload.namespace,
                cluster_name=cluster.name,
                hpa=workload.hpa_name,
                admin_token_secret=workload.admin_token_secret,
                region=config.region,
                partition=config.partition,
                provider=provider,
                oidc_provider_arn=cluster.oidc_provider_arn,
                oidc_issuer=cluster.oidc_issuer,
                tags=tags,
                depends_on=[workload],
            ),
        )
    chaos_ids: pulumi.Output[dict[str, str]] = pulumi.Output.from_input({})
    if service.chaos is not None:
        chaos = ChaosExperiments(
            f"{env}-chaos",
            ChaosExperimentsArgs(
                env=env,
                config=service.chaos,
                cluster_name=cluster.name,
                full_pool=service.pool,
                full_pool_zones=config.pool(service.pool).availability_zones,
                private_subnet_ids={az: network.private_subnet_ids[az] for az in config.network.availability_zones},
                namespace=workload.namespace,
                app_label=APP_LABEL,
                ingress=workload.ingress,
                ingress_name=workload.ingress_name,
                slo_p99_milliseconds=service.slo_p99_milliseconds,
                partition=config.partition,
                region=config.region,
                provider=provider,
                tags=tags,
            ),
            opts=pulumi.ResourceOptions(depends_on=[workload]),
        )
        chaos_ids = pulumi.Output.all(**chaos.template_ids)
    model_service_target = ModelServiceTarget(
        namespace=workload.namespace,
        deployments=dict(workload.deployments),
        hpa=workload.hpa_name,
        scaled_objects=dict(workload.scaled_objects),
        mode_config_maps=dict(workload.mode_config_maps),
        admin_token_secret=workload.admin_token_secret,
        service=workload.service_name,
        url=workload.service_url,
        pools={
            "full": service.pool,
            "canary": service.pool,
            **({"light": service.light_pool} if service.light_pool else {}),
        },
        gpus_per_replica=service.gpus_per_replica,
        slo_p99_ms=service.slo_p99_milliseconds,
        ingress=workload.ingress_name,
        replicas={"min": service.min_replicas, "max": service.max_replicas},
    )

    targets = pulumi.Output.all(
        cluster.name,
        cluster.endpoint,
        cluster.system_node_group.node_group_name,
        cluster.system_node_group.resources.apply(lambda r: r[0].autoscaling_groups[0].name),
        *[group.name for group in gpu.groups],
        *[group.autoscaling_group for group in gpu.groups],
    ).apply(
        lambda values: TargetsDocument(
            env=env,
            cluster=ClusterTarget(name=values[0], endpoint=values[1], region=config.region),
            node_groups=(
                NodeGroupTarget(
                    pool=SYSTEM_POOL,
                    availability_zone=None,
                    name=values[2],
                    autoscaling_group=values[3],
                    instance_type=config.cluster.system_nodes.instance_type,
                ),
                *(
                    NodeGroupTarget(
                        pool=group.pool,
                        availability_zone=group.availability_zone,
                        name=name,
                        autoscaling_group=asg,
                        instance_type=group.instance_type,
                        generation=group.generation,
                        serving=group.serving,
                        mig_config=group.mig_config,
                    )
                    for group, name, asg in zip(
                        gpu.groups, values[4 : 4 + len(gpu.groups)], values[4 + len(gpu.groups) :], strict=True
                    )
                ),
            ),
            model_service=model_service_target,
        )
    )
    targets = pulumi.Output.all(targets, chaos_ids).apply(
        lambda values: dataclasses.replace(values[0], chaos_experiments=values[1])
    )
    aws.ssm.Parameter(
        f"{env}-targets",
        name=parameter_name(env),
        type="String",
        # Above 4 KB a Standard parameter is refused; Intelligent-Tiering moves to Advanced only then.
        tier="Intelligent-Tiering",
        description="peakguard targets document: what the runbooks act on (schema in infra/targets.py)",
        # Not a secret: `insecure_value` keeps it readable in previews and diffs.
        insecure_value=targets.apply(lambda document: document.to_json()),
        tags=tags,
    )

    return {
        "env": pulumi.Output.from_input(env),
        "region": pulumi.Output.from_input(config.region),
        "clusterName": cluster.name,
        "clusterEndpoint": cluster.endpoint,
        "oidcProviderArn": cluster.oidc_provider_arn,
        "vpcId": network.vpc_id,
        "modelBucket": storage.bucket_name,
        "fsxDnsName": storage.fsx_dns_name if storage.fsx_dns_name is not None else pulumi.Output.from_input(None),
        "targetsParameter": pulumi.Output.from_input(parameter_name(env)),
        "targets": targets.apply(lambda document: document.to_dict()),
    }


def _incident_links() -> dict[str, list[str]]:
    """Signal -> reviewed incident documents, for the alerts; a document that does not check is
    CI's to catch (tests/infra/test_incident_index.py), never a reason to fail a deploy."""
    try:
        return incident_index.links_by_signal(incident_index.load())
    except incident_index.IncidentError as exc:
        pulumi.log.warn(f"the alerts link no incidents this time: {exc}")
        return {}


def run() -> None:
    """Entry point under the Pulumi engine (`pulumi up -s <env>`)."""
    from infra.config import ConfigError

    try:
        config = stack_config()
    except ConfigError as exc:
        # RunError prints the message alone: the user needs the key and the fix, not a traceback.
        raise pulumi.RunError(f"invalid stack config for {pulumi.get_stack()}: {exc}") from None
    for name, value in declare(config).items():
        pulumi.export(name, value)
