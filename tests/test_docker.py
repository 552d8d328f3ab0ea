"""The Docker executor and the watchdog on a real Docker engine.

Skipped with the reason when no engine answers, except where ``CI`` is set: there
a missing engine fails the run. The session builds a small test image
(``trainchain/test-toy:latest``: a local Debian base with Python 3.11, a venv on
PATH, the trainchain package, uid 1000) once and keeps it; every container a
test starts carries a per-test ``trainchain.chain`` label and is removed after it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually, unavailable
from tests.docker_toy import ensure_toy_image
from trainchain.adapters.containers import (
    CONTAINER_RECORD,
    DockerUnavailable,
    ImageMissing,
    connect,
)
from trainchain.chain.training import read_report
from trainchain.executors import AttemptResult, AttemptSpec
from trainchain.executors.docker import DockerExecutor
from trainchain.supervise.restarts import GAVE_UP_FILE, ActionKind, WatchdogPolicy
from trainchain.supervise.watchdog import Watchdog

pytestmark = pytest.mark.docker


def _engine() -> tuple[Any, str]:
    try:
        return connect(timeout=30), ""
    except (ImportError, DockerUnavailable) as err:
        return None, getattr(err, "message", str(err))


CLIENT, WHY = _engine()
if CLIENT is None:
    unavailable(f"{WHY}; start an engine with scripts/start-docker.sh", "Docker")

# An epoch-based toy (stdlib only): each epoch sleeps, writes its checkpoint
# atomically, then a report line; it resumes after the checkpoint's epoch.
EPOCH_TRAIN = """
import json, os, sys, time
from trainchain import task

p = task.params()
epochs, seconds, mode = int(p["epochs"]), float(p["epoch_seconds"]), p["mode"]
ckpt = task.checkpoint_dir() / "epoch.json"
start = json.loads(ckpt.read_text())["epoch"] + 1 if ckpt.exists() else 0
data_writable = os.access(task.data_dir(), os.W_OK)
print(f"toy: attempt {task.attempt()} starts at epoch {start}; uid {os.getuid()}; "
      f"data writable {data_writable}", flush=True)
if mode == "fail" or (mode == "fail_first" and task.attempt() == 1):
    print("toy: failing on purpose", flush=True)
    sys.exit(2)
if mode == "oom":
    hog = "x" * (300 << 20)
    print(f"toy: allocated {len(hog)} bytes", flush=True)
for epoch in range(start, epochs):
    time.sleep(seconds)
    task.atomic_write_bytes(ckpt, json.dumps({"epoch": epoch}).encode())
    task.report(epoch, val_accuracy=0.5 + epoch / 100)
    print(f"toy: epoch {epoch} done", flush=True)
    if mode == "hang" and epoch == 1 and task.attempt() == 1:
        print("toy: hanging", flush=True)
        time.sleep(3600)
task.write_metrics({"val_accuracy": 0.9, "test_accuracy": 0.89})
print("toy: finished", flush=True)
"""


@pytest.fixture(scope="session")
def client() -> Any:
    """The Docker engine's client (the module is skipped without one)."""
    return CLIENT


