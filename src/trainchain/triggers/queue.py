"""The one trigger queue: runs the post-receive hook and the webhook asked for, in SQLite.

A trigger turns a pushed commit into a *run* with a target: a local chain run (``trainchain
run <repository> --ref <sha>``), or a build of a Jenkins job (its name and parameters,
REPOSITORY and COMMIT; never credentials, which the drainer reads from its environment).
Every run is a row of ``$TRAINCHAIN_HOME/hooks/queue.db`` (WAL, a busy timeout, stdlib
``sqlite3``), so a run queued survives whatever process queued it. Its state goes from
``queued`` to ``running`` to ``succeeded``, ``goal_not_reached``, ``failed`` or
``cancelled``, with the reason in ``error``; each change is also written to
``hooks/runs/<run_id>.json`` for people and tools that read the folder (the database
decides; the file is its copy).

One chain at a time per repository: a *drainer* process holds the repository's row of
``claims`` (taken in one ``BEGIN IMMEDIATE`` transaction, so two can never hold it) and
runs its queued runs oldest first. At most ``max_running`` repositories are claimed at
once; a drainer done with its repository takes the next one left waiting.

A claim whose drainer is gone (its pid, with the start time it had, no longer runs on
this host) and whose chain process is gone too is *stale*, and :meth:`TriggerQueue.reconcile`
settles it: a run taken but whose chain never started goes back to ``queued`` (nothing
happened yet, so running it later is safe); a run whose chain had started is marked
``failed`` with the reason, not run again, because its chain may have registered a model
or sent its email before the drainer died, and its log shows how far it got. A Jenkins
run is never triggered twice either: with the Jenkins queue item it recorded it counts as
done (Jenkins has the build), without one it is ``failed`` with the reason.

A *retrain* request (a drift alert through `hooks serve`, or `trainchain hooks retrain`)
is a run like any other, of a branch's head rather than a pushed commit, with the model it
retrains and why. Per model the ``retrains`` table keeps the latest one: while it is
queued or running, another is refused (:class:`RetrainPending`); after it was queued, no
other is queued for the cooldown (:class:`CoolingDown`; a cancelled one does not count).
The table lives in the queue file, so both rules survive restarts.

The schema has a version (``PRAGMA user_version``); opening a queue file an older
trainchain wrote migrates it in place, keeping every row (its runs are local chain runs).
The ``retrains`` table is created on open when missing: a trainchain without it ignores it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainchain.adapters.gitrepo import normalise, workspace_name
from trainchain.contract.task import atomic_write_bytes
from trainchain.core.errors import Busy, ConfigError, TrainchainError
from trainchain.core.notify import email_address
from trainchain.core.status import RunState

log = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 16
MAX_QUEUE_LIMIT = 1000
DEFAULT_MAX_RUNNING = 4  # repositories whose chains run at once (one drainer each)
DEFAULT_RUN_TIMEOUT_S = 24 * 3600.0
BUSY_TIMEOUT_S = 30.0  # a transaction here lasts milliseconds; waiting longer is a fault
SHOWN_RUNS = 20
KEPT_RUNS = 1000  # finished runs kept (rows, status files, logs); older ones are removed
DELIVERIES_KEPT = 1000

_SHA40 = re.compile(r"^[0-9a-f]{40}$")
_RUN_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9._-]{1,100}$")
_KEY = re.compile(r"^[A-Za-z0-9._-]{1,80}$")

CHAIN = "chain"  # a run's target: `trainchain run` here
JENKINS = "jenkins"  # a run's target: a build of a Jenkins job
SCHEMA_VERSION = 1  # 0: before runs had a target (every run was a chain run)
DEFAULT_JENKINS_RETRIES = 5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    repo TEXT NOT NULL,
    state TEXT NOT NULL,
    trigger TEXT NOT NULL,
    chain_start TEXT,
    record TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT 'chain'
);
CREATE INDEX IF NOT EXISTS runs_by_repo ON runs (repo, state, seq);
CREATE TABLE IF NOT EXISTS claims (
    repo TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    run_id TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start TEXT,
    since TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE
);
"""
# the latest retrain of each model (added without a schema version: older ones ignore it)
_RETRAINS = """
CREATE TABLE IF NOT EXISTS retrains (
    model TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    queued_at REAL NOT NULL
)
"""


