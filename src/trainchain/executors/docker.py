"""Run an attempt in a Docker container, through the docker SDK (one adapter for the engine).

Every container carries ``trainchain.*`` labels, mounts the repository, data,
params and data options read-only and the checkpoint, output and report folders
read-write, runs with ``init``, as a non-root user, without network unless
asked, under memory and CPU limits. Its log streams to the console and the
attempt's log file while it runs; after it ends its exit state goes to
``<attempt dir>/container.json`` and its full log to the log file, and only then
is it removed.

A container that fails is restarted as a new attempt of the same trial (same
image, mounts, checkpoint folder and environment, ``TRAINCHAIN_ATTEMPT`` + 1),
by whoever claims it first: :meth:`DockerExecutor.run` for its own trial, or a
``trainchain watchdog``. ``run`` follows the trial through its restarts and
returns one result for it. The restart and claim logic lives in
:mod:`trainchain.watchdog`; this module holds the container primitives it uses.

The docker SDK is imported lazily: importing this module needs no engine.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from trainchain import procgroup, task
from trainchain.errors import TrainingError
from trainchain.executors._base import AttemptResult, AttemptSpec, LineSink

if TYPE_CHECKING:
    from trainchain.config import Train
    from trainchain.config import WatchdogPolicy as WatchdogConfig
    from trainchain.watchdog import WatchdogPolicy

log = logging.getLogger(__name__)

TAIL_LINES = 30
POLL_S = 0.5
CONTAINER_RECORD = "container.json"
DEFAULT_LOG_NAME = "train.log"

# Labels. ``trainchain.model/run/chain/trial/attempt`` come from the spec.
LABEL_MANAGED = "trainchain.managed"
LABEL_RUN = "trainchain.run"
LABEL_TRIAL = "trainchain.trial"
LABEL_ATTEMPT = "trainchain.attempt"
LABEL_RESTARTS = "trainchain.restarts"
LABEL_ATTEMPT_DIR = "trainchain.attempt_dir"  # host folder for this attempt's log and records
LABEL_LOG_NAME = "trainchain.log_name"  # the log file's name inside the attempt folder
LABEL_REPORT = "trainchain.report_file"  # host path of the report (the heartbeat)
LABEL_MAX_RESTARTS = "trainchain.max_restarts"
LABEL_HEARTBEAT = "trainchain.heartbeat_limit"
LABEL_BACKOFF = "trainchain.backoff"  # "<first delay>/<longest delay>" in seconds

# Where the contract's paths are inside the container.
C_REPO = "/repo"
C_DATA = "/data"
C_PARAMS = "/trainchain/params.json"
C_DATA_OPTIONS = "/trainchain/data_options.json"
C_CHECKPOINT = "/checkpoint"
C_OUTPUT = "/output"
C_REPORT_DIR = "/report"

_NO_TIME = "0001-01-01T00:00:00Z"
_BUILD_HINT = "run scripts/build-images.sh {family} (or `trainchain images build`)"


class ImageMissing(TrainingError):
    """The training image does not exist in the Docker engine."""


class DockerUnavailable(TrainingError):
    """No Docker engine answers."""


def _docker() -> Any:
    import docker

    return docker


def connect(base_url: str | None = None, timeout: float = 30.0) -> Any:
    """A docker client that has answered a ping; :class:`DockerUnavailable` otherwise."""
    docker = _docker()
    import requests

    where = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

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


def image_family(image: str) -> str:
    """``trainchain/train-eeg:0.1.0`` -> ``eeg``; ``<family>`` when the name says nothing."""
    m = re.search(r"train-([A-Za-z0-9_]+)(?::|$)", image)
    return m.group(1) if m else "<family>"


def check_image(client: Any, image: str) -> Any:
    """The image object; :class:`ImageMissing` (saying how to build it) when it does not exist."""
    docker = _docker()
    try:
        return client.images.get(image)
    except docker.errors.ImageNotFound:
        raise ImageMissing(
            f"the training image {image!r} does not exist in the Docker engine",
            hint=_BUILD_HINT.format(family=image_family(image))
            + "; or set `image:` in trainchain.yaml to an image that exists",
        ) from None


# --- the container's definition, from a spec ---------------------------------------------------


@dataclass(frozen=True)
class BindMount:
    source: Path
    target: str
    read_only: bool


def container_env(spec: AttemptSpec) -> dict[str, str]:
    """The training contract's environment with in-container paths (cf. ``contract_env``)."""
    env = {
        task.ENV_PARAMS: C_PARAMS,
        task.ENV_DATA_DIR: C_DATA,
        task.ENV_CHECKPOINT_DIR: C_CHECKPOINT,
        task.ENV_OUTPUT_DIR: C_OUTPUT,
        task.ENV_REPORT: f"{C_REPORT_DIR}/{spec.report_file.name}",
        task.ENV_TRIAL: str(spec.trial),
        task.ENV_ATTEMPT: str(spec.attempt),
        "PYTHONUNBUFFERED": "1",
        "MNE_LOGGING_LEVEL": "ERROR",
        # in-container paths: the uid may have no home in the image, and libraries want one
        "HOME": "/tmp",  # noqa: S108
        "MPLCONFIGDIR": "/tmp/matplotlib",  # noqa: S108
    }
    env.update(spec.json_env())  # JSON strings, not paths: passed unchanged
    if spec.data_options_file.exists():
        env[task.ENV_DATA_OPTIONS] = C_DATA_OPTIONS
    return env


