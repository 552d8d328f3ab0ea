"""Pruning from per-step reports, the early-stopping policy passed to the script, and
stopping an attempt from outside (real subprocesses, real Optuna and MLflow SQLite stores)."""

from __future__ import annotations

import io
import json
import os
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from rich.console import Console

from tests.conftest import eventually, git_init
from trainchain import task
from trainchain.chain.context import prepare
from trainchain.chain.training import ReportWatcher, read_report
from trainchain.chain.tune import tune
from trainchain.cli.main import main
from trainchain.core.progress import TuneDisplay
from trainchain.core.settings import Settings
from trainchain.executors import AttemptSpec, LocalExecutor

# Per-epoch val_accuracy grows to x: a trial with a smaller x is below the first
# (default x=0.9) at every epoch, so the median rule prunes it after the warm-up.
PRUNE_TRAIN = """
import json, time
from trainchain import task

p = task.params()
epochs, x = int(p["epochs"]), float(p["x"])
(task.output_dir() / "early_stopping.json").write_text(json.dumps(task.early_stopping()))
print(f"toy: trial {task.trial()} x={x}", flush=True)
for step in range(epochs):
    time.sleep(0.2)
    task.report(step, val_accuracy=x * (step + 1) / epochs)
task.write_metrics({"val_accuracy": x, "test_accuracy": x})
"""

PRUNE_YAML = """
name: {name}
entrypoint: train.py
image: {image}
goal: {{metric: accuracy, threshold: 1.0, direction: maximize}}
budget: {{max_trials: {max_trials}, timeout: 600, seed: 3}}
search_space:
  x: {{type: float, low: 0.0, high: 0.9, default: 0.9}}
  epochs: {{type: categorical, choices: [{epochs}], default: {epochs}}}
train: {{timeout: 120, max_attempts: 2}}
pruning: {{enabled: {pruning}, {pruning_options}}}
early_stopping: {{patience: 3, min_delta: 0.01}}
"""

EXPECTED_POLICY = {"monitor": "val_accuracy", "mode": "max", "patience": 3, "min_delta": 0.01}


def make_prune_repo(
    root: Path,
    *,
    name: str = "prunable",
    image: str = "python:3.11-slim",
    max_trials: int = 4,
    epochs: int = 10,
    pruning: bool = True,
    pruning_options: str = "startup_trials: 1, warmup_steps: 1",
) -> Path:
    """A stdlib-only model repository whose trials below the first one get pruned."""
    (root / "data").mkdir(parents=True)
    (root / "data" / "values.txt").write_text("1 2 3\n")
    (root / "train.py").write_text(textwrap.dedent(PRUNE_TRAIN))
    (root / "trainchain.yaml").write_text(
        PRUNE_YAML.format(
            name=name,
            image=image,
            max_trials=max_trials,
            epochs=epochs,
            pruning=str(pruning).lower(),
            pruning_options=pruning_options,
        )
    )
    git_init(root)
    return root


def _recording_display() -> tuple[TuneDisplay, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, highlight=False, soft_wrap=True, force_terminal=False)
    return TuneDisplay("val_accuracy", 1.0, ">=", console=console), out


# --- task.early_stopping() ----------------------------------------------------------------------


def test_early_stopping_is_none_when_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """A script run by hand (or with early stopping disabled) gets None."""
    monkeypatch.delenv(task.ENV_EARLY_STOPPING, raising=False)
    assert task.early_stopping() is None
    monkeypatch.setenv(task.ENV_EARLY_STOPPING, "  ")
    assert task.early_stopping() is None