class RepositoryBusy(Busy):
    """Another process held a repository's lock for longer than we could wait."""


class QueueFull(RepositoryBusy):
    """A repository already has as many runs waiting as its queue holds."""


class AlreadyReceived(TrainchainError):
    """A webhook delivery id that was queued (or ignored) before."""


class RetrainPending(TrainchainError):
    """A model's retrain is queued or running already: no second one."""

    def __init__(self, model: str, run_id: str) -> None:
        super().__init__(f"a retrain of {model} is already pending: {run_id}")
        self.run_id = run_id


class CoolingDown(TrainchainError):
    """A model was retrained less than the cooldown ago."""

    def __init__(self, model: str, run_id: str, until: float) -> None:
        when = datetime.fromtimestamp(until, UTC).isoformat(timespec="seconds")
        super().__init__(
            f"{model} is cooling down until {when} (its last retrain: {run_id})",
            hint="ask again after that, or give a shorter --retrain-cooldown",
        )
        self.until = when


@dataclass(frozen=True)
class JenkinsTarget:
    """Trigger a build of ``job`` with ``params`` instead of running the chain here; a
    connection error or 5xx is tried again ``retries`` times (waits: :func:`retry_waits`)."""

    job: str
    params: Mapping[str, str]
    retries: int = DEFAULT_JENKINS_RETRIES

    def __post_init__(self) -> None:
        check_jenkins_job(self.job)
        if not 0 <= self.retries <= MAX_JENKINS_RETRIES:
            raise ConfigError(
                f"{self.retries} Jenkins retries is out of range: expected 0 to "
                f"{MAX_JENKINS_RETRIES}"
            )


@dataclass(frozen=True)
class RunRequest:
    """What a trigger asks for: run the chain on ``repository`` at ``commit``, here or (with
    ``jenkins``) as a Jenkins build."""

    repository: str  # what `trainchain run` pulls: a URL, or an absolute path
    commit: str  # the full sha
    branch: str
    trigger: str  # "post-receive" or "webhook"
    delivery: str | None = None  # the webhook delivery id
    executor: str | None = None  # None: `trainchain run`'s default
    data: str | None = None
    run_timeout: float = DEFAULT_RUN_TIMEOUT_S
    jenkins: JenkinsTarget | None = None
    reason: str = ""  # why it runs (`trainchain run --reason`), for a retrain
    model: str | None = None  # set: a retrain of this model, whose ``commit`` is a branch
    pushed_by: str | None = None  # who pushed (pusher or committer email): told of a failure

    def __post_init__(self) -> None:
        if not self.repository or self.repository.startswith("-"):
            raise ConfigError(
                f"repository {self.repository!r} is not a URL or a path",
                hint="pass a URL git accepts or a path to a repository",
            )
        if self.model is not None:
            check_model(self.model)
            check_branch(self.commit)
        elif not _SHA40.match(self.commit):
            raise ConfigError(
                f"commit {self.commit!r} is not a full sha: expected 40 lowercase hex digits"
            )
        if not 0 < self.run_timeout <= 7 * 24 * 3600:
            raise ConfigError(
                f"run timeout {self.run_timeout:g} s is out of range: expected 1 s to 7 days"
            )


