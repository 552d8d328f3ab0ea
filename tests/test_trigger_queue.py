"""The one trigger queue on a real SQLite file, with real (living and dead) processes: one
claim per repository however many processes race for it, stale claims settled with a
reason, bounds that say what to do."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import eventually, run_cli
from trainchain.triggers.queue import (
    AlreadyReceived,
    Holder,
    HookPaths,
    JenkinsTarget,
    QueueFull,
    RunRequest,
    RunState,
    TriggerQueue,
    repo_key,
)

URL = "file:///nowhere/toy.git"


def request(n: int, url: str = URL, delivery: str | None = None) -> RunRequest:
    return RunRequest(
        repository=url, commit=f"{n}" * 40, branch="main", trigger="webhook", delivery=delivery
    )


def dead_pid() -> int:
    """The pid of a process that ran and is gone (reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def queue(home: Path) -> TriggerQueue:
    return TriggerQueue(HookPaths.under(home))


def test_many_processes_racing_for_one_repository_get_one_claim(queue: TriggerQueue) -> None:
    """Eight threads claiming at once (each with its own connection) get one claim for the
    repository between them; the claim takes its oldest run, and finishing it takes the
    next: two runs of one repository are never running together."""
    runs = [queue.enqueue(request(n), max_queue=5, full_hint="-")[0] for n in range(1, 4)]
    start = threading.Barrier(8)
    tokens: list[str] = []

    def claim() -> None:
        start.wait(timeout=30)
        tokens.extend(queue.claim_waiting(Holder()))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(tokens) == 1
    token = tokens[0]
    for n, run in enumerate(runs):
        current = queue.current(token)
        assert current is not None and current.run_id == run.run_id
        assert [s.run_id for s, _ in queue.running()] == [run.run_id]  # only this one
        queue.finish(token, current.with_(state=RunState.SUCCEEDED))
        assert queue.get(run.run_id).state is RunState.SUCCEEDED
        left = [r.run_id for r in runs[n + 1 :]]
        expected = {"running": left[0], "queued": left[1:]} if left else None
        assert queue.snapshot().get(repo_key(URL)) == expected
    assert queue.current(token) is None  # released once nothing was left
    assert queue.claim_waiting(Holder()) == []


def test_a_full_queue_and_a_replayed_delivery_are_refused_with_what_to_do(
    queue: TriggerQueue,
) -> None:
    """max_queue runs wait behind the running one, the next is refused naming the bound and
    the hint; a delivery id is queued once, whoever asks again."""
    queue.enqueue(request(1, delivery="d1"), max_queue=1, full_hint="push later")
    queue.enqueue(request(2), max_queue=1, full_hint="push later")
    with pytest.raises(QueueFull, match=r"1 runs of .* are already waiting \(the queue holds 1\)"):
        queue.enqueue(request(3), max_queue=1, full_hint="push later")
    with pytest.raises(AlreadyReceived, match="delivery d1 was already received"):
        queue.enqueue(request(4, url="file:///other.git", delivery="d1"), max_queue=1, full_hint="")
    assert queue.received("d1") and not queue.remember("d1")
    assert queue.remember("d2") and queue.received("d2")
    other, ahead = queue.enqueue(request(5, url="file:///other.git"), max_queue=1, full_hint="")
    assert ahead == 0 and other.state is RunState.QUEUED  # another repository's own bound


def test_a_run_left_running_by_a_dead_drainer_is_settled_with_the_reason(
    queue: TriggerQueue, home: Path
) -> None:
    """A claim whose drainer and chain are gone is settled: a run whose chain had started is
    failed with the reason (shown by `hooks status`), a run whose chain never started is
    queued again; a claim whose drainer lives is left alone."""
    started, _ = queue.enqueue(request(1), max_queue=4, full_hint="")
    taken, _ = queue.enqueue(request(2, url="file:///second.git"), max_queue=4, full_hint="")
    alive, _ = queue.enqueue(request(3, url="file:///third.git"), max_queue=4, full_hint="")
    dead = Holder(pid=dead_pid())
    tokens = queue.claim_waiting(dead)
    assert len(tokens) == 3
    by_run = {}
    for token in tokens:
        current = queue.current(token)
        assert current is not None
        by_run[current.run_id] = token
    queue.started(
        by_run[started.run_id],
        queue.get(started.run_id).with_(started_at="2026-01-01T00:00:00Z", pid=dead_pid()),
    )
    assert queue.hand_over(by_run[alive.run_id], Holder())  # this test process: alive

    out = run_cli("hooks", "drain", "--home", str(home))  # reconciles, then drains
    assert out.returncode == 0, out.stderr
    assert f"run {started.run_id} marked failed" in out.stdout
    assert f"run {taken.run_id}: its drainer (pid {dead.pid}" in out.stdout
    assert "went away before its chain started; queued again" in out.stdout

    failed = queue.get(started.run_id)
    assert failed.state is RunState.FAILED and failed.finished_at
    assert f"its drainer (pid {dead.pid} on {dead.host}) went away while the chain" in (
        failed.error or ""
    )
    shown = run_cli("hooks", "status", started.run_id, "--home", str(home)).stdout
    assert '"state": "failed"' in shown and "went away while the chain" in shown
    assert queue.get(alive.run_id).state is RunState.RUNNING  # its holder lives
    assert queue.current(by_run[alive.run_id]) is not None
    # the run queued again went to a new drainer, which ran it (it failed: there is no such
    # repository): resumed, not lost
    assert "started 1 drainer(s)" in out.stdout
    resumed = eventually(
        lambda: (s := queue.get(taken.run_id)).state.final and s, "the resumed run", 120
    )
    assert resumed.state is RunState.FAILED and resumed.exit_code == 5


# ---- runs with a target: Jenkins ------------------------------------------------------
# The schema a trainchain before run targets wrote (schema version 0), as it wrote it.
OLD_SCHEMA = """
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    repo TEXT NOT NULL,
    state TEXT NOT NULL,
    trigger TEXT NOT NULL,
    chain_start TEXT,
    record TEXT NOT NULL
);
CREATE INDEX runs_by_repo ON runs (repo, state, seq);
CREATE TABLE claims (
    repo TEXT PRIMARY KEY, token TEXT NOT NULL UNIQUE, run_id TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, pid_start TEXT, since TEXT NOT NULL
);
CREATE TABLE deliveries (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE);
"""


def jenkins_request(n: int, url: str = URL) -> RunRequest:
    target = JenkinsTarget("trainchain-1-pull", {"REPOSITORY": url, "COMMIT": f"{n}" * 40})
    return RunRequest(
        repository=url, commit=f"{n}" * 40, branch="main", trigger="post-receive", jenkins=target
    )


def test_a_queue_file_from_before_run_targets_keeps_its_runs_and_takes_jenkins_runs(
    home: Path,
) -> None:
    """A queue.db an older trainchain wrote (no target column, version 0) with a finished
    and a queued run: opened, it is migrated in place; both runs are still there, as local
    chain runs, the queued one is claimed first, and a Jenkins run queues behind it."""
    paths = HookPaths.under(home)
    paths.root.mkdir(parents=True)
    old_done = {
        "run_id": "20260101T000000Z-toy-11111111-aaaaaa", "state": "succeeded",
        "repository": URL, "commit": "1" * 40, "branch": "main", "trigger": "webhook",
        "log": "/x.log", "queued_at": "2026-01-01T00:00:00Z", "exit_code": 0,
    }  # fmt: skip
    old_queued = old_done | {
        "run_id": "20260101T000001Z-toy-22222222-bbbbbb", "state": "queued", "commit": "2" * 40,
        "exit_code": None,
    }  # fmt: skip
    con = sqlite3.connect(paths.db)
    con.executescript(OLD_SCHEMA)
    for record in (old_done, old_queued):
        con.execute(
            "INSERT INTO runs (run_id, repo, state, trigger, record) VALUES (?, ?, ?, ?, ?)",
            (record["run_id"], repo_key(URL), record["state"], "webhook", json.dumps(record)),
        )
    con.execute("INSERT INTO deliveries (id) VALUES ('d-old')")
    con.commit()
    con.close()

    queue = TriggerQueue(paths)
    done = queue.get(old_done["run_id"])
    assert done.state is RunState.SUCCEEDED and done.target == "chain" and done.exit_code == 0
    assert queue.received("d-old")
    jenkins, ahead = queue.enqueue(jenkins_request(3), max_queue=4, full_hint="")
    assert ahead == 1 and jenkins.target == "jenkins"
    with closing(sqlite3.connect(paths.db)) as con:
        assert con.execute("PRAGMA user_version").fetchone() == (1,)
        targets = con.execute("SELECT run_id, target FROM runs ORDER BY seq").fetchall()
    assert targets == [
        (old_done["run_id"], "chain"), (old_queued["run_id"], "chain"), (jenkins.run_id, "jenkins")
    ]  # fmt: skip
    (token,) = queue.claim_waiting(Holder())
    current = queue.current(token)
    assert current is not None and current.run_id == old_queued["run_id"]
    assert TriggerQueue(paths).get(jenkins.run_id) == jenkins  # opened again: nothing changes


def test_a_jenkins_run_left_running_by_a_dead_drainer_is_never_triggered_twice(
    queue: TriggerQueue,
) -> None:
    """Jenkins runs whose drainer died: with the queue item Jenkins answered it is done
    (Jenkins has the build), without one it is failed saying to check Jenkins, and one
    taken but never tried is queued again: none is triggered a second time."""
    queued_url = "http://jenkins.example/queue/item/9/"
    answered, _ = queue.enqueue(jenkins_request(1), max_queue=4, full_hint="")
    trying, _ = queue.enqueue(jenkins_request(2, "file:///second.git"), max_queue=4, full_hint="")
    taken, _ = queue.enqueue(jenkins_request(3, "file:///third.git"), max_queue=4, full_hint="")
    dead = Holder(pid=dead_pid())
    by_run = {}
    for token in queue.claim_waiting(dead):
        current = queue.current(token)
        assert current is not None
        by_run[current.run_id] = token
    at = "2026-01-01T00:00:00Z"
    queue.started(
        by_run[answered.run_id],
        queue.get(answered.run_id).with_(started_at=at, attempts=1, jenkins_queue_url=queued_url),
    )
    queue.started(
        by_run[trying.run_id],
        queue.get(trying.run_id).with_(started_at=at, attempts=2, error="attempt 2 of 6: 503"),
    )

    lines = queue.reconcile()
    assert len(lines) == 3
    done = queue.get(answered.run_id)
    assert done.state is RunState.SUCCEEDED and done.jenkins_queue_url == queued_url
    assert f"after Jenkins queued the build ({queued_url}); not triggered again" in (
        done.error or ""
    )
    failed = queue.get(trying.run_id)
    assert failed.state is RunState.FAILED and failed.finished_at
    assert "Jenkins may or may not have queued a build: check trainchain-1-pull" in (
        failed.error or ""
    )
    assert "(the last attempt: attempt 2 of 6: 503)" in (failed.error or "")
    assert queue.get(taken.run_id).state is RunState.QUEUED
    assert queue.reconcile() == []  # settled once
