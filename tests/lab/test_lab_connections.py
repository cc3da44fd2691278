"""The lab's load balancer and pods race over idle connections exactly as the program declares."""

from __future__ import annotations

from infra.manifests import manifests
from infra.offline import run_offline
from lab.lab import _connection_timeouts


def test_the_lab_plays_the_programs_idle_timeout_and_keep_alive() -> None:
    run = run_offline("dev")
    service = run.config.kubernetes.model_service

    idle, keep_alive = _connection_timeouts(manifests(run))

    assert (idle, keep_alive) == (service.idle_timeout_seconds, service.keep_alive_seconds)
    assert keep_alive > idle  # the proxy closes idle connections first, as the ALB should
