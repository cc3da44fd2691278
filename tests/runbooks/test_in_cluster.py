"""A runbook run by a CronJob talks to the cluster as its pod's service account (what the
kubelet mounts), and says so plainly when that is not there."""

from __future__ import annotations

from pathlib import Path

import pytest

from runbooks.errors import RunbookError
from runbooks.ports.cluster import KubernetesCluster


def _mounted(tmp_path: Path) -> tuple[str, str]:
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("a-projected-token")
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return str(token), str(ca)


def test_the_pods_service_account_and_the_api_servers_address_are_used(tmp_path: Path) -> None:
    token, ca = _mounted(tmp_path)

    cluster = KubernetesCluster.in_cluster(token_file=token, cert_file=ca,
                                           environ={"KUBERNETES_SERVICE_HOST": "10.100.0.1",
                                                    "KUBERNETES_SERVICE_PORT": "443"})  # fmt: skip

    configuration = cluster.coordination.api_client.configuration
    assert configuration.host == "https://10.100.0.1:443"
    assert configuration.api_key["BearerToken"] == "bearer a-projected-token"  # as the client sends it
    assert configuration.ssl_ca_cert == ca


def test_outside_a_pod_it_says_what_is_missing(tmp_path: Path) -> None:
    token, ca = _mounted(tmp_path)

    with pytest.raises(RunbookError, match="cannot use the pod's service account"):
        KubernetesCluster.in_cluster(token_file=token, cert_file=ca, environ={})
