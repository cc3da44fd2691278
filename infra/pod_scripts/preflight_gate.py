#!/usr/bin/env python3
"""Preflight gate: lift a new GPU node's startup taint once the node passes its preflight checks.

Every GPU node registers with the taint `peakguard.io/preflight=pending:NoSchedule`, so no workload
lands on it before its GPUs, EFA devices, NVMe array and MIG layout are what the pool expects. This
runs as the preflight DaemonSet's container on each GPU node (infra/node_preflight.py): it runs
infra/node_scripts/node_preflight.sh against the host, records the result on the node as an
annotation, and removes the taint when every check passed; on a failure it waits and checks again
(the GPU operator's MIG manager applies the layout after the node joins, so failing first and
passing later is the normal path). A node without the taint is left alone and the checks are not
run there: they would compete with the workloads already serving on it.

Standard library only: it runs in the model-service image, which has python3, bash and util-linux.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "DEFAULT_ANNOTATION",
    "DEFAULT_COMMAND",
    "DEFAULT_TAINT",
    "ApiError",
    "CheckResult",
    "ConfigError",
    "GateError",
    "NodeApi",
    "Settings",
    "Taint",
    "main",
]

DEFAULT_TAINT = "peakguard.io/preflight=pending:NoSchedule"
"""infra.facts.PREFLIGHT_TAINT.flag(); the DaemonSet passes it as PREFLIGHT_TAINT as well."""
DEFAULT_ANNOTATION = "peakguard.io/preflight-result"
"""infra.node_preflight.RESULT_ANNOTATION; the DaemonSet passes it as PREFLIGHT_RESULT_ANNOTATION."""
DEFAULT_COMMAND = "nsenter --target 1 --mount -- bash -s --"
"""The check script is fed on stdin to a bash in the host's mount namespace, so it runs the host's
nvidia-smi, fi_info, findmnt and sees the host's mounts (the pod needs hostPID and privilege)."""

_SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_JSON_PATCH = "application/json-patch+json"
_MERGE_PATCH = "application/merge-patch+json"
_API_ATTEMPTS = 6
"""Tries per API call on 5xx, 429 and connection errors: about a minute of backoff in all."""
_API_TIMEOUT = 30.0
"""Seconds per API request."""
_PATCH_ROUNDS = 5
"""Re-reads after the taints changed under a patch before the round gives up (the next one retries)."""
_DETAIL_CHARS = 200
"""Per failed check in the annotation: enough for the reason, small enough for a node object."""

_HELP_EPILOG = """\
environment (read once at start):
  NODE_NAME                    this pod's node (the DaemonSet sets it from spec.nodeName); required
  PREFLIGHT_TAINT              the startup taint, key=value:Effect (default %(taint)s)
  PREFLIGHT_RESULT_ANNOTATION  where the last result is written on the node (default %(annotation)s)
  PREFLIGHT_INTERVAL           seconds between checks while they fail (default 30)
  PREFLIGHT_CHECK_TIMEOUT      seconds one run of the checks may take before it is killed (default 1800)
  PREFLIGHT_COMMAND            the check command, split like a shell would; the script comes on its
                               stdin (default: %(command)s)
  PREFLIGHT_SCRIPT             the check script (default: node_preflight.sh beside this file)
  PREFLIGHT_READY_FILE         written once the node is untainted (the readiness probe tests it)
  PREFLIGHT_API_URL            the Kubernetes API (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)
  PREFLIGHT_TOKEN_FILE         bearer token, read on every request (default: the pod's service account token)
  PREFLIGHT_CA_FILE            CA bundle for an https API (default: the pod's service account ca.crt)
The check script's own settings (PREFLIGHT_GPUS, PREFLIGHT_EFA, PREFLIGHT_NVME, PREFLIGHT_MIG_CONFIG,
PREFLIGHT_NCCL, ..., NVIDIA_SMI, FI_INFO, ...) pass through to it unchanged; see its --help.

exit status with --once: 0 the node carries no preflight taint (any more), 1 it still does, 2 bad settings.
Without --once the gate checks until the taint is gone, then stays up (a DaemonSet pod that exits is
restarted). To run preflight again on a node: add the taint back, then delete the gate's pod there.
"""


