"""The two switches of DESIGN.md, as SSM parameters under `/peakguard/<env>/`.

- The **change freeze** is set by a person (`peakguard runbook freeze`): while it is present every
  runbook refuses unless `--override-freeze REASON` is given, and the override is journaled.
- The **incident hold** is set by a runbook while it holds temporary overrides (emergency-stop
  raised bounds, switched the model): while it is present the Pulumi program refuses `pulumi up`
  and names the run, so a deploy cannot silently undo a mitigation. Restoring clears it.

Both hold a small JSON document (who, why, since, and for the hold the run id).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from infra.targets import freeze_parameter_name, hold_parameter_name
from runbooks.errors import RunbookError
from runbooks.ports.aws_errors import translate

_PERMISSIONS = "ssm:GetParameter, PutParameter and DeleteParameter on /peakguard/*"


def _translate(exc: Exception, doing: str) -> RunbookError:
    return translate(exc, doing, permissions=_PERMISSIONS)


__all__ = ["SsmSwitches"]


class SsmSwitches:
    """`runbooks.engine.locking.FreezeSource` and the incident hold, on SSM Parameter Store."""

    def __init__(self, ssm: Any, *, env: str) -> None:
        """`ssm` is a boto3 SSM client."""
        self._ssm = ssm
        self._env = env

    # --- Freeze ----------------------------------------------------------------------

    def freeze_reason(self) -> str | None:
        document = self._read(freeze_parameter_name(self._env))
        if document is None:
            return None
        reason = str(document.get("reason", "no reason given"))
        if "by" not in document:
            return reason  # set by hand as plain text
        return f"{reason} (set by {document['by']} at {document.get('since', '?')})"

    def set_freeze(self, *, reason: str, by: str) -> None:
        self._write(freeze_parameter_name(self._env), {"reason": reason, "by": by, "since": _now()})

    def clear_freeze(self) -> None:
        self._delete(freeze_parameter_name(self._env))

    # --- Hold ------------------------------------------------------------------------

    def hold(self) -> dict[str, Any] | None:
        """The incident hold's document (`runId`, `runbook`, `reason`, `since`), or None."""
        return self._read(hold_parameter_name(self._env))

    def hold_owner(self) -> dict[str, Any] | None:
        """Whose the hold is (run id and runbook), or None: what a plan pins of it."""
        hold = self.hold()
        return None if hold is None else {"runId": hold.get("runId"), "runbook": hold.get("runbook")}

    def set_hold(self, *, run_id: str, runbook: str, reason: str) -> None:
        current = self.hold()
        if current is not None and current.get("runId") != run_id:
            raise RunbookError(
                f"{self._env}: incident hold already set by run {current.get('runId')} ({current.get('reason')}); "
                "restore that run first"
            )
        self._write(hold_parameter_name(self._env), {"runId": run_id, "runbook": runbook, "reason": reason,
                                                      "since": _now()})  # fmt: skip

    def lift_hold(self) -> None:
        """Clear the hold whoever set it: the run that restores normal operation (`rebuild`)."""
        self._delete(hold_parameter_name(self._env))

    def put_back_hold(self, document: dict[str, Any]) -> None:
        """Write a hold document back as it was (rolling back a `lift_hold`)."""
        self._write(hold_parameter_name(self._env), document)

    def clear_hold(self, *, run_id: str) -> None:
        """Clear the hold if this run set it; someone else's hold is left alone."""
        current = self.hold()
        if current is not None and current.get("runId") == run_id:
            self._delete(hold_parameter_name(self._env))

    # --- SSM -------------------------------------------------------------------------

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            value = self._ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except self._ssm.exceptions.ParameterNotFound:
            return None
        except Exception as exc:
            raise _translate(exc, f"read SSM parameter {name}") from exc
        try:
            document = json.loads(value)
        except json.JSONDecodeError:
            # Set by hand with plain text: the text is the reason.
            return {"reason": value}
        return document if isinstance(document, dict) else {"reason": str(document)}

    def _write(self, name: str, document: dict[str, Any]) -> None:
        try:
            self._ssm.put_parameter(
                Name=name, Value=json.dumps(document, sort_keys=True), Type="String", Overwrite=True
            )
        except Exception as exc:
            raise _translate(exc, f"write SSM parameter {name}") from exc

    def _delete(self, name: str) -> None:
        try:
            self._ssm.delete_parameter(Name=name)
        except self._ssm.exceptions.ParameterNotFound:
            return
        except Exception as exc:
            raise _translate(exc, f"delete SSM parameter {name}") from exc


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