@dataclass(frozen=True)
class RunStatus:
    """One run, as its row holds it and ``hooks/runs/<run_id>.json`` shows it."""

    run_id: str
    state: RunState
    repository: str
    commit: str
    branch: str
    trigger: str
    log: str
    queued_at: str
    delivery: str | None = None
    executor: str | None = None
    data: str | None = None
    run_timeout: float = DEFAULT_RUN_TIMEOUT_S
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    error: str | None = None
    # a Jenkins run (target "jenkins"): the job, its parameters, what Jenkins answered
    target: str = CHAIN
    jenkins_job: str | None = None
    jenkins_params: dict[str, str] | None = None
    jenkins_retries: int = DEFAULT_JENKINS_RETRIES
    attempts: int = 0
    jenkins_queue_url: str | None = None
    jenkins_build_url: str | None = None
    # a retrain: the model, and why (``commit`` is then the branch whose head runs)
    model: str | None = None
    reason: str = ""
    pushed_by: str | None = None  # who pushed: a failure before tuning is emailed to them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"state": str(self.state)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunStatus:
        known = set(cls.__dataclass_fields__)
        fields = {k: v for k, v in data.items() if k in known}
        return cls(**(fields | {"state": RunState(data["state"])}))

    def with_(self, **changes: Any) -> RunStatus:
        return replace(self, **changes)


@dataclass(frozen=True)
class HookPaths:
    """Where triggers keep their state: ``$TRAINCHAIN_HOME/hooks``."""

    root: Path

    @classmethod
    def under(cls, home: Path) -> HookPaths:
        return cls(Path(home) / "hooks")

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def db(self) -> Path:
        return self.root / "queue.db"

    @property
    def deliveries(self) -> Path:
        """Where delivery ids were kept before the queue held them (read once, if there)."""
        return self.root / "deliveries.json"

    @property
    def drain_log(self) -> Path:
        return self.root / "drain.log"

    def status(self, run_id: str) -> Path:
        return self.runs / f"{check_run_id(run_id)}.json"

    def log(self, run_id: str) -> Path:
        return self.runs / f"{check_run_id(run_id)}.log"

    def lock(self, key: str) -> Path:
        return self.root / "locks" / f"{check_key(key)}.lock"


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ConfigError(
            f"{run_id!r} is not a run id: expected <UTC time>-<repository>-<sha8>-<hex>, "
            "as printed when the run was queued"
        )
    return run_id


MAX_JENKINS_RETRIES = 10
RETRY_WAIT_S = 2.0  # the first wait before trying Jenkins again; doubled each time
MAX_RETRY_WAIT_S = 30.0


def retry_waits(retries: int) -> list[float]:
    """The waits before each retry of a Jenkins trigger: 2, 4, 8, 16, 30, 30 ... seconds
    (the default 5 retries: 6 attempts over about a minute)."""
    return [min(RETRY_WAIT_S * 2**i, MAX_RETRY_WAIT_S) for i in range(retries)]


def check_jenkins_job(job: str) -> str:
    if not re.match(r"^[A-Za-z0-9._/-]+$", job):
        raise ConfigError(f"{job!r} is not a Jenkins job name: expected letters, digits, . _ / -")
    return job


_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
BRANCH_NAME = re.compile(r"^[^\s~^:?*\[\\]{1,200}$")  # what git allows, roughly


def check_model(model: str) -> str:
    if not _MODEL.match(model):
        raise ConfigError(
            f"{model!r} is not a model name: expected letters, digits, . _ - (as the "
            "`model` label of the alert and `name` in trainchain.yaml)"
        )
    return model


def check_branch(branch: str) -> str:
    if not BRANCH_NAME.match(branch) or branch.startswith("-") or ".." in branch:
        raise ConfigError(f"{branch!r} is not a branch name", hint="give e.g. main")
    return branch


def check_key(key: str) -> str:
    if not _KEY.match(key) or key.startswith("."):
        raise ConfigError(f"{key!r} is not a repository key: expected letters, digits, . _ -")
    return key


def check_max_queue(value: int) -> int:
    if not 1 <= value <= MAX_QUEUE_LIMIT:
        raise ConfigError(
            f"a queue of {value} runs is out of range: expected 1 to {MAX_QUEUE_LIMIT}"
        )
    return value


