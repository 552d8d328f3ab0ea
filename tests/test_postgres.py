"""The Optuna study storage on a real PostgreSQL (Debian's, started by
scripts/start-postgres.sh on a free loopback port): tuning reaches the verdict it reaches on
SQLite and its trials are in PostgreSQL, a server restart between two trials is survived
with no trial lost or counted twice, and no error or log line shows the password. With
--mlflow the script also runs an MLflow tracking server on it, whose artifacts it proxies.

The server comes from Debian's postgresql package, which `scripts/start-postgres.sh
--install-only` installs (.ci/run does). Where it is missing the tier is skipped with the
reason, except where CI is set: there that fails the run.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy

from tests.conftest import ToyRepo, run_cli, start_script
from tests.postgres_real import START, WAIT, Postgres, require_postgres
from trainchain.adapters import studies
from trainchain.adapters.tracking import Tracker
from trainchain.chain.context import prepare
from trainchain.chain.tune import tune
from trainchain.core.config import Direction
from trainchain.core.errors import StoreError
from trainchain.core.progress import TuneDisplay
from trainchain.core.settings import Settings, load_settings
from trainchain.executors import LocalExecutor

pytestmark = pytest.mark.postgres


def _settings_on(postgres: Postgres, home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a user gets after eval of the script's lines: the study storage is the
    PostgreSQL, everything else in ``home``."""
    monkeypatch.setenv("TRAINCHAIN_HOME", str(home))
    monkeypatch.setenv("TRAINCHAIN_STUDY_STORAGE", postgres.url)
    return load_settings()


class _Recorder(logging.Handler):
    """Every message of the studies adapter; ``reconnecting`` is set by its first warning
    of a lost connection."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.reconnecting = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        if "lost the connection" in record.getMessage():
            self.reconnecting.set()


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    handler = _Recorder()
    logger = logging.getLogger(studies.__name__)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def test_the_script_prints_a_url_of_a_server_that_accepts_it(postgres: Postgres) -> None:
    """start-postgres.sh prints a loopback psycopg2 URL of the trainchain role and database,
    whose password is in a file only its owner reads; the server listens on loopback only.
    Run again on its folder, it prints the same URL of the running server."""
    prefix = "postgresql+psycopg2://trainchain:"
    assert postgres.url == f"{prefix}{postgres.password}@{postgres.url.rsplit('@', 1)[1]}"
    assert postgres.url.rsplit("@", 1)[1].startswith("127.0.0.1:")
    assert postgres.url.endswith("/trainchain")
    assert (postgres.folder / "password").stat().st_mode & 0o777 == 0o600
    assert (
        "listen_addresses = '127.0.0.1'"
        in (postgres.folder / "data" / "trainchain.conf").read_text()
    )
    again = subprocess.run(
        [str(START), "--dir", str(postgres.folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert f"export TRAINCHAIN_STUDY_STORAGE={postgres.url}" in again.stdout.splitlines()
    assert "already runs" in again.stderr and postgres.password not in again.stderr


def test_tune_on_postgres_reaches_the_sqlite_verdict_and_stores_its_trials_there(
    postgres: Postgres,
    toy_repo: ToyRepo,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same model repository tuned with the study on SQLite and on PostgreSQL: the same
    trials, the same confirmed best trial; Optuna reads the trials back from PostgreSQL."""
    repo = toy_repo(name="pg-verdict", threshold=0.95)
    quiet = TuneDisplay("val_accuracy", 0.95, ">=", quiet=True)
    on_sqlite = tune(prepare(repo, settings), LocalExecutor(), display=quiet)
    pg = _settings_on(postgres, tmp_path / "home-pg", monkeypatch)
    on_postgres = tune(prepare(repo, pg), LocalExecutor(), display=quiet)

    assert on_postgres.status == on_sqlite.status == "succeeded"
    assert on_postgres.verdict == on_sqlite.verdict == "confirmed"
    assert on_postgres.best_trial == on_sqlite.best_trial
    assert on_postgres.best_params == on_sqlite.best_params
    assert [t.params for t in on_postgres.trials] == [t.params for t in on_sqlite.trials]

    def stored(storage: str, chain: str) -> list[tuple[int, str, float | None, dict[str, Any]]]:
        study = optuna.load_study(study_name=chain, storage=storage)
        return [(t.number, t.state.name, t.value, t.params) for t in study.trials]

    in_postgres = stored(postgres.url, on_postgres.chain_id)
    assert in_postgres == stored(settings.study_storage, on_sqlite.chain_id)
    by_number = {number: value for number, _, value, _ in in_postgres}
    assert all(by_number[t.number] == t.value for t in on_postgres.trials)
    assert on_postgres.chain_id in studies.study_names(postgres.url)
    assert not (tmp_path / "home-pg" / "optuna.db").exists()  # nothing went to SQLite


