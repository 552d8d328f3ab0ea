"""The MLflow adapter: runs, artifacts and the model registry (aliases, not stages).

One writer per store: only trainchain, on the host, talks to the tracking store.
No global MLflow state is set: every call goes through one ``MlflowClient``, wrapped so
that a store that cannot be read or written is a :class:`~trainchain.core.errors.StoreError`
naming the store (password redacted), and a missing run, model or artifact is a
:class:`~trainchain.core.errors.NotInStore`: the one failure a caller may read as "none".
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainchain.adapters.locks import sqlite_opening
from trainchain.core import keys
from trainchain.core.errors import NotInStore, RegistryError, StoreError
from trainchain.core.redaction import redact
from trainchain.core.settings import ensure_sqlite_folder

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT = "model"
_MAX_PARAM = 500  # MLflow's limit on a param value's length
RUN_CHAIN_FIRST = "run the chain on a model repository first (`trainchain run PATH`)"


def _quiet_mlflow() -> None:
    for name in ("mlflow", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)


STORE_HINT = (
    "check TRAINCHAIN_TRACKING_URI (or MLFLOW_TRACKING_URI): the tracking server must be "
    "reachable, and a SQLite file must be an MLflow database this user can read and write"
)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


@contextmanager
def store_errors(tracking_uri: str, doing: str) -> Iterator[None]:
    """MLflow's and its database's errors while ``doing`` as trainchain's: a missing
    resource is :class:`NotInStore`, anything else :class:`StoreError`; both name the
    store (password redacted) and say what to do."""
    from mlflow.exceptions import MlflowException

    database_errors: tuple[type[Exception], ...]
    try:
        from sqlalchemy.exc import SQLAlchemyError

        database_errors = (SQLAlchemyError,)
    except ImportError:  # mlflow-skinny (the serve image) talks to a server: no database here
        database_errors = ()
    shown = redact(tracking_uri)
    try:
        yield
    except MlflowException as err:
        detail = redact(_first_line(err.message))
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise NotInStore(
                f"{detail} (MLflow store {shown})",
                hint="check the name or id, and that TRAINCHAIN_TRACKING_URI points at the "
                "store that holds it",
            ) from err
        raise StoreError(
            f"the MLflow store {shown} failed while {doing}: {detail}", hint=STORE_HINT
        ) from err
    except database_errors as err:
        raise StoreError(
            f"the MLflow store {shown} failed while {doing}: {redact(_first_line(str(err)))}",
            hint=STORE_HINT,
        ) from err


class _Client:
    """An ``MlflowClient`` whose every call runs inside :func:`store_errors`."""

    def __init__(self, client: Any, tracking_uri: str) -> None:
        self._client = client
        self._uri = tracking_uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            with store_errors(self._uri, f"calling {name}"):
                return attr(*args, **kwargs)

        return call


def _client(tracking_uri: str) -> Any:
    """The guarded client of ``tracking_uri``; MLflow opens (and upgrades) a database
    store here, so a corrupt or unreadable file fails here, as a StoreError."""
    from mlflow import MlflowClient

    ensure_sqlite_folder(tracking_uri)
    with sqlite_opening(tracking_uri), store_errors(tracking_uri, "opening it"):
        try:
            client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        except ImportError as err:  # a database URL whose driver is not installed
            raise StoreError(
                f"cannot open the MLflow store {redact(tracking_uri)}: {err}",
                hint="install the database driver the error names (postgresql:// needs "
                "psycopg, mysql:// needs PyMySQL), or use a sqlite:/// or http:// URL",
            ) from err
    return _Client(client, tracking_uri)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    aliases: tuple[str, ...]
    run_id: str | None
    source: str
    tags: dict[str, str]
    metrics: dict[str, float]
    created: int


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: Path) -> None:
        _quiet_mlflow()
        # a progress bar per download is noise in a chain's log, and so is the "View run
        # ... at" line MLflow writes to stdout when a run on a tracking server ends
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.tracking_uri = tracking_uri
        self.shown_uri = redact(tracking_uri)  # for messages and logs
        self.artifact_root = artifact_root
        self.client = _client(tracking_uri)

    # ---- runs ---------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        if self.tracking_uri.startswith(("http://", "https://")):
            # a tracking server keeps the artifacts where it is told to (proxied with
            # --serve-artifacts): a worker on another machine needs only its URL
            return str(self.client.create_experiment(name))
        location = (self.artifact_root / name).resolve()
        location.mkdir(parents=True, exist_ok=True)
        return str(self.client.create_experiment(name, artifact_location=location.as_uri()))

    def start_run(
        self,
        experiment_id: str,
        run_name: str,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
    ) -> str:
        all_tags = dict(tags)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return str(run.info.run_id)

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def log(
        self,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[
                Metric(k, float(v), now, 0)
                for k, v in (metrics or {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            ],
            params=[Param(k, str(v)[:_MAX_PARAM]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def log_step_metrics(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """Per-step values from the report file (epochs, folds) as metric history."""
        from mlflow.entities import Metric

        metrics = []
        for row in rows:
            step = int(row.get("step", 0))
            ts = int(float(row.get("time", 0)) * 1000)
            for k, v in row.items():
                if k in {"step", "time", "trial", "attempt"}:
                    continue
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    metrics.append(Metric(f"step/{k}", float(v), ts, step))
        for i in range(0, len(metrics), 900):
            self.client.log_batch(run_id, metrics=metrics[i : i + 900])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def log_artifact_once(self, run_id: str, local_file: Path, artifact_dir: str) -> str:
        """Log ``local_file`` under ``artifact_dir`` of ``run_id`` unless it is there already;
        return its artifact path."""
        target = f"{artifact_dir}/{local_file.name}"
        present = {f.path for f in self.client.list_artifacts(run_id, artifact_dir)}
        if target not in present:
            self.client.log_artifact(run_id, str(local_file), artifact_dir)
        return target

    def save_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """``text`` as the artifact ``artifact_file`` of ``run_id`` (replaced if present)."""
        self.client.log_text(run_id, text, artifact_file)

    def find_chain_run(self, chain_id: str) -> str | None:
        """The parent run of chain ``chain_id`` in any experiment, or None."""
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        if not experiments:
            return None
        quoted = chain_id.replace("'", "\\'")
        runs = self.client.search_runs(
            experiments,
            filter_string=f"tags.`trainchain.chain` = '{quoted}' "
            f"and tags.`mlflow.runName` = 'chain {quoted}'",
            max_results=1,
        )
        return str(runs[0].info.run_id) if runs else None

    def finish(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    def run_data(self, run_id: str) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
        run = self.client.get_run(run_id)
        return dict(run.data.params), dict(run.data.metrics), dict(run.data.tags)

    def download(self, run_id: str, path: str, dst: Path) -> Path:
        from mlflow.artifacts import download_artifacts

        dst.mkdir(parents=True, exist_ok=True)
        with store_errors(self.tracking_uri, f"downloading {path} of run {run_id}"):
            return Path(
                download_artifacts(
                    run_id=run_id,
                    artifact_path=path,
                    dst_path=str(dst),
                    tracking_uri=self.tracking_uri,
                )
            )

    def has_model(self, run_id: str) -> bool:
        return any(
            a.path.endswith("MLmodel") for a in self.client.list_artifacts(run_id, MODEL_ARTIFACT)
        )

    def artifact_uri(self, run_id: str, path: str = MODEL_ARTIFACT) -> str:
        return f"{self.client.get_run(run_id).info.artifact_uri}/{path}"

    # ---- registry -----------------------------------------------------------
    def register(self, name: str, run_id: str, tags: Mapping[str, str]) -> str:
        if not self.model_exists(name):
            self.client.create_registered_model(name)
        mv = self.client.create_model_version(
            name, source=self.artifact_uri(run_id), run_id=run_id, tags=dict(tags)
        )
        return str(mv.version)

    def model_exists(self, name: str) -> bool:
        """Whether ``name`` is registered; a store that cannot answer raises StoreError."""
        try:
            self.client.get_registered_model(name)
        except NotInStore:
            return False
        return True

    def no_such_model(self, name: str, hint: str = RUN_CHAIN_FIRST) -> RegistryError:
        """The error for ``name`` not in the registry, worded alike by every command."""
        return RegistryError(f"no registered model named {name!r} in {self.shown_uri}", hint=hint)

    def aliases(self, name: str) -> dict[str, str] | None:
        """The model's aliases (alias -> version), or None when ``name`` is not registered;
        a store that cannot answer raises StoreError (never "no such model")."""
        try:
            model = self.client.get_registered_model(name)
        except NotInStore:
            return None
        return {str(alias): str(version) for alias, version in (model.aliases or {}).items()}

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version ``alias`` names, or None when the model or the alias does not exist;
        a store that cannot answer raises StoreError (never "no such version")."""
        return (self.aliases(name) or {}).get(alias)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def champion_history(self, name: str) -> list[str]:
        model = self.client.get_registered_model(name)
        raw = model.tags.get(keys.CHAMPION_HISTORY, "[]")
        try:
            return [str(v) for v in json.loads(raw)]
        except ValueError:
            return []

    def make_champion(self, name: str, version: str) -> None:
        """Move ``champion`` to ``version`` and remember the order, for rollback."""
        history = self.champion_history(name)
        history.append(version)
        self.client.set_registered_model_tag(name, keys.CHAMPION_HISTORY, json.dumps(history[-50:]))
        self.set_alias(name, CHAMPION, version)

    def rollback(self, name: str) -> tuple[str, str]:
        """Move ``champion`` back to the version that held it before; returns (from, to)."""
        try:
            history = self.champion_history(name)
        except NotInStore:
            raise self.no_such_model(
                name, "`trainchain models NAME` lists a model's versions; run the chain first"
            ) from None
        current = self.alias_version(name, CHAMPION)
        if current is None or len(history) < 2:
            raise RegistryError(
                f"{name}: there is no earlier champion to roll back to "
                f"(champion: {current or 'none'})",
                hint="rollback needs a model that has had at least two champions",
            )
        history.pop()
        previous = history[-1]
        self.client.set_registered_model_tag(name, keys.CHAMPION_HISTORY, json.dumps(history))
        self.set_alias(name, CHAMPION, previous)
        return current, previous

    def versions(self, name: str) -> list[VersionInfo]:
        try:
            model = self.client.get_registered_model(name)
        except NotInStore:
            raise self.no_such_model(name) from None
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        out = []
        for mv in self.client.search_model_versions(f"name='{name}'"):
            metrics: dict[str, float] = {}
            if mv.run_id:
                try:
                    metrics = dict(self.client.get_run(mv.run_id).data.metrics)
                except NotInStore:  # the version's run was deleted
                    metrics = {}
            out.append(
                VersionInfo(
                    version=str(mv.version),
                    aliases=tuple(sorted(aliases.get(str(mv.version), []))),
                    run_id=mv.run_id,
                    source=mv.source or "",
                    tags=dict(mv.tags or {}),
                    metrics=metrics,
                    created=int(mv.creation_timestamp or 0),
                )
            )
        return sorted(out, key=lambda v: int(v.version))

    def version_run_id(self, name: str, version: str) -> str | None:
        mv = self.client.get_model_version(name, version)
        return str(mv.run_id) if mv.run_id else None

    def load_model(self, run_id: str, workdir: Path) -> Any:
        """Load a run's model (pyfunc) from its artifacts."""
        import mlflow.pyfunc

        local = self.download(run_id, MODEL_ARTIFACT, workdir / run_id)
        return mlflow.pyfunc.load_model(str(local))