def container_mounts(spec: AttemptSpec) -> list[BindMount]:
    mounts = [
        BindMount(spec.repo_root, C_REPO, True),
        BindMount(spec.data_dir, C_DATA, True),
        BindMount(spec.params_file, C_PARAMS, True),
        BindMount(spec.checkpoint_dir, C_CHECKPOINT, False),
        BindMount(spec.output_dir, C_OUTPUT, False),
        BindMount(spec.report_file.parent, C_REPORT_DIR, False),
    ]
    if spec.data_options_file.exists():
        mounts.append(BindMount(spec.data_options_file, C_DATA_OPTIONS, True))
    return [BindMount(m.source.resolve(), m.target, m.read_only) for m in mounts]


def container_labels(
    spec: AttemptSpec,
    *,
    max_restarts: int,
    heartbeat_limit: float | None,
    backoff: tuple[float, float] | None = None,
) -> dict[str, str]:
    """``spec.labels`` plus what a supervisor needs to restart the container later."""
    labels = dict(spec.labels)
    labels.setdefault(LABEL_RUN, uuid.uuid4().hex)
    labels.update(
        {
            LABEL_MANAGED: "true",
            LABEL_TRIAL: str(spec.trial),
            LABEL_ATTEMPT: str(spec.attempt),
            LABEL_RESTARTS: "0",
            LABEL_ATTEMPT_DIR: str(spec.log_file.parent.resolve()),
            LABEL_LOG_NAME: spec.log_file.name,
            LABEL_REPORT: str(spec.report_file.resolve()),
            LABEL_MAX_RESTARTS: str(max_restarts),
            LABEL_HEARTBEAT: "none" if heartbeat_limit is None else f"{heartbeat_limit:g}",
        }
    )
    if backoff is not None:
        labels[LABEL_BACKOFF] = f"{backoff[0]:g}/{backoff[1]:g}"
    return labels


def _open_for_container(path: Path, mode: int) -> None:
    """The container runs as another uid: let it write (folders) or read (files)."""
    with contextlib.suppress(OSError):
        path.chmod(mode)


