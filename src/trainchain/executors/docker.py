"""Run an attempt in a Docker container: the executor's side of the Docker engine.

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
returns one result for it. This module turns an attempt's spec into a container;
the container primitives are in :mod:`trainchain.adapters.containers`, the restart policy,
the claim and the following of a trial in :mod:`trainchain.supervise.restarts`.

The docker SDK is imported lazily: importing this module needs no engine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from trainchain.adapters.containers import (
    LABEL_ATTEMPT,
    LABEL_ATTEMPT_DIR,
    LABEL_BACKOFF,
    LABEL_HEARTBEAT,
    LABEL_LOG_NAME,
    LABEL_MANAGED,
    LABEL_MAX_RESTARTS,
    LABEL_REPORT,
    LABEL_RESTARTS,
    LABEL_RUN,
    LABEL_TRIAL,
    BindMount,
    ContainerInfo,
    check_image,
    connect,
    create_container,
    docker_sdk,
    engine_errors,
    remove,
)
from trainchain.adapters.procgroup import LineSink
from trainchain.contract import task
from trainchain.core.errors import TrainingError
from trainchain.executors._base import THREAD_VARIABLES, AttemptResult, AttemptSpec
from trainchain.supervise.restarts import GiveUpCallback, TrialEnd, TrialSupervisor, WatchdogPolicy

if TYPE_CHECKING:
    from trainchain.core.config import Train, WatchdogLimits

log = logging.getLogger(__name__)

# Where the contract's paths are inside the container.
C_REPO = "/repo"
C_DATA = "/data"
C_PARAMS = "/trainchain/params.json"
C_DATA_OPTIONS = "/trainchain/data_options.json"
C_CHECKPOINT = "/checkpoint"
C_OUTPUT = "/output"
C_REPORT_DIR = "/report"


# --- the container's definition, from a spec ---------------------------------------------------


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
    # the trial's share of the host's cores, when several workers share it
    env.update({k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ})
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
        on_give_up: GiveUpCallback | None = None,
    ) -> None:
        if nano_cpus is not None and nano_cpus <= 0:
            raise ValueError(f"nano_cpus must be positive (1e9 is one CPU) but got {nano_cpus}")
        if stop_grace <= 0:
            raise ValueError(f"stop_grace must be positive but got {stop_grace}")
        self.locks_dir = Path(locks_dir)
        self.network = network or "none"
        self.mem_limit = mem_limit
        self.nano_cpus = nano_cpus
        self.policy = WatchdogPolicy(
            heartbeat_limit=heartbeat_limit,
            max_restarts=max_restarts,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        self.user = user
        self.python = python
        self.base_url = base_url
        self.client_timeout = client_timeout
        # past the cap, on_give_up marks the trial failed and sends the email
        self.supervisor = TrialSupervisor(
            self.locks_dir,
            self.policy,
            stop_grace=stop_grace,
            successor_wait=successor_wait,
            on_give_up=on_give_up,
        )

    @classmethod
    def from_config(
        cls, train: Train, watchdog: WatchdogLimits, *, locks_dir: Path, **options: Any
    ) -> DockerExecutor:
        """From ``train:`` (memory, cpus, network) and ``watchdog:`` in trainchain.yaml."""
        policy = WatchdogPolicy.from_config(watchdog)
        return cls(
            locks_dir=locks_dir,
            network=train.network,
            mem_limit=train.memory,
            nano_cpus=round(train.cpus * 1e9),
            max_restarts=policy.max_restarts,
            heartbeat_limit=policy.heartbeat_limit,
            backoff_base=policy.backoff_base,
            backoff_cap=policy.backoff_cap,
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
        docker = docker_sdk()
        client = self.client()
        started = time.monotonic()
        running = f"running trial {spec.trial} attempt {spec.attempt}"
        with (
            contextlib.closing(client),
            _sigterm_as_exit(),
            engine_errors(running, self.base_url),  # the engine failed: one clear error
        ):
            try:
                container = self.start(spec, client)
            except docker.errors.APIError as err:
                why = err.explanation or err
                return AttemptResult(None, 0.0, "", error=f"could not start the container: {why}")
            end = self.supervisor.follow(
                client,
                container,
                spec.log_file,
                timeout=spec.timeout,
                started=started,
                on_line=on_line,
                stop_event=stop,
            )
        return _result(end)


def _result(end: TrialEnd) -> AttemptResult:
    return attempt_result(
        end.info,
        end.duration_s,
        end.log_tail,
        timed_out=end.timed_out,
        error=end.error,
        restarts=end.restarts,
        stopped=end.stopped,
    )


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

    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