class _RestartAfterFirstTrial(TuneDisplay):
    """A quiet display that stops the server once the first trial has finished and starts
    it again once the adapter says it is reconnecting: a restart between two trials, with
    the chain waiting on it."""

    def __init__(self, postgres: Postgres, recorder: _Recorder) -> None:
        super().__init__("val_accuracy", 0.9999, ">=", quiet=True)
        self.postgres, self.recorder = postgres, recorder
        self.thread: threading.Thread | None = None
        self.restarted = threading.Event()

    def trial_finished(self, n: int, total: int, **kwargs: Any) -> None:
        super().trial_finished(n, total, **kwargs)
        if self.thread is None:
            self.postgres.stop()
            self.thread = threading.Thread(target=self._start_when_waited_for)
            self.thread.start()

    def _start_when_waited_for(self) -> None:
        if self.recorder.reconnecting.wait(WAIT):
            self.postgres.start()
            self.restarted.set()


def test_a_server_restart_between_two_trials_is_survived_without_losing_a_trial(
    postgres: Postgres,
    toy_repo: ToyRepo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    recorder: _Recorder,
) -> None:
    """PostgreSQL stopped after the first trial and started again while the chain waits
    for it: the chain reconnects and spends its budget of 3 trials, each stored once."""
    pg = _settings_on(postgres, tmp_path / "home-pg", monkeypatch)
    display = _RestartAfterFirstTrial(postgres, recorder)
    try:
        report = tune(
            prepare(toy_repo(name="pg-restart", threshold=0.9999, max_trials=3), pg),
            LocalExecutor(),
            display=display,
        )
    finally:
        if display.thread is not None:
            display.thread.join(WAIT + 10)
    assert display.restarted.is_set(), recorder.messages  # the chain did wait for it
    assert report.status == "goal_not_reached", report.error
    assert [t.state for t in report.trials] == ["COMPLETE"] * 3
    stored = optuna.load_study(study_name=report.chain_id, storage=postgres.url)
    assert [(t.number, t.state.name) for t in stored.trials] == [
        (0, "COMPLETE"),
        (1, "COMPLETE"),
        (2, "COMPLETE"),
    ]
    assert [t.value for t in stored.trials] == [t.value for t in report.trials]
    assert all(postgres.password not in m for m in recorder.messages)


def test_a_server_that_stays_down_is_a_store_error_without_the_password(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch, recorder: _Recorder
) -> None:
    """An opened study whose server does not come back: after the bounded wait, one
    StoreError naming the storage (password redacted) and what to do; neither it nor the
    warning before it shows the password."""
    monkeypatch.setattr(studies, "PG_RECONNECT_WAIT_S", 1.0)
    study = studies.open_study(postgres.url, "pg-down", Direction.MAXIMIZE, 1)
    study.tell(study.ask(), 0.5)
    postgres.stop()
    try:
        with pytest.raises(StoreError) as info, studies.storage_errors(postgres.url, "tuning"):
            study.ask()
    finally:
        postgres.start()
    redacted = postgres.url.replace(postgres.password, "***")
    assert info.value.message.startswith(f"lost the connection to the study storage {redacted}")
    assert "could not reconnect within 1 s" in info.value.message
    assert "scripts/start-postgres.sh" in (info.value.hint or "")
    assert recorder.reconnecting.is_set()
    assert postgres.password not in str(info.value)
    assert all(postgres.password not in m for m in recorder.messages)
    # the server back, the same study goes on where it was
    study.tell(study.ask(), 0.6)
    assert [t.number for t in study.trials] == [0, 1]


