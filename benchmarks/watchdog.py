"""Kill-to-resume and start overhead of training containers, on this machine's Docker engine.

1. Kill-to-resume. An epoch-based toy script (stdlib only, plus ``trainchain.task``:
   each epoch sleeps 1 s, writes its checkpoint atomically, then a report line; it
   resumes after the checkpoint's epoch; 12 epochs) runs in a container of
   trainchain/train-eeg:0.1.0 (trainchain/test-toy:latest when that is missing)
   through ``DockerExecutor.run`` in a background thread, while a ``Watchdog`` runs
   its ``run(interval, stop_event)`` loop in another. At seeded random points (after
   1..8 report lines of the current attempt plus a random fraction of an epoch) the
   container gets SIGKILL through the API (``container.kill()``). Per kill:

   (a) seconds from the kill to the first report line of the next attempt,
   (b) finished epochs the next attempt redid (epochs an earlier attempt had reported),
   (c) seconds of partial-epoch work lost (the kill, once delivered, minus the killed
       attempt's last report line).

   Beside (a), where the time goes: kill -> replacement container started (the
   engine's StartedAt) -> the script is up (its first line, stamped in the container).
   A kill that would leave the trial no epoch to resume into starts a fresh 12-epoch
   run (same settings, new checkpoint folder) instead.

   Who restarts: the executor that follows the trial and the watchdog both take the
   backoff from the container's labels (written from the executor's policy, so they
   win over the watchdog's own policy) and claim the dead container exclusively.
   DockerExecutor.run has no setting that leaves restarts to a watchdog, so the two
   race for the claim; the "by" column says which one restarted each time. With
   ``--supervisor watchdog`` the runs are only started (``DockerExecutor.start``) and
   the watchdog is the one supervisor: its restart path alone is measured.

2. Start overhead. The same script with 1 epoch of 0 s, K times as a container through
   ``DockerExecutor.run`` and K times as a subprocess through ``LocalExecutor.run``
   (alternating): the median wall time of each, the difference and the ratio.

Every wait is bounded and the whole run is capped (--max-seconds); every container it
made is removed and its temporary folder under /tmp deleted. Without a Docker engine
it says so and exits 0.

    .venv/bin/python benchmarks/watchdog.py [--kills 5] [--starts 5] [--seed 0] [--quick]
        [--supervisor both|watchdog] [--max-seconds 600]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import re
import shutil
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import Deadline, OutOfTime

from trainchain.adapters import containers
from trainchain.executors import AttemptResult, AttemptSpec, LocalExecutor
from trainchain.executors import docker as dockerx
from trainchain.supervise.restarts import WatchdogPolicy
from trainchain.supervise.watchdog import Watchdog

IMAGE = "trainchain/train-eeg:0.1.0"
FALLBACK_IMAGE = "trainchain/test-toy:latest"
EPOCHS = 12
EPOCH_SECONDS = 1.0
MAX_LINES = 8  # a kill comes after 1..MAX_LINES report lines of the current attempt
BACKOFF_S = 0.5  # the restart backoff, constant (base = cap) so every kill is alike
WATCHDOG_INTERVAL_S = 2.0  # periodic scans; the die event triggers one at once
STOP_GRACE_S = 2.0
SUCCESSOR_WAIT_S = 5.0  # the executor waits this long for a restart someone else claimed
POLL_S = 0.02
CHAIN_LABEL = "trainchain.chain"  # every container made here carries it; removed at the end
QUICK_KILLS = 2
QUICK_STARTS = 2

# The toy (stdlib only): like EPOCH_TRAIN of tests/test_docker.py, and its first line
# says when the script is up (container clock = host clock: one kernel).
TOY_TRAIN = """
import json, time
from trainchain import task