# --- Errors ----------------------------------------------------------------------------------


class GateError(Exception):
    """Something the gate cannot get past on its own; the message names the input and the fix."""


class ConfigError(GateError):
    """A setting is missing or malformed (exit status 2)."""


class ApiError(GateError):
    """The Kubernetes API refused a request, or kept failing it."""

    def __init__(self, message: str, *, status: int | None) -> None:
        super().__init__(message)
        self.status = status
        """HTTP status; None when the API could not be reached at all."""


# --- Settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    @classmethod
    def parse(cls, text: str) -> Taint:
        key, _, rest = text.partition("=")
        value, _, effect = rest.rpartition(":")
        if not key or not effect or ":" not in rest:
            raise ConfigError(f"PREFLIGHT_TAINT={text!r} is not a taint: write key=value:Effect, e.g. {DEFAULT_TAINT}")
        return cls(key=key, value=value, effect=effect)

    def flag(self) -> str:
        return f"{self.key}={self.value}:{self.effect}"

    def index_in(self, node: Mapping[str, Any]) -> int | None:
        """Where this taint sits in the node's taints (a taint is identified by key and effect)."""
        taints = (node.get("spec") or {}).get("taints") or []
        for index, taint in enumerate(taints):
            if taint.get("key") == self.key and taint.get("effect") == self.effect:
                return index
        return None


@dataclass(frozen=True)
class Settings:
    node: str
    """This node's name."""
    taint: Taint
    """The startup taint the gate removes."""
    annotation: str
    """Node annotation holding the last result, as compact JSON."""
    command: tuple[str, ...]
    """The check command; the check script is fed on its stdin."""
    script: Path
    """infra/node_scripts/node_preflight.sh, as mounted from the ConfigMap."""
    interval: float
    """Seconds between checks while they fail."""
    check_timeout: float
    """Seconds one run of the checks may take; the script bounds each hardware command itself."""
    api_url: str
    token_file: Path
    ca_file: Path
    ready_file: Path | None
    """Written once the node carries no taint; the readiness probe tests for it."""

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Settings:
        node = env.get("NODE_NAME", "").strip()
        if not node:
            raise ConfigError(
                "NODE_NAME is not set: the DaemonSet sets it from the downward API (fieldRef spec.nodeName); "
                "by hand, export NODE_NAME=<this node's name>"
            )
        api_url = env.get("PREFLIGHT_API_URL", "").rstrip("/")
        token_file = Path(env.get("PREFLIGHT_TOKEN_FILE") or _SERVICE_ACCOUNT / "token")
        if not api_url:
            host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
            if not host or not port:
                raise ConfigError(
                    "KUBERNETES_SERVICE_HOST/PORT are not set, so this is not a pod: "
                    "set PREFLIGHT_API_URL (and PREFLIGHT_TOKEN_FILE) to reach the cluster"
                )
            api_url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
            if not token_file.is_file():
                raise ConfigError(
                    f"no service account token at {token_file}: the pod must mount its token "
                    "(automountServiceAccountToken true), or set PREFLIGHT_TOKEN_FILE"
                )
        if urllib.parse.urlsplit(api_url).scheme not in ("http", "https"):
            raise ConfigError(f"PREFLIGHT_API_URL={api_url!r} must be an http:// or https:// URL")
        command = tuple(shlex.split(env.get("PREFLIGHT_COMMAND") or DEFAULT_COMMAND))
        if not command:
            raise ConfigError("PREFLIGHT_COMMAND is empty: unset it for the default, " + DEFAULT_COMMAND)
        ready_file = env.get("PREFLIGHT_READY_FILE")
        return cls(
            node=node,
            taint=Taint.parse(env.get("PREFLIGHT_TAINT") or DEFAULT_TAINT),
            annotation=env.get("PREFLIGHT_RESULT_ANNOTATION") or DEFAULT_ANNOTATION,
            command=command,
            script=Path(env.get("PREFLIGHT_SCRIPT") or Path(__file__).with_name("node_preflight.sh")),
            interval=_seconds(env, "PREFLIGHT_INTERVAL", 30),
            check_timeout=_seconds(env, "PREFLIGHT_CHECK_TIMEOUT", 1800),
            api_url=api_url,
            token_file=token_file,
            ca_file=Path(env.get("PREFLIGHT_CA_FILE") or _SERVICE_ACCOUNT / "ca.crt"),
            ready_file=Path(ready_file) if ready_file else None,
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name) or str(default)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also refuses NaN
        raise ConfigError(f"{name}={text!r} must be a number of seconds >= 0 (default {default})")
    return value


