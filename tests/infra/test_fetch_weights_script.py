"""The init container that copies a model version into the pod's /models volume, run for real.

bash and the real AWS CLI (v1, installed in the venv) run the script against moto in server mode on
127.0.0.1. Only what a pod gets from outside is replaced: the endpoint (`AWS_ENDPOINT_URL`, which
the CLI honours) and IRSA's credentials (dummy keys). The mode file is written the way the Pulumi
program writes the mode ConfigMap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# boto3-stubs is a dev dependency; without it installed, boto3 has no types.
import boto3  # type: ignore[import-untyped, unused-ignore]
import pytest

from infra.config import ServiceMode
from infra.model_workload import fetch_weights_script
from lab.aws import moto_server

REGION = "us-west-2"
# Version folders are UTC timestamps, so the newest sorts last.
OLDER, NEWER, NEWEST = "20260930T235959Z", "20261125T095326Z", "20261203T081500Z"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def s3(moto_url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@dataclass
class Pod:
    """One pod's view: its bucket, its mounted mode file and its models volume."""

    root: Path
    bucket: str
    s3: Any
    env: dict[str, str]
    uploaded: dict[str, dict[str, bytes]] = field(default_factory=dict)

    @property
    def models_dir(self) -> Path:
        return Path(self.env["MODELS_DIR"])

    @property
    def mode_file(self) -> Path:
        return Path(self.env["MODE_FILE"])

    def upload(self, version: str, *, manifest: bool = True) -> None:
        files = {"full.safetensors": f"weights of {version}".encode()}
        if manifest:
            files["manifest.json"] = json.dumps({"version": version, "files": sorted(files)}).encode()
        for name, body in files.items():
            self.s3.put_object(Bucket=self.bucket, Key=f"models/{version}/{name}", Body=body)
        self.uploaded[version] = files

    def write_mode(self, model_version: str) -> None:
        document = ServiceMode(model_version=model_version).to_document()
        self.mode_file.write_text(json.dumps(document, sort_keys=True))

    def run(self) -> subprocess.CompletedProcess[str]:
        script = self.root / "fetch_weights.sh"
        script.write_text(fetch_weights_script())
        return subprocess.run(["bash", str(script)], env=self.env, capture_output=True, text=True, timeout=120)

    def local_versions(self) -> list[str]:
        """Every entry of the models volume, hidden ones (a `.partial` copy) included."""
        return sorted(p.name for p in self.models_dir.iterdir()) if self.models_dir.exists() else []

    def assert_copied(self, version: str) -> None:
        folder = self.models_dir / version
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == self.uploaded[version]


@pytest.fixture
def pod(tmp_path: Path, s3: Any, moto_url: str) -> Pod:
    # One bucket per test on the shared server keeps the tests independent.
    bucket = f"peakguard-models-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    env = {
        # The venv's `aws` first, as the weights image has its own CLI on PATH.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "MODEL_BUCKET": bucket,
        "MODE_FILE": str(tmp_path / "mode.json"),
        "MODELS_DIR": str(tmp_path / "models"),
    }
    return Pod(root=tmp_path, bucket=bucket, s3=s3, env=env)


def test_the_version_the_mode_file_names_is_copied_and_no_other(pod: Pod) -> None:
    for version in (OLDER, NEWER, NEWEST):
        pod.upload(version)
    pod.write_mode(NEWER)

    result = pod.run()

    assert result.returncode == 0, result.stderr
    assert pod.local_versions() == [NEWER]
    pod.assert_copied(NEWER)
    assert f"{NEWER} copied" in result.stdout


def test_an_empty_model_version_means_the_newest_in_the_bucket(pod: Pod) -> None:
    # Uploaded out of order: the choice must come from the names, not from upload order.
    for version in (NEWER, NEWEST, OLDER):
        pod.upload(version)
    pod.write_mode("")

    result = pod.run()

    assert result.returncode == 0, result.stderr
    assert pod.local_versions() == [NEWEST]
    pod.assert_copied(NEWEST)


def test_without_a_mode_file_the_newest_version_is_copied(pod: Pod) -> None:
    for version in (NEWEST, OLDER, NEWER):
        pod.upload(version)
    assert not pod.mode_file.exists()

    result = pod.run()

    assert result.returncode == 0, result.stderr
    assert pod.local_versions() == [NEWEST]
    pod.assert_copied(NEWEST)


def test_a_folder_without_a_manifest_is_refused_and_leaves_nothing_behind(pod: Pod) -> None:
    pod.upload(OLDER)
    pod.upload(NEWER, manifest=False)
    pod.write_mode(NEWER)

    result = pod.run()

    assert result.returncode != 0
    assert f"s3://{pod.bucket}/models/{NEWER}/" in result.stderr
    assert "no manifest" in result.stderr
    # Neither the version folder nor the hidden `.<version>.partial` copy may stay on the volume.
    assert pod.local_versions() == []


def test_an_empty_bucket_fails_and_says_to_upload_a_version(pod: Pod) -> None:
    pod.write_mode("")

    result = pod.run()

    assert result.returncode != 0
    assert f"no model versions under s3://{pod.bucket}/models/" in result.stderr
    assert "upload one" in result.stderr
    assert pod.local_versions() == []


