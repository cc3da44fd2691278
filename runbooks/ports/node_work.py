"""Node work through the Ansible playbooks: the runbooks' port to `playbooks/` (ansible-runner).

A runbook that changes a node in place (`rolling-upgrade --to driver-...`) runs a playbook on
named hosts and reads back, per host, whether it passed and what the play published. Hosts are
EC2 instance ids, as the aws_ec2 inventory (playbooks/inventory) names them; tests point the
runner at another inventory and private_data_dir (the playbook lab's fake nodes).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runbooks.errors import RunbookError

__all__ = ["PLAYBOOKS", "AnsiblePlaybooks", "PlaybookResult", "PlaybookRunner"]

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
"""The repository's ansible-runner private_data_dir."""


@dataclass(frozen=True)
class PlaybookResult:
    """One playbook run, per host."""

    status: str
    """ansible-runner's: successful, failed, timeout or canceled."""
    passed: tuple[str, ...]
    """Hosts named, when the whole run succeeded (a host a play ended early, as nothing to do, counts)."""
    failed: Mapping[str, str]
    """Every other host named, with why: its failed task's message, unreachable, not run at all, or
    not confirmed (the run failed on another host, or timed out)."""
    stats: Mapping[str, Any] = field(default_factory=dict)
    """What the playbook published with set_stats."""


class PlaybookRunner(Protocol):
    def run(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any]) -> PlaybookResult:
        """Run `playbook` limited to `hosts`, with `extravars`; returns when it ended."""


class AnsiblePlaybooks:
    """`PlaybookRunner` over ansible-runner, by default the repository's playbooks and their aws_ec2
    inventory for `env` (PEAKGUARD_ENV, AWS_REGION; AWS credentials from the environment)."""

    def __init__(
        self,
        *,
        env: str,
        region: str,
        private_data_dir: Path = PLAYBOOKS,
        inventory: str | None = None,
        envvars: Mapping[str, str] | None = None,
        timeout_seconds: float = 14400.0,
        on_line: Callable[[str], None] = lambda _: None,
    ) -> None:
        """`inventory`: a path instead of the private_data_dir's `inventory/`; `timeout_seconds`
        bounds a whole run (a driver upgrade reboots: allow for the slowest node of a batch). It
        replaces `job_timeout` of `env/settings`, so the default is that file's, 4 hours."""
        self._private_data_dir = private_data_dir
        self._inventory = inventory
        self._envvars = {
            "PEAKGUARD_ENV": env,
            "AWS_REGION": region,
            "ANSIBLE_NOCOLOR": "1",
            # ansible-runner starts ansible-playbook by name: the one installed beside this Python.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            **(envvars or {}),
        }
        self._timeout = timeout_seconds
        self._on_line = on_line

    def run(self, playbook: str, hosts: Sequence[str], extravars: Mapping[str, Any]) -> PlaybookResult:
        if not hosts:
            raise RunbookError(f"{playbook}: no hosts named; a node playbook always runs on named nodes")
        try:
            import ansible_runner  # type: ignore[import-untyped, unused-ignore]
        except ImportError as exc:
            raise RunbookError(
                "ansible-runner is not installed: node work needs the `playbooks` extra "
                "(`make setup`, or `pip install -e '.[playbooks]'`)"
            ) from exc
        try:
            runner = ansible_runner.run(
                private_data_dir=str(self._private_data_dir),
                playbook=playbook,
                inventory=self._inventory,
                limit=",".join(hosts),
                extravars=dict(extravars),
                envvars=self._envvars,
                timeout=int(self._timeout),
                quiet=True,
                # Else ansible-runner writes these options into env/ and later runs of the directory
                # silently reuse them.
                suppress_env_files=True,
                event_handler=self._event,
            )
        except Exception as exc:  # ansible-runner's own errors: a bad directory, a missing playbook
            raise RunbookError(f"ansible-runner could not run {playbook} from {self._private_data_dir}: {exc}") from exc
        return _result(runner, hosts)

    def _event(self, event: Mapping[str, Any]) -> bool:
        text = str(event.get("stdout") or "").strip()
        if text and event.get("event") in ("runner_on_failed", "runner_on_unreachable", "playbook_on_task_start"):
            self._on_line(text.splitlines()[-1])
        return True


def _result(runner: Any, hosts: Sequence[str]) -> PlaybookResult:
    why: dict[str, str] = {}
    custom: Mapping[str, Any] = {}
    for event in runner.events:
        data = event.get("event_data") or {}
        kind = event.get("event")
        if kind == "runner_on_failed" and not data.get("ignore_errors"):
            result = data.get("res") or {}
            why.setdefault(data["host"], f"{data.get('task', 'a task')}: {result.get('msg', result)}")
        elif kind == "runner_on_unreachable":
            result = data.get("res") or {}
            why.setdefault(data["host"], f"unreachable: {result.get('msg', result)}")
        elif kind == "playbook_on_stats":
            custom = data.get("artifact_data") or {}
    stats = runner.stats or {}
    processed = set(stats.get("processed", {}))
    for host in hosts:
        if host not in processed and host not in why:
            why[host] = (
                f"not run: no such host in the inventory (ansible-runner {runner.status}, rc {runner.rc}); "
                "is the instance running and tagged for this environment?"
            )
    if runner.status != "successful":
        # A host with no failure of its own may still have been stopped mid-play: by a timeout, or
        # by max_fail_percentage after another host failed. Its state is unknown, not passed.
        for host in hosts:
            why.setdefault(host, f"not confirmed: the run ended {runner.status} (rc {runner.rc}) before it could be")
    passed = tuple(host for host in hosts if host not in why)
    return PlaybookResult(status=str(runner.status), passed=passed, failed=why, stats=custom)