# --- The Kubernetes API ----------------------------------------------------------------------


class NodeApi:
    """GET and PATCH of one Node, retrying what is transient, explaining what is not."""

    def __init__(self, settings: Settings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._settings = settings
        self._sleep = sleep
        self._url = f"{settings.api_url}/api/v1/nodes/{urllib.parse.quote(settings.node, safe='')}"
        handlers: list[urllib.request.BaseHandler] = [
            # The API server is in the cluster: a proxy from the environment would only get in the way.
            urllib.request.ProxyHandler({})
        ]
        if settings.api_url.startswith("https:"):
            context = ssl.create_default_context(cafile=str(settings.ca_file))
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def get(self) -> dict[str, Any]:
        return self._request("GET", None, None)

    def patch(self, body: Any, *, content_type: str) -> dict[str, Any]:
        return self._request("PATCH", json.dumps(body).encode(), content_type)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "peakguard-preflight-gate"}
        if content_type:
            headers["Content-Type"] = content_type
        token_file = self._settings.token_file
        # Read every time: the kubelet rotates the projected token file under us.
        if token_file.is_file():
            headers["Authorization"] = "Bearer " + token_file.read_text().strip()
        return headers

    def _request(self, method: str, data: bytes | None, content_type: str | None) -> dict[str, Any]:
        node = self._settings.node
        what = f"{method} nodes/{node}"
        delay, last = 1.0, ""
        for attempt in range(1, _API_ATTEMPTS + 1):
            # The scheme is http or https: Settings refuses any other PREFLIGHT_API_URL.
            request = urllib.request.Request(  # noqa: S310
                self._url, data=data, method=method, headers=self._headers(content_type)
            )
            try:
                with self._opener.open(request, timeout=_API_TIMEOUT) as response:
                    answer: dict[str, Any] = json.load(response)
                    return answer
            except urllib.error.HTTPError as exc:
                status, message = exc.code, _status_message(exc)
                if status != 429 and status < 500:
                    raise ApiError(self._explain(what, status, message), status=status) from None
                last = f"{status} {message}"
                retry_after = exc.headers.get("Retry-After", "") if exc.headers else ""
                wait = float(retry_after) if retry_after.isdigit() else delay
            except (urllib.error.URLError, OSError) as exc:
                last = f"cannot reach {self._settings.api_url}: {getattr(exc, 'reason', exc)}"
                wait = delay
            if attempt < _API_ATTEMPTS:
                _log(f"{what} failed ({last}); retry {attempt}/{_API_ATTEMPTS - 1} in {wait:.0f} s")
                self._sleep(wait)
                delay = min(delay * 2, 30.0)
        raise ApiError(f"{what} kept failing after {_API_ATTEMPTS} tries: {last}", status=None)

    def _explain(self, what: str, status: int, message: str) -> str:
        settings = self._settings
        if status in (401, 403):
            return (
                f"{what} was refused ({status}): {message}. The gate's ServiceAccount needs get and patch on "
                "nodes (ClusterRole peakguard-node-preflight, infra/node_preflight.py), and the "
                "ValidatingAdmissionPolicy peakguard-node-preflight lets it change nothing on its own node but "
                f"remove the {settings.taint.key} taint and set the {settings.annotation} annotation; "
                "check `kubectl auth can-i patch nodes "
                "--as=system:serviceaccount:kube-system:peakguard-node-preflight` and the policy's status"
            )
        if status == 404:
            return (
                f"{what}: node {settings.node!r} does not exist ({message}); NODE_NAME must be this pod's own "
                "node (downward API fieldRef spec.nodeName)"
            )
        return f"{what} failed ({status}): {message}"