def test_a_version_already_on_the_volume_is_not_downloaded_again(pod: Pod) -> None:
    pod.upload(NEWER)
    pod.write_mode(NEWER)
    local = pod.models_dir / NEWER
    local.mkdir(parents=True)
    (local / "manifest.json").write_text('{"copied": "earlier"}')
    (local / "marker").write_text("left by an earlier run")

    result = pod.run()

    assert result.returncode == 0, result.stderr
    assert f"{NEWER} already in {pod.models_dir}" in result.stdout
    assert sorted(p.name for p in local.iterdir()) == ["manifest.json", "marker"]
    assert (local / "manifest.json").read_text() == '{"copied": "earlier"}'
    assert pod.local_versions() == [NEWER]


def test_a_local_folder_without_a_manifest_is_replaced_by_a_whole_copy(pod: Pod) -> None:
    pod.upload(NEWER)
    pod.write_mode(NEWER)
    stale = pod.models_dir / NEWER
    stale.mkdir(parents=True)
    (stale / "half-written").write_text("from an interrupted copy")

    result = pod.run()

    assert result.returncode == 0, result.stderr
    pod.assert_copied(NEWER)
    assert not (stale / "half-written").exists()
    assert not list(pod.models_dir.glob(".*.partial"))


@pytest.mark.parametrize("model_version", [f"../{NEWER}", f"{NEWER}/extra", "..", "."])
def test_a_model_version_that_is_not_a_plain_folder_name_is_refused_before_copying(
    pod: Pod, model_version: str
) -> None:
    pod.upload(NEWER)
    pod.write_mode(model_version)

    result = pod.run()

    assert result.returncode != 0
    assert f"model_version '{model_version}'" in result.stderr
    assert "is not a version folder name" in result.stderr
    # Nothing was fetched: no folder, no partial copy, on the volume or beside it.
    assert pod.local_versions() == []
    assert not [p for p in pod.root.rglob("*") if p.name.endswith(".partial")]


def _lustre_holds(pod: Pod, version: str) -> Path:
    """The mounted file system as the data repository association shows the bucket: the version's
    files under <lustre>/models/<version> (the script's output says which source it copied)."""
    folder = pod.root / "lustre" / "models" / version
    folder.mkdir(parents=True)
    for name in pod.uploaded[version]:
        (folder / name).write_bytes(pod.uploaded[version][name])
    pod.env["LUSTRE_MODELS_DIR"] = str(pod.root / "lustre" / "models")
    return folder


def test_a_version_on_lustre_is_copied_from_lustre_not_downloaded(pod: Pod) -> None:
    pod.upload(NEWEST)
    pod.write_mode(NEWEST)
    _lustre_holds(pod, NEWEST)
    pod.env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # S3 unreachable: only the listing may be skipped

    result = pod.run()

    assert result.returncode == 0, result.stderr
    pod.assert_copied(NEWEST)
    assert f"{NEWEST} copied to {pod.models_dir} from {pod.root}/lustre/models/{NEWEST}" in result.stdout


def test_a_version_lustre_does_not_hold_yet_comes_from_s3(pod: Pod) -> None:
    pod.upload(NEWER)
    pod.upload(NEWEST)
    pod.write_mode(NEWEST)
    _lustre_holds(pod, NEWER)  # the file system has not imported the newest upload yet

    result = pod.run()

    assert result.returncode == 0, result.stderr
    pod.assert_copied(NEWEST)
    assert "is not whole on Lustre" in result.stdout and f"from s3://{pod.bucket}/models/{NEWEST}/" in result.stdout


def test_a_lustre_folder_without_a_manifest_is_not_a_version(pod: Pod) -> None:
    pod.upload(NEWEST)
    pod.write_mode(NEWEST)
    (_lustre_holds(pod, NEWEST) / "manifest.json").unlink()  # metadata imported, manifest not yet

    result = pod.run()

    assert result.returncode == 0, result.stderr
    pod.assert_copied(NEWEST)  # S3's bytes


def test_a_manifest_on_lustre_before_its_weights_is_not_taken_for_the_version(pod: Pod) -> None:
    # FSx imports object by object: the small manifest can be there while the weights are not yet.
    pod.upload(NEWEST)
    pod.write_mode(NEWEST)
    (_lustre_holds(pod, NEWEST) / "full.safetensors").unlink()

    result = pod.run()

    assert result.returncode == 0, result.stderr
    pod.assert_copied(NEWEST)  # S3's bytes, whole
    assert "is not whole on Lustre" in result.stdout


def test_a_weights_file_of_another_size_on_lustre_is_not_taken(pod: Pod) -> None:
    pod.upload(NEWEST)
    pod.write_mode(NEWEST)
    folder = _lustre_holds(pod, NEWEST)
    (folder / "full.safetensors").write_bytes(b"half")  # mid-import, or a stale copy

    result = pod.run()

    assert result.returncode == 0, result.stderr
    pod.assert_copied(NEWEST)
