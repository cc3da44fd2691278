"""AWS Fault Injection Service through boto3: the experiment templates the Pulumi program declared
(`infra/chaos.py`, published by name in the targets document), and the experiments a run starts.

A run tags every experiment it starts with its run id, so a resumed or rolled-back run finds its own
experiments again (and only them) without having kept their ids anywhere but in AWS. Starting is
idempotent per run: the run id is the client token, so a retried or resumed start never starts a
second experiment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runbooks.errors import RunbookError
from runbooks.ports.aws_errors import translate

__all__ = ["ACTIVE", "RUN_TAG", "Experiment", "FaultExperiments"]

RUN_TAG = "peakguard:run"
"""The tag an experiment carries naming the runbook run that started it."""
ACTIVE = ("pending", "initiating", "running", "stopping")
"""Experiment statuses in which a fault may still be acting (FIS ExperimentStatus, botocore's model)."""
_PERMISSIONS = "fis:GetExperimentTemplate, fis:StartExperiment, fis:ListExperiments, fis:GetExperiment, " \
    "fis:StopExperiment, fis:TagResource and iam:PassRole on the template's role"  # fmt: skip


@dataclass(frozen=True)
class Experiment:
    id: str
    status: str
    reason: str = ""
    """FIS's words on the status (why it stopped or failed)."""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "status": self.status, "reason": self.reason}


def _experiment(raw: dict[str, Any]) -> Experiment:
    state = raw.get("state", {})
    return Experiment(id=raw["id"], status=state.get("status", "unknown"), reason=state.get("reason", ""))


class FaultExperiments:
    def __init__(self, fis: Any, *, env: str) -> None:
        """`fis`: a (bounded) boto3 FIS client in the env's account and region."""
        self._fis = fis
        self._env = env

    def template(self, template_id: str) -> dict[str, Any]:
        """The template as FIS holds it: description, actions, targets, stop conditions."""
        try:
            found: dict[str, Any] = self._fis.get_experiment_template(id=template_id)["experimentTemplate"]
        except self._fis.exceptions.ResourceNotFoundException:
            raise RunbookError(
                f"FIS experiment template {template_id} not found: the targets document names a template that is "
                f"gone; re-run `pulumi up -s {self._env}`"
            ) from None
        except Exception as exc:
            raise translate(exc, f"read FIS experiment template {template_id}", permissions=_PERMISSIONS) from exc
        return found

    def _listed(self, template_id: str) -> list[dict[str, Any]]:
        """Every experiment of the template, through every page (ListExperiments pages at 100)."""
        try:
            pages = self._fis.get_paginator("list_experiments").paginate(experimentTemplateId=template_id)
            return [raw for page in pages for raw in page.get("experiments", [])]
        except Exception as exc:
            raise translate(exc, f"list the experiments of template {template_id}", permissions=_PERMISSIONS) from exc

    def of_template(self, template_id: str) -> list[Experiment]:
        """Every experiment of the template FIS still lists, as listed."""
        return [_experiment(raw) for raw in self._listed(template_id)]

    def of_run(self, template_id: str, run_id: str) -> list[Experiment]:
        """The experiments of the template that `run_id` started (by their tag), read one by one."""
        return [self.get(raw["id"]) for raw in self._listed(template_id) if raw.get("tags", {}).get(RUN_TAG) == run_id]

    def start(self, template_id: str, *, run_id: str) -> Experiment:
        """Start the template's experiment for `run_id`; a second call for the same run starts nothing new."""
        try:
            raw = self._fis.start_experiment(
                clientToken=run_id, experimentTemplateId=template_id,
                tags={RUN_TAG: run_id, "peakguard:env": self._env},
            )["experiment"]  # fmt: skip
        except Exception as exc:
            raise translate(exc, f"start an experiment from template {template_id}", permissions=_PERMISSIONS) from exc
        return _experiment(raw)

    def get(self, experiment_id: str) -> Experiment:
        try:
            return _experiment(self._fis.get_experiment(id=experiment_id)["experiment"])
        except Exception as exc:
            raise translate(exc, f"read FIS experiment {experiment_id}", permissions=_PERMISSIONS) from exc

    def stop(self, experiment_id: str) -> Experiment:
        """Ask FIS to stop it (FIS then undoes what its actions did, e.g. restarts stopped instances
        or restores a subnet's network ACL). Stopping an ended experiment changes nothing."""
        try:
            return _experiment(self._fis.stop_experiment(id=experiment_id)["experiment"])
        except Exception as exc:
            raise translate(exc, f"stop FIS experiment {experiment_id}", permissions=_PERMISSIONS) from exc