p = task.params()
epochs, seconds = int(p["epochs"]), float(p["epoch_seconds"])
ckpt = task.checkpoint_dir() / "epoch.json"
start = json.loads(ckpt.read_text())["epoch"] + 1 if ckpt.exists() else 0
print(f"toy: attempt {task.attempt()} starts at epoch {start} at {time.time():.6f}", flush=True)
for epoch in range(start, epochs):
    time.sleep(seconds)
    task.atomic_write_bytes(ckpt, json.dumps({"epoch": epoch}).encode())
    task.report(epoch, val_accuracy=0.5 + epoch / 100)
    print(f"toy: epoch {epoch} done", flush=True)
task.write_metrics({"val_accuracy": 0.9, "test_accuracy": 0.89})
print("toy: finished", flush=True)
"""
START_LINE = re.compile(r"toy: attempt (\d+) starts at epoch (\d+) at ([0-9.]+)")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The report's lines; a line still being written is skipped until it is whole."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            row = json.loads(line)
            if isinstance(row, dict):
                rows.append(row)
    return rows


class Workspace:
    """One temporary folder: the toy repository, a data folder, one trial folder per spec."""

    def __init__(self, root: Path, chain: str) -> None:
        self.root = root
        self.chain = chain
        self.locks = root / "locks"
        self.repo = root / "repo"
        self.repo.mkdir()
        (self.repo / "train.py").write_text(textwrap.dedent(TOY_TRAIN))
        self.data = root / "data"
        self.data.mkdir()
        (self.data / "values.txt").write_text("1 2 3\n")

    def spec(
        self, name: str, *, epochs: int, epoch_seconds: float, image: str | None, timeout: float
    ) -> AttemptSpec:
        params = {"epochs": epochs, "epoch_seconds": epoch_seconds}
        return AttemptSpec.in_trial_dir(
            self.root / name / "trial-0001",
            1,
            params=params,
            data_options={},
            repo_root=self.repo,
            entrypoint="train.py",
            data_dir=self.data,
            checkpoint_dir=self.root / name / "checkpoint",
            trial=1,
            timeout=timeout,
            image=image,
            labels={
                "trainchain.model": "bench-toy",
                "trainchain.run": f"{self.chain}-{name}",
                CHAIN_LABEL: self.chain,
            },
        )


class RestartLog(logging.Handler):
    """Which thread restarted which dead container: the watchdog loop or the executor's.

    ``watchdog.handle`` logs ``trial %s: container %s %s; restarted as attempt %d ...``
    in the thread that won the claim. Other records of the watchdog's logger are printed.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.by_dead: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if "restarted as attempt" in str(record.msg) and len(args) >= 2:
            self.by_dead[str(args[1])] = record.threadName or "?"
        elif record.levelno >= logging.WARNING:
            print(f"  [{record.name}] {record.getMessage()}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """One 12-epoch trial: followed by ``DockerExecutor.run`` in a background thread
    (``--supervisor both``), or only started (``--supervisor watchdog``)."""

    number: int
    spec: AttemptSpec
    attempt: int = 1  # the attempt running now (as far as the kills know)
    first_step: int = 0  # the first epoch that attempt reported (or will report)
    result: AttemptResult | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    @property
    def label(self) -> str:
        return self.spec.labels["trainchain.run"]

    def follow(self, executor: dockerx.DockerExecutor) -> None:
        try:
            self.result = executor.run(self.spec)
        except BaseException as err:
            self.error = err

    def containers(self, client: Any, attempt: int | None = None, **filters: Any) -> list[Any]:
        labels = [f"{containers.LABEL_RUN}={self.label}"]
        if attempt is not None:
            labels.append(f"{containers.LABEL_ATTEMPT}={attempt}")
        found = client.containers.list(
            all=True, filters={"label": labels, **filters}, ignore_removed=True
        )
        return list(found)

    def record(self, attempt: int) -> dict[str, Any]:
        """The kept exit state of the attempt's container; {} when there is none."""
        folder = self.spec.log_file.parent.parent / f"attempt-{attempt}"
        try:
            loaded: dict[str, Any] = json.loads((folder / containers.CONTAINER_RECORD).read_text())
        except (OSError, ValueError):
            return {}
        return loaded

    def rows(self) -> list[dict[str, Any]]:
        return read_rows(self.spec.report_file)

    def alive(self) -> bool:
        if self.thread is not None and not self.thread.is_alive():
            why = self.error or (self.result.describe() if self.result else "no result")
            raise RuntimeError(f"run {self.number} ended before the kills were done: {why}")
        return True


@dataclass
class Kill:
    number: int
    run: Run
    attempt: int  # the attempt killed
    lines: int
    fraction: float
    container: str
    at: float  # time.time() just before container.kill()
    done: float  # time.time() when container.kill() returned: SIGKILL was delivered by then
    last_report: float  # the killed attempt's last report line (it may land during the call)
    first_report: float | None = None
    resumed_at: int | None = None  # the epoch the next attempt reported first
    by: str = "?"
    started: float | None = None
    up: float | None = None
    redone: int | None = None

    def resume_s(self) -> float | None:
        return None if self.first_report is None else self.first_report - self.at

    def lost_s(self) -> float:
        return self.done - self.last_report


# --- part 1: kill to resume ---------------------------------------------------------------------


def start_run(
    client: Any,
    executor: dockerx.DockerExecutor,
    ws: Workspace,
    image: str,
    *,
    number: int,
    timeout: float,
    supervisor: str,
) -> Run:
    spec = ws.spec(
        f"kill-run-{number}",
        epochs=EPOCHS,
        epoch_seconds=EPOCH_SECONDS,
        image=image,
        timeout=timeout,
    )
    run = Run(number, spec)
    if supervisor == "watchdog":  # nobody follows it: the watchdog alone restarts and collects
        executor.start(spec, client)
        return run
    run.thread = threading.Thread(
        target=run.follow, args=(executor,), name=f"executor-run-{number}", daemon=True
    )
    run.thread.start()
    return run


def finish(client: Any, run: Run, deadline: Deadline) -> None:
    """Wait for the run to end: its executor returns, or the watchdog collected its container."""
    if run.thread is None:
        metrics = run.spec.output_dir / "metrics.json"  # every attempt mounts this folder
        deadline.wait(
            lambda: metrics.exists() and not run.containers(client),
            f"run {run.number} to finish and its last container to be collected",
            timeout=EPOCHS * EPOCH_SECONDS + 90,
        )
        return
    limit = deadline.limit(EPOCHS * EPOCH_SECONDS + 90)
    run.thread.join(timeout=limit)
    if run.thread.is_alive():
        raise OutOfTime(f"waited {limit:.0f} s for run {run.number} to finish")


def kill_once(
    client: Any, run: Run, *, number: int, lines: int, fraction: float, deadline: Deadline
) -> Kill:
    attempt = run.attempt

    def rows_of(n: int) -> list[dict[str, Any]]:
        return [r for r in run.rows() if r.get("attempt") == n]

    deadline.wait(
        lambda: run.alive() and len(rows_of(attempt)) >= lines,
        f"{lines} report line(s) of run {run.number} attempt {attempt}",
        timeout=lines * EPOCH_SECONDS + 90,
    )
    deadline.sleep(fraction * EPOCH_SECONDS)
    (container, *_) = deadline.wait(
        lambda: run.containers(client, attempt, status="running"),
        f"the running container of run {run.number} attempt {attempt}",
        timeout=10,
    )
    at = time.time()
    container.kill()  # SIGKILL through the API
    done = time.time()
    last = max(r["time"] for r in rows_of(attempt))
    kill = Kill(number, run, attempt, lines, fraction, container.name, at, done, last)
    first = deadline.wait(
        lambda: run.alive() and next(iter(rows_of(attempt + 1)), None),
        f"the first report line of run {run.number} attempt {attempt + 1}",
        timeout=90,
    )
    kill.first_report, kill.resumed_at = float(first["time"]), int(first["step"])
    run.attempt, run.first_step = attempt + 1, int(first["step"])
    # the replacement, running now: when the engine started it, when the script was up
    with contextlib.suppress(Exception):
        (successor, *_) = run.containers(client, attempt + 1)
        kill.started = containers.inspect(successor).started_at
        found = START_LINE.search(successor.logs().decode("utf-8", errors="replace"))
        kill.up = float(found.group(3)) if found else None
    return kill


def fill_in(kill: Kill, restarts: RestartLog) -> None:
    """What is known only after the run: who restarted, when, and what was redone."""
    thread = restarts.by_dead.get(kill.container, "")
    kill.by = "watchdog" if thread.startswith("watchdog") else "executor" if thread else "?"
    rows = kill.run.rows()
    earlier = {r["step"] for r in rows if r.get("attempt", 0) <= kill.attempt}
    kill.redone = len({r["step"] for r in rows if r.get("attempt") == kill.attempt + 1} & earlier)


def measure_kills(
    client: Any,
    ws: Workspace,
    image: str,
    schedule: Sequence[tuple[int, float]],
    deadline: Deadline,
    *,
    supervisor: str,
    kills: list[Kill],
    runs: list[Run],
) -> None:
    """Kill per ``schedule`` (lines, fraction), appending to ``kills`` and ``runs`` as it goes."""
    max_restarts = len(schedule) + 2
    executor = dockerx.DockerExecutor(
        locks_dir=ws.locks,
        max_restarts=max_restarts,
        heartbeat_limit=None,
        backoff_base=BACKOFF_S,
        backoff_cap=BACKOFF_S,
        stop_grace=STOP_GRACE_S,
        successor_wait=SUCCESSOR_WAIT_S,
    )
    dog_client = containers.connect(timeout=30)
    dog = Watchdog(
        dog_client,
        locks_dir=ws.locks,
        policy=WatchdogPolicy(
            heartbeat_limit=None,
            max_restarts=max_restarts,
            backoff_base=BACKOFF_S,
            backoff_cap=BACKOFF_S,
            # alone, it also collects each finished run at once (beside the executor it
            # leaves that to the executor, as by default)
            collect_after=0.0 if supervisor == "watchdog" else 600.0,
        ),
        selector={CHAIN_LABEL: ws.chain},
        stop_grace=STOP_GRACE_S,
    )
    stop = threading.Event()
    loop = threading.Thread(
        target=dog.run, args=(WATCHDOG_INTERVAL_S, stop), name="watchdog-loop", daemon=True
    )
    loop.start()
    attempt_timeout = EPOCHS * EPOCH_SECONDS + 60  # per attempt: the executor's own bound
    try:
        run: Run | None = None
        for number, (lines, fraction) in enumerate(schedule, start=1):
            # the kill must leave an epoch to resume into, else it goes to a fresh run
            if run is None or run.first_step + lines > EPOCHS - 1:
                if run is not None:
                    finish(client, run, deadline)
                run = start_run(
                    client,
                    executor,
                    ws,
                    image,
                    number=len(runs) + 1,
                    timeout=attempt_timeout,
                    supervisor=supervisor,
                )
                runs.append(run)
            kills.append(
                kill_once(
                    client, run, number=number, lines=lines, fraction=fraction, deadline=deadline
                )
            )
        if run is not None:
            finish(client, run, deadline)
    finally:
        stop.set()
        loop.join(timeout=15)
        dog_client.close()


def fmt(value: float | None, digits: int = 2) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def since(value: float | None, start: float) -> float | None:
    return None if value is None else value - start


def summary(name: str, values: Sequence[float | None], unit: str, digits: int = 2) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return f"  {name:<46} (no values)"
    median, worst = statistics.median(known), max(known)
    missing = f"  ({len(values) - len(known)} unknown)" if len(known) < len(values) else ""
    return (
        f"  {name:<46} median {median:>6.{digits}f}{unit}   max {worst:>6.{digits}f}{unit}{missing}"
    )


def print_kills(kills: Sequence[Kill], runs: Sequence[Run], restarts: RestartLog) -> None:
    for kill in kills:
        fill_in(kill, restarts)
    print()
    print(
        f"{'kill':>4} {'run':>3} {'attempt':>7} {'after':>11} {'by':>8} "
        f"{'->started':>9} {'->up':>6} {'(a) resume':>10} {'(b) redone':>10} {'(c) lost':>8}"
    )
    for k in kills:
        after = f"{k.lines}+{k.fraction:.2f}ep"
        print(
            f"{k.number:>4} {k.run.number:>3} {f'{k.attempt}->{k.attempt + 1}':>7} {after:>11} "
            f"{k.by:>8} {fmt(since(k.started, k.at)):>8}s {fmt(since(k.up, k.at)):>5}s "
            f"{fmt(k.resume_s()):>9}s {k.redone if k.redone is not None else '?':>10} "
            f"{fmt(k.lost_s()):>7}s"
        )
    print("  (after: report lines of the attempt + the fraction of an epoch before the kill;")
    print("   (a) and ->: from the start of the kill call; (c): from its return back to the")
    print("   killed attempt's last report line, which may land during the call;")
    print(
        "   ->started: kill to the replacement's StartedAt; ->up: kill to the script's first line)"
    )
    print()
    print(
        summary(
            "(a) kill -> first report line of the next attempt", [k.resume_s() for k in kills], " s"
        )
    )
    print(summary("(b) finished epochs redone", [k.redone for k in kills], "", digits=0))
    print(summary("(c) partial-epoch work lost", [k.lost_s() for k in kills], " s"))
    print(
        summary(
            "    kill -> replacement container started",
            [since(k.started, k.at) for k in kills],
            " s",
        )
    )
    print(
        summary(
            "    kill -> script up in the replacement", [since(k.up, k.at) for k in kills], " s"
        )
    )
    print(summary("    the kill call itself", [k.done - k.at for k in kills], " s", digits=3))
    by = {who: sum(k.by == who for k in kills) for who in ("watchdog", "executor", "?")}
    print(
        f"  restarted by: the watchdog {by['watchdog']}, the executor {by['executor']}"
        + (f", unknown {by['?']}" if by["?"] else "")
        + f" (of {len(kills)})"
    )
    for run in runs:
        rows = run.rows()
        steps = sorted({r["step"] for r in rows})
        missing = sorted(set(range(EPOCHS)) - set(steps))
        twice = len(rows) - len(steps)
        attempts = sorted({r.get("attempt") for r in rows})
        if run.result is not None or run.error is not None:
            ok = run.result is not None and run.result.ok
            result = run.result.describe() if run.result else f"raised {run.error!r}"
        else:  # no executor followed it: the last container's kept record says how it ended
            last = run.record(max(attempts)) if attempts else {}
            ok = last.get("exit_code") == 0
            result = f"exit {last.get('exit_code', '?')}, {last.get('action', 'not collected')}"
        print(
            f"  run {run.number}: {'ok' if ok else 'FAILED'} ({result}), "
            f"attempts {attempts}, {len(steps)}/{EPOCHS} epochs reported, {twice} twice, "
            f"missing {missing or 'none'}"
        )


# --- part 2: start overhead ---------------------------------------------------------------------


@dataclass
class Start:
    docker_s: float
    docker_ok: bool
    in_container_s: float | None
    local_s: float
    local_ok: bool


def measure_starts(
    ws: Workspace, image: str, count: int, deadline: Deadline, starts: list[Start]
) -> None:
    docker_ex = dockerx.DockerExecutor(locks_dir=ws.locks, max_restarts=0, stop_grace=STOP_GRACE_S)
    local_ex = LocalExecutor()
    for i in range(1, count + 1):
        timeout = deadline.limit(60)
        spec = ws.spec(f"start-{i}-docker", epochs=1, epoch_seconds=0, image=image, timeout=timeout)
        begun = time.perf_counter()
        result = docker_ex.run(spec)
        docker_s = time.perf_counter() - begun
        docker_ok = result.ok and (spec.output_dir / "metrics.json").exists()
        in_container = None
        with contextlib.suppress(OSError, ValueError):
            kept = json.loads((spec.log_file.parent / containers.CONTAINER_RECORD).read_text())
            up, down = (
                containers.parse_time(kept["started_at"]),
                containers.parse_time(kept["finished_at"]),
            )
            if up is not None and down is not None:
                in_container = down - up
        if not docker_ok:
            print(f"  docker start {i} failed: {result.describe()}\n{result.log_tail}")

        timeout = deadline.limit(60)
        spec = ws.spec(f"start-{i}-local", epochs=1, epoch_seconds=0, image=None, timeout=timeout)
        begun = time.perf_counter()
        result = local_ex.run(spec)
        local_s = time.perf_counter() - begun
        local_ok = result.ok and (spec.output_dir / "metrics.json").exists()
        if not local_ok:
            print(f"  local start {i} failed: {result.describe()}\n{result.log_tail}")
        starts.append(Start(docker_s, docker_ok, in_container, local_s, local_ok))


def print_starts(starts: Sequence[Start]) -> None:
    print()
    print(f"{'start':>5} {'docker wall':>11} {'in container':>12} {'local wall':>10}")
    for i, s in enumerate(starts, start=1):
        d = f"{s.docker_s:.3f}s" + ("" if s.docker_ok else "!")
        loc = f"{s.local_s:.3f}s" + ("" if s.local_ok else "!")
        print(f"{i:>5} {d:>11} {fmt(s.in_container_s, 3):>11}s {loc:>10}")
    print("  (in container: the container's StartedAt -> FinishedAt; ! = the run failed, left out)")
    docker = [s.docker_s for s in starts if s.docker_ok]
    local = [s.local_s for s in starts if s.local_ok]
    inside = [s.in_container_s for s in starts if s.docker_ok and s.in_container_s is not None]
    if not docker or not local:
        print("  no successful runs of one kind: no comparison")
        return
    d, loc = statistics.median(docker), statistics.median(local)
    print()
    print(f"  median wall, container (DockerExecutor.run):    {d:.3f} s   ({len(docker)} runs)")
    if inside:
        print(f"  median time inside the container:              {statistics.median(inside):.3f} s")
    print(f"  median wall, subprocess (LocalExecutor.run):    {loc:.3f} s   ({len(local)} runs)")
    print(f"  difference (container - subprocess):            {d - loc:+.3f} s")
    print(f"  ratio (container / subprocess):                 {d / loc:.1f}x")


# --- the whole ----------------------------------------------------------------------------------


def pick_image(client: Any) -> tuple[str | None, str]:
    for image in (IMAGE, FALLBACK_IMAGE):
        try:
            found = containers.check_image(client, image)
        except containers.ImageMissing:
            continue
        note = "" if image == IMAGE else f" (FALLBACK: {IMAGE} is missing)"
        return image, f"{image} ({found.short_id.removeprefix('sha256:')}){note}"
    return None, f"neither {IMAGE} nor {FALLBACK_IMAGE} exists in the engine"


def cleanup(client: Any, chain: str, runs: Sequence[Run], root: Path) -> int:
    """Remove every container labelled with ``chain``, then the temporary folder."""
    removed = 0
    for container in client.containers.list(
        all=True, filters={"label": f"{CHAIN_LABEL}={chain}"}, ignore_removed=True
    ):
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed += 1
    for run in runs:  # an aborted run: its executor sees the container gone and returns
        if run.thread is not None:
            run.thread.join(timeout=SUCCESSOR_WAIT_S + 5)
    shutil.rmtree(root, ignore_errors=True)
    return removed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, help="kills to measure (default 5; --quick 2)")
    parser.add_argument("--starts", type=int, help="starts of each kind (default 5; --quick 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points (default 0)")
    parser.add_argument("--quick", action="store_true", help="2 kills, 2 starts")
    parser.add_argument(
        "--supervisor",
        choices=("both", "watchdog"),
        default="both",
        help="both (default): DockerExecutor.run follows each run beside the watchdog, and "
        "they race for each restart; watchdog: the runs are only started "
        "(DockerExecutor.start), so the watchdog alone restarts them",
    )
    parser.add_argument(
        "--max-seconds", type=float, default=600.0, help="the total cap (default 600)"
    )
    args = parser.parse_args(argv)
    kill_count = args.kills if args.kills is not None else QUICK_KILLS if args.quick else 5
    start_count = args.starts if args.starts is not None else QUICK_STARTS if args.quick else 5
    if kill_count < 0 or start_count < 0 or args.max_seconds <= 0:
        parser.error("--kills and --starts cannot be negative; --max-seconds must be positive")
    began = time.monotonic()
    deadline = Deadline(args.max_seconds, poll=POLL_S)
    restarts = RestartLog()
    logging.getLogger("trainchain.supervise.watchdog").addHandler(restarts)

    try:
        client = containers.connect(timeout=10)
    except (ImportError, containers.DockerUnavailable) as err:
        print(f"skipped: {getattr(err, 'message', err)}")
        return 0
    with contextlib.closing(client):
        image, described = pick_image(client)
        if image is None:
            print(f"skipped: {described}; build one with scripts/build-images.sh eeg")
            return 0
        engine = client.info()
        rng = random.Random(args.seed)  # noqa: S311 - kill points, not secrets
        schedule = [(rng.randint(1, MAX_LINES), rng.random()) for _ in range(kill_count)]
        print("trainchain watchdog benchmark")
        print(
            f"  engine: Docker {engine.get('ServerVersion')}, {engine.get('NCPU')} CPUs, "
            f"{engine.get('MemTotal', 0) / 2**30:.1f} GiB; host Python {platform.python_version()}"
            f", {os.cpu_count()} CPUs"
        )
        print(f"  image: {described}")
        print(
            f"  toy: {EPOCHS} epochs of {EPOCH_SECONDS:g} s, checkpoint then report line per epoch"
        )
        beside = (
            "beside DockerExecutor.run (they race for each restart)"
            if args.supervisor == "both"
            else "alone (runs started with DockerExecutor.start)"
        )
        print(
            f"  supervision: Watchdog.run(interval {WATCHDOG_INTERVAL_S:g} s, plus die events) "
            f"{beside}; backoff {BACKOFF_S:g} s constant (base = cap)"
        )
        print(
            f"  kills {kill_count} (seed {args.seed}), starts {start_count} of each kind, "
            f"cap {args.max_seconds:g} s"
        )

        root = Path(tempfile.mkdtemp(prefix="trainchain-bench-watchdog-", dir="/tmp"))
        chain = f"bench-{uuid.uuid4().hex[:12]}"
        ws = Workspace(root, chain)
        kills: list[Kill] = []
        runs: list[Run] = []
        starts: list[Start] = []
        status = 0
        part = 1
        try:
            if kill_count:
                print()
                print(f"1. kill -> resume ({kill_count} SIGKILLs through the API)", flush=True)
                measure_kills(
                    client,
                    ws,
                    image,
                    schedule,
                    deadline,
                    supervisor=args.supervisor,
                    kills=kills,
                    runs=runs,
                )
                print_kills(kills, runs, restarts)
            part = 2
            if start_count:
                print()
                print(f"2. start overhead (1 epoch of 0 s, {start_count} of each)", flush=True)
                measure_starts(ws, image, start_count, deadline, starts)
                print_starts(starts)
        except (OutOfTime, RuntimeError) as err:
            status = 1
            print(f"\nstopped in part {part}: {err}")
            if part == 1 and kills:
                print("what was measured before it stopped:")
                print_kills(kills, runs, restarts)
            if part == 2 and starts:
                print_starts(starts)
        finally:
            removed = cleanup(client, chain, runs, root)
            print()
            print(
                f"cleaned up: {removed} leftover container(s) removed, {root} deleted"
                f"{'' if not root.exists() else ' (NOT fully: something is left)'}"
            )
            print(f"took {time.monotonic() - began:.1f} s")
        return status


if __name__ == "__main__":
    sys.exit(main())