def repo_key(repository: str) -> str:
    """One name per repository for its claim and lock (the workspace's name); a local
    repository is the same one as a path or as a file:// URL."""
    if repository.startswith("file://"):
        repository = repository.removeprefix("file://")
    return workspace_name(normalise(repository))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_run_id(repository: str, commit: str) -> str:
    slug = repo_key(repository).rsplit("-", 1)[0][:40] or "repo"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    what = re.sub(r"[^A-Za-z0-9._-]", "-", commit[:8])  # a retrain's branch, not a sha
    return f"{stamp}-{slug}-{what}-{secrets.token_hex(3)}"


def new_status(paths: HookPaths, request: RunRequest) -> RunStatus:
    run_id = new_run_id(request.repository, request.commit)
    status = RunStatus(
        run_id=run_id,
        state=RunState.QUEUED,
        repository=request.repository,
        commit=request.commit,
        branch=request.branch,
        trigger=request.trigger,
        log=str(paths.log(run_id)),
        queued_at=now_iso(),
        delivery=request.delivery,
        executor=request.executor,
        data=request.data,
        run_timeout=request.run_timeout,
        model=request.model,
        reason=request.reason,
        pushed_by=email_address(request.pushed_by),
    )
    if request.jenkins is None:
        return status
    return status.with_(
        target=JENKINS,
        jenkins_job=request.jenkins.job,
        jenkins_params=dict(request.jenkins.params),
        jenkins_retries=request.jenkins.retries,
    )


