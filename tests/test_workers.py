"""Trials of one chain in parallel (issue 15): `--workers N` on this host and `--join` from
another process share one study: one budget counted across workers, one leader that
confirms and concludes, workers that stop once the chain is over, and a worker killed
mid-trial whose trial is found through its missing heartbeats and retried once from its
checkpoint, counted once. Real processes, the real CLI, the toy model of conftest, on
SQLite and on a real PostgreSQL (scripts/start-postgres.sh)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest

from tests.conftest import ToyRepo, eventually, run_cli, stop
from trainchain.adapters import studies
from trainchain.chain.search import EXCESS_ATTR, RETRY_ATTR
from trainchain.core import keys
from trainchain.core.status import ExitCode


def _study(storage: str) -> Any:
    names = studies.study_names(storage)
    assert len(names) == 1, names
    return optuna.load_study(study_name=names[0], storage=storage)


def _own(study: Any) -> list[Any]:
    return [
        t
        for t in study.trials
        if not t.user_attrs.get(EXCESS_ATTR) and not t.user_attrs.get(studies.WARM_ATTR)
    ]


def _places(study: Any) -> list[Any]:
    """The trials that took a place of the budget (all but retries)."""
    return [t for t in _own(study) if t.user_attrs.get(RETRY_ATTR) is None]


def test_two_workers_share_one_budget_and_one_conclusion(toy_repo: ToyRepo, home: Path) -> None:
    # out of reach (at most 1.0 at x = 0.7 exactly): the whole budget is spent
    repo = toy_repo(threshold=0.9999, max_trials=6)
    # each trial takes over a second, so the worker's start-up never misses the budget
    done = run_cli(
        "run", str(repo), "--executor", "local", "--workers", "2", env={"TOY_STEP_S": "0.4"}
    )
    assert done.returncode == ExitCode.GOAL_NOT_REACHED, done.stdout + done.stderr
    study = _study(f"sqlite:///{home / 'optuna.db'}")
    places = _places(study)
    assert len(places) == 6, [(t.number, t.state.name) for t in study.trials]
    assert {t.state.name for t in _own(study)} <= {"COMPLETE", "PRUNED", "FAIL"}
    workers = {t.user_attrs[studies.WORKER_ATTR] for t in places}
    assert len(workers) == 2, done.stderr  # both ran trials
    assert "trials:    6 of 6" in done.stdout
    assert "[worker 2] worker:    ran" in done.stderr  # the worker's lines, relayed
    # one conclusion: one report, one email
    assert len(list((home / "chains").glob("toy-*.json"))) == 1
    assert len(list((home / "outbox").glob("*.eml"))) == 1
    # two workers on this host: each trial's numeric libraries get half the cores
    share = os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // 2))
    logs = list((home / "runs").glob("toy-*/trial-*/attempt-*/train.log"))
    assert len(logs) >= 6, logs
    assert all(f"toy: threads {share}\n" in log.read_text() for log in logs), share


def test_join_refuses_what_belongs_to_the_leader(toy_repo: ToyRepo, home: Path) -> None:
    repo = toy_repo()
    done = run_cli("tune", str(repo), "--join", "open", "--promote", "--properties", "x.txt")
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "--promote, --properties belong to that leader" in done.stderr
    done = run_cli("tune", str(repo), "--executor", "local", "--join", "open", "--join-wait", "0")
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "no open chain of this code, data and goal (toy-" in done.stderr
    assert "start the chain's leader first" in done.stderr
    done = run_cli("tune", str(repo), "--workers", "0")
    assert done.returncode == ExitCode.CONFIG and "--workers 0" in done.stderr
    done = run_cli("tune", str(repo), "--workers", "65")
    assert done.returncode == ExitCode.CONFIG and "at most 64 on one host" in done.stderr
    # a chain of this model ran with another goal: a worker with this goal does not join
    # it, and says which chains it saw and what must match
    ran = run_cli("tune", str(repo), "--executor", "local", "--max-trials", "1")
    assert ran.returncode in (ExitCode.OK, ExitCode.GOAL_NOT_REACHED), ran.stderr
    done = run_cli(
        "tune", str(repo), "--executor", "local", "--threshold", "0.51", "--join", "open",
        "--join-wait", "0",
    )  # fmt: skip
    assert done.returncode == ExitCode.CONFIG, done.stderr
    assert "this model's other chains there (toy-" in done.stderr
    assert "--threshold and --max-trials" in done.stderr


def _start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "trainchain", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,  # its own group: the test kills it with its trial
    )


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_killed_worker_s_trial_is_retried_once_from_its_checkpoint(
    toy_repo: ToyRepo, home: Path, store: str, request: pytest.FixtureRequest
) -> None:
    storage = (
        f"sqlite:///{home / 'optuna.db'}"
        if store == "sqlite"
        else request.getfixturevalue("postgres_database")
    )
    repo = toy_repo(threshold=0.9999, max_trials=8)
    env = {"TRAINCHAIN_STUDY_STORAGE": storage, "TRAINCHAIN_HEARTBEAT_GRACE": "2"}
    tune = ["tune", str(repo), "--executor", "local"]
    # the worker's trials hang after their step 1 (TOY_HANG_TRIAL reaches its trials only)
    worker = _start(
        *tune, "--join", "open", "--join-wait", "120", env=env | {"TOY_HANG_TRIAL": "any"}
    )
    leader = _start(*tune, env=env)
    try:
        me = f"{os.uname().nodename}:{worker.pid}"

        def hanging() -> Any:
            if worker.poll() is not None:
                pytest.fail(f"the worker exited early:\n{stop(worker)}")
            names = studies.study_names(storage)
            if not names:
                return None
            study = optuna.load_study(study_name=names[0], storage=storage)
            return next(
                (
                    t
                    for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                    if t.user_attrs.get(studies.WORKER_ATTR) == me and 1 in t.intermediate_values
                ),
                None,
            )

        killed = eventually(hanging, "a trial of the worker to hang at its step 1", 120)
        os.killpg(worker.pid, signal.SIGKILL)  # the worker and its trial, mid-trial
        output, _ = leader.communicate(timeout=300)
    finally:
        for proc in (worker, leader):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)  # reaps it and closes its pipe
    assert leader.returncode == ExitCode.GOAL_NOT_REACHED, output
    study = _study(storage)
    trials = {t.number: t for t in study.trials}
    assert trials[killed.number].state.name == "FAIL"
    retries = [t for t in _own(study) if t.user_attrs.get(RETRY_ATTR) == killed.number]
    assert len(retries) == 1, "retried exactly once"
    retry = retries[0]
    assert retry.state.name == "COMPLETE"
    assert retry.user_attrs[studies.WORKER_ATTR] == f"{os.uname().nodename}:{leader.pid}"
    # from its checkpoint: the killed attempt had written step 1
    logs = "".join(
        p.read_text(errors="replace")
        for p in (home / "runs").rglob(f"trial-{retry.number:04d}/**/*.log")
    )
    assert "starting at step 2" in logs, logs[-2000:]
    # counted once: 8 places, the killed one and its retry sharing one
    assert len(_places(study)) == 8
    report = json.loads(next((home / "chains").glob("toy-*.json")).read_text())
    states = {t["number"]: t["state"] for t in report["trials"]}
    assert states[killed.number] == "INTERRUPTED"
    assert sum(1 for s in states.values() if s != "INTERRUPTED") == 8
    # and its MLflow run, which its dead worker never ended, was closed by the leader
    client = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    (run,) = client.search_runs(
        [client.get_experiment_by_name("toy").experiment_id],
        filter_string=f"tags.`{keys.TRIAL}` = '{killed.number}'",
    )
    assert run.info.status == "FAILED"
    assert run.data.tags[keys.STATUS] == "interrupted"


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_retried(tmp_path: Path) -> None:
    # Optuna's stale check passes by a running trial that never beat (its worker died
    # between asking for it and starting its heartbeat); the chain's check does not
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = studies.open_study(storage, "s", studies.Direction.MAXIMIZE, 1, heartbeat_grace=2)
    with pytest.warns(UserWarning, match="Heartbeat of storage"):  # the chain silences it
        orphan = study.ask()  # no heartbeat, ever: its worker is gone
    orphan.suggest_float("x", 0.0, 1.0)
    orphan.set_user_attr(studies.CHECKPOINT_ATTR, orphan.number)

    def retried() -> bool:
        studies.fail_dead_workers(study)
        return study.trials[orphan.number].state.name == "FAIL"

    eventually(retried, "the orphaned trial to be failed", 30)
    (retry,) = [t for t in study.trials if t.user_attrs.get(RETRY_ATTR) == orphan.number]
    assert retry.state.name == "WAITING"
    assert retry.system_attrs["fixed_params"] == study.trials[orphan.number].params
    studies.fail_dead_workers(study)  # once only
    assert sum(1 for t in study.trials if t.user_attrs.get(RETRY_ATTR) is not None) == 1
