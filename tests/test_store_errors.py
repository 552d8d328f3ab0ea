"""A store that cannot answer is an error, never "none": real broken stores (a corrupt
SQLite file, an MLflow database missing its registry table, a database URL on a closed
port, a missing git repository) through the adapters, serving and the real `trainchain`
command."""

from __future__ import annotations

import socket
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ToyRepo, run_cli
from trainchain.adapters.studies import load_study, study_names
from trainchain.adapters.tracking import CHAMPION, Tracker
from trainchain.core.errors import StoreError
from trainchain.serving.app import create_app, service_of
from trainchain.serving.config import ServeConfig

CORRUPT = b"this is not a database: " + b"x" * 200


def _corrupt(path: Path) -> str:
    path.write_bytes(CORRUPT)
    return f"sqlite:///{path}"


def _registry_broken(path: Path) -> str:
    """An MLflow store whose runs work but whose registry cannot answer (its
    ``registered_models`` table is gone)."""
    uri = f"sqlite:///{path}"
    Tracker(uri, path.parent / "artifacts")  # creates the tables
    with sqlite3.connect(path) as con:
        con.execute("DROP TABLE registered_models")
    return uri


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but not listening: a connection there is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _one_clear_line(stderr: str, *expected: str) -> str:
    """The `error:` line of ``stderr`` (no traceback); it contains every ``expected``."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    for text in expected:
        assert text in errors[0], stderr
    return errors[0]


# --------------------------------------------------------------------------- MLflow


def test_a_missing_model_or_alias_is_none_and_a_broken_registry_raises(tmp_path: Path) -> None:
    """alias_version answers None for a model or alias that does not exist, and raises a
    StoreError naming the store when the registry cannot answer (was: None, "no champion")."""
    good = Tracker(f"sqlite:///{tmp_path / 'good.db'}", tmp_path / "artifacts")
    assert good.alias_version("nosuchmodel", CHAMPION) is None
    good.client.create_registered_model("m")
    assert good.alias_version("m", CHAMPION) is None
    assert good.model_exists("m") and not good.model_exists("nosuchmodel")

    uri = _registry_broken(tmp_path / "broken.db")
    broken = Tracker(uri, tmp_path / "artifacts")
    with pytest.raises(StoreError) as info:
        broken.alias_version("m", CHAMPION)
    assert f"the MLflow store {uri} failed" in info.value.message
    assert "TRAINCHAIN_TRACKING_URI" in (info.value.hint or "")
    with pytest.raises(StoreError):
        broken.model_exists("m")


def test_store_errors_work_where_sqlalchemy_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The serve image has mlflow-skinny and no SQLAlchemy: MLflow's errors are still the
    store's, and a lookup of what is not there is still NotInStore (the image's service
    failed at its first registry call when the import was unconditional)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    from trainchain.adapters.tracking import store_errors
    from trainchain.core.errors import NotInStore

    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    monkeypatch.setitem(sys.modules, "sqlalchemy.exc", None)
    uri = "http://user:secret@127.0.0.1:5000"
    with pytest.raises(NotInStore), store_errors(uri, "reading"):
        raise MlflowException("no model m", error_code=RESOURCE_DOES_NOT_EXIST)
    with pytest.raises(StoreError) as info, store_errors(uri, "reading"):
        raise MlflowException("the server said 500")
    assert "secret" not in info.value.message and "127.0.0.1:5000" in info.value.message


def test_a_corrupt_tracking_store_is_a_store_error_naming_it(tmp_path: Path) -> None:
    """A tracking URI at a file that is not a database fails on opening, as a StoreError
    naming the URL and the database's own words."""
    uri = _corrupt(tmp_path / "mlflow.db")
    with pytest.raises(StoreError) as info:
        Tracker(uri, tmp_path / "artifacts")
    assert info.value.message.startswith(f"the MLflow store {uri} failed while opening it")
    assert "file is not a database" in info.value.message


@pytest.mark.parametrize("command", ["tune", "run"])
def test_tune_and_run_on_a_corrupt_tracking_store_fail_with_one_line(
    command: str, toy_repo: ToyRepo, home: Path, tmp_path: Path
) -> None:
    """`trainchain tune` and `run` with a corrupt SQLite tracking store exit non-zero with
    one line naming the store, not a traceback."""
    uri = _corrupt(tmp_path / "mlflow.db")
    out = run_cli(
        command, str(toy_repo()), "--home", str(home), env={"TRAINCHAIN_TRACKING_URI": uri}
    )
    assert out.returncode != 0
    _one_clear_line(out.stderr, f"the MLflow store {uri}", "file is not a database")
    assert "hint: check TRAINCHAIN_TRACKING_URI" in out.stderr


def test_tune_with_a_registry_that_cannot_answer_is_not_no_champion(
    toy_repo: ToyRepo, home: Path, tmp_path: Path
) -> None:
    """A registry outage while looking up the champion stops tune with one line naming the
    store; it is not read as "no champion" (which would tune on and register blind)."""
    uri = _registry_broken(tmp_path / "mlflow.db")
    out = run_cli(
        "tune", str(toy_repo()), "--home", str(home), env={"TRAINCHAIN_TRACKING_URI": uri}
    )
    assert out.returncode != 0, out.stdout
    _one_clear_line(out.stderr, f"the MLflow store {uri} failed")
    assert "trial 1" not in out.stdout  # stopped before any trial ran


