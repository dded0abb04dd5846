"""docker-compose.yml's `s3` profile: SeaweedFS wired to the api and the workers.

Stands in for `docker compose --profile s3 up`, which this machine (no Docker daemon)
cannot run: the compose file is read as YAML, its interpolations resolved as compose
would with an empty environment plus ``NNKGEO_BLOB_URL``, and the wiring checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from jobstate.blobs import ObjectBlobStore, open_blob_store
from jobstate.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED_URL = "s3://nnkgeo/blobs"
BLOB_USERS = ("api", "worker", "gpu-worker")
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _resolve(value: Any, environment: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}`` with ``environment`` as the host's variables."""
    return _INTERPOLATION.sub(
        lambda m: environment.get(m.group(1)) or (m.group(2) or ""), str(value)
    )


def _argv(command: Any) -> list[str]:
    return command if isinstance(command, list) else str(command).split()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def environments(compose: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Each service's environment under `NNKGEO_BLOB_URL=... docker compose --profile s3`."""
    host = {"NNKGEO_BLOB_URL": DOCUMENTED_URL}
    return {
        name: {key: _resolve(value, host) for key, value in service.get("environment", {}).items()}
        for name, service in compose["services"].items()
    }


def test_the_header_documents_the_profile_command(compose) -> None:
    header = (REPO_ROOT / "docker-compose.yml").read_text().split("\n\n", 1)[0]
    assert f"NNKGEO_BLOB_URL={DOCUMENTED_URL} docker compose --profile s3 up" in header


def test_seaweedfs_runs_in_the_s3_profile_unpublished(compose) -> None:
    s3 = compose["services"]["s3"]
    assert s3["profiles"] == ["s3"]
    assert s3["image"].split(":")[0] == "chrislusf/seaweedfs"  # not MinIO's archived image
    argv = _argv(s3["entrypoint"]) + _argv(s3.get("command", []))
    assert argv[:2] == ["weed", "mini"], argv
    assert "-ip.bind=0.0.0.0" in argv and "-s3.port=8333" in argv
    assert "ports" not in s3, "the blob store is reached on the compose network only"
    data_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("-dir="))
    assert f"s3:{data_dir}" in s3["volumes"] and "s3" in compose["volumes"]
    # Only the profile starts it: every other service runs without it.
    others = [n for n, svc in compose["services"].items() if "s3" in svc.get("profiles", [])]
    assert others == ["s3"]


def test_blob_users_reach_the_bucket_with_its_credentials(compose, environments) -> None:
    s3 = environments["s3"]
    bucket = urlparse(DOCUMENTED_URL).netloc
    assert s3["S3_BUCKET"] == bucket
    argv = _argv(compose["services"]["s3"]["entrypoint"])
    port = next(a.split("=")[1] for a in argv if a.startswith("-s3.port="))
    for name in BLOB_USERS:
        env = environments[name]
        assert env["NNKGEO_BLOB_URL"] == DOCUMENTED_URL, name
        assert env["AWS_ENDPOINT_URL"] == f"http://s3:{port}", name
        assert env["AWS_ACCESS_KEY_ID"] == s3["AWS_ACCESS_KEY_ID"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == s3["AWS_SECRET_ACCESS_KEY"], name
        assert env["AWS_ALLOW_HTTP"] == "true" and env["AWS_REGION"], name
        # started after the store when the profile is on, and without it otherwise
        depends = compose["services"][name]["depends_on"]["s3"]
        assert depends == {"condition": "service_started", "required": False}, name


def test_without_the_variable_blobs_stay_on_the_shared_volume(compose) -> None:
    for name in BLOB_USERS:
        raw = compose["services"][name]["environment"]
        env = {key: _resolve(value, {}) for key, value in raw.items()}
        assert env["NNKGEO_BLOB_URL"] == ""
        settings = Settings(data_dir=Path(env["NNKGEO_DATA_DIR"]), blob_url=env["NNKGEO_BLOB_URL"])
        blobs = open_blob_store(settings.blob_url, settings.data_dir)
        assert not isinstance(blobs, ObjectBlobStore)
        assert f"blobs:{env['NNKGEO_DATA_DIR']}" in compose["services"][name]["volumes"]


def test_the_services_environment_opens_an_s3_store(
    environments, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What the api's container would build from its environment (no request is sent)."""
    env = environments["api"]
    for key, value in env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    blobs = open_blob_store(env["NNKGEO_BLOB_URL"], tmp_path)
    assert isinstance(blobs, ObjectBlobStore)
