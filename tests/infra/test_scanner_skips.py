"""Checkov skips as annotations: numbered, each with its reason, and a reason Checkov would cut refused."""

from __future__ import annotations

import pytest

from infra.scanner_skips import skip_annotations


def test_each_skip_is_a_numbered_annotation_carrying_its_reason() -> None:
    assert skip_annotations({"CKV_K8S_16": "checks the node itself", "CKV_K8S_17": "nsenter"}) == {
        "checkov.io/skip1": "CKV_K8S_16=checks the node itself",
        "checkov.io/skip2": "CKV_K8S_17=nsenter",
    }


@pytest.mark.parametrize("reason", ["", "  ", "a=b"], ids=["empty", "blank", "equals-sign"])
def test_a_skip_without_a_reason_checkov_can_read_is_refused(reason: str) -> None:
    with pytest.raises(ValueError, match="CKV_K8S_16: needs a reason"):
        skip_annotations({"CKV_K8S_16": reason})
