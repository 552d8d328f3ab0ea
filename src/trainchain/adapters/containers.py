"""The Docker adapter: the engine's client, and containers as trainchain uses them.

One client factory (:func:`connect`: pinged, with the engine's address and a hint in
:class:`DockerUnavailable` when it does not answer), the ``trainchain.*`` labels, creating a
container (and the replacement of a dead one), reading its state, stopping and removing it,
keeping its log and exit state, and streaming its log through
:func:`trainchain.adapters.procgroup.pump`. No training policy lives here: the executor
(:mod:`trainchain.executors.docker`) defines the container of an attempt,
:mod:`trainchain.supervise.restarts` decides about restarts.

The docker SDK is imported lazily: importing this module needs no engine.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from trainchain.adapters import procgroup
from trainchain.contract import task
from trainchain.core import keys
from trainchain.core.detect import image_family
from trainchain.core.errors import TrainingError

log = logging.getLogger(__name__)

TAIL_LINES = 30
CONTAINER_RECORD = "container.json"
DEFAULT_LOG_NAME = "train.log"

# Labels. ``trainchain.model/run/chain/trial/attempt`` come from the spec.
LABEL_MANAGED = keys.MANAGED
LABEL_RUN = keys.RUN
LABEL_TRIAL = keys.TRIAL
LABEL_ATTEMPT = keys.ATTEMPT
LABEL_RESTARTS = keys.RESTARTS
LABEL_ATTEMPT_DIR = keys.ATTEMPT_DIR  # host folder for this attempt's log and records
LABEL_LOG_NAME = keys.LOG_NAME  # the log file's name inside the attempt folder
LABEL_REPORT = keys.REPORT_FILE  # host path of the report (the heartbeat)
LABEL_MAX_RESTARTS = keys.MAX_RESTARTS
LABEL_HEARTBEAT = keys.HEARTBEAT_LIMIT
LABEL_BACKOFF = keys.BACKOFF  # "<first delay>/<longest delay>" in seconds

_NO_TIME = "0001-01-01T00:00:00Z"
_BUILD_HINT = "run scripts/build-images.sh {family} (or `trainchain images build`)"


class ImageMissing(TrainingError):
    """The training image does not exist in the Docker engine."""


class DockerUnavailable(TrainingError):
    """No Docker engine answers."""


def docker_sdk() -> Any:
    import docker

    return docker


class EngineError(TrainingError):
    """The Docker engine failed a request after it had answered (it went away, or refused)."""


_ENGINE_HINT = (
    "check that the engine runs (`docker info`), start it with scripts/start-docker.sh, "
    "or train without Docker with --executor local"
)


def engine_url(base_url: str | None = None) -> str:
    """Where the client talks to: ``base_url``, else DOCKER_HOST, else the default socket."""
    return base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


@contextlib.contextmanager
def engine_errors(doing: str, base_url: str | None = None) -> Iterator[None]:
    """Errors of the docker SDK and of its HTTP transport inside the block become an
    :class:`EngineError` that names the engine, what was being done, and what to try."""
    docker = docker_sdk()
    import requests

    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
        raise EngineError(
            f"the Docker engine at {engine_url(base_url)} failed while {doing}: {err}",
            hint=_ENGINE_HINT,
        ) from err


def connect(base_url: str | None = None, timeout: float = 30.0) -> Any:
    """A docker client that has answered a ping; :class:`DockerUnavailable` otherwise.

    The one way trainchain makes a Docker client (the executor, the watchdog, images)."""
    docker = docker_sdk()
    import requests

    where = engine_url(base_url)

    def unavailable(why: object) -> DockerUnavailable:
        return DockerUnavailable(
            f"the Docker engine does not answer at {where} (DOCKER_HOST, or the socket "
            f"/var/run/docker.sock when it is unset): {why}",
            hint="start one with scripts/start-docker.sh, point DOCKER_HOST at a running engine, "
            "or train without Docker with --executor local",
        )

    if where.startswith("unix://"):
        # probed here: the SDK leaks the socket of a refused connection
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            try:
                probe.connect(where.removeprefix("unix://"))
            except FileNotFoundError:
                raise unavailable("there is no such socket") from None
            except OSError as err:
                raise unavailable(err) from None
    client = None
    try:
        if base_url:
            client = docker.DockerClient(base_url=base_url, timeout=timeout)
        else:
            client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as err:
        if client is not None:
            client.close()
        raise unavailable(err) from None
    return client


def check_image(client: Any, image: str) -> Any:
    """The image object; :class:`ImageMissing` (saying how to build it) when it does not exist."""
    docker = docker_sdk()
    try:
        return client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ImageMissing(
            f"the training image {image!r} does not exist in the Docker engine",
            hint=_BUILD_HINT.format(family=image_family(image))
            + "; or set `image:` in trainchain.yaml to an image that exists",
        ) from None


@dataclass(frozen=True)
class BindMount:
    source: Path
    target: str
    read_only: bool


def _container_name(labels: Mapping[str, str]) -> str:
    trial = labels.get(LABEL_TRIAL, "0")
    attempt = labels.get(LABEL_ATTEMPT, "0")
    return f"trainchain-t{trial}-a{attempt}-{uuid.uuid4().hex[:8]}"


def create_container(
    client: Any,
    *,
    image: str,
    command: list[str],
    environment: Mapping[str, str] | list[str],
    mounts: list[BindMount],
    labels: Mapping[str, str],
    user: str | None,
    network: str,
    mem_limit: int | str | None,
    memswap_limit: int | str | None,
    nano_cpus: int | None,
    working_dir: str | None,
) -> Any:
    """Create (not start) a training container: init, never auto-removed."""
    docker = docker_sdk()
    try:
        return client.containers.create(
            image=image,
            command=command,
            environment=environment,
            mounts=[
                docker.types.Mount(m.target, str(m.source), type="bind", read_only=m.read_only)
                for m in mounts
            ],
            labels=dict(labels),
            user=user,
            network_mode=network,
            mem_limit=mem_limit,
            memswap_limit=memswap_limit,
            nano_cpus=nano_cpus,
            working_dir=working_dir,
            init=True,
            detach=True,
            auto_remove=False,
            name=_container_name(labels),
        )
    except docker.errors.ImageNotFound:
        raise ImageMissing(
            f"the training image {image!r} does not exist in the Docker engine",
            hint=_BUILD_HINT.format(family=image_family(image)),
        ) from None


def create_replacement(client: Any, attrs: Mapping[str, Any], *, attempt_dir: Path) -> Any:
    """A new container like the dead one in ``attrs`` (same image, mounts, env), attempt + 1."""
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    labels = dict(config.get("Labels") or {})
    attempt = int(labels.get(LABEL_ATTEMPT, "1")) + 1
    labels[LABEL_ATTEMPT] = str(attempt)
    labels[LABEL_RESTARTS] = str(int(labels.get(LABEL_RESTARTS, "0")) + 1)
    labels[LABEL_ATTEMPT_DIR] = str(attempt_dir)
    env = [e for e in config.get("Env") or [] if not e.startswith(f"{task.ENV_ATTEMPT}=")]
    env.append(f"{task.ENV_ATTEMPT}={attempt}")
    mounts = [
        BindMount(Path(m["Source"]), m["Target"], bool(m.get("ReadOnly")))
        for m in host.get("Mounts") or []
    ]
    attempt_dir.mkdir(parents=True, exist_ok=True)
    return create_container(
        client,
        image=attrs.get("Image") or config["Image"],  # the image id: exactly the same image
        command=list(config.get("Cmd") or []),
        environment=env,
        mounts=mounts,
        labels=labels,
        user=config.get("User") or None,
        network=host.get("NetworkMode") or "none",
        mem_limit=host.get("Memory") or None,
        memswap_limit=host.get("MemorySwap") or None,
        nano_cpus=host.get("NanoCpus") or None,
        working_dir=config.get("WorkingDir") or None,
    )


# --- reading a container's state ---------------------------------------------------------------


def parse_time(value: str | None) -> float | None:
    """Docker's RFC 3339 time (nanoseconds allowed) as a Unix time; None when unset."""
    if not value or value.startswith(_NO_TIME[:10]):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class ContainerInfo:
    """What the supervisors read of one container (from ``docker inspect``)."""

    id: str
    name: str
    image: str
    image_id: str
    labels: Mapping[str, str]
    status: str
    exit_code: int | None
    oom_killed: bool
    started_at: float | None
    finished_at: float | None
    pid: int
    attrs: Mapping[str, Any]

    @property
    def attempt(self) -> int:
        return int(self.labels.get(LABEL_ATTEMPT, "1"))

    @property
    def restarts(self) -> int:
        return int(self.labels.get(LABEL_RESTARTS, "0"))

    @property
    def attempt_dir(self) -> Path | None:
        value = self.labels.get(LABEL_ATTEMPT_DIR)
        return Path(value) if value else None

    @property
    def log_name(self) -> str:
        return self.labels.get(LABEL_LOG_NAME) or DEFAULT_LOG_NAME

    def report_mtime(self) -> float | None:
        value = self.labels.get(LABEL_REPORT)
        if not value:
            return None
        try:
            return Path(value).stat().st_mtime
        except OSError:
            return None

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "image_id": self.image_id,
            "labels": dict(self.labels),
            "status": self.status,
            "exit_code": self.exit_code,
            "oom_killed": self.oom_killed,
            "started_at": self.attrs.get("State", {}).get("StartedAt"),
            "finished_at": self.attrs.get("State", {}).get("FinishedAt"),
            "error": self.attrs.get("State", {}).get("Error") or None,
        }


