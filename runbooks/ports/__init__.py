"""What a runbook acts through in one environment: the targets and the ports (cluster, cloud,
service, and the node playbooks).

Built once per command from the environment (AWS credentials and region, a kubeconfig or the
local drill's API URL); runbook steps receive it as `context.ports`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.targets import ModelServiceTarget, TargetsDocument
from runbooks.errors import RunbookError
from runbooks.ports.cloud import AwsCloud
from runbooks.ports.cluster import Endpoint, KubernetesCluster
from runbooks.ports.node_work import PlaybookRunner
from runbooks.ports.service import MIN_ANSWERS, ModelServiceClient, Window

__all__ = ["LONGEST_WINDOW", "Ports"]

LONGEST_WINDOW = 5
"""A traffic window may stretch to this many times `window_seconds` while it waits for enough
answers for a p99; past that it is judged on what it has (and a gate calls it inconclusive)."""


@dataclass
class Ports:
    targets: TargetsDocument
    cluster: KubernetesCluster
    cloud: AwsCloud
    service: ModelServiceClient
    window_seconds: float = 10.0
    """How long a traffic measurement lasts."""
    sleep: Callable[[float], None] = time.sleep
    playbooks: PlaybookRunner | None = None
    """Node work through the Ansible playbooks (in-place changes); None where no runbook needs it."""
    _windows: dict[str, tuple[float, Window]] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.model_service.namespace

    @property
    def model_service(self) -> ModelServiceTarget:
        service = self.targets.model_service
        if service is None:
            raise RunbookError(
                f"the targets document of {self.targets.env} has no modelService: run `pulumi up` with the "
                "Kubernetes side (this peakguard's infra) first"
            )
        return service

    def endpoints(self, variant: str | None = None) -> list[Endpoint]:
        """Ready pods behind the Service; of one variant if given (pods are named after their Deployment)."""
        found = self.cluster.ready_endpoints(self.namespace, self.model_service.service)
        if variant is None:
            return found
        prefix = self.model_service.deployments[variant] + "-"
        return [endpoint for endpoint in found if endpoint.pod.startswith(prefix)]

    def set_mode(self, variant: str, fields: Mapping[str, Any]) -> None:
        """Change a variant's operating mode: durable first (its mode ConfigMap, which pods started
        later read), then at once on every ready pod of it through the admin API (the mounted
        ConfigMap reaches running pods only after the kubelet's sync, a minute or more)."""
        name = self.model_service.mode_config_maps[variant]
        document = self.cluster.mode_document(self.namespace, name)
        self.cluster.set_mode_document(self.namespace, name, {**document, **fields})
        for endpoint in self.endpoints(variant):
            self.service.push_mode(endpoint.url, fields)

    def traffic(self, *, fresh: bool = False, max_age: float = 30.0) -> Window:
        """Requests, errors and latency over the last window, summed over every ready pod: at least
        `window_seconds`, and longer (up to `LONGEST_WINDOW` of them) until it holds enough answers
        for a p99 (`service.MIN_ANSWERS`).

        Planning reads it once for all steps (`fresh=False` reuses a measurement younger than
        `max_age`); gates always measure anew."""
        cached = self._windows.get("all")
        if not fresh and cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        urls = [e.url for e in self.endpoints()]
        window = self.service.window(urls, self.window_seconds, sleep=self.sleep, min_answers=MIN_ANSWERS,
                                     max_seconds=LONGEST_WINDOW * self.window_seconds)  # fmt: skip
        self._windows["all"] = (time.monotonic(), window)
        return window
