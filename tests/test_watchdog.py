"""The watchdog's decision and claim, and the Docker executor's container definition: no engine."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from trainchain import task
from trainchain.adapters.containers import (
    DockerUnavailable,
    EngineError,
    connect,
    engine_errors,
    info_from_attrs,
)
from trainchain.core.detect import image_family
from trainchain.core.errors import TrainchainError
from trainchain.executors import AttemptSpec
from trainchain.executors.docker import (
    attempt_result,
    container_env,
    container_labels,
    container_mounts,
)
from trainchain.supervise.restarts import (
    ActionKind,
    ContainerState,
    WatchdogPolicy,
    claim,
    decide,
    effective_policy,
)

OURS = {"trainchain.managed": "true", "trainchain.trial": "3", "trainchain.run": "r1"}
POLICY = WatchdogPolicy(heartbeat_limit=60.0, max_restarts=3, backoff_base=5.0, backoff_cap=40.0)
NOW = 10_000.0


def dead(
    code: int = 2, *, restarts: int = 0, finished: float = NOW, oom: bool = False
) -> ContainerState:
    return ContainerState(
        labels=OURS,
        status="exited",
        exit_code=code,
        oom_killed=oom,
        started_at=finished - 100,
        finished_at=finished,
        attempt=restarts + 1,
        restarts=restarts,
    )


def running(*, started: float, last_report: float | None, restarts: int = 0) -> ContainerState:
    return ContainerState(
        labels=OURS,
        status="running",
        started_at=started,
        last_report=last_report,
        restarts=restarts,
    )


def test_a_container_without_trainchain_labels_is_never_touched() -> None:
    """Exited non-zero or hung, a foreign container is left alone."""
    foreign = ContainerState(labels={"com.example": "x"}, status="exited", exit_code=1)
    assert decide(foreign, NOW, POLICY).kind is ActionKind.LEAVE
    hung = ContainerState(labels={}, status="running", started_at=0.0, last_report=0.0)
    assert decide(hung, NOW, POLICY).kind is ActionKind.LEAVE


def test_a_finished_or_starting_container_is_left_alone() -> None:
    """A container that exited 0 or is still being created is left alone."""
    assert decide(dead(0), NOW, POLICY).kind is ActionKind.LEAVE
    assert decide(ContainerState(OURS, "created"), NOW, POLICY).kind is ActionKind.LEAVE


def test_a_finished_container_nobody_collected_is_collected() -> None:
    """Its executor would have removed it within seconds; after collect_after, the watchdog does."""
    assert decide(dead(0, finished=NOW - 601), NOW, POLICY).kind is ActionKind.COLLECT
    assert decide(dead(0, finished=NOW - 599), NOW, POLICY).kind is ActionKind.LEAVE


def test_a_failed_container_is_restarted_after_its_backoff() -> None:
    """Exit 2 just now: restart in 5 s; 5 s later: restart now."""
    action = decide(dead(2, finished=NOW), NOW, POLICY)
    assert (action.kind, action.delay, action.stop_first) == (ActionKind.RESTART, 5.0, False)
    assert action.reason == "exited with status 2"
    assert decide(dead(2, finished=NOW), NOW + 5, POLICY).delay == 0.0


def test_backoff_doubles_and_is_capped() -> None:
    """The restart backoff doubles from 5 s up to its cap, counting from when it finished."""
    assert [POLICY.backoff(n) for n in range(6)] == [5.0, 10.0, 20.0, 40.0, 40.0, 40.0]
    assert decide(dead(2, restarts=2, finished=NOW), NOW + 1, POLICY).delay == 19.0


def test_kills_and_out_of_memory_are_named() -> None:
    """Reasons name out of memory, SIGKILL and other signals from the exit status."""
    assert "out of memory" in decide(dead(137, oom=True), NOW, POLICY).reason
    assert decide(dead(137), NOW, POLICY).reason == "killed by SIGKILL (exit 137)"
    assert decide(dead(143), NOW, POLICY).reason == "killed by signal 15 (exit 143)"


def test_past_the_restart_cap_it_gives_up_with_the_reason() -> None:
    """Past max_restarts the watchdog gives up, saying why and after how many restarts."""
    action = decide(dead(2, restarts=3), NOW, POLICY)
    assert action.kind is ActionKind.GIVE_UP
    assert action.reason == "exited with status 2; gave up after 3 restart(s) (max_restarts 3)"


def test_a_running_container_whose_report_stopped_is_hung() -> None:
    """Past the heartbeat limit it is stopped and restarted; within it, left alone."""
    healthy = running(started=NOW - 500, last_report=NOW - 30)
    assert decide(healthy, NOW, POLICY).kind is ActionKind.LEAVE
    hung = decide(running(started=NOW - 500, last_report=NOW - 61), NOW, POLICY)
    assert (hung.kind, hung.stop_first, hung.delay) == (ActionKind.RESTART, True, 0.0)
    assert hung.reason.startswith("hung: no report progress for 61 s")
    capped = decide(running(started=NOW - 500, last_report=None, restarts=3), NOW, POLICY)
    assert (capped.kind, capped.stop_first) == (ActionKind.GIVE_UP, True)


def test_a_fresh_attempt_is_not_hung_on_its_predecessors_report() -> None:
    """The report is shared by the attempts: a new start counts as progress."""
    fresh = running(started=NOW - 10, last_report=NOW - 3600)
    assert decide(fresh, NOW, POLICY).kind is ActionKind.LEAVE


def test_without_a_heartbeat_limit_nothing_is_hung() -> None:
    """Without a heartbeat limit a running container is never judged hung."""
    policy = WatchdogPolicy(heartbeat_limit=None)
    assert decide(running(started=0.0, last_report=0.0), NOW, policy).kind is ActionKind.LEAVE


def test_the_containers_own_limits_win() -> None:
    """A container's own valid limit labels override the policy; invalid or unset ones do not."""
    labels = OURS | {"trainchain.max_restarts": "1", "trainchain.heartbeat_limit": "5"}
    policy = effective_policy(labels, POLICY)
    assert (policy.max_restarts, policy.heartbeat_limit) == (1, 5.0)
    unset = effective_policy(OURS | {"trainchain.heartbeat_limit": "none"}, POLICY)
    assert unset == POLICY
    assert effective_policy(OURS | {"trainchain.max_restarts": "-4"}, POLICY) == POLICY
    slow = effective_policy(OURS | {"trainchain.backoff": "30/600"}, POLICY)
    assert (slow.backoff_base, slow.backoff_cap) == (30.0, 600.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_restarts": -1}, "max_restarts must be from 0 to 100 but got -1"),
        ({"heartbeat_limit": 0.0}, "heartbeat_limit must be positive seconds (or None) but got 0"),
        ({"backoff_base": -1.0}, "backoff_base cannot be negative but got -1"),
    ],
)
def test_policy_rejects_bad_values_quoting_them(kwargs: dict[str, float], message: str) -> None:
    """WatchdogPolicy rejects bad values with an error quoting the value."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        WatchdogPolicy(**kwargs)  # type: ignore[arg-type]


def test_claim_is_exclusive_across_threads(tmp_path: Path) -> None:
    """Many claimants at once: exactly one gets the container."""
    barrier = threading.Barrier(8)
    won: list[bool] = []

    def contend() -> None:
        barrier.wait(timeout=10)
        won.append(claim(tmp_path / "locks", "abc123"))

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(won) == [False] * 7 + [True]
    assert claim(tmp_path / "locks", "other") is True


def _spec(tmp_path: Path) -> AttemptSpec:
    attempt_dir = tmp_path / "runs" / "trial-0002" / "attempt-1"
    attempt_dir.mkdir(parents=True)
    (attempt_dir / "data_options.json").write_text("{}")
    return AttemptSpec(
        repo_root=tmp_path / "repo",
        entrypoint="train.py",
        params_file=attempt_dir / "params.json",
        data_dir=tmp_path / "data",
        data_options_file=attempt_dir / "data_options.json",
        checkpoint_dir=tmp_path / "ckpt",
        output_dir=attempt_dir / "output",
        report_file=attempt_dir.parent / "report.jsonl",
        log_file=attempt_dir / "train.log",
        trial=2,
        attempt=1,
        timeout=60.0,
        image="trainchain/train-eeg:0.1.0",
        labels={"trainchain.model": "m", "trainchain.run": "r", "trainchain.trial": "2"},
    )


def test_the_container_sees_the_contract_at_its_own_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs read-only, checkpoint/output/report read-write, env pointing inside; the
    host's thread shares (several workers on one host) reach the container."""
    spec = _spec(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    env = container_env(spec)
    assert env["OMP_NUM_THREADS"] == "1" and "MKL_NUM_THREADS" not in env
    assert env[task.ENV_CHECKPOINT_DIR] == "/checkpoint"
    assert env[task.ENV_REPORT] == "/report/report.jsonl"
    assert env[task.ENV_DATA_OPTIONS] == "/trainchain/data_options.json"
    assert (env[task.ENV_TRIAL], env[task.ENV_ATTEMPT]) == ("2", "1")
    mounts = {m.target: (m.source, m.read_only) for m in container_mounts(spec)}
    assert mounts["/repo"] == (spec.repo_root.resolve(), True)
    assert mounts["/data"][1] and mounts["/trainchain/params.json"][1]
    assert mounts["/checkpoint"] == (spec.checkpoint_dir.resolve(), False)
    assert mounts["/report"] == (spec.report_file.parent.resolve(), False)
    labels = container_labels(spec, max_restarts=2, heartbeat_limit=None)
    assert labels["trainchain.managed"] == "true"
    assert labels["trainchain.attempt_dir"] == str(spec.log_file.parent.resolve())
    assert (labels["trainchain.max_restarts"], labels["trainchain.heartbeat_limit"]) == (
        "2",
        "none",
    )


def test_a_signal_death_reads_like_the_local_executors() -> None:
    """init exits 128+N for a child killed by signal N; the result says signal N."""
    info = info_from_attrs(
        {"Id": "x", "State": {"Status": "exited", "ExitCode": 137, "OOMKilled": False}}
    )
    result = attempt_result(info, 1.0, "")
    assert (result.exit_code, result.describe()) == (-9, "killed by signal 9")


def test_image_family_for_the_build_hint() -> None:
    """image_family gives a trainchain image's family, and a placeholder for other images."""
    assert image_family("trainchain/train-eeg:0.1.0") == "eeg"
    assert image_family("python:3.11-slim") == "<family>"


def test_no_engine_is_an_error_saying_how_to_start_one(tmp_path: Path) -> None:
    """No reachable engine is an error saying how to start one and to check DOCKER_HOST."""
    with pytest.raises(DockerUnavailable) as caught:
        connect(f"unix://{tmp_path / 'no.sock'}", timeout=2)
    assert "scripts/start-docker.sh" in str(caught.value)
    assert "DOCKER_HOST" in str(caught.value)


def test_an_engine_that_fails_mid_run_is_one_error_naming_it() -> None:
    """A transport error of the docker SDK (here a real refused connection) becomes the
    package's error, with the engine's address, what was being done, and a hint."""
    import requests

    engine = "tcp://127.0.0.1:9"
    with pytest.raises(EngineError) as caught, engine_errors("following trial 4", engine):
        requests.get("http://127.0.0.1:9/containers/json", timeout=5)
    assert isinstance(caught.value, TrainchainError)
    assert str(caught.value).startswith(
        "the Docker engine at tcp://127.0.0.1:9 failed while following trial 4: "
    )
    assert caught.value.hint is not None and "--executor local" in caught.value.hint