@pytest.fixture(scope="session")
def toy_image(client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """trainchain/test-toy:latest, built once per session when missing or stale."""
    return ensure_toy_image(client, tmp_path_factory.mktemp("toy-image"))


@pytest.fixture
def chain(client: Any) -> Iterator[str]:
    """A label value unique to this test; every container carrying it is removed afterwards."""
    value = f"test-{uuid.uuid4().hex[:12]}"
    yield value
    for container in client.containers.list(
        all=True, filters={"label": f"trainchain.chain={value}"}, ignore_removed=True
    ):
        container.remove(force=True)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private trainchain home (runs, checkpoints, locks) of this test."""
    return tmp_path / "home"


SpecFactory = Callable[..., AttemptSpec]


@pytest.fixture
def make_spec(tmp_path: Path, home: Path, chain: str, toy_image: str) -> SpecFactory:
    """Attempt 1 of trial 1 of the epoch toy in the toy image, labelled with the chain."""

    def make(
        mode: str = "ok", epochs: int = 6, epoch_seconds: float = 0.4, timeout: float = 60.0
    ) -> AttemptSpec:
        repo = tmp_path / "repo"
        repo.mkdir(exist_ok=True)
        (repo / "train.py").write_text(textwrap.dedent(EPOCH_TRAIN))
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        (data / "values.txt").write_text("1 2 3\n")
        params = {"mode": mode, "epochs": epochs, "epoch_seconds": epoch_seconds}
        return AttemptSpec.in_trial_dir(
            home / "runs" / chain / "trial-0001",
            1,
            params=params,
            data_options={},
            repo_root=repo,
            entrypoint="train.py",
            data_dir=data,
            checkpoint_dir=home / "checkpoints" / chain / "trial-0001",
            trial=1,
            timeout=timeout,
            image=toy_image,
            labels={
                "trainchain.model": "toy",
                "trainchain.run": f"run-{chain}",
                "trainchain.chain": chain,
                "trainchain.trial": "1",
                "trainchain.attempt": "1",
            },
        )

    return make


def executor(home: Path, **options: Any) -> DockerExecutor:
    defaults: dict[str, Any] = {"max_restarts": 3, "backoff_base": 0.0, "stop_grace": 2.0}
    return DockerExecutor(locks_dir=home / "locks", **(defaults | options))


class CountingWatchdog(Watchdog):
    """The real watchdog, counting its finished scans: a test waits for the next scan (a
    positive event) instead of sleeping before it asserts that something did not happen."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scans = 0

    def scan_once(self) -> list[Any]:
        entries = super().scan_once()
        self.scans += 1
        return entries


def watchdog(home: Path, chain: str, **policy: Any) -> CountingWatchdog:
    """A watchdog of this test's containers only (its chain label), restarting at once."""
    defaults: dict[str, Any] = {"heartbeat_limit": None, "backoff_base": 0.0}
    return CountingWatchdog(
        CLIENT,
        locks_dir=home / "locks",
        policy=WatchdogPolicy(**(defaults | policy)),
        selector={"trainchain.chain": chain},
        stop_grace=2.0,
    )


def in_background(fn: Callable[..., AttemptResult], *args: Any) -> Future[AttemptResult]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn, *args)
    pool.shutdown(wait=False)
    return future


def epochs_done(spec: AttemptSpec) -> int:
    return len(read_report(spec.report_file))


def containers_of(spec: AttemptSpec, attempt: int | None = None) -> list[Any]:
    labels = [f"trainchain.run={spec.labels['trainchain.run']}"]
    if attempt is not None:
        labels.append(f"trainchain.attempt={attempt}")
    return list(CLIENT.containers.list(all=True, filters={"label": labels}, ignore_removed=True))


def record(spec: AttemptSpec, attempt: int, name: str = CONTAINER_RECORD) -> dict[str, Any]:
    path = spec.log_file.parent.parent / f"attempt-{attempt}" / name
    assert path.exists(), f"no {path}"
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def assert_resumed_once(spec: AttemptSpec, epochs: int = 6) -> list[dict[str, Any]]:
    """Every epoch ran exactly once; attempt 2 took over after attempt 1's last checkpoint."""
    rows = read_report(spec.report_file)
    steps = [row["step"] for row in rows]
    assert steps == list(range(epochs)), f"epochs ran {steps}"
    by_attempt = {row["attempt"] for row in rows}
    assert by_attempt == {1, 2}, f"attempts in the report: {sorted(by_attempt)}"
    first = [row["step"] for row in rows if row["attempt"] == 1]
    second = [row["step"] for row in rows if row["attempt"] == 2]
    assert second[0] == first[-1] + 1
    return rows


