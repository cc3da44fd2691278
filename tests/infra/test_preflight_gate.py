"""The preflight gate (infra/pod_scripts/preflight_gate.py), run for real against the local Kubernetes API.

The gate runs as a subprocess, as in its pod: it feeds infra/node_scripts/node_preflight.sh to
`bash -s` (the DaemonSet's command adds only `nsenter` into the host's mount namespace), with the
expectations the prod `mig` pool's DaemonSet declares (8 A100s, 4 EFA devices, 8 NVMe devices,
MIG layout all-1g.10gb), against fake nvidia-smi, fi_info, mountpoint and findmnt, and talks HTTP to
`lab.kube_api.LocalKubernetes`. Only the API's address, the token and the hardware
commands are replaced; the taint, the annotation and the checks are the real ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.facts import GPU_TAINT, PREFLIGHT_TAINT
from infra.node_preflight import RESULT_ANNOTATION
from infra.offline import OfflineRun
from infra.pod_scripts import preflight_gate
from lab.kube_api import ApiStatus, LocalKubernetes, ObjectStore
from tests.infra.conftest import PROJECT_DIR
from tests.playbooks.conftest import fi_info_efa, gpu_listing

GATE = PROJECT_DIR / "infra" / "pod_scripts" / "preflight_gate.py"
SCRIPT = PROJECT_DIR / "infra" / "node_scripts" / "node_preflight.sh"
DAEMON_SET = "kubernetes:apps/v1:DaemonSet"
POOL = "mig"
MIG_PROFILE = "1g.10gb"

GPU = {"key": GPU_TAINT.key, "value": GPU_TAINT.value, "effect": GPU_TAINT.effect}
STARTUP = {"key": PREFLIGHT_TAINT.key, "value": PREFLIGHT_TAINT.value, "effect": PREFLIGHT_TAINT.effect}
MAINTENANCE = {"key": "example.com/maintenance", "value": "true", "effect": "NoSchedule"}
# What the kubelet and controllers put on every real node: the gate must leave them alone.
NODE_ANNOTATIONS = {
    "node.alpha.kubernetes.io/ttl": "0",
    "volumes.kubernetes.io/controller-managed-attach-detach": "true",
}


# --- The API, with a writer that races the gate ------------------------------------------------


class RacingStore(ObjectStore):
    """The local API's store, plus a concurrent writer that strikes just before a node's first JSON patch."""

    def __init__(self) -> None:
        super().__init__()
        self.races: dict[str, Callable[[ObjectStore], None]] = {}
        """Node name -> a change another client makes between the gate's read and its patch."""
        self.json_patches: dict[str, list[tuple[Any, list[dict[str, Any]]]]] = {}
        """Node name -> each JSON patch the API received, with the taints it met."""

    def patch(self, plural: str, namespace: str | None, name: str, patch: Any, *, content_type: str,
              only_status: bool = False, api: bool = False) -> dict[str, Any]:  # fmt: skip
        if api and plural == "nodes" and "json-patch" in content_type:
            race = self.races.pop(name, None)
            if race is not None:
                race(self)
            taints = self.get("nodes", None, name)["spec"].get("taints", [])
            self.json_patches.setdefault(name, []).append((patch, taints))
        return super().patch(
            plural, namespace, name, patch, content_type=content_type, only_status=only_status, api=api
        )


@pytest.fixture(scope="module")
def store() -> RacingStore:
    return RacingStore()


@pytest.fixture(scope="module")
def kube(store: RacingStore) -> Iterator[LocalKubernetes]:
    with LocalKubernetes(store) as served:
        yield served


def _new_node(store: ObjectStore, taints: list[dict[str, str]]) -> str:
    name = f"ip-10-40-{uuid.uuid4().hex[:8]}.us-west-2.compute.internal"
    store.create(
        "nodes",
        None,
        {
            "metadata": {"name": name, "labels": {"peakguard.io/pool": POOL}, "annotations": dict(NODE_ANNOTATIONS)},
            "spec": {"providerID": f"aws:///us-west-2a/i-{uuid.uuid4().hex[:17]}", "taints": taints},
        },
    )
    return name


@pytest.fixture
def node(store: RacingStore) -> str:
    """A GPU node as it registers: the GPU taint and the startup taint."""
    return _new_node(store, [dict(GPU), dict(STARTUP)])


def _taints(store: ObjectStore, node: str) -> list[dict[str, Any]]:
    taints: list[dict[str, Any]] = store.get("nodes", None, node)["spec"].get("taints", [])
    return taints


def _result(store: ObjectStore, node: str) -> dict[str, Any] | None:
    annotations = store.get("nodes", None, node)["metadata"].get("annotations") or {}
    return json.loads(annotations[RESULT_ANNOTATION]) if RESULT_ANNOTATION in annotations else None