def test_early_stopping_reads_the_json_string(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variable holds the policy itself as JSON (not a file name)."""
    monkeypatch.setenv(task.ENV_EARLY_STOPPING, json.dumps(EXPECTED_POLICY))
    assert task.early_stopping() == EXPECTED_POLICY


@pytest.mark.parametrize("value", ["/tmp/policy.json", "[1, 2]", "{not json"])
def test_early_stopping_refuses_what_is_not_a_json_object(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A path, a list or broken JSON is a ContractError naming the variable."""
    monkeypatch.setenv(task.ENV_EARLY_STOPPING, value)
    with pytest.raises(task.ContractError, match=task.ENV_EARLY_STOPPING):
        task.early_stopping()


# --- the local executor -------------------------------------------------------------------------


def _spec(tmp_path: Path, script: str, **fields: Any) -> AttemptSpec:
    repo = tmp_path / "repo"
    repo.mkdir(exist_ok=True)
    (repo / "train.py").write_text(textwrap.dedent(script))
    attempt_dir = tmp_path / "trial" / "attempt-1"
    (attempt_dir / "output").mkdir(parents=True, exist_ok=True)
    (attempt_dir / "params.json").write_text("{}")
    (attempt_dir / "data_options.json").write_text("{}")
    defaults: dict[str, Any] = {
        "repo_root": repo,
        "entrypoint": "train.py",
        "params_file": attempt_dir / "params.json",
        "data_dir": repo,
        "data_options_file": attempt_dir / "data_options.json",
        "checkpoint_dir": tmp_path / "ckpt",
        "output_dir": attempt_dir / "output",
        "report_file": tmp_path / "trial" / "report.jsonl",
        "log_file": attempt_dir / "train.log",
        "trial": 0,
        "attempt": 1,
        "timeout": 60.0,
    }
    return AttemptSpec(**(defaults | fields))


SLEEPER = """
import os, time
from trainchain import task
(task.output_dir() / "pid").write_text(str(os.getpid()))
task.report(0, val_accuracy=0.1)
print("sleeper: sleeping", flush=True)
time.sleep(60)
"""


def test_local_executor_stops_the_attempt_when_the_event_is_set(tmp_path: Path) -> None:
    """Setting the stop event ends a script that would sleep for a minute (the wait for
    it is bounded well below that): stopped, not ok, its process gone. How fast it stops
    is measured in benchmarks/executors.py."""
    spec = _spec(tmp_path, SLEEPER)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(LocalExecutor().run, spec, None, stop)
    pool.shutdown(wait=False)
    eventually(lambda: read_report(spec.report_file), "the script's first report", 30, poll=0.05)
    assert read_report(spec.report_file), "the script never reported"

    stop.set()
    result = future.result(timeout=30)  # the script itself would sleep for 60 s

    assert result.stopped and not result.ok and not result.timed_out
    assert result.describe() == "stopped by trainchain (pruned)"
    assert "sleeper: sleeping" in result.log_tail
    pid = int((spec.output_dir / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


ECHO_POLICY = """
import json
from trainchain import task
task.write_metrics({"val_accuracy": 0.5})
(task.output_dir() / "early_stopping.json").write_text(json.dumps(task.early_stopping()))
"""


def test_local_executor_passes_the_early_stopping_policy_and_only_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spec's policy reaches the script as given; with none, a value inherited from
    trainchain's own environment does not leak into the script."""
    spec = _spec(tmp_path, ECHO_POLICY, early_stopping=EXPECTED_POLICY)
    assert LocalExecutor().run(spec).ok
    seen = json.loads((spec.output_dir / "early_stopping.json").read_text())
    assert seen == EXPECTED_POLICY

    monkeypatch.setenv(task.ENV_EARLY_STOPPING, json.dumps({"monitor": "stale"}))
    disabled = _spec(tmp_path, ECHO_POLICY, early_stopping=None)
    assert LocalExecutor().run(disabled).ok
    assert json.loads((disabled.output_dir / "early_stopping.json").read_text()) is None


def test_local_executor_timeout_still_ends_the_attempt(tmp_path: Path) -> None:
    """The poll loop honours the timeout as the single wait did: a script that would sleep
    for a minute ends as timed out (the overshoot is measured in benchmarks/executors.py)."""
    spec = _spec(tmp_path, SLEEPER, timeout=1.0)
    result = LocalExecutor().run(spec)
    assert result.timed_out and not result.stopped and not result.ok


# --- the report watcher -------------------------------------------------------------------------


def test_report_watcher_passes_each_step_once_in_order_and_prunes(tmp_path: Path) -> None:
    """Repeated steps (an attempt that started over), rows without a finite metric, a cut
    line, and an on_report that raises are all survived; True sets the stop event and
    nothing after it is passed on."""
    report = tmp_path / "report.jsonl"
    calls: list[tuple[int, float]] = []

    def on_report(step: int, value: float) -> bool:
        calls.append((step, value))
        if step == 1:
            raise RuntimeError("the study store is busy")
        return step == 4

    stop = threading.Event()
    watcher = ReportWatcher(report, "val_accuracy", on_report, stop, poll_s=0.05)
    watcher.start()
    rows = [
        {"step": 0, "val_accuracy": 0.1, "attempt": 1},
        {"step": 1, "val_accuracy": 0.2, "attempt": 1},
        {"step": 0, "val_accuracy": 0.1, "attempt": 2},  # attempt 2 started over
        {"step": 1, "val_accuracy": 0.2, "attempt": 2},
        {"step": 2, "val_accuracy": None, "attempt": 2},  # NaN written as null
        {"step": 3, "loss": 0.5, "attempt": 2},  # no val metric
        {"step": 3, "val_accuracy": 0.4, "attempt": 2},
    ]
    with report.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.write("not json\n")
        f.flush()
        eventually(lambda: len(calls) >= 3, "the first three steps passed on", 10, poll=0.02)
        f.write('{"step": 4, "val_accuracy": 0.45')  # half a line: not read yet
        f.flush()
        watcher.poll()  # a poll that has seen the half line (polls hold the watcher's lock)
        assert [c[0] for c in calls] == [0, 1, 3]
        f.write("}\n" + json.dumps({"step": 5, "val_accuracy": 0.5}) + "\n")
    assert stop.wait(10), "the watcher never pruned"
    watcher.close()

    assert calls == [(0, 0.1), (1, 0.2), (3, 0.4), (4, 0.45)]
    assert (watcher.pruned_step, watcher.pruned_value) == (4, 0.45)


# --- a tune with pruning ------------------------------------------------------------------------


def test_tune_prunes_trials_below_the_median_and_finishes_normally(
    tmp_path: Path, settings: Settings
) -> None:
    """Local executor: trials below the first one are pruned after the warm-up, really
    stopped early, tagged pruned in MLflow, listed PRUNED in the chain report and shown as
    pruned; the chain still spends its budget and ends normally."""
    repo = make_prune_repo(tmp_path / "repo", max_trials=4, epochs=10)
    display, out = _recording_display()

    report = tune(prepare(repo, settings), LocalExecutor(), display=display)

    assert report.status == "goal_not_reached"  # threshold 1.0 is out of reach: budget spent
    assert len(report.trials) == 4
    study = optuna.load_study(study_name=report.chain_id, storage=settings.study_storage)
    states = [t.state.name for t in study.trials]
    assert states[0] == "COMPLETE"  # startup_trials: 1 completes before any pruning
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert pruned, f"no trial was pruned: {states}"

    client = MlflowClient(settings.tracking_uri)
    by_number = {t.number: t for t in report.trials}
    for trial in pruned:
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(len(steps)))  # each step reported once, in order
        assert steps[-1] >= 1  # warmup_steps: 1 means step 0 is never pruned
        rows = read_report(
            settings.runs_dir / report.chain_id / f"trial-{trial.number:04d}" / "report.jsonl"
        )
        assert 0 < len(rows) < 10, f"trial {trial.number} was not stopped early: {len(rows)}"
        summary = by_number[trial.number]
        assert summary.state == "PRUNED"
        assert summary.value == pytest.approx(trial.intermediate_values[steps[-1]])
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["trainchain.status"] == "pruned"
        assert run.data.tags["trainchain.pruned_step"] == str(steps[-1])
        assert run.info.status == "KILLED"
        assert run.data.params["x"]  # logged as usual
        # every attempt-1 and nothing more: a pruned trial is not retried
        trial_dir = settings.runs_dir / report.chain_id / f"trial-{trial.number:04d}"
        assert not (trial_dir / "attempt-2").exists()

    shown = out.getvalue()
    assert f"#{pruned[0].number + 1} pruned at epoch" in shown  # 1-based, as people count
    assert "(median of earlier trials higher)" in shown
    first_output = settings.runs_dir / report.chain_id / "trial-0000" / "attempt-1" / "output"
    assert json.loads((first_output / "early_stopping.json").read_text()) == EXPECTED_POLICY


def test_successive_halving_stops_trials_at_its_rungs(tmp_path: Path, settings: Settings) -> None:
    """`pruning.rule: halving`: rungs at 2, 4 and 8 epochs (warmup_steps 2, reduction
    factor 2); a trial goes on past a rung only when it is among the best half of the
    trials that reached that rung before it, so the budget trains most trials for 3
    epochs of 10 and only the promising ones to the end."""
    repo = make_prune_repo(
        tmp_path / "repo",
        max_trials=6,
        epochs=10,
        pruning_options="rule: halving, startup_trials: 1, warmup_steps: 2, reduction_factor: 2",
    )
    display, out = _recording_display()

    report = tune(prepare(repo, settings), LocalExecutor(), display=display)

    assert len(report.trials) == 6
    study = optuna.load_study(study_name=report.chain_id, storage=settings.study_storage)
    trials = sorted(study.trials, key=lambda t: t.number)
    assert trials[0].state.name == "COMPLETE"  # the first trial has no rival at its rungs
    assert sorted(trials[0].intermediate_values) == list(range(10))
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, f"no trial was pruned: {[t.state.name for t in trials]}"
    rungs = {2: "completed_rung_0", 4: "completed_rung_1", 8: "completed_rung_2"}
    for trial in pruned:
        step = max(trial.intermediate_values)
        assert step in rungs, f"#{trial.number} stopped at step {step}, not at a rung"
        value = trial.intermediate_values[step]
        # its rivals: the trials that had reached that rung when it got there
        rivals = [
            t.system_attrs[rungs[step]]
            for t in trials
            if t.number < trial.number and rungs[step] in t.system_attrs
        ]
        keep = max(1, (len(rivals) + 1) // 2)  # the best half of them and itself go on
        assert value < sorted(rivals, reverse=True)[keep - 1], (trial.number, value, rivals)
        rows = read_report(
            settings.runs_dir / report.chain_id / f"trial-{trial.number:04d}" / "report.jsonl"
        )
        assert step < len(rows) < 10  # stopped early (a step or two may pass meanwhile)
    trained = sum(len(t.intermediate_values) for t in trials)
    assert trained < 6 * 10 * 0.6, f"{trained} epochs trained for 6 trials of 10"
    shown = out.getvalue()
    assert "not among the best 1/2 of the trials at that epoch: successive halving" in shown


def test_pruning_disabled_lets_every_trial_complete(tmp_path: Path, settings: Settings) -> None:
    """`pruning: {enabled: false}`: the same trials all run to their end."""
    repo = make_prune_repo(tmp_path / "repo", max_trials=3, epochs=4, pruning=False)
    report = tune(prepare(repo, settings), LocalExecutor(), display=_recording_display()[0])
    assert [t.state for t in report.trials] == ["COMPLETE"] * 3


def test_train_command_passes_the_early_stopping_policy(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trainchain train` gives the script the same policy as a tune does."""
    repo = make_prune_repo(tmp_path / "repo", epochs=2)
    assert main(["train", str(repo), "--executor", "local"]) == 0
    capsys.readouterr()
    seen = list(
        settings.runs_dir.glob("train-prunable-*/trial-0000/attempt-1/output/early_stopping.json")
    )
    assert len(seen) == 1
    assert json.loads(seen[0].read_text()) == EXPECTED_POLICY