# ---- processes --------------------------------------------------------------------------
def process_start(pid: int) -> str | None:
    """What tells this process from a later one with the same pid (its start time in clock
    ticks since boot), or None when no such process runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError:  # no /proc here: whether the pid exists is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19] if len(fields) > 19 else "?"


def process_alive(pid: int | None, start: str | None) -> bool:
    if pid is None:
        return False
    now = process_start(pid)
    return now is not None and (start in (None, "?") or now in ("?", start))


@dataclass(frozen=True)
class Holder:
    """A process on a host: who holds a claim."""

    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)

    @property
    def start(self) -> str | None:
        return process_start(self.pid)


# ---- the queue ----------------------------------------------------------------------------
class TriggerQueue:
    """The runs table and the claims on repositories; every change in one transaction."""

    def __init__(self, paths: HookPaths, *, max_running: int = DEFAULT_MAX_RUNNING) -> None:
        if not 1 <= max_running <= 64:
            raise ConfigError(f"{max_running} chains at once is out of range: expected 1 to 64")
        self.paths = paths
        self.max_running = max_running
        self.host = socket.gethostname()
        paths.root.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
        self._migrate()
        with self._connect() as con:
            con.execute(_RETRAINS)
        self._import_old_deliveries()

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.paths.db, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as err:
            raise ConfigError(
                f"cannot open the trigger queue {self.paths.db}: {err}",
                hint="check that TRAINCHAIN_HOME is writable",
            ) from None
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _txn(self) -> Iterator[tuple[sqlite3.Connection, list[RunStatus]]]:
        """One write transaction; the statuses put in ``changed`` get their status file
        once it committed."""
        changed: list[RunStatus] = []
        with self._connect() as con:
            try:
                con.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                raise RepositoryBusy(
                    f"the trigger queue {self.paths.db} stayed locked for "
                    f"{BUSY_TIMEOUT_S:g} s: {err}",
                    hint="another trainchain process holds it; try again",
                ) from None
            try:
                yield con, changed
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        for status in changed:
            atomic_write_bytes(
                self.paths.status(status.run_id),
                (json.dumps(status.to_dict(), indent=2) + "\n").encode("utf-8"),
            )

    def _migrate(self) -> None:
        """Create the tables, or bring a queue file an older trainchain wrote up to
        :data:`SCHEMA_VERSION` in one transaction (its rows kept as they are)."""
        with self._connect() as con:
            (version,) = con.execute("PRAGMA user_version").fetchone()
        if version == SCHEMA_VERSION:
            return
        with self._txn() as (con, _):
            (version,) = con.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the trigger queue {self.paths.db} has schema version {version}, newer "
                    f"than this trainchain's {SCHEMA_VERSION}",
                    hint="run the trainchain that wrote it, or upgrade this one",
                )
            had_runs = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
            ).fetchone()
            if had_runs and version < 1:  # version 0: every run was a local chain run
                columns = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
                if "target" not in columns:
                    con.execute(
                        f"ALTER TABLE runs ADD COLUMN target TEXT NOT NULL DEFAULT '{CHAIN}'"
                    )
            for statement in _SCHEMA.split(";"):  # executescript would commit
                if statement.strip():
                    con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _put(con: sqlite3.Connection, changed: list[RunStatus], status: RunStatus) -> None:
        con.execute(
            "INSERT INTO runs (run_id, repo, state, trigger, record, target) "
            "VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, record = excluded.record",
            (
                status.run_id,
                repo_key(status.repository),
                str(status.state),
                status.trigger,
                json.dumps(status.to_dict()),
                status.target,
            ),
        )
        changed.append(status)

    @staticmethod
    def _status(record: str) -> RunStatus:
        return RunStatus.from_dict(json.loads(record))

    def _import_old_deliveries(self) -> None:
        """Delivery ids an older trainchain kept in ``deliveries.json``: into the table,
        then the file is gone (a restart still knows those replays)."""
        old = self.paths.deliveries
        if not old.exists():
            return
        try:
            ids = [i for i in json.loads(old.read_text(encoding="utf-8")) if isinstance(i, str)]
        except (OSError, ValueError, TypeError) as err:
            log.warning("%s is not a JSON list of ids (%s): not imported", old, err)
            ids = []
        with self._txn() as (con, _):
            con.executemany("INSERT OR IGNORE INTO deliveries (id) VALUES (?)", [(i,) for i in ids])
        old.unlink(missing_ok=True)

    # ---- queueing -------------------------------------------------------------------
    def enqueue(
        self, request: RunRequest, *, max_queue: int, full_hint: str, cooldown: float = 0.0
    ) -> tuple[RunStatus, int]:
        """Queue a run: (its status, the runs of its repository ahead of it). At most
        ``max_queue`` runs wait behind the one running (QueueFull); a delivery id already
        received raises AlreadyReceived, and is recorded with the run otherwise. A retrain
        (``request.model``) is refused while the model's last one is pending
        (RetrainPending) or was queued less than ``cooldown`` seconds ago (CoolingDown)."""
        check_max_queue(max_queue)
        status = new_status(self.paths, request)
        key = repo_key(request.repository)
        with self._txn() as (con, changed):
            if request.delivery is not None and self._received(con, request.delivery):
                raise AlreadyReceived(f"delivery {request.delivery} was already received")
            if request.model is not None:
                self._check_retrain(con, request.model, cooldown)
            (ahead,) = con.execute(
                "SELECT COUNT(*) FROM runs WHERE repo = ? AND state IN (?, ?)",
                (key, RunState.QUEUED, RunState.RUNNING),
            ).fetchone()
            if ahead > max_queue:
                raise QueueFull(
                    f"{ahead - 1} runs of {request.repository} are already waiting "
                    f"(the queue holds {max_queue})",
                    hint=full_hint,
                )
            self._put(con, changed, status)
            if request.delivery is not None:
                self._remember(con, request.delivery)
            if request.model is not None:
                con.execute(
                    "INSERT INTO retrains (model, run_id, queued_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (model) DO UPDATE SET run_id = excluded.run_id, "
                    "queued_at = excluded.queued_at",
                    (request.model, status.run_id, time.time()),
                )
        self.paths.runs.mkdir(parents=True, exist_ok=True)
        return status, int(ahead)

    @staticmethod
    def _check_retrain(con: sqlite3.Connection, model: str, cooldown: float) -> None:
        row = con.execute(
            "SELECT t.run_id, t.queued_at, r.state FROM retrains t "
            "LEFT JOIN runs r ON r.run_id = t.run_id WHERE t.model = ?",
            (model,),
        ).fetchone()
        if row is None:
            return
        run_id, queued_at, state = row
        if state in (RunState.QUEUED, RunState.RUNNING):
            raise RetrainPending(model, run_id)
        until = float(queued_at) + cooldown
        if state != RunState.CANCELLED and time.time() < until:
            raise CoolingDown(model, run_id, until)

    @staticmethod
    def _received(con: sqlite3.Connection, delivery: str) -> bool:
        row = con.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery,)).fetchone()
        return row is not None

    @staticmethod
    def _remember(con: sqlite3.Connection, delivery: str) -> None:
        con.execute("INSERT OR IGNORE INTO deliveries (id) VALUES (?)", (delivery,))
        con.execute(
            "DELETE FROM deliveries WHERE seq <= (SELECT MAX(seq) FROM deliveries) - ?",
            (DELIVERIES_KEPT,),
        )

    def received(self, delivery: str) -> bool:
        with self._connect() as con:
            return self._received(con, delivery)

    def remember(self, delivery: str) -> bool:
        """Record a delivery that starts no run; False when it was already received."""
        with self._txn() as (con, _):
            if self._received(con, delivery):
                return False
            self._remember(con, delivery)
            return True

    # ---- claims ----------------------------------------------------------------------
    def claim_waiting(self, holder: Holder, limit: int | None = None) -> list[str]:
        """Settle stale claims, then claim repositories with queued runs and no claim
        (oldest run first), as many as ``max_running`` allows and at most ``limit``; each
        claim takes its repository's oldest queued run. The claims' tokens."""
        tokens: list[str] = []
        with self._txn() as (con, changed):
            self._reconcile(con, changed)
            (held,) = con.execute("SELECT COUNT(*) FROM claims").fetchone()
            room = self.max_running - int(held)
            if limit is not None:
                room = min(room, limit)
            if room <= 0:
                return tokens
            repos = con.execute(
                "SELECT repo FROM runs WHERE state = ? AND repo NOT IN (SELECT repo FROM claims) "
                "GROUP BY repo ORDER BY MIN(seq) LIMIT ?",
                (RunState.QUEUED, room),
            ).fetchall()
            for (repo,) in repos:
                token = secrets.token_hex(8)
                run = self._take_next(con, changed, repo)
                if run is None:  # cannot be: the repository was selected for its queued run
                    continue
                con.execute(
                    "INSERT INTO claims (repo, token, run_id, host, pid, pid_start, since) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (repo, token, run.run_id, holder.host, holder.pid, holder.start, now_iso()),
                )
                tokens.append(token)
        return tokens

    def _take_next(
        self, con: sqlite3.Connection, changed: list[RunStatus], repo: str
    ) -> RunStatus | None:
        row = con.execute(
            "SELECT record FROM runs WHERE repo = ? AND state = ? ORDER BY seq LIMIT 1",
            (repo, RunState.QUEUED),
        ).fetchone()
        if row is None:
            return None
        run = self._status(row[0]).with_(state=RunState.RUNNING)
        self._put(con, changed, run)
        return run

    def hand_over(self, token: str, holder: Holder) -> bool:
        """The claim now belongs to ``holder`` (the drainer started for it); False when the
        claim is gone (settled as stale meanwhile)."""
        with self._txn() as (con, _):
            cur = con.execute(
                "UPDATE claims SET pid = ?, pid_start = ?, host = ? WHERE token = ?",
                (holder.pid, holder.start, holder.host, token),
            )
            return cur.rowcount == 1

    def current(self, token: str) -> RunStatus | None:
        """The run a claim is on, or None when the claim was released."""
        with self._connect() as con:
            row = con.execute(
                "SELECT r.record FROM claims c JOIN runs r ON r.run_id = c.run_id "
                "WHERE c.token = ?",
                (token,),
            ).fetchone()
        return self._status(row[0]) if row else None

    def started(self, token: str, status: RunStatus) -> None:
        """The claim's run has its chain process (``status.pid``)."""
        with self._txn() as (con, changed):
            if self._owns(con, token, status.run_id):
                self._put(con, changed, status)
                con.execute(
                    "UPDATE runs SET chain_start = ? WHERE run_id = ?",
                    (process_start(status.pid) if status.pid else None, status.run_id),
                )

    def finish(self, token: str, final: RunStatus, *, advance: bool = True) -> None:
        """Record the claim's run as ``final``, then take the repository's next queued run,
        or release the claim when none is left (or ``advance`` is False)."""
        with self._txn() as (con, changed):
            if not self._owns(con, token, final.run_id):
                log.warning("run %s: its claim was settled by another process", final.run_id)
                return
            self._put(con, changed, final)
            nxt = self._take_next(con, changed, repo_key(final.repository)) if advance else None
            if nxt is None:
                con.execute("DELETE FROM claims WHERE token = ?", (token,))
            else:
                con.execute("UPDATE claims SET run_id = ? WHERE token = ?", (nxt.run_id, token))

    @staticmethod
    def _owns(con: sqlite3.Connection, token: str, run_id: str) -> bool:
        row = con.execute(
            "SELECT 1 FROM claims WHERE token = ? AND run_id = ?", (token, run_id)
        ).fetchone()
        return row is not None

    # ---- reconciling --------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Settle the claims of drainers that are gone; what was done, one line each."""
        with self._txn() as (con, changed):
            return self._reconcile(con, changed)

    def _reconcile(self, con: sqlite3.Connection, changed: list[RunStatus]) -> list[str]:
        done: list[str] = []
        claims = con.execute(
            "SELECT c.token, c.host, c.pid, c.pid_start, r.record, r.chain_start "
            "FROM claims c LEFT JOIN runs r ON r.run_id = c.run_id"
        ).fetchall()
        for token, host, pid, pid_start, record, chain_start in claims:
            if host != self.host:
                continue  # another machine's process: not ours to judge
            run = self._status(record) if record else None
            chain_pid = run.pid if run else None
            if process_alive(pid, pid_start) or process_alive(chain_pid, chain_start):
                continue
            con.execute("DELETE FROM claims WHERE token = ?", (token,))
            if run is not None and run.state is RunState.RUNNING:
                done.append(self._settle(con, changed, run, f"its drainer (pid {pid} on {host})"))
        # a run left running with no claim at all (a claim row lost with a crash)
        orphans = con.execute(
            "SELECT record FROM runs WHERE state = ? AND repo NOT IN (SELECT repo FROM claims)",
            (RunState.RUNNING,),
        ).fetchall()
        for (record,) in orphans:
            done.append(self._settle(con, changed, self._status(record), "no drainer"))
        for line in done:
            log.warning("%s", line)
        return done

    def _settle(
        self, con: sqlite3.Connection, changed: list[RunStatus], run: RunStatus, who: str
    ) -> str:
        if run.started_at is None:  # taken, but its chain never started: run it later
            self._put(con, changed, run.with_(state=RunState.QUEUED))
            return f"run {run.run_id}: {who} went away before its chain started; queued again"
        if run.target == JENKINS:
            return self._settle_jenkins(con, changed, run, who)
        error = (
            f"{who} went away while the chain (pid {run.pid}) ran; its outcome was not "
            "recorded (the run's log shows how far it got): push again to run it again"
        )
        self._put(
            con, changed, run.with_(state=RunState.FAILED, finished_at=now_iso(), error=error)
        )
        return f"run {run.run_id} marked failed: {error}"

    def _settle_jenkins(
        self, con: sqlite3.Connection, changed: list[RunStatus], run: RunStatus, who: str
    ) -> str:
        """A Jenkins run whose drainer went away while triggering it: never triggered again.
        With the queue item Jenkins answered, Jenkins has the build: done."""
        url = run.jenkins_build_url or run.jenkins_queue_url
        if url:
            note = f"{who} went away after Jenkins queued the build ({url}); not triggered again"
            self._put(
                con,
                changed,
                run.with_(state=RunState.SUCCEEDED, finished_at=now_iso(), error=note),
            )
            return f"run {run.run_id} marked succeeded: {note}"
        error = (
            f"{who} went away while triggering the Jenkins job {run.jenkins_job}, before "
            "Jenkins' answer was recorded; Jenkins may or may not have queued a build: "
            f"check {run.jenkins_job} in Jenkins, and push again if it has no build of "
            f"{run.commit[:12]}"
        )
        if run.error:
            error += f" (the last attempt: {run.error})"
        self._put(
            con, changed, run.with_(state=RunState.FAILED, finished_at=now_iso(), error=error)
        )
        return f"run {run.run_id} marked failed: {error}"

    def cancel_queued(self, trigger: str, reason: str) -> list[RunStatus]:
        """Cancel the queued runs ``trigger`` asked for (the runs taken by a drainer go on)."""
        with self._txn() as (con, changed):
            rows = con.execute(
                "SELECT record FROM runs WHERE state = ? AND trigger = ? ORDER BY seq",
                (RunState.QUEUED, trigger),
            ).fetchall()
            for (record,) in rows:
                cancelled = self._status(record).with_(
                    state=RunState.CANCELLED, finished_at=now_iso(), error=reason
                )
                self._put(con, changed, cancelled)
        return changed

    # ---- reading ------------------------------------------------------------------------
    def running(self, trigger: str | None = None) -> list[tuple[RunStatus, int | None]]:
        """The runs a drainer holds, with the drainer's pid."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT r.record, c.pid FROM runs r LEFT JOIN claims c ON c.run_id = r.run_id "
                "WHERE r.state = ? AND (? IS NULL OR r.trigger = ?) ORDER BY r.seq",
                (RunState.RUNNING, trigger, trigger),
            ).fetchall()
        return [(self._status(record), pid) for record, pid in rows]

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per repository with runs to do: the run its drainer is on and the queued ones."""
        out: dict[str, dict[str, Any]] = {}
        with self._connect() as con:
            rows = con.execute(
                "SELECT repo, run_id, state FROM runs WHERE state IN (?, ?) ORDER BY seq",
                (RunState.QUEUED, RunState.RUNNING),
            ).fetchall()
        for repo, run_id, state in rows:
            entry = out.setdefault(repo, {"running": None, "queued": []})
            if state == RunState.RUNNING:
                entry["running"] = run_id
            else:
                entry["queued"].append(run_id)
        return out

    def get(self, run_id: str) -> RunStatus:
        path = self.paths.status(run_id)
        with self._connect() as con:
            row = con.execute("SELECT record FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is not None:
            return self._status(row[0])
        try:  # a run recorded before the queue held runs
            return RunStatus.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ConfigError(
                f"no run {run_id!r} under {self.paths.runs}",
                hint="run ids are printed when a run is queued; `trainchain hooks status` "
                "lists them",
            ) from None
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} is not a run status file: {err}") from None

    def recent(self, limit: int = SHOWN_RUNS) -> list[RunStatus]:
        """The latest runs, newest first."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT record FROM runs ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [self._status(record) for (record,) in rows]

    def prune(self, keep: int = KEPT_RUNS) -> int:
        """Remove the finished runs older than the newest ``keep`` (rows, files, logs)."""
        with self._txn() as (con, _):
            rows = con.execute(
                "SELECT run_id FROM runs WHERE state NOT IN (?, ?) AND seq <= "
                "(SELECT MAX(seq) FROM runs) - ?",
                (RunState.QUEUED, RunState.RUNNING, keep),
            ).fetchall()
            con.executemany("DELETE FROM runs WHERE run_id = ?", rows)
        for (run_id,) in rows:
            self.paths.status(run_id).unlink(missing_ok=True)
            self.paths.log(run_id).unlink(missing_ok=True)
        return len(rows)
