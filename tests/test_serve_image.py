"""The prediction service's image (target serve of images/Dockerfile, with the lock
images/serve/requirements.txt) and its compose service.

The first tests read the Dockerfile, its lock and docker-compose.yml, without an engine:
a pinned base by ARG, packages only from the wheelhouse, a non-root user, the health
check on /health, the service command, a lock that holds the EEG family's libraries at
the repository's versions. The last (the Docker tier) builds the image with
scripts/build-images.sh serve (offline, from the wheelhouse cache; about 80 s cold, a
few seconds when only src/ changed), serves a registered EEG model from a tracking
server on the host, and classifies through it. Without an engine it is skipped with the
reason, except where CI is set: there that fails the run.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import trainchain
from tests.conftest import REPO_ROOT, eventually, free_port, run_cli, unavailable
from tests.test_images import DEFAULT_BASE, DOCKERFILE, canonical, final_stage, instructions, pins

SERVE = REPO_ROOT / "images" / "serve"
IMAGE = f"trainchain/serve:{trainchain.__version__}"
PORT = 5005


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    """The whole Dockerfile's instructions."""
    return instructions(DOCKERFILE)


@pytest.fixture(scope="module")
def image(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions that make the service's image: target serve and what it starts from."""
    return final_stage(steps, "serve")


def test_base_is_an_arg_with_the_pinned_official_default(steps: list[tuple[str, str]]) -> None:
    """The first instruction sets BASE_IMAGE; every stage starts from it or an earlier one."""
    assert steps[0] == ("ARG", f"BASE_IMAGE={DEFAULT_BASE}")
    stages: list[str] = []
    for keyword, args in steps:
        if keyword == "FROM":
            words = args.split()
            assert words[0] == "${BASE_IMAGE}" or words[0] in stages, f"FROM {args}"
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(words[2])
    assert final_stage(steps, "serve")[0] == ("FROM", "${BASE_IMAGE} AS runtime")


def test_installs_only_from_the_wheelhouse(steps: list[tuple[str, str]]) -> None:
    """Every pip install is --no-index from a copied folder into /opt/venv; nothing is fetched."""
    runs = [args for keyword, args in steps if keyword == "RUN"]
    installs = [p for run in runs for p in run.split("&&") if re.search(r"pip\s+install", p)]
    assert len(installs) == 2, installs
    for part in installs:
        assert "--no-index" in part and "--find-links /tmp/" in part, part
        assert part.strip().startswith("/opt/venv/bin/python -m pip"), part
    assert any("-r /tmp/requirements.txt" in p for p in installs)
    trainchain_install = [p for p in installs if re.search(r"\btrainchain\s*$", p.strip())]
    assert trainchain_install and "--no-deps" in trainchain_install[0]
    joined = " ".join(runs)
    for fetcher in ("curl ", "wget ", "pip download", "--index-url", "--extra-index-url"):
        assert fetcher not in joined, f"the build fetches from the network: {fetcher.strip()}"
    for keyword, args in final_stage(steps, "serve"):
        if keyword in ("COPY", "ADD"):
            assert args.startswith("--from=") and "wheelhouse" not in args, args


def test_runs_the_service_as_the_non_root_user(image: list[tuple[str, str]]) -> None:
    """USER trainchain (uid 1000), the venv first on PATH, and the image's labels."""
    steps = image
    assert [args for keyword, args in steps if keyword == "USER"][-1] == "trainchain"
    assert "useradd --uid 1000" in " ".join(args for keyword, args in steps if keyword == "RUN")
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    for setting in ("PATH=/opt/venv/bin:$PATH", "PYTHONUNBUFFERED=1", "MNE_LOGGING_LEVEL=ERROR"):
        assert setting in env
    labels = " ".join(args for keyword, args in steps if keyword == "LABEL")
    # the family is the build argument, which build-images.sh sets to serve for this target
    assert 'trainchain.family="${FAMILY}"' in labels
    assert f'org.opencontainers.image.version="{trainchain.__version__}"' in labels
    assert "org.opencontainers.image.title=" in labels


def test_command_serves_the_named_model_on_port_5005(image: list[tuple[str, str]]) -> None:
    """CMD runs `trainchain serve` for $TRAINCHAIN_SERVE_MODEL on 0.0.0.0:5005 (exec: it gets
    the stop signal), waiting for a model not registered yet, and the port is exposed."""
    steps = image
    assert ("EXPOSE", str(PORT)) in steps
    assert not [args for keyword, args in steps if keyword == "ENTRYPOINT"]
    command = json.loads([args for keyword, args in steps if keyword == "CMD"][-1])
    assert command[:2] == ["sh", "-c"]
    script = command[2]
    assert script.startswith("exec trainchain serve ")
    assert '--model "${TRAINCHAIN_SERVE_MODEL:?' in script
    assert f"--host 0.0.0.0 --port {PORT}" in script
    assert " --wait-for-model " in script  # a container may start before the chain registers


def test_health_check_asks_health_with_a_timeout(image: list[tuple[str, str]]) -> None:
    """HEALTHCHECK calls /health on the service's port with the image's own Python (no curl)."""
    steps = image
    checks = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    check = checks[0]
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in check
    command = json.loads(check.split(" CMD ", 1)[1])
    assert command[0] == "python"
    assert f"http://127.0.0.1:{PORT}/health" in command[-1] and "timeout=" in command[-1]


def test_lock_holds_the_eeg_family_and_the_web_stack_at_the_repositorys_versions() -> None:
    """requirements.txt: exact pins, the EEG image's lock plus Flask, gunicorn and
    prometheus_client, agreeing with the repository's requirements.txt; no TensorFlow, no
    trainchain."""
    serve = pins(SERVE / "requirements.txt")
    repo = pins(REPO_ROOT / "requirements.txt")
    eeg = pins(REPO_ROOT / "images" / "eeg" / "requirements.txt")
    for name, version in serve.items():
        assert repo.get(name) == version, f"{name}=={version}; requirements.txt: {repo.get(name)}"
    assert {name: serve.get(name) for name in eeg} == eeg, "the EEG family's lock, unchanged"
    web = ("Flask", "gunicorn", "Werkzeug", "prometheus_client", "pillow")
    assert {canonical(n) for n in web} <= set(serve)
    assert not {"tensorflow-cpu", "tensorflow", "keras", "trainchain"} & set(serve)


def test_build_script_builds_the_serve_image() -> None:
    """scripts/build-images.sh knows the serve family, names it trainchain/serve, and parses."""
    text = (REPO_ROOT / "scripts" / "build-images.sh").read_text(encoding="utf-8")
    assert "eeg | sklearn | tensorflow | serve)" in text
    assert "image=trainchain/serve:$VERSION" in text
    assert "target=serve" in text and '--build-arg "FAMILY=$family"' in text
    done = subprocess.run(
        ["bash", "-n", str(REPO_ROOT / "scripts" / "build-images.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_compose_service_runs_the_image_against_the_mlflow_service() -> None:
    """docker-compose.yml's serve: this image with its command (which waits for the model),
    port 5005, the model from .env, MLflow's compose URL, a /health check, and it waits for
    MLflow to be healthy."""
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["serve"]
    assert service["image"] == IMAGE
    assert "command" not in service, "the image's CMD (with --wait-for-model) must apply"
    assert service["ports"] == [f"{PORT}:{PORT}"]
    env = service["environment"]
    assert env["TRAINCHAIN_SERVE_MODEL"] == "${TRAINCHAIN_SERVE_MODEL}"
    assert env["TRAINCHAIN_TRACKING_URI"] == "http://mlflow:5000"
    assert f"http://127.0.0.1:{PORT}/health" in " ".join(service["healthcheck"]["test"])
    assert service["depends_on"] == {"mlflow": {"condition": "service_healthy"}}
    assert service["init"] is True
    example = (REPO_ROOT / ".env.example").read_text()
    assert re.search(r"^TRAINCHAIN_SERVE_MODEL=eeg-motor-imagery$", example, re.M)


# --------------------------------------------------------------------- the Docker tier


def request(
    address: tuple[str, int], method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    """One HTTP request: (status, body)."""
    conn = http.client.HTTPConnection(*address, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for(address: tuple[str, int], path: str, seconds: float, detail: Callable[[], str]) -> int:
    """GET path until it answers 200, and return that; fail the test with ``detail()`` (a
    log) when it has not within ``seconds``."""

    def status() -> int:
        try:
            return request(address, "GET", path)[0]
        except OSError:
            return 0  # no answer yet

    return eventually(
        lambda: status() == 200 and 200, f"GET {path} to answer 200", seconds, 0.5, detail
    )


def classify(address: tuple[str, int], body: bytes, content_type: str) -> dict[str, Any]:
    status, answer = request(address, "POST", "/classify", body, **{"content-type": content_type})
    assert status == 200, answer[:2000]
    result: dict[str, Any] = json.loads(answer)
    return result


@pytest.fixture(scope="module")
def serve_image() -> str:
    """trainchain/serve built by scripts/build-images.sh serve (a no-op when up to date)."""
    from trainchain.adapters.images import docker_client
    from trainchain.core.errors import TrainchainError

    try:
        docker_client(timeout=10)
    except TrainchainError as err:
        unavailable(str(err), "Docker")
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "build-images.sh"), "serve"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return IMAGE


@pytest.fixture
def bridge() -> Iterator[tuple[str, str]]:
    """A user-defined bridge network: (its name, the host's address on it)."""
    from trainchain.adapters.images import docker_client

    client = docker_client()
    network = client.networks.create(f"trainchain-test-serve-{uuid.uuid4().hex[:8]}")
    try:
        network.reload()
        yield network.name, network.attrs["IPAM"]["Config"][0]["Gateway"]
    finally:
        network.remove()


@pytest.fixture
def shared_home(home: Path) -> Iterator[Path]:
    """A TRAINCHAIN_HOME the container's user (uid 1000) can read: pytest's tmp_path is
    private to root (0700), so this one is a folder of its own, 0755."""
    path = Path(tempfile.mkdtemp(prefix="trainchain-test-serve-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.docker
@pytest.mark.slow
def test_image_serves_the_champion_from_a_tracking_server(
    serve_image: str,
    bridge: tuple[str, str],
    shared_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The image as built, with only TRAINCHAIN_SERVE_MODEL and TRAINCHAIN_TRACKING_URI set:
    its health check passes, and /classify answers JSON and .npy with the champion's
    labels (the same as the model gives on the host)."""
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.sklearn import load_model

    from trainchain.adapters.containers import connect
    from trainchain.families.eeg import load_epochs
    from trainchain.families.eeg_synth import write_synthetic_dataset

    home = shared_home
    data = tmp_path / "easy"
    write_synthetic_dataset(data, subjects=1, difficulty="easy", seed=0, trials_per_class=60)
    chain = run_cli(
        "run",
        str(REPO_ROOT / "examples" / "eeg-motor-imagery"),
        "--executor",
        "local",
        "--data",
        str(data),
        "--home",
        str(home),
        "--max-trials",
        "1",
        "--threshold",
        "0.5",
    )
    assert chain.returncode == 0, chain.stdout + chain.stderr
    store = f"sqlite:///{home / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    expected_version = MlflowClient(store).get_model_version_by_alias(
        "eeg-motor-imagery", "champion"
    )
    X, _, _ = load_epochs(data)
    batch = X[:6]
    expected = [str(v) for v in load_model("models:/eeg-motor-imagery@champion").predict(batch)]

    network, gateway = bridge
    mlflow_port = free_port()
    server_args = ["--backend-store-uri", store, "--host", gateway, "--port", str(mlflow_port)]
    mlflow_log = tmp_path / "mlflow.log"
    with mlflow_log.open("w") as log:
        server = subprocess.Popen(  # the tracking server the container asks, on the bridge
            [sys.executable, "-m", "mlflow", "server", *server_args, "--workers", "1"],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = connect(timeout=60)
    container = None
    try:
        tracking = f"http://{gateway}:{mlflow_port}"
        assert wait_for((gateway, mlflow_port), "/health", 90, mlflow_log.read_text) == 200
        host_port = free_port()
        container = client.containers.run(
            serve_image,
            detach=True,
            init=True,
            network=network,
            ports={f"{PORT}/tcp": ("127.0.0.1", host_port)},
            environment={
                "TRAINCHAIN_SERVE_MODEL": "eeg-motor-imagery",
                "TRAINCHAIN_TRACKING_URI": tracking,
            },
            # the runs' artifacts are files under home: the same path inside, read-only
            volumes={str(home): {"bind": str(home), "mode": "ro"}},
            labels={"trainchain.test": "serve-image"},
        )
        address = ("127.0.0.1", host_port)
        running = container

        def container_log() -> str:
            return "the container's log:\n" + running.logs().decode(errors="replace")[-4000:]

        status = wait_for(address, "/health", 120, container_log)
        assert status == 200, f"/health answered {status}; {container_log()}"

        health = client.api.inspect_container(container.id)["Config"]["Healthcheck"]["Test"]
        assert health[0] == "CMD"
        code, output = container.exec_run(health[1:])
        assert code == 0, output

        answer = classify(address, json.dumps(batch.tolist()).encode(), "application/json")
        assert answer["labels"] == expected
        assert answer["model"] == "eeg-motor-imagery"
        assert answer["version"] == str(expected_version.version)
        assert answer["alias"] == "champion"
        buffer = io.BytesIO()
        np.save(buffer, batch)
        answer = classify(address, buffer.getvalue(), "application/x-npy")
        assert answer["labels"] == expected
    finally:
        if container is not None:
            container.remove(force=True)
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