# --- A fake GPU node's hardware ----------------------------------------------------------------


_FAKES = {
    "nvidia-smi": 'case "$*" in\n  -L) cat "$STATE/listing" ;;\n  *mig.mode.current*) cat "$STATE/mig-modes" ;;\n'
    '  *) echo "fake nvidia-smi: unexpected $*" >&2; exit 2 ;;\nesac\n',
    "fi_info": 'cat "$STATE/fi_info"\n',
    "mountpoint": "exit 0\n",
    # The array and the kubelet's directory bound onto it, as findmnt prints a bind mount's source.
    "findmnt": 'case "${@: -1}" in\n  */kubelet) echo "/dev/md127[/kubelet]" ;;\n  *) echo /dev/md127 ;;\nesac\n',
}


@dataclass
class GpuNode:
    """The hardware commands of one fake node of the `mig` pool, answering from files in `state`."""

    root: Path

    def __post_init__(self) -> None:
        (self.root / "state").mkdir(parents=True)
        (self.root / "bin").mkdir()
        for command, body in _FAKES.items():
            fake = self.root / "bin" / command
            fake.write_text(f"#!/bin/bash\nSTATE={self.root / 'state'}\n{body}")
            fake.chmod(0o755)
        (self.root / "state" / "fi_info").write_text(fi_info_efa(4))
        self.mig_applied(False)

    def mig_applied(self, applied: bool) -> None:
        """Before the GPU operator's MIG manager has run, the GPUs show no MIG devices."""
        state = self.root / "state"
        (state / "listing").write_text(
            gpu_listing(8, model="NVIDIA A100-SXM4-80GB", mig=[MIG_PROFILE] * 7 if applied else [])
        )
        (state / "mig-modes").write_text(("Enabled\n" if applied else "Disabled\n") * 8)

    def env(self) -> dict[str, str]:
        return {
            "NVIDIA_SMI": str(self.root / "bin" / "nvidia-smi"),
            "FI_INFO": str(self.root / "bin" / "fi_info"),
            "MOUNTPOINT": str(self.root / "bin" / "mountpoint"),
            "FINDMNT": str(self.root / "bin" / "findmnt"),
            # nccl-tests is not on the EKS AMIs: the check skips itself, as it would there.
            "ALL_REDUCE_PERF": str(self.root / "bin" / "all_reduce_perf"),
        }


@pytest.fixture
def hardware(tmp_path: Path) -> GpuNode:
    return GpuNode(tmp_path / "node")


# --- Running the gate ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool_env(runs: dict[str, OfflineRun]) -> dict[str, str]:
    """The taint, annotation and expectations the prod `mig` DaemonSet gives its gate."""
    (daemon_set,) = [d for d in runs["prod"].of_type(DAEMON_SET) if d.inputs["metadata"]["name"].endswith(f"-{POOL}")]
    (container,) = daemon_set.inputs["spec"]["template"]["spec"]["containers"]
    wanted = ("PREFLIGHT_TAINT", "PREFLIGHT_RESULT_ANNOTATION", "PREFLIGHT_GPUS", "PREFLIGHT_EFA", "PREFLIGHT_NVME",
              "PREFLIGHT_MIG_CONFIG")  # fmt: skip
    env = {e["name"]: e["value"] for e in container["env"] if e["name"] in wanted}
    assert set(env) == set(wanted)
    assert (env["PREFLIGHT_GPUS"], env["PREFLIGHT_EFA"], env["PREFLIGHT_MIG_CONFIG"]) == ("8", "4", "all-1g.10gb")
    return env