def test_tune_with_a_wrong_password_fails_with_one_line_without_it(
    postgres: Postgres, toy_repo: ToyRepo, home: Path
) -> None:
    """`trainchain tune` against the real server with a wrong password: one error line
    naming the storage with the password redacted, at once (opening does not wait)."""
    wrong = postgres.url.replace(postgres.password, "not-the-password-42")
    out = run_cli(
        "tune",
        str(toy_repo(name="pg-wrong")),
        "--home",
        str(home),
        env={"TRAINCHAIN_STUDY_STORAGE": wrong},
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    [line] = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert wrong.replace("not-the-password-42", "***") in line
    assert "password authentication failed" in line
    assert "not-the-password-42" not in out.stderr + out.stdout
    assert postgres.password not in out.stderr + out.stdout


def _alive(pid: int) -> bool:
    """Whether any process of the process group ``pid`` leads is left."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):  # noqa: S310 - loopback http://
            return True
    except (urllib.error.URLError, ConnectionError):
        return False


def test_the_mlflow_server_on_postgres_keeps_runs_there_and_proxies_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start-postgres.sh --mlflow: trainchain's Tracker on the printed tracking URI creates
    a run, logs a metric and a file; the run is in the `mlflow` database, the file in the
    run folder's mlartifacts (uploaded through the server, nothing written by the client
    where it stands); both are there after the servers are stopped and started again, which
    reuses a running server; --stop stops MLflow's whole process group and PostgreSQL. The
    password is on no command line and in no log."""
    require_postgres()
    # the mlflow of the venv running the tests (a worktree has no .venv of its own)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("TRAINCHAIN_MLFLOW_PORT", "0")
    folder = Path(tempfile.mkdtemp(prefix="trainchain-test-mlflow."))
    start = [str(START), "--port", "0", "--dir", str(folder), "--mlflow"]
    try:
        exported = start_script(start)
        uri, pid = exported["TRAINCHAIN_TRACKING_URI"], int(exported["TRAINCHAIN_MLFLOW_PID"])
        assert uri.startswith("http://127.0.0.1:")
        password = (folder / "password").read_text()
        for member in subprocess.run(
            ["pgrep", "-g", str(pid)], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split():
            assert password not in Path(f"/proc/{member}/cmdline").read_text()

        client_root = tmp_path / "client-artifacts"
        tracker = Tracker(uri, client_root)
        run_id = tracker.start_run(tracker.experiment_id("mlflow-on-pg"), "proxied", {"k": "v"})
        tracker.log(run_id, metrics={"val_accuracy": 0.875})
        note = tmp_path / "note.txt"
        note.write_text("through the server\n")
        tracker.log_artifact(run_id, note, "notes")
        tracker.finish(run_id, ok=True)
        experiment = tracker.client.get_run(run_id).info.experiment_id
        stored = folder / "mlartifacts" / experiment / run_id / "artifacts" / "notes" / "note.txt"
        assert stored.read_text() == "through the server\n"
        assert not client_root.exists()  # the client wrote no artifact of its own

        again = subprocess.run(start, capture_output=True, text=True, timeout=120, check=False)
        assert again.returncode == 0, again.stderr
        assert f"export TRAINCHAIN_TRACKING_URI={uri}" in again.stdout.splitlines()
        assert "mlflow already runs" in again.stderr

        # stopped and started again: the run comes back from PostgreSQL and the server
        subprocess.run([str(START), "--stop", str(folder)], timeout=180, check=True)
        restarted = start_script(start)
        tracker = Tracker(restarted["TRAINCHAIN_TRACKING_URI"], client_root)
        _, metrics, _ = tracker.run_data(run_id)
        assert metrics == {"val_accuracy": 0.875}
        fetched = tracker.download(run_id, "notes/note.txt", tmp_path / "fetched")
        assert fetched.read_text() == "through the server\n"
        mlflow_db = restarted["TRAINCHAIN_POSTGRES_URL"].rsplit("/", 1)[0] + "/mlflow"
        engine = sqlalchemy.create_engine(mlflow_db)
        try:
            with engine.connect() as db:
                rows = db.execute(
                    sqlalchemy.text(
                        "SELECT r.status, m.key, m.value FROM runs r "
                        "JOIN metrics m ON m.run_uuid = r.run_uuid WHERE r.run_uuid = :run"
                    ),
                    {"run": run_id},
                ).all()
        finally:
            engine.dispose()
        assert [tuple(row) for row in rows] == [("FINISHED", "val_accuracy", 0.875)]
        assert password not in (folder / "mlflow.log").read_text()

        pid = int(restarted["TRAINCHAIN_MLFLOW_PID"])
        health = restarted["TRAINCHAIN_TRACKING_URI"] + "/health"
        assert _answers(health)
        stopped = subprocess.run(
            [str(START), "--stop", str(folder)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert stopped.returncode == 0, stopped.stderr
        assert "mlflow in" in stopped.stderr and "postgresql in" in stopped.stderr
        assert not _alive(pid)  # the server and all its workers
        assert not _answers(health)
        assert not (folder / "data" / "postmaster.pid").exists()  # PostgreSQL is down
        assert not (folder / "mlflow.pid").exists()
    finally:
        subprocess.run([str(START), "--stop", str(folder)], timeout=180, check=False)
        shutil.rmtree(folder, ignore_errors=True)