def info_from_attrs(attrs: Mapping[str, Any]) -> ContainerInfo:
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    status = str(state.get("Status", "unknown"))
    running = status in {"running", "created", "restarting", "paused"}
    return ContainerInfo(
        id=str(attrs["Id"]),
        name=str(attrs.get("Name", "")).lstrip("/"),
        image=str(config.get("Image", "")),
        image_id=str(attrs.get("Image", "")),
        labels=dict(config.get("Labels") or {}),
        status=status,
        exit_code=None if running else int(state.get("ExitCode", 0)),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=parse_time(state.get("StartedAt")),
        finished_at=parse_time(state.get("FinishedAt")),
        pid=int(state.get("Pid") or 0),
        attrs=attrs,
    )


def inspect(container: Any) -> ContainerInfo:
    """Fresh state of ``container``; raises ``docker.errors.NotFound`` when it is gone."""
    container.reload()
    return info_from_attrs(container.attrs)


def is_not_found(err: BaseException) -> bool:
    return isinstance(err, docker_sdk().errors.NotFound)


def stop(container: Any, grace: float) -> None:
    """SIGTERM (through init), then SIGKILL after ``grace`` seconds; quiet when already gone."""
    docker = docker_sdk()
    try:
        container.stop(timeout=max(1, round(grace)))
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as err:
        log.warning("could not stop container %s (%s); killing it", container.id[:12], err)
        with contextlib.suppress(docker.errors.APIError):
            container.kill()