@pytest.mark.parametrize("scheme", ["postgresql", "http"])
def test_a_tracking_server_on_a_closed_port_is_one_line_without_the_password(
    scheme: str, closed_port: int, toy_repo: ToyRepo, home: Path
) -> None:
    """A postgres or HTTP tracking URI on a port nobody listens on: `trainchain tune` exits
    non-zero with one line naming the URL, its password redacted."""
    uri = f"{scheme}://trainer:s3cretpw@127.0.0.1:{closed_port}/mlflow"
    out = run_cli(
        "tune",
        str(toy_repo()),
        "--home",
        str(home),
        env={"TRAINCHAIN_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
    )
    assert out.returncode != 0
    _one_clear_line(out.stderr, f"{scheme}://trainer:***@127.0.0.1:{closed_port}/mlflow")
    assert "s3cretpw" not in out.stderr + out.stdout


# --------------------------------------------------------------------------- Optuna


def test_an_unreadable_study_storage_is_an_error_not_no_earlier_study(tmp_path: Path) -> None:
    """study_names of a corrupt SQLite storage raises a StoreError naming it (was: [], so a
    study that should resume started afresh); a new storage, its folder missing, has none."""
    uri = _corrupt(tmp_path / "optuna.db")
    with pytest.raises(StoreError) as info:
        study_names(uri)
    assert info.value.message.startswith(f"the study storage {uri} failed")
    assert "file is not a database" in info.value.message
    assert "TRAINCHAIN_STUDY_STORAGE" in (info.value.hint or "")
    assert study_names(f"sqlite:///{tmp_path / 'new' / 'optuna.db'}") == []


def test_load_study_is_none_only_for_a_missing_study(tmp_path: Path) -> None:
    """load_study answers None for a study name the storage does not hold, and raises a
    StoreError naming a storage it cannot read."""
    assert load_study(f"sqlite:///{tmp_path / 'optuna.db'}", "no-such-study") is None
    uri = _corrupt(tmp_path / "corrupt.db")
    with pytest.raises(StoreError) as info:
        load_study(uri, "any")
    assert info.value.message.startswith(f"the study storage {uri} failed while opening it")


def test_a_study_storage_on_a_closed_port_is_a_store_error_without_the_password(
    closed_port: int,
) -> None:
    """A postgres study storage nobody listens on: a StoreError naming it, password
    redacted."""
    uri = f"postgresql://trainer:s3cretpw@127.0.0.1:{closed_port}/optuna"
    with pytest.raises(StoreError) as info:
        study_names(uri)
    assert f"postgresql://trainer:***@127.0.0.1:{closed_port}/optuna" in info.value.message
    assert "s3cretpw" not in str(info.value)


def test_tune_on_a_corrupt_study_storage_fails_with_one_line(
    toy_repo: ToyRepo, home: Path, tmp_path: Path
) -> None:
    """`trainchain tune` with a corrupt study storage exits non-zero with one line naming
    it, instead of starting a new study or printing a traceback."""
    uri = _corrupt(tmp_path / "optuna.db")
    out = run_cli(
        "tune", str(toy_repo()), "--home", str(home), env={"TRAINCHAIN_STUDY_STORAGE": uri}
    )
    assert out.returncode != 0
    _one_clear_line(out.stderr, f"the study storage {uri} failed", "file is not a database")


# --------------------------------------------------------------------------- serving


def test_serving_against_a_broken_registry_answers_503_naming_the_store(tmp_path: Path) -> None:
    """/health with a registry that cannot answer is a 503 saying the registry cannot be
    read, naming the store; not "no registered model" (was: the database error read as
    "no such model")."""
    uri = _registry_broken(tmp_path / "mlflow.db")
    app = create_app(
        ServeConfig(
            model="eeg", tracking_uri=uri, artifact_root=tmp_path / "artifacts", reload_interval=60
        )
    )
    try:
        holder = service_of(app).holder
        assert holder.wait_for(lambda: holder.status[CHAMPION].error is not None, 60)
        health = app.test_client().get("/health")
        assert health.status_code == 503
        error = health.get_json()["error"]
        assert f"cannot read the registry: the MLflow store {uri} failed" in error
        assert "no registered model" not in error
    finally:
        service_of(app).close()


# --------------------------------------------------------------------------- git


def test_pulling_a_missing_repository_is_one_line_naming_it(home: Path, tmp_path: Path) -> None:
    """`trainchain pull` of a path that does not exist exits 5 with one line saying so."""
    missing = tmp_path / "no-such-repo"
    out = run_cli("pull", str(missing), "--home", str(home))
    assert out.returncode == 5
    line = _one_clear_line(out.stderr)
    assert line == f"error: {missing} does not exist: give a model folder or a git URL"