@dataclass
class Gate:
    kube: LocalKubernetes
    env: dict[str, str]
    ready_file: Path

    def __call__(self, node: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(GATE), *args],
            env={**self.env, "NODE_NAME": node, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def start(self, node: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(GATE)],
            env={**self.env, "NODE_NAME": node},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def gate(kube: LocalKubernetes, pool_env: dict[str, str], hardware: GpuNode, tmp_path: Path) -> Gate:
    token = tmp_path / "token"
    token.write_text("a-service-account-token\n")
    env = {
        "PATH": os.environ["PATH"],
        **pool_env,
        **hardware.env(),
        "PREFLIGHT_API_URL": kube.url,
        "PREFLIGHT_TOKEN_FILE": str(token),
        # The DaemonSet's command minus `nsenter --target 1 --mount --`: the script comes on stdin.
        "PREFLIGHT_COMMAND": "bash -s --",
        "PREFLIGHT_SCRIPT": str(SCRIPT),
        "PREFLIGHT_INTERVAL": "0.1",
        "PREFLIGHT_READY_FILE": str(tmp_path / "state" / "ready"),
    }
    return Gate(kube, env, tmp_path / "state" / "ready")


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _wait_for(condition: Callable[[], bool], what: str, *, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


# --- Tests ---------------------------------------------------------------------------------


def test_a_node_that_passes_loses_only_the_startup_taint(
    store: RacingStore, gate: Gate, hardware: GpuNode, node: str
) -> None:
    hardware.mig_applied(True)

    result = gate(node, "--once")

    assert result.returncode == 0, result.stderr
    assert _taints(store, node) == [GPU]
    (verdict,) = _json_lines(result.stdout)
    assert verdict["ok"] is True
    assert [c["name"] for c in verdict["checks"]] == ["gpus", "efa", "raid", "mig", "nccl"]
    recorded = _result(store, node)
    assert recorded is not None
    assert (recorded["ok"], recorded["failed"], recorded["attempt"]) == (True, [], 1)
    annotations = store.get("nodes", None, node)["metadata"]["annotations"]
    assert {k: v for k, v in annotations.items() if k != RESULT_ANNOTATION} == NODE_ANNOTATIONS
    assert gate.ready_file.is_file()
    assert f"removed {PREFLIGHT_TAINT.flag()} from {node}" in result.stderr


def test_a_node_that_fails_keeps_its_taint_and_says_which_checks_failed(
    store: RacingStore, gate: Gate, node: str
) -> None:
    # The node joined, but the MIG manager has not applied the pool's layout yet.
    result = gate(node, "--once")

    assert result.returncode == 1, result.stderr
    assert _taints(store, node) == [GPU, STARTUP]
    (verdict,) = _json_lines(result.stdout)
    assert verdict["ok"] is False
    recorded = _result(store, node)
    assert recorded is not None
    assert (recorded["ok"], recorded["failed"]) == (False, ["mig"])
    assert recorded["why"]["mig"].startswith("layout differs from nvidia.com/mig.config")
    assert not gate.ready_file.exists()
    assert store.json_patches.get(node) is None, "no taint patch was even tried"


def test_a_concurrent_change_to_the_taints_never_removes_the_wrong_taint(
    store: RacingStore, gate: Gate, hardware: GpuNode, node: str
) -> None:
    hardware.mig_applied(True)

    def maintenance_taint_first(racing: ObjectStore) -> None:
        taints = _taints(racing, node)
        racing.patch("nodes", None, node, {"spec": {"taints": [MAINTENANCE, *taints]}},
                     content_type="application/merge-patch+json")  # fmt: skip

    store.races[node] = maintenance_taint_first

    result = gate(node, "--once")

    assert result.returncode == 0, result.stderr
    assert _taints(store, node) == [MAINTENANCE, GPU]
    (first, met_first), (second, met_second) = store.json_patches[node]
    # The first patch was written for the taints as read: the startup taint at index 1, where the
    # GPU taint stood by the time it arrived. Its test refused it instead of removing the GPU taint.
    assert [op["path"] for op in first] == ["/spec/taints/1", "/spec/taints/1"]
    assert met_first[1] == GPU
    assert [op["path"] for op in second] == ["/spec/taints/2", "/spec/taints/2"]
    assert met_second[2] == STARTUP
    assert "changed while the gate removed" in result.stderr


def test_an_untainted_node_is_left_alone_and_not_checked(store: RacingStore, gate: Gate, tmp_path: Path) -> None:
    node = _new_node(store, [dict(GPU)])
    version = store.get("nodes", None, node)["metadata"]["resourceVersion"]
    ran = tmp_path / "check-ran"

    result = gate(node, "--once", PREFLIGHT_COMMAND=f"bash -c 'touch {ran}; exit 1'")

    assert result.returncode == 0, result.stderr
    assert not ran.exists(), "the checks ran on a node that is already serving"
    assert store.get("nodes", None, node)["metadata"]["resourceVersion"] == version
    assert _taints(store, node) == [GPU]
    assert gate.ready_file.is_file()
    assert "nothing to check" in result.stderr


def test_failing_until_the_mig_layout_lands_then_passing_and_staying_up(
    store: RacingStore, gate: Gate, hardware: GpuNode, node: str
) -> None:
    process = gate.start(node)
    try:
        _wait_for(lambda: (_result(store, node) or {}).get("failed") == ["mig"], "the first failed check")
        assert _taints(store, node) == [GPU, STARTUP]

        hardware.mig_applied(True)  # the MIG manager is done

        _wait_for(lambda: _taints(store, node) == [GPU], "the startup taint to go")
        _wait_for(gate.ready_file.is_file, "the gate to report ready")
        recorded = _result(store, node)
        assert recorded is not None
        assert recorded["ok"] is True and recorded["attempt"] >= 2
        time.sleep(0.3)
        assert process.poll() is None, "a DaemonSet pod that exits is restarted: the gate must stay up"
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    verdicts = _json_lines(stdout)
    assert [v["ok"] for v in verdicts][-1] is True
    assert verdicts[0]["ok"] is False


def test_transient_api_errors_are_retried(store: RacingStore, gate: Gate, hardware: GpuNode, node: str) -> None:
    hardware.mig_applied(True)
    store.faults[("GET", "nodes")] = [ApiStatus(503, "ServiceUnavailable", "the server is currently unable")]
    store.faults[("PATCH", "nodes")] = [ApiStatus(429, "TooManyRequests", "Too many requests, please try again")]
    try:
        result = gate(node, "--once")
    finally:
        store.faults.pop(("GET", "nodes"), None)
        store.faults.pop(("PATCH", "nodes"), None)

    assert result.returncode == 0, result.stderr
    assert _taints(store, node) == [GPU]
    assert "503 the server is currently unable" in result.stderr
    assert "429 Too many requests" in result.stderr


def test_a_refused_patch_names_the_node_and_the_rights_the_gate_needs(
    store: RacingStore, gate: Gate, hardware: GpuNode, node: str
) -> None:
    hardware.mig_applied(True)
    refusal = (
        f'nodes "{node}" is forbidden: User "system:serviceaccount:kube-system:peakguard-node-preflight" '
        'cannot patch resource "nodes" in API group "" at the cluster scope'
    )
    store.faults[("PATCH", "nodes")] = ApiStatus(403, "Forbidden", refusal)
    try:
        result = gate(node, "--once")
    finally:
        store.faults.pop(("PATCH", "nodes"), None)

    assert result.returncode == 1
    assert _taints(store, node) == [GPU, STARTUP]
    assert f"PATCH nodes/{node} was refused (403): {refusal}" in result.stderr
    assert "needs get and patch on nodes (ClusterRole peakguard-node-preflight" in result.stderr
    assert "ValidatingAdmissionPolicy peakguard-node-preflight" in result.stderr


@pytest.mark.parametrize(
    ("command", "why"),
    [
        pytest.param(
            """bash -c 'echo "{\\"ok\\": true, \\"checks\\": []}"; exit 1'""",
            "exit status 1 disagrees with ok=True",
            id="exit-status-disagrees",
        ),
        pytest.param("bash -c 'echo Segmentation fault'", "not node_preflight.sh's JSON line", id="not-json"),
        pytest.param("/nonexistent/nsenter", "cannot start the check command", id="no-command"),
    ],
)
def test_a_check_without_a_clear_pass_keeps_the_taint(
    store: RacingStore, gate: Gate, hardware: GpuNode, node: str, command: str, why: str
) -> None:
    hardware.mig_applied(True)

    result = gate(node, "--once", PREFLIGHT_COMMAND=command)

    assert result.returncode == 1, result.stderr
    assert _taints(store, node) == [GPU, STARTUP]
    recorded = _result(store, node)
    assert recorded is not None
    assert recorded["ok"] is False and "preflight" in recorded["failed"]
    assert why in recorded["why"]["preflight"]


def test_without_node_name_it_says_where_the_name_comes_from(gate: Gate) -> None:
    result = gate("", "--once")

    assert result.returncode == 2
    assert "NODE_NAME is not set" in result.stderr
    assert "downward API" in result.stderr


def test_help_explains_the_settings() -> None:
    result = subprocess.run([sys.executable, str(GATE), "--help"], capture_output=True, text=True, timeout=30)

    assert result.returncode == 0
    for word in ("--once", "NODE_NAME", "PREFLIGHT_COMMAND", "PREFLIGHT_INTERVAL", "PREFLIGHT_API_URL",
                 PREFLIGHT_TAINT.flag(), RESULT_ANNOTATION, "nsenter --target 1 --mount"):  # fmt: skip
        assert word in result.stdout, word


def test_the_gate_defaults_are_the_facts_an_operator_would_otherwise_have_to_pass(
    pool_env: Mapping[str, str],
) -> None:
    # By hand (`--once` on a node), nobody passes PREFLIGHT_TAINT: the defaults must be the real ones.
    assert preflight_gate.DEFAULT_TAINT == PREFLIGHT_TAINT.flag() == pool_env["PREFLIGHT_TAINT"]
    assert preflight_gate.DEFAULT_ANNOTATION == RESULT_ANNOTATION == pool_env["PREFLIGHT_RESULT_ANNOTATION"]
