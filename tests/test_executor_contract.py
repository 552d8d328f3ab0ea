"""The executor contract, one suite run over every executor (as scikit-learn's estimator
checks run over every estimator): whatever runs an attempt, the training script gets its
params, data, validation plan, checkpoint and output folders through the contract; the
attempt reports its metrics, its exit status, its log tail; a timeout and a stop from
outside are honoured; a next attempt resumes from the checkpoint; nothing is left running.

The script is the stdlib-only toy of tests/conftest.py (TOY_TRAIN). The ``docker``
parameter runs it in containers of trainchain/test-toy:latest (tests/docker_toy.py) and is
marked ``docker``: skipped with the reason where no engine answers, except where CI is
set, where that fails the run.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ToyRepo, eventually, unavailable
from trainchain import task
from trainchain.chain.training import read_report
from trainchain.executors import AttemptResult, AttemptSpec, Executor

PLAN: dict[str, Any] = {"folds": 3, "repeats": 2, "seed": 5, "purpose": "search"}


@dataclass(frozen=True)
class Harness:
    """One executor under the contract, and how to see what it left behind."""

    executor: Executor
    image: str | None
    labels: dict[str, str]
    leftovers: Callable[[Path], list[Any]]  # what of the script at this path still runs


def _local_processes(script: Path) -> list[int]:
    """Processes whose command line runs ``script`` (read from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # ended while we looked
            continue
        if str(script).encode() in args:
            found.append(int(cmdline.parent.name))
    return found


@pytest.fixture(scope="session")
def docker_toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    """A Docker client that answered, and the toy image (built once when missing)."""
    from tests.docker_toy import ensure_toy_image
    from trainchain.adapters.containers import DockerUnavailable, connect

    try:
        client = connect(timeout=30)
    except DockerUnavailable as err:
        unavailable(f"{err}; start an engine with scripts/start-docker.sh", "Docker")
    return client, ensure_toy_image(client, tmp_path_factory.mktemp("toy-image"))


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """Each executor in turn; a Docker test's containers carry its own chain label and
    any that remain are removed afterwards."""
    if request.param == "local":
        from trainchain.executors import LocalExecutor

        yield Harness(LocalExecutor(), None, {}, _local_processes)
        return
    from trainchain.executors.docker import DockerExecutor

    client, image = request.getfixturevalue("docker_toy")
    chain = f"contract-{uuid.uuid4().hex[:12]}"
    mine = {"label": f"trainchain.chain={chain}"}

    def containers(script: Path) -> list[Any]:
        return list(client.containers.list(all=True, filters=mine, ignore_removed=True))

    executor = DockerExecutor(
        locks_dir=tmp_path / "locks", max_restarts=0, backoff_base=0.0, stop_grace=2.0
    )
    labels = {
        "trainchain.model": "toy",
        "trainchain.run": f"run-{chain}",
        "trainchain.chain": chain,
    }
    try:
        yield Harness(executor, image, labels, containers)
    finally:
        for container in containers(Path()):
            container.remove(force=True)


SpecFactory = Callable[..., AttemptSpec]


@pytest.fixture
def make_spec(harness: Harness, toy_repo: ToyRepo, tmp_path: Path) -> SpecFactory:
    """Attempt ``attempt`` of trial 1 of the toy (one repository, one checkpoint folder)."""
    repo = toy_repo(git=False)

    def make(
        mode: str = "ok", *, x: float = 0.7, attempt: int = 1, timeout: float = 120.0
    ) -> AttemptSpec:
        return AttemptSpec.in_trial_dir(
            tmp_path / "runs" / "trial-0001",
            attempt,
            params={"x": x, "mode": mode},
            data_options={},
            repo_root=repo,
            entrypoint="train.py",
            data_dir=repo / "data",
            checkpoint_dir=tmp_path / "checkpoints" / "trial-0001",
            trial=1,
            timeout=timeout,
            image=harness.image,
            labels=harness.labels | {"trainchain.trial": "1", "trainchain.attempt": str(attempt)},
            validation=PLAN,
        )

    return make


def _script(spec: AttemptSpec) -> Path:
    return spec.repo_root / spec.entrypoint


def _in_background(harness: Harness, spec: AttemptSpec, stop: threading.Event) -> Future[Any]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(harness.executor.run, spec, None, stop)
    pool.shutdown(wait=False)
    return future


def _stopped_while_hanging(harness: Harness, spec: AttemptSpec) -> AttemptResult:
    """Run a hanging toy until it has reported step 1 (its checkpoint written), then stop it."""
    stop = threading.Event()
    future = _in_background(harness, spec, stop)
    eventually(lambda: len(read_report(spec.report_file)) >= 2, "two reported steps", 120, 0.1)
    stop.set()
    result: AttemptResult = future.result(timeout=120)  # the toy itself would hang 600 s
    return result


def test_declares_its_name_and_whether_it_supervises_restarts(harness: Harness) -> None:
    """Every executor says what it is called and whether run() restarts failed attempts."""
    assert harness.executor.name in {"local", "docker"}
    assert isinstance(harness.executor.supervises_restarts, bool)


def test_runs_the_script_through_the_contract_and_reports_its_metrics(
    harness: Harness, make_spec: SpecFactory
) -> None:
    """Params, data, the validation plan and the output folder reach the script; its
    metrics, report lines and log come back; exit 0 is ok; nothing is left running."""
    spec = make_spec(x=0.7)
    lines: list[str] = []

    result = harness.executor.run(spec, lines.append)

    assert result.ok, f"{result.describe()}\n{result.log_tail}"
    assert (result.exit_code, result.timed_out, result.stopped) == (0, False, False)
    metrics = json.loads((spec.output_dir / "metrics.json").read_text())
    assert metrics["val_accuracy"] == pytest.approx(1.0)  # x=0.7 is the toy's best
    n = PLAN["folds"] * PLAN["repeats"]
    assert metrics["val_folds_id"] == task.folds_id([[PLAN["seed"], i] for i in range(n)])
    assert (spec.output_dir / "data_read.txt").read_text() == "1 2 3\n"
    rows = read_report(spec.report_file)
    assert [(r["step"], r["attempt"]) for r in rows] == [(0, 1), (1, 1), (2, 1)]
    assert "toy: trial 1 attempt 1 starting at step 0" in lines
    assert harness.leftovers(_script(spec)) == []


def test_the_log_is_streamed_kept_and_its_tail_returned(
    harness: Harness, make_spec: SpecFactory
) -> None:
    """Each line goes to the sink as it comes, into the attempt's log file, and the last
    lines come back in the result."""
    spec = make_spec()
    lines: list[str] = []

    result = harness.executor.run(spec, lines.append)

    assert result.ok, result.describe()
    first = "toy: trial 1 attempt 1 starting at step 0"
    assert first in lines
    assert first in spec.log_file.read_text()
    assert first in result.log_tail.splitlines()


def test_a_crashing_script_is_a_failed_attempt_with_its_exit_status(
    harness: Harness, make_spec: SpecFactory
) -> None:
    """Exit status 2: not ok, the status in the result and its description, the script's
    last words in the log tail, no metrics, nothing left running."""
    spec = make_spec("crash")

    result = harness.executor.run(spec)

    assert not result.ok
    assert result.exit_code == 2
    assert "exited with status 2" in result.describe()
    assert "toy: crashing on purpose" in result.log_tail
    assert not (spec.output_dir / "metrics.json").exists()
    assert harness.leftovers(_script(spec)) == []


def test_a_timeout_ends_the_attempt(harness: Harness, make_spec: SpecFactory) -> None:
    """A script that hangs past the attempt's timeout is ended and reported as timed out,
    not ok, with no metrics and nothing left running."""
    spec = make_spec("hang", timeout=5.0)

    result = harness.executor.run(spec)

    assert result.timed_out and not result.ok and not result.stopped
    assert result.describe().startswith("timed out")
    assert not (spec.output_dir / "metrics.json").exists()
    assert harness.leftovers(_script(spec)) == []


def test_the_stop_event_ends_the_attempt(harness: Harness, make_spec: SpecFactory) -> None:
    """Setting ``stop`` (a pruned trial) ends a hanging script: stopped, not ok, not a
    timeout, nothing left running."""
    spec = make_spec("hang")

    result = _stopped_while_hanging(harness, spec)

    assert result.stopped and not result.ok and not result.timed_out
    assert result.describe() == "stopped by trainchain (pruned)"
    assert harness.leftovers(_script(spec)) == []


def test_a_next_attempt_resumes_from_the_checkpoint(
    harness: Harness, make_spec: SpecFactory
) -> None:
    """The checkpoint folder survives the end of an attempt: attempt 2 starts after the last
    step attempt 1 checkpointed, and no step runs twice."""
    first = _stopped_while_hanging(harness, make_spec("hang"))
    assert first.stopped, first.describe()

    spec = make_spec(attempt=2)
    result = harness.executor.run(spec)

    assert result.ok, f"{result.describe()}\n{result.log_tail}"
    assert "toy: trial 1 attempt 2 starting at step 2" in spec.log_file.read_text()
    rows = read_report(spec.report_file)
    assert [(r["step"], r["attempt"]) for r in rows] == [(0, 1), (1, 1), (2, 2)]
    assert (spec.output_dir / "metrics.json").exists()
    assert harness.leftovers(_script(spec)) == []