def test_attempt_runs_in_a_labelled_container_that_is_removed_after_its_record(
    client: Any, make_spec: SpecFactory, home: Path
) -> None:
    """Exit 0, metrics written, log streamed, labels on the container while it ran."""
    spec = make_spec(epochs=3, epoch_seconds=0.2)
    lines: list[str] = []
    seen: dict[str, Any] = {}

    def on_line(line: str) -> None:
        lines.append(line)
        if not seen:
            running = containers_of(spec)
            if running:
                seen.update(running[0].attrs)

    result = executor(home, mem_limit="256m", nano_cpus=500_000_000).run(spec, on_line)

    assert result.ok, f"{result.describe()}\n{result.log_tail}"
    assert json.loads((spec.output_dir / "metrics.json").read_text())["val_accuracy"] == 0.9
    assert "toy: epoch 2 done" in lines
    assert any("uid 1000" in line and "data writable False" in line for line in lines)
    assert "toy: finished" in spec.log_file.read_text()
    labels, host = seen["Config"]["Labels"], seen["HostConfig"]
    for key in ("model", "run", "chain", "trial", "attempt"):
        assert labels[f"trainchain.{key}"] == spec.labels[f"trainchain.{key}"]
    assert labels["trainchain.managed"] == "true"
    assert (host["Memory"], host["NanoCpus"]) == (256 << 20, 500_000_000)
    assert (host["Init"], host["NetworkMode"], seen["Config"]["User"]) == (
        True,
        "none",
        "1000:1000",
    )
    assert host["AutoRemove"] is False
    read_only = {m["Target"]: m.get("ReadOnly", False) for m in host["Mounts"]}
    assert read_only["/data"] and read_only["/repo"] and not read_only["/checkpoint"]
    assert containers_of(spec) == []
    kept = record(spec, 1)
    assert (kept["exit_code"], kept["oom_killed"], kept["image"]) == (0, False, spec.image)


def test_killed_through_the_api_it_restarts_and_resumes_after_its_checkpoint(
    make_spec: SpecFactory, home: Path
) -> None:
    """container.kill() mid-training: the executor restarts it; no finished epoch runs twice."""
    spec = make_spec()
    future = in_background(executor(home).run, spec)
    eventually(lambda: epochs_done(spec) >= 2, "two epochs", 30, poll=0.05)
    containers_of(spec, attempt=1)[0].kill()

    result = future.result(timeout=60)

    assert result.ok, f"{result.describe()}\n{result.log_tail}"
    assert_resumed_once(spec)
    assert record(spec, 1)["exit_code"] == 137
    assert record(spec, 2)["exit_code"] == 0
    assert (spec.output_dir / "metrics.json").exists()
    assert containers_of(spec) == []


def test_killed_from_the_host_it_restarts_and_resumes(make_spec: SpecFactory, home: Path) -> None:
    """SIGKILL to the python in the container, with a watchdog scanning alongside the executor."""
    spec = make_spec()
    future = in_background(executor(home).run, spec)
    eventually(lambda: epochs_done(spec) >= 2, "two epochs", 30, poll=0.05)
    container = containers_of(spec, attempt=1)[0]
    container.reload()
    init_pid = container.attrs["State"]["Pid"]
    top = container.top()
    pid_col, ppid_col = top["Titles"].index("PID"), top["Titles"].index("PPID")
    children = [int(p[pid_col]) for p in top["Processes"] if int(p[ppid_col]) == init_pid]
    assert len(children) == 1, top
    os.kill(children[0], signal.SIGKILL)

    dog = watchdog(home, spec.labels["trainchain.chain"])

    def scanned_until_done() -> bool:  # the watchdog and the executor race for the claim
        dog.scan_once()
        return future.done()

    eventually(scanned_until_done, "the trial to end", 60, poll=0.2)
    result = future.result(timeout=60)

    assert result.ok, f"{result.describe()}\n{result.log_tail}"
    assert_resumed_once(spec)
    assert record(spec, 1)["exit_code"] == 137
    assert containers_of(spec) == []


def test_timeout_stops_the_container_and_does_not_restart_it(
    make_spec: SpecFactory, home: Path
) -> None:
    """Past spec.timeout: stopped, recorded, removed, reported as timed out; no new attempt."""
    spec = make_spec(epochs=30, epoch_seconds=0.3, timeout=1.5)

    result = executor(home).run(spec)

    assert result.timed_out
    assert result.describe().startswith("timed out")
    assert record(spec, 1)["reason"] == "timed out"
    assert not (spec.log_file.parent.parent / "attempt-2").exists()
    assert containers_of(spec) == []


