"""docker-compose.yml and .env.example: valid for Debian's docker-compose 1.29, pinned, no secrets.

`docker-compose config` is the real check (the file as Compose reads it); it needs the
`docker-compose` binary, which scripts/start-docker.sh installs. Where it is missing
these tests are skipped, except where CI is set: there that fails the run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import unavailable
from tests.test_jenkins_controller import (
    PLACEHOLDER,
    env_example_keys,
    is_secret_key,
    literal_secrets,
    variables_used,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SERVICES = {"jenkins", "agent", "mlflow", "smtp"}


def require_compose() -> str:
    """The docker-compose binary; skip where it is missing, but fail where CI is set."""
    binary = shutil.which("docker-compose")
    if binary is not None:
        return binary
    unavailable("docker-compose is not installed (scripts/start-docker.sh installs it)", "compose")


def run_compose(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """docker-compose with .env.example as its .env, and none of its variables from the shell."""
    env_file = tmp_path / ".env"
    shutil.copyfile(REPO_ROOT / ".env.example", env_file)
    keys = env_example_keys()
    env = {k: v for k, v in os.environ.items() if k not in keys}
    return subprocess.run(
        [require_compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def env_example_entries() -> dict[str, tuple[str, str]]:
    """name -> (value, the comment line just above it) of .env.example."""
    entries: dict[str, tuple[str, str]] = {}
    previous = ""
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            name, value = stripped.split("=", 1)
            entries[name] = (value, previous)
        previous = stripped
    return entries


def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    """`docker-compose config -q` accepts the file with the example settings."""
    result = run_compose(tmp_path, "config", "-q")
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_compose_defines_controller_agent_mlflow_and_smtp(tmp_path: Path) -> None:
    """The resolved configuration has the jenkins, agent, mlflow and smtp services."""
    result = run_compose(tmp_path, "config")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) >= SERVICES
    assert resolved["services"]["mlflow"]["image"].startswith("ghcr.io/mlflow/mlflow:")


def test_file_format_is_one_docker_compose_1_29_reads(compose: dict[str, Any]) -> None:
    """The file declares format 2.4, the v1 syntax of Debian's docker-compose 1.29."""
    assert compose["version"] == "2.4"


def test_every_service_image_is_pinned(compose: dict[str, Any]) -> None:
    """Each service names its image with an explicit tag that is not latest."""
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"


def test_mlflow_server_matches_the_pinned_mlflow(compose: dict[str, Any]) -> None:
    """The MLflow server image is the MLflow version requirements.txt pins for the clients."""
    pin = re.search(r"^mlflow==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    assert pin
    assert compose["services"]["mlflow"]["image"] == f"ghcr.io/mlflow/mlflow:v{pin.group(1)}"


def test_built_services_use_the_jenkins_dockerfiles(compose: dict[str, Any]) -> None:
    """The controller builds from jenkins/, the agent from jenkins/agent/Dockerfile."""
    services = compose["services"]
    assert services["jenkins"]["build"]["context"] == "./jenkins"
    agent = services["agent"]["build"]
    assert (REPO_ROOT / agent["context"] / agent["dockerfile"]).is_file()
    casc_path = services["jenkins"]["environment"]["CASC_JENKINS_CONFIG"]
    assert f"ENV CASC_JENKINS_CONFIG={casc_path}" in (REPO_ROOT / "jenkins/Dockerfile").read_text()


def test_serve_starts_only_when_asked_for(compose: dict[str, Any]) -> None:
    """The prediction service placeholder sits behind the serve profile."""
    assert compose["services"]["serve"]["profiles"] == ["serve"]


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    """Jenkins's home and MLflow's store are named volumes, so they outlive the containers."""
    volumes = set(compose["volumes"])
    mounts = {
        name: {str(v).split(":", 1)[0] for v in service.get("volumes", [])}
        for name, service in compose["services"].items()
    }
    assert "jenkins_home" in mounts["jenkins"] & volumes
    assert "mlflow_data" in mounts["mlflow"] & volumes


def test_compose_holds_no_literal_secret(compose: dict[str, Any]) -> None:
    """Every secret-ish value in docker-compose.yml is exactly one ${VAR} placeholder."""
    assert any(
        is_secret_key(key)
        for name in compose["services"]
        for key in compose["services"][name].get("environment", {})
    )
    assert literal_secrets(compose) == []


def test_every_compose_variable_is_documented_in_env_example(compose: dict[str, Any]) -> None:
    """Each ${VAR} docker-compose.yml substitutes is listed in .env.example."""
    used = variables_used(compose)
    assert used
    assert used - env_example_keys() == set()


def test_env_example_has_only_placeholder_secrets_and_a_comment_each() -> None:
    """.env.example's secrets are change-me, and every variable has a comment above it."""
    entries = env_example_entries()
    secrets = {name: value for name, (value, _) in entries.items() if is_secret_key(name)}
    assert {"JENKINS_ADMIN_PASSWORD", "GITHUB_WEBHOOK_SECRET", "AGENT_SSH_PRIVATE_KEY"} <= set(
        secrets
    )
    assert {name for name, value in secrets.items() if value != "change-me"} == set()
    assert [name for name, (_, comment) in entries.items() if not comment.startswith("#")] == []
    assert not any(PLACEHOLDER.search(value) for value, _ in entries.values())


def test_env_file_is_ignored_by_git() -> None:
    """git ignores .env, where the real secrets go, and keeps .env.example."""
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO_ROOT, check=False, timeout=30
    )
    assert ignored.returncode == 0
    example = subprocess.run(
        ["git", "check-ignore", "-q", ".env.example"], cwd=REPO_ROOT, check=False, timeout=30
    )
    assert example.returncode == 1
