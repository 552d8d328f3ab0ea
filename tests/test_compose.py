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
    JENKINS,
    PLACEHOLDER,
    env_example_keys,
    is_secret_key,
    literal_secrets,
    variables_used,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SERVICES = {"jenkins", "agent", "agent-2", "postgres", "mlflow", "smtp"}


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


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The configuration as docker-compose resolves it with .env.example's settings."""
    result = run_compose(tmp_path_factory.mktemp("compose"), "config")
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    assert isinstance(data, dict)
    return data


def test_compose_defines_controller_agents_postgres_mlflow_and_smtp(
    resolved: dict[str, Any],
) -> None:
    """The resolved configuration has the jenkins, two agents, postgres, mlflow and smtp
    services."""
    assert set(resolved["services"]) >= SERVICES
    assert resolved["services"]["mlflow"]["image"].startswith("ghcr.io/mlflow/mlflow:")
    assert resolved["services"]["postgres"]["image"].startswith("postgres:")


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
    """The MLflow server image is the MLflow version requirements.txt pins for the clients,
    in its -full variant (the plain image has no PostgreSQL driver)."""
    pin = re.search(r"^mlflow==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M)
    assert pin
    assert compose["services"]["mlflow"]["image"] == f"ghcr.io/mlflow/mlflow:v{pin.group(1)}-full"


def _url(value: str) -> tuple[str, str, str, str]:
    """(scheme, user, password, host:port/database) of a database URL."""
    match = re.fullmatch(r"([a-z0-9+]+)://([^:@/]+):([^@/]+)@(.+)", value)
    assert match, f"not a database URL with a user and password: {value}"
    scheme, user, password, where = match.groups()
    return scheme, user, password, where


def test_mlflow_keeps_its_store_in_postgres_and_proxies_the_artifacts(
    compose: dict[str, Any], resolved: dict[str, Any]
) -> None:
    """mlflow server's backend store is the postgres service's database mlflow, whose URL
    (with POSTGRES_PASSWORD) it gets in its environment, not on its command line; the
    postgres service creates that database; artifacts go through the server into the
    mlflow_data volume; mlflow waits for a healthy postgres, which checks over TCP."""
    services = resolved["services"]
    mlflow, postgres = services["mlflow"], services["postgres"]
    backend = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert "--backend-store-uri" not in mlflow["command"]
    assert _url(backend) == (
        "postgresql+psycopg2",
        postgres["environment"]["POSTGRES_USER"],
        postgres["environment"]["POSTGRES_PASSWORD"],
        "postgres:5432/mlflow",
    )
    assert compose["services"]["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"] == (
        "postgresql+psycopg2://trainchain:${POSTGRES_PASSWORD}@postgres:5432/mlflow"
    )
    assert "CREATE DATABASE mlflow OWNER" in " ".join(postgres["command"])
    assert postgres["entrypoint"] == ["/bin/sh", "-c"]
    assert "exec docker-entrypoint.sh postgres" in postgres["command"][0]
    command = mlflow["command"]
    assert "--serve-artifacts" in command
    destination = command[command.index("--artifacts-destination") + 1]
    assert command[command.index("--default-artifact-root") + 1] == "mlflow-artifacts:/"
    volumes = {str(v).split(":")[1]: str(v).split(":")[0] for v in mlflow["volumes"]}
    assert volumes["/mlflow"] == "mlflow_data" and destination.startswith("/mlflow/")
    assert mlflow["depends_on"]["postgres"] == {"condition": "service_healthy"}
    check = postgres["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"] and check[check.index("-h") + 1] == "127.0.0.1"
    assert {str(v).split(":")[0] for v in postgres["volumes"]} == {"postgres_data"}


def test_the_builds_use_the_postgres_and_mlflow_services(resolved: dict[str, Any]) -> None:
    """Every build's TRAINCHAIN_STUDY_STORAGE (the controller passes it on, casc.yaml) is
    the postgres service's database trainchain with POSTGRES_PASSWORD's password, and its
    TRAINCHAIN_TRACKING_URI the mlflow service; the agents start after both."""
    services = resolved["services"]
    jenkins, postgres = services["jenkins"]["environment"], services["postgres"]["environment"]
    assert _url(jenkins["TRAINCHAIN_STUDY_STORAGE"]) == (
        "postgresql+psycopg2",
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        f"postgres:5432/{postgres['POSTGRES_DB']}",
    )
    assert jenkins["TRAINCHAIN_TRACKING_URI"] == "http://mlflow:5000"
    for agent in ("agent", "agent-2"):
        assert {"postgres", "mlflow"} <= set(services[agent]["depends_on"])


def test_the_second_agent_is_the_first_with_a_workspace_of_its_own(
    resolved: dict[str, Any],
) -> None:
    """agent-2 runs the agent's image with its settings and mounts, but its own Jenkins
    workspace volume; casc.yaml's docker-agent-2 reaches it at AGENT_2_HOST, whose example
    is the service's name, with the same labels as docker-agent-1."""
    first, second = resolved["services"]["agent"], resolved["services"]["agent-2"]
    for key in ("image", "build", "environment", "depends_on"):
        assert first[key] == second[key], key
    workspace = "/home/jenkins/agent"
    assert [v for v in first["volumes"] if not v.startswith("agent_workspace:")] == [
        v for v in second["volumes"] if not v.startswith("agent_2_workspace:")
    ]
    assert f"agent_2_workspace:{workspace}:rw" in second["volumes"]
    nodes = {
        n["permanent"]["name"]: n["permanent"]
        for n in yaml.safe_load((JENKINS / "casc.yaml").read_text())["jenkins"]["nodes"]
    }
    assert nodes["docker-agent-2"]["launcher"]["ssh"]["host"] == "${AGENT_2_HOST}"
    assert nodes["docker-agent-1"]["launcher"]["ssh"]["host"] == "${AGENT_HOST}"
    assert nodes["docker-agent-2"]["labelString"] == nodes["docker-agent-1"]["labelString"]
    assert nodes["docker-agent-2"]["remoteFS"] == workspace
    example = env_example_entries()
    assert (example["AGENT_HOST"][0], example["AGENT_2_HOST"][0]) == ("agent", "agent-2")
    assert resolved["services"]["jenkins"]["environment"]["AGENT_2_HOST"] == "agent-2"


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
    """Jenkins's home, PostgreSQL's data and MLflow's artifacts are named volumes, so they
    outlive the containers."""
    volumes = set(compose["volumes"])
    mounts = {
        name: {str(v).split(":", 1)[0] for v in service.get("volumes", [])}
        for name, service in compose["services"].items()
    }
    assert "jenkins_home" in mounts["jenkins"] & volumes
    assert "mlflow_data" in mounts["mlflow"] & volumes
    assert "postgres_data" in mounts["postgres"] & volumes


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