def test_out_of_memory_kill_is_reported_as_such(make_spec: SpecFactory, home: Path) -> None:
    """300 MB under a 64 MB limit: OOMKilled in the record, 'out of memory' in the result."""
    spec = make_spec(mode="oom")

    result = executor(home, mem_limit="64m", max_restarts=0).run(spec)

    assert not result.ok
    assert result.oom_killed
    assert "out of memory" in result.describe()
    assert record(spec, 1)["oom_killed"] is True
    assert "out of memory" in record(spec, 1, GAVE_UP_FILE)["reason"]
    assert containers_of(spec) == []


def test_hung_container_is_stopped_and_restarted_by_the_watchdog(
    make_spec: SpecFactory, home: Path
) -> None:
    """No report for longer than the heartbeat limit: stopped, restarted, resumed."""
    spec = make_spec(mode="hang", epoch_seconds=0.3)
    future = in_background(executor(home).run, spec)
    dog = watchdog(home, spec.labels["trainchain.chain"], heartbeat_limit=1.5)
    acted: list[Any] = []

    def scanned_until_done() -> bool:
        acted.extend(e for e in dog.scan_once() if e.handled is not None)
        return future.done()

    eventually(scanned_until_done, "the trial to end", 60, poll=0.2)
    result = future.result(timeout=30)

    assert result.ok, f"{result.describe()}\n{result.log_tail}"
    assert [e.action.kind for e in acted] == [ActionKind.RESTART]
    assert acted[0].action.reason.startswith("hung")
    assert_resumed_once(spec)
    assert record(spec, 1)["action"] == "restart"
    assert containers_of(spec) == []


def test_restart_cap_reached_gives_up_once_with_the_reason(
    make_spec: SpecFactory, home: Path
) -> None:
    """A script that always exits 2: two restarts, then gave_up.json and one callback."""
    spec = make_spec(mode="fail")
    executor(home, max_restarts=2).start(spec)
    calls: list[tuple[dict[str, str], str]] = []
    dog = watchdog(home, spec.labels["trainchain.chain"])
    dog.on_give_up = lambda labels, reason: calls.append((dict(labels), reason))
    gave_up = spec.log_file.parent.parent / "attempt-3" / GAVE_UP_FILE

    def scanned_until_given_up() -> bool:
        dog.scan_once()
        return gave_up.exists()

    eventually(scanned_until_given_up, f"{gave_up}", 60, poll=0.2)
    dog.scan_once()  # nothing left to act on

    assert len(calls) == 1
    labels, reason = calls[0]
    assert labels["trainchain.attempt"] == "3"
    assert "exited with status 2" in reason
    assert "gave up after 2 restart(s)" in reason
    assert json.loads(gave_up.read_text())["reason"] == reason
    assert [record(spec, n)["action"] for n in (1, 2, 3)] == ["restart", "restart", "give_up"]
    assert containers_of(spec) == []


def test_executor_returns_one_failure_when_its_restarts_run_out(
    make_spec: SpecFactory, home: Path
) -> None:
    """The executor follows the trial through its restarts and reports it once."""
    spec = make_spec(mode="fail")

    result = executor(home, max_restarts=1).run(spec)

    assert not result.ok
    assert result.error is not None
    assert "exited with status 2" in result.error
    assert "gave up after 1 restart(s)" in result.error
    assert record(spec, 2, GAVE_UP_FILE)["attempt"] == 2
    assert containers_of(spec) == []


def test_finished_container_nobody_followed_is_collected(
    make_spec: SpecFactory, home: Path
) -> None:
    """Started and left alone, it exits 0; a scan keeps its log and state, then removes it."""
    spec = make_spec(epochs=2, epoch_seconds=0.1)
    executor(home).start(spec).wait(timeout=30)

    entries = watchdog(home, spec.labels["trainchain.chain"], collect_after=0.0).scan_once()

    assert [e.action.kind for e in entries] == [ActionKind.COLLECT]
    assert record(spec, 1)["exit_code"] == 0
    assert "toy: finished" in spec.log_file.read_text()
    assert containers_of(spec) == []


