"""Spans join the trace the load balancer started: W3C `traceparent`, and the ALB's X-Ray header.

The propagators are chosen from OTEL_PROPAGATORS when OpenTelemetry is first imported, so each
case runs in a fresh interpreter with the environment the pod gets (infra/model_workload.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import json, sys
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from model_service.tracing import Tracing
spans = InMemorySpanExporter()
tracing = Tracing(exporter=spans)
request = tracing.start(json.loads(sys.argv[1]), 1.0)
request.stage("model", 1.0, 1.5)
request.finish(2.0)
tracing.flush()
print(json.dumps([(s.name, format(s.context.trace_id, "032x")) for s in spans.get_finished_spans()]))
"""

_XRAY_ROOT = "1-5759e988-bd862e3fe1be46a994272793"
_ALB_HEADER = {"X-Amzn-Trace-Id": f"Root={_XRAY_ROOT};Parent=53995c3f42cd8ad8;Sampled=1"}
_W3C_HEADER = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def _trace_ids(headers: dict[str, str], propagators: str | None) -> set[str]:
    env = {key: value for key, value in os.environ.items() if key != "OTEL_PROPAGATORS"}
    if propagators is not None:
        env["OTEL_PROPAGATORS"] = propagators
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(headers)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    spans = json.loads(done.stdout)
    assert {name for name, _ in spans} == {"POST /v1/intent", "model"}
    return {trace_id for _, trace_id in spans}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [(_ALB_HEADER, _XRAY_ROOT[2:].replace("-", "")), (_W3C_HEADER, "0af7651916cd43dd8448eb211c80319c")],
    ids=["alb-x-ray-header", "w3c-traceparent"],
)
def test_spans_join_the_callers_trace_with_the_pods_propagators(headers: dict[str, str], expected: str) -> None:
    assert _trace_ids(headers, "tracecontext,baggage,xray") == {expected}


def test_without_the_xray_propagator_the_albs_header_starts_a_new_trace() -> None:
    # Why the Deployment sets OTEL_PROPAGATORS: the default ignores the ALB's header.
    (trace_id,) = _trace_ids(_ALB_HEADER, None)
    assert trace_id != _XRAY_ROOT[2:].replace("-", "")