def prepare_host_paths(spec: AttemptSpec) -> None:
    for path in (spec.repo_root, spec.data_dir, spec.params_file):
        if not path.exists():
            raise TrainingError(
                f"{path} does not exist: it is mounted into the training container",
                hint="check the repository path and `data.path` in trainchain.yaml",
            )
    for folder in (spec.checkpoint_dir, spec.output_dir, spec.report_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
        _open_for_container(folder, 0o777)
    spec.log_file.parent.mkdir(parents=True, exist_ok=True)
    if spec.report_file.exists():
        _open_for_container(spec.report_file, 0o666)
    for file in (spec.params_file, spec.data_options_file):
        if file.exists():
            _open_for_container(file, 0o644)


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
    docker = _docker()
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
    return isinstance(err, _docker().errors.NotFound)


def stop(container: Any, grace: float) -> None:
    """SIGTERM (through init), then SIGKILL after ``grace`` seconds; quiet when already gone."""
    docker = _docker()
    try:
        container.stop(timeout=max(1, round(grace)))
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as err:
        log.warning("could not stop container %s (%s); killing it", container.id[:12], err)
        with contextlib.suppress(docker.errors.APIError):
            container.kill()


def remove(container: Any) -> None:
    docker = _docker()
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


def _pump(
    container: Any,
    log_path: Path,
    tail: collections.deque[str],
    on_line: LineSink | None,
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


def attempt_result(
    info: ContainerInfo | None,
    duration_s: float,
    log_tail: str,
    *,
    timed_out: bool = False,
    error: str | None = None,
    restarts: int = 0,
    stopped: bool = False,
) -> AttemptResult:
    """An :class:`AttemptResult`; a signal death (init exits 128+N) reads as ``-N`` like local."""
    code = None if info is None else info.exit_code
    if code is not None and 128 < code <= 128 + 64:
        code = -(code - 128)
    return AttemptResult(
        exit_code=code,
        duration_s=duration_s,
        log_tail=log_tail,
        timed_out=timed_out,
        oom_killed=bool(info and info.oom_killed),
        error=error,
        restarts=restarts,
        stopped=stopped,
    )


@dataclass
class _Current:
    """The container a trial is on now, and where its log goes."""

    container: Any
    log_path: Path


@dataclass
class _Followed:
    end: str  # "exited", "gone" (removed by another supervisor), "hung", "timeout", "stopped"
    info: ContainerInfo | None
    tail: collections.deque[str]


# --- the executor -------------------------------------------------------------------------------

_STOPPED = object()  # _handle_failure: the stop event was set before anything was restarted


class DockerExecutor:
    """One container per attempt; follows a trial through its restarts (see module doc)."""

    name = "docker"
    supervises_restarts = True

    def __init__(
        self,
        *,
        locks_dir: Path,
        network: str | None = None,
        mem_limit: str | int | None = None,
        nano_cpus: int | None = None,
        max_restarts: int = 3,
        heartbeat_limit: float | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        user: str = "1000:1000",
        python: str = "python",
        stop_grace: float = 10.0,
        successor_wait: float = 60.0,
        base_url: str | None = None,
        client_timeout: float = 30.0,
        on_give_up: Callable[[Mapping[str, str], str], None] | None = None,
    ) -> None:
        from trainchain.watchdog import WatchdogPolicy

        if nano_cpus is not None and nano_cpus <= 0:
            raise ValueError(f"nano_cpus must be positive (1e9 is one CPU) but got {nano_cpus}")
        if stop_grace <= 0:
            raise ValueError(f"stop_grace must be positive but got {stop_grace}")
        self.locks_dir = Path(locks_dir)
        self.network = network or "none"
        self.mem_limit = mem_limit
        self.nano_cpus = nano_cpus
        self.policy: WatchdogPolicy = WatchdogPolicy(
            heartbeat_limit=heartbeat_limit,
            max_restarts=max_restarts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        self.user = user
        self.python = python
        self.stop_grace = stop_grace
        self.on_give_up = on_give_up  # past the cap: mark the trial failed, send the email
        self.successor_wait = successor_wait
        self.base_url = base_url
        self.client_timeout = client_timeout

    @classmethod
    def from_config(
        cls, train: Train, watchdog: WatchdogConfig, *, locks_dir: Path, **options: Any
    ) -> DockerExecutor:
        """From ``train:`` (memory, cpus, network) and ``watchdog:`` in trainchain.yaml."""
        return cls(
            locks_dir=locks_dir,
            network=train.network,
            mem_limit=train.memory,
            nano_cpus=round(train.cpus * 1e9),
            max_restarts=watchdog.max_restarts,
            heartbeat_limit=watchdog.heartbeat_limit,
            backoff_base=watchdog.backoff,
            backoff_cap=watchdog.backoff_max,
            **options,
        )

    def client(self) -> Any:
        return connect(self.base_url, self.client_timeout)

    def start(self, spec: AttemptSpec, client: Any | None = None) -> Any:
        """Create and start the container of ``spec``; return it without following it."""
        if not spec.image:
            raise TrainingError(
                "the docker executor needs a training image and the attempt has none",
                hint="set `image:` in trainchain.yaml, or let detection pick one",
            )
        client = client or self.client()
        check_image(client, spec.image)
        prepare_host_paths(spec)
        labels = container_labels(
            spec,
            max_restarts=self.policy.max_restarts,
            heartbeat_limit=self.policy.heartbeat_limit,
            backoff=(self.policy.backoff_base, self.policy.backoff_cap),
        )
        container = create_container(
            client,
            image=spec.image,
            command=[self.python, "-u", f"{C_REPO}/{spec.entrypoint}"],
            environment=container_env(spec),
            mounts=container_mounts(spec),
            labels=labels,
            user=self.user,
            network=self.network,
            mem_limit=self.mem_limit,
            memswap_limit=self.mem_limit,  # no swap: the limit is the limit
            nano_cpus=self.nano_cpus,
            working_dir=C_REPO,
        )
        try:
            container.start()
        except Exception:
            remove(container)
            raise
        log.info(
            "trial %s attempt %s: container %s (%s) started",
            spec.trial,
            spec.attempt,
            container.name,
            spec.image,
        )
        return container

    def run(
        self,
        spec: AttemptSpec,
        on_line: LineSink | None = None,
        stop: threading.Event | None = None,
    ) -> AttemptResult:
        docker = _docker()
        client = self.client()
        started = time.monotonic()
        with contextlib.closing(client), _sigterm_as_exit():
            try:
                container = self.start(spec, client)
            except docker.errors.APIError as err:
                why = err.explanation or err
                return AttemptResult(None, 0.0, "", error=f"could not start the container: {why}")
            current = _Current(container, spec.log_file)
            try:
                return self._supervise(client, current, spec, on_line, started, stop_event=stop)
            except BaseException:
                # Ctrl-C or SIGTERM of trainchain: stop the container before going away
                self._abandon(current.container, current.log_path.parent)
                raise

    def _supervise(
        self,
        client: Any,
        current: _Current,
        spec: AttemptSpec,
        on_line: LineSink | None,
        started: float,
        *,
        stop_event: threading.Event | None = None,
    ) -> AttemptResult:
        """Follow the container and its replacements until one succeeds, restarts run out,
        or ``stop_event`` is set."""
        from trainchain import watchdog

        while True:
            container = current.container
            restarts = int(container.labels.get(LABEL_RESTARTS, "0"))
            followed = self._follow(container, current.log_path, on_line, spec.timeout, stop_event)
            info = followed.info
            elapsed = time.monotonic() - started
            if followed.end == "stopped":
                return self._stop_for_good(container, current.log_path.parent, elapsed, restarts)
            if followed.end == "timeout":
                watchdog.claim(self.locks_dir, container.id)  # nobody restarts what timed out
                log.warning("container %s timed out after %.0f s", container.name, spec.timeout)
                stop(container, self.stop_grace)
                last, tail = self._finish(container, current.log_path.parent, reason="timed out")
                return attempt_result(
                    last or info, elapsed, tail, timed_out=True, restarts=restarts
                )
            if followed.end == "exited" and info is not None and info.exit_code == 0:
                last, tail = None, "\n".join(followed.tail)
                if watchdog.claim(self.locks_dir, container.id):  # else a watchdog collected it
                    last, tail = self._finish(container, current.log_path.parent, reason="finished")
                return attempt_result(
                    last or info, time.monotonic() - started, tail, restarts=restarts
                )

            handled = (
                None if info is None else self._handle_failure(client, container, info, stop_event)
            )
            if handled is _STOPPED:  # stopped while waiting out the backoff
                return self._stop_for_good(
                    container, current.log_path.parent, time.monotonic() - started, restarts
                )
            if handled is not None and handled.kind is watchdog.ActionKind.GIVE_UP:
                return attempt_result(
                    handled.info,
                    time.monotonic() - started,
                    handled.log_tail or "\n".join(followed.tail),
                    error=handled.reason,
                    restarts=restarts,
                )
            if handled is not None:
                successor = handled.replacement
            else:  # another supervisor claimed it: follow what it does
                successor, why = self._await_successor(client, container.labels, info)
                if successor is None:
                    tail = "\n".join(followed.tail)
                    return attempt_result(
                        info, time.monotonic() - started, tail, error=why, restarts=restarts
                    )
            labels = successor.labels
            folder = Path(labels.get(LABEL_ATTEMPT_DIR) or current.log_path.parent)
            current.container = successor
            current.log_path = folder / (labels.get(LABEL_LOG_NAME) or DEFAULT_LOG_NAME)
            if on_line is not None:
                on_line(
                    f"[trainchain] restarted as attempt {labels.get(LABEL_ATTEMPT)} "
                    f"(container {successor.name}), resuming from the checkpoint"
                )

    def _stop_for_good(
        self, container: Any, fallback_dir: Path, elapsed: float, restarts: int
    ) -> AttemptResult:
        """Stopped from outside (a pruned trial): claim the container first so neither this
        executor nor a watchdog restarts it, stop it with its grace, keep its log and exit
        state, remove it."""
        from trainchain import watchdog

        if not watchdog.claim(self.locks_dir, container.id):
            log.warning(
                "container %s is being handled by another supervisor; stopping it anyway",
                container.name,
            )
        log.info("container %s: stopped by trainchain (pruned)", container.name)
        stop(container, self.stop_grace)
        last, tail = self._finish(container, fallback_dir, reason="stopped by trainchain (pruned)")
        return attempt_result(last, elapsed, tail, restarts=restarts, stopped=True)

    def _follow(
        self,
        container: Any,
        log_path: Path,
        on_line: LineSink | None,
        timeout: float,
        stop_event: threading.Event | None = None,
    ) -> _Followed:
        from trainchain import watchdog

        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        pump = threading.Thread(
            target=_pump, args=(container, log_path, tail, on_line), daemon=True
        )
        deadline = time.monotonic() + timeout
        policy = watchdog.effective_policy(container.labels, self.policy)
        docker = _docker()

        def ended(end: str, info: ContainerInfo | None) -> _Followed:
            if pump.is_alive():
                pump.join(timeout=10)
            return _Followed(end, info, tail)

        while True:
            try:
                info = inspect(container)
            except docker.errors.NotFound:
                return ended("gone", None)
            if not pump.is_alive() and info.status != "created":  # a log of a started container
                with contextlib.suppress(RuntimeError):  # already started once
                    pump.start()
            if info.status in {"exited", "dead"}:
                return ended("exited", info)
            if stop_event is not None and stop_event.is_set():
                return _Followed("stopped", info, tail)
            if info.status == "running" and policy.heartbeat_limit is not None:
                action = watchdog.decide(watchdog.state_of(info), time.time(), policy)
                if action.kind is not watchdog.ActionKind.LEAVE:
                    log.warning("container %s: %s", container.name, action.reason)
                    return _Followed("hung", info, tail)
            if time.monotonic() >= deadline:
                return _Followed("timeout", info, tail)
            if stop_event is not None:
                stop_event.wait(POLL_S)
            else:
                time.sleep(POLL_S)

    def _handle_failure(
        self,
        client: Any,
        container: Any,
        info: ContainerInfo,
        stop_event: threading.Event | None = None,
    ) -> Any:
        """Claim and restart (after the backoff) or give up; None when another supervisor has
        it; ``_STOPPED`` when ``stop_event`` is set during the backoff (nothing restarted)."""
        from trainchain import watchdog

        docker = _docker()
        policy = watchdog.effective_policy(info.labels, self.policy)
        while True:
            action = watchdog.decide(watchdog.state_of(info), time.time(), policy)
            if action.kind is watchdog.ActionKind.LEAVE:  # pragma: no cover - a failure was seen
                return None
            if stop_event is not None and stop_event.is_set():
                return _STOPPED
            if action.delay > 0:
                time.sleep(min(action.delay, POLL_S))
                try:
                    info = inspect(container)
                except docker.errors.NotFound:
                    return None
                continue
            return watchdog.handle(
                client,
                container,
                action,
                locks_dir=self.locks_dir,
                stop_grace=self.stop_grace,
                on_give_up=self.on_give_up,
            )

    def _await_successor(
        self, client: Any, labels: Mapping[str, str], info: ContainerInfo | None
    ) -> tuple[Any | None, str]:
        """The container another supervisor started for the next attempt, or why there is none."""
        from trainchain import watchdog

        attempt = int(labels.get(LABEL_ATTEMPT, "1")) + 1
        filters = {
            "label": [
                f"{LABEL_RUN}={labels.get(LABEL_RUN, '')}",
                f"{LABEL_TRIAL}={labels.get(LABEL_TRIAL, '')}",
                f"{LABEL_ATTEMPT}={attempt}",
            ]
        }
        folder = Path(labels[LABEL_ATTEMPT_DIR]) if labels.get(LABEL_ATTEMPT_DIR) else None
        deadline = time.monotonic() + self.policy.backoff_cap + self.successor_wait
        while time.monotonic() < deadline:
            found = client.containers.list(all=True, filters=filters, ignore_removed=True)
            if found:
                return found[0], ""
            if folder is not None and (folder / watchdog.GAVE_UP_FILE).exists():
                with contextlib.suppress(OSError, ValueError):
                    record = json.loads((folder / watchdog.GAVE_UP_FILE).read_text())
                    return None, str(record.get("reason", "the watchdog gave up"))
                return None, "the watchdog gave up"
            time.sleep(POLL_S)
        what = info.name if info is not None else labels.get(LABEL_ATTEMPT_DIR, "?")
        return None, (
            f"container {what} was taken over by another supervisor and no attempt {attempt} "
            f"appeared within {self.policy.backoff_cap + self.successor_wait:.0f} s"
        )

    def _finish(
        self, container: Any, fallback_dir: Path, *, reason: str
    ) -> tuple[ContainerInfo | None, str]:
        """Keep the log and exit state, then remove the container; return its state and tail."""
        docker = _docker()
        try:
            info = inspect(container)
        except docker.errors.NotFound:
            return None, ""
        _, tail = save_record(container, info, info.attempt_dir or fallback_dir, reason=reason)
        remove(container)
        return info, tail

    def _abandon(self, container: Any, fallback_dir: Path) -> None:
        """trainchain is going away: claim the container (no restarts), stop, keep, remove."""
        from trainchain import watchdog

        try:
            watchdog.claim(self.locks_dir, container.id)
            stop(container, min(self.stop_grace, 5.0))
            self._finish(container, fallback_dir, reason="trainchain was interrupted")
        except Exception as err:
            log.warning("could not stop container %s cleanly: %s", container.id[:12], err)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit (in the main thread, when nobody else handles it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        yield
        return

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