def test_container_without_trainchain_labels_is_left_alone(
    client: Any, chain: str, home: Path, toy_image: str
) -> None:
    """Exited non-zero but not ours: the scan does not touch it."""
    foreign = client.containers.run(
        toy_image,
        ["python", "-c", "raise SystemExit(3)"],
        detach=True,
        network_mode="none",
        labels={"trainchain.chain": chain},  # one of ours would also carry trainchain.managed
    )
    foreign.wait(timeout=30)
    locks = home / "locks"
    locks.mkdir(parents=True)
    stale, fresh = locks / "0123abcd.claim", locks / "4567ef01.claim"
    stale.touch()
    fresh.touch()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))

    entries = watchdog(home, chain).scan_once()

    foreign.reload()
    assert entries == []
    assert foreign.status == "exited"
    assert foreign.attrs["State"]["ExitCode"] == 3
    assert not (locks / f"{foreign.id}.claim").exists()
    assert (stale.exists(), fresh.exists()) == (False, True)  # old claims of gone containers


def test_two_watchdogs_restart_a_dead_container_once(make_spec: SpecFactory, home: Path) -> None:
    """Two scans at once on the same dead container: exactly one new attempt."""
    spec = make_spec(mode="fail_first", epochs=2, epoch_seconds=5)
    dead = executor(home, mem_limit="256m").start(spec)
    dead.wait(timeout=30)
    dead.reload()
    before = dead.attrs
    dogs = [watchdog(home, spec.labels["trainchain.chain"]) for _ in range(2)]
    barrier = threading.Barrier(2)
    entries: list[Any] = []

    def scan(dog: Watchdog) -> None:
        barrier.wait(timeout=10)
        entries.extend(dog.scan_once())

    threads = [threading.Thread(target=scan, args=(dog,)) for dog in dogs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    restarts = [e for e in entries if e.container_id == dead.id and e.handled is not None]
    assert len(restarts) == 1
    assert restarts[0].handled.kind is ActionKind.RESTART
    assert containers_of(spec, attempt=1) == []
    (successor,) = containers_of(spec, attempt=2)
    after = successor.attrs
    assert after["Image"] == before["Image"]
    assert after["HostConfig"]["Mounts"] == before["HostConfig"]["Mounts"]  # same checkpoint
    for key in ("Memory", "Init", "NetworkMode"):
        assert after["HostConfig"][key] == before["HostConfig"][key]
    assert "TRAINCHAIN_ATTEMPT=2" in after["Config"]["Env"]
    assert set(before["Config"]["Env"]) - set(after["Config"]["Env"]) == {"TRAINCHAIN_ATTEMPT=1"}
    assert successor.labels["trainchain.restarts"] == "1"


def test_interrupted_trainchain_stops_its_container_first(
    make_spec: SpecFactory, home: Path
) -> None:
    """SIGTERM to the trainchain process: the container is stopped, recorded and removed."""
    spec = make_spec(epochs=30, epoch_seconds=0.5)
    fields = {k: str(v) if isinstance(v, Path) else v for k, v in spec.__dict__.items()}
    runner = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from trainchain.executors import AttemptSpec
        from trainchain.executors.docker import DockerExecutor

        fields, locks = json.loads(sys.argv[1]), Path(sys.argv[2])
        spec = AttemptSpec(**{
            k: Path(v) if k.endswith(("_root", "_file", "_dir")) else v for k, v in fields.items()
        })
        DockerExecutor(locks_dir=locks, stop_grace=2).run(spec, lambda line: print(line))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", runner, json.dumps(fields), str(home / "locks")],
        stdout=subprocess.DEVNULL,
    )
    try:
        eventually(lambda: epochs_done(spec) >= 1, "one epoch", 30, poll=0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()

    assert containers_of(spec) == []
    assert record(spec, 1)["reason"] == "trainchain was interrupted"
    assert epochs_done(spec) < 30


def test_missing_image_says_how_to_build_it(make_spec: SpecFactory, home: Path) -> None:
    """An image that does not exist is an error naming the build script."""
    spec = make_spec()
    missing = AttemptSpec(**{**spec.__dict__, "image": "trainchain/train-nosuch:0.0.0"})

    with pytest.raises(ImageMissing) as caught:
        executor(home).run(missing)

    assert "scripts/build-images.sh nosuch" in str(caught.value)
    assert containers_of(spec) == []


def test_watchdog_loop_restarts_on_the_die_event_and_stops_when_told(
    make_spec: SpecFactory, home: Path
) -> None:
    """Watchdog.run: a death is acted on from the event, long before the next periodic scan."""
    spec = make_spec(mode="fail_first", epochs=2, epoch_seconds=5)
    dog = watchdog(home, spec.labels["trainchain.chain"])
    stop = threading.Event()
    loop = threading.Thread(target=dog.run, args=(600.0, stop))
    loop.start()
    try:
        # the first periodic scan has run; the next one is 600 s away
        eventually(lambda: dog.scans >= 1, "the watchdog's first scan", 30, poll=0.05)
        executor(home).start(spec)
        eventually(
            lambda: containers_of(spec, attempt=2), "the restart after the die event", 30, poll=0.05
        )
    finally:
        stop.set()
        loop.join(timeout=15)
    assert not loop.is_alive()
    assert containers_of(spec, attempt=1) == []
    assert record(spec, 1)["exit_code"] == 2


def test_pruned_trial_container_is_stopped_and_never_restarted(
    client: Any, toy_image: str, tmp_path: Path, home: Path
) -> None:
    """A tune in containers with a watchdog scanning alongside: a pruned trial's container
    is stopped, recorded and removed, and neither the executor nor the watchdog starts a
    next attempt; the script saw the early-stopping policy inside the container."""
    from tests.test_pruning import EXPECTED_POLICY, make_prune_repo
    from trainchain.chain.context import prepare
    from trainchain.chain.tune import tune
    from trainchain.core.progress import TuneDisplay
    from trainchain.core.settings import load_settings

    name = f"prunable-{uuid.uuid4().hex[:8]}"
    repo = make_prune_repo(tmp_path / "repo", name=name, image=toy_image, max_trials=3)
    settings = load_settings({"TRAINCHAIN_HOME": str(home)})
    dog = CountingWatchdog(
        CLIENT,
        locks_dir=settings.locks,
        policy=WatchdogPolicy(heartbeat_limit=None, backoff_base=0.0),
        selector={"trainchain.model": name},
        stop_grace=2.0,
    )
    scans: list[Any] = []
    done = threading.Event()

    def scan() -> None:
        while not done.is_set():
            scans.extend(dog.scan_once())
            done.wait(0.2)

    scanner = threading.Thread(target=scan, daemon=True)
    scanner.start()
    try:
        report = tune(
            prepare(repo, settings, executor="docker"),
            DockerExecutor(locks_dir=settings.locks, stop_grace=2.0, backoff_base=0.0),
            display=TuneDisplay("val_accuracy", 1.0, ">=", quiet=True),
        )
        after_last = dog.scans  # let the watchdog finish a few scans after the last trial
        eventually(lambda: dog.scans >= after_last + 3, "three more watchdog scans", 60, 0.05)
    finally:
        done.set()
        scanner.join(timeout=30)
        mine = {"label": f"trainchain.model={name}"}
        leftovers = client.containers.list(all=True, filters=mine, ignore_removed=True)
        for container in leftovers:
            container.remove(force=True)

    assert leftovers == []
    assert report.status == "goal_not_reached", report.error
    pruned = [t for t in report.trials if t.state == "PRUNED"]
    assert pruned, [t.state for t in report.trials]
    # the watchdog may see the stopped container die and want a restart: the executor's
    # claim, taken before the stop, refuses it
    assert [
        e for e in scans if e.handled is not None and e.handled.kind is ActionKind.RESTART
    ] == []
    for trial in pruned:
        trial_dir = home / "runs" / report.chain_id / f"trial-{trial.number:04d}"
        kept = json.loads((trial_dir / "attempt-1" / CONTAINER_RECORD).read_text())
        assert kept["reason"] == "stopped by trainchain (pruned)"
        assert kept["labels"]["trainchain.restarts"] == "0"
        assert not (trial_dir / "attempt-2").exists()
        assert len(read_report(trial_dir / "report.jsonl")) < 10  # stopped early
    output = home / "runs" / report.chain_id / "trial-0000" / "attempt-1" / "output"
    assert json.loads((output / "early_stopping.json").read_text()) == EXPECTED_POLICY