def _status_message(error: urllib.error.HTTPError) -> str:
    """The API's Status message, or the body's first line when it sent none."""
    try:
        body = error.read().decode(errors="replace")
    except OSError:
        return error.reason if isinstance(error.reason, str) else str(error.reason)
    try:
        return str(json.loads(body).get("message") or body)
    except (ValueError, AttributeError):
        return body.strip().splitlines()[0] if body.strip() else str(error.reason)


# --- The checks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    """True only when the script exited 0 and its JSON says every check passed."""
    checks: tuple[Mapping[str, Any], ...]
    """As node_preflight.sh prints them: name, ok, expected, found, detail."""
    line: str
    """What to log: the script's JSON line, or the gate's own account of a run that printed none."""

    @property
    def failed(self) -> list[str]:
        return [str(check.get("name")) for check in self.checks if check.get("ok") is not True]

    def summary(self, *, when: datetime.datetime, attempt: int) -> str:
        """The annotation: why the node is (not) serving, readable with `kubectl get node -o yaml`."""
        document: dict[str, Any] = {
            "ok": self.ok,
            "failed": self.failed,
            "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "attempt": attempt,
        }
        why = {
            str(check.get("name")): str(check.get("detail") or "")[:_DETAIL_CHARS]
            for check in self.checks
            if check.get("ok") is not True
        }
        if why:
            document["why"] = why
        return json.dumps(document, separators=(",", ":"), sort_keys=True)


def _gate_failure(detail: str) -> CheckResult:
    """A run that produced no trustworthy verdict: a failure, so the taint stays."""
    check = {"name": "preflight", "ok": False, "expected": None, "found": None, "detail": detail}
    return CheckResult(ok=False, checks=(check,), line=json.dumps({"ok": False, "checks": [check]}))


_running: subprocess.Popen[bytes] | None = None
"""The check being run, so SIGTERM can stop it with the gate."""


def run_checks(settings: Settings, env: Mapping[str, str]) -> CheckResult:
    """Run the check script once and read its verdict; anything unexpected counts as a failure."""
    global _running
    try:
        script = settings.script.read_bytes()
    except OSError as exc:
        return _gate_failure(f"cannot read the check script {settings.script}: {exc.strerror}")
    command = " ".join(settings.command)
    try:
        # The command is the operator's setting (PREFLIGHT_COMMAND), run without a shell.
        _running = subprocess.Popen(  # noqa: S603
            settings.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            # Its own session: on a timeout the shell and what it runs go with it (the script's
            # `timeout` wrappers, which take process groups of their own, bound the rest).
            start_new_session=True,
        )
    except OSError as exc:
        return _gate_failure(f"cannot start the check command `{command}`: {exc.strerror} (PREFLIGHT_COMMAND)")
    process = _running
    try:
        out, err = process.communicate(script, timeout=settings.check_timeout)
    except subprocess.TimeoutExpired:
        _kill(process)
        process.communicate()
        return _gate_failure(
            f"`{command}` did not finish within {settings.check_timeout:.0f} s (PREFLIGHT_CHECK_TIMEOUT); "
            "a hardware command may hang on this node"
        )
    finally:
        _running = None
    if err:
        sys.stderr.write(err.decode(errors="replace"))
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except ValueError:
        verdict = None
    checks = verdict.get("checks") if isinstance(verdict, dict) else None
    if not isinstance(verdict, dict) or not isinstance(verdict.get("ok"), bool) or not isinstance(checks, list):
        printed = lines[-1][:_DETAIL_CHARS] if lines else "nothing"
        return _gate_failure(
            f"`{command}` exited {process.returncode} and printed {printed!r}, not node_preflight.sh's JSON line"
        )
    checks = [check for check in checks if isinstance(check, dict)]
    all_passed = verdict["ok"] is True and all(check.get("ok") is True for check in checks)
    if all_passed != (process.returncode == 0):
        # The script exits 0 iff ok; when the two disagree, trust neither and keep the taint.
        checks.append(
            {
                "name": "preflight",
                "ok": False,
                "expected": None,
                "found": None,
                "detail": f"exit status {process.returncode} disagrees with ok={verdict['ok']}",
            }
        )
        all_passed = False
    return CheckResult(ok=all_passed, checks=tuple(checks), line=lines[-1])