def remove(container: Any) -> None:
    docker = docker_sdk()
    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True)


def save_json(path: Path, record: Mapping[str, Any]) -> None:
    """Write a record atomically (a reader sees the old file or the new one)."""
    task.atomic_write_bytes(path, json.dumps(dict(record), indent=2, default=str).encode("utf-8"))


def save_record(
    container: Any, info: ContainerInfo, folder: Path, **extra: Any
) -> tuple[Path, str]:
    """Keep the container's full log and exit state in ``folder``; return the record and tail.

    The log replaces ``<folder>/<log name>`` (what was streamed is a prefix of it);
    the exit state goes to ``<folder>/container.json``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    log_path = folder / info.log_name
    tmp = folder / f".{info.log_name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with tmp.open("w", encoding="utf-8") as out:
            for line in _lines(container.logs(stream=True, follow=False)):
                out.write(line + "\n")
                tail.append(line)
        os.replace(tmp, log_path)
    except Exception as err:  # the log is evidence, not a reason to lose the exit state
        log.warning("could not keep the log of container %s: %s", info.id[:12], err)
    finally:
        tmp.unlink(missing_ok=True)
    record_path = folder / CONTAINER_RECORD
    record = info.record() | {"saved_at": time.time()} | extra
    save_json(record_path, record)
    return record_path, "\n".join(tail)


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", errors="replace").rstrip("\r")
    if buffer:
        yield buffer.decode("utf-8", errors="replace").rstrip("\r")


def stream_log(
    container: Any,
    log_path: Path,
    tail: collections.deque[str],
    on_line: procgroup.LineSink | None,
) -> None:
    """Stream the container's log into ``log_path``, ``tail`` and ``on_line`` until it ends."""
    source = f"container {container.id[:12]}"
    try:
        stream = container.logs(stream=True, follow=True)
    except Exception as err:  # removed before its log was asked for: the record has it
        log.debug("no log stream of %s: %s", source, err)
        return
    with log_path.open("a", encoding="utf-8") as out:
        procgroup.pump(_lines(stream), log_file=out, tail=tail, on_line=on_line, source=source)