def _kill(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


# --- The gate --------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _log(message: str) -> None:
    print(f"preflight-gate: {message}", file=sys.stderr, flush=True)


def lift_taint(api: NodeApi, settings: Settings) -> bool:
    """Remove the startup taint; True once the node carries none.

    The patch tests the exact taint at the index it was read from before removing that index, so
    a concurrent change to the taints (another taint added or removed in between) fails it with
    422 instead of removing the wrong taint; the node is then read again.
    """
    taint = settings.taint
    for _ in range(_PATCH_ROUNDS):
        node = api.get()
        index = taint.index_in(node)
        if index is None:
            return True
        path = f"/spec/taints/{index}"
        patch = [{"op": "test", "path": path, "value": node["spec"]["taints"][index]}, {"op": "remove", "path": path}]
        try:
            api.patch(patch, content_type=_JSON_PATCH)
        except ApiError as exc:
            if exc.status != 422:
                raise
            _log(f"the taints of {settings.node} changed while the gate removed {taint.key} ({exc}); reading again")
            continue
        _log(f"removed {taint.flag()} from {settings.node}: workloads may schedule here")
        return True
    _log(f"the taints of {settings.node} kept changing under {_PATCH_ROUNDS} patches; trying again next round")
    return False


def gate_once(api: NodeApi, settings: Settings, env: Mapping[str, str], *, attempt: int) -> bool:
    """One round: check the node and lift the taint if it passed. True once the node has no taint."""
    if settings.taint.index_in(api.get()) is None:
        _log(f"{settings.node} carries no {settings.taint.key} taint: nothing to check")
        return True
    result = run_checks(settings, env)
    print(result.line, flush=True)
    # The result goes on the node first, in a patch of its own: a merge patch adds the annotation
    # without replacing the others, whatever else changes on the node meanwhile.
    record = result.summary(when=_now(), attempt=attempt)
    api.patch({"metadata": {"annotations": {settings.annotation: record}}}, content_type=_MERGE_PATCH)
    if not result.ok:
        _log(f"{settings.node} failed preflight ({', '.join(result.failed)}); the {settings.taint.key} taint stays")
        return False
    return lift_taint(api, settings)


def _mark_ready(settings: Settings, ready: bool) -> None:
    if settings.ready_file is None:
        return
    if ready:
        settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
        settings.ready_file.write_text(_now().isoformat() + "\n")
    else:
        settings.ready_file.unlink(missing_ok=True)


def run(settings: Settings, env: Mapping[str, str], *, once: bool) -> int:
    api = NodeApi(settings)
    # A restarted container finds the previous one's file in the pod's emptyDir.
    _mark_ready(settings, False)
    attempt = 0
    while True:
        attempt += 1
        try:
            lifted = gate_once(api, settings, env, attempt=attempt)
        except ApiError as exc:
            _log(str(exc))
            lifted = False
        if lifted:
            _mark_ready(settings, True)
            if once:
                return 0
            _idle()
        if once:
            return 1
        time.sleep(settings.interval)


def _idle() -> NoReturn:
    # A DaemonSet pod that exits is restarted, and would check a serving node again.
    while True:
        time.sleep(3600)


def _on_sigterm(signum: int, frame: object) -> None:
    # As PID 1 the gate gets no default SIGTERM handling: without this, the pod would wait out
    # its whole grace period on deletion.
    if _running is not None:
        _kill(_running)
    sys.exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="preflight_gate.py",
        description=(
            "Run the node preflight checks (node_preflight.sh) on this GPU node and remove its startup "
            "taint once they pass; until then no workload pod lands here. The last result is written "
            "on the node as an annotation."
        ),
        epilog=_HELP_EPILOG % {"taint": DEFAULT_TAINT, "annotation": DEFAULT_ANNOTATION, "command": DEFAULT_COMMAND},
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--once", action="store_true", help="check once, act on the result and exit (0 untainted, 1 still tainted)"
    )
    args = parser.parse_args(argv)
    env = dict(os.environ)
    try:
        settings = Settings.from_environment(env)
    except ConfigError as exc:
        _log(str(exc))
        return 2
    signal.signal(signal.SIGTERM, _on_sigterm)
    return run(settings, env, once=args.once)


if __name__ == "__main__":
    sys.exit(main())
