"""A queued run whose target is Jenkins: the drainer triggers the job's build through the
Jenkins adapter (:class:`trainchain.adapters.jenkins.JenkinsClient`, the one
`trainchain jenkins trigger` uses) and records what Jenkins answered.

Jenkins down for a moment (no connection, or a 5xx answer) is tried again after 2, 4, 8,
16 and 30 s by default (:func:`trainchain.triggers.queue.retry_waits`: 6 attempts over
about a minute); then, or on any other error, the run is ``failed`` with the reason. A
call that got no answer in time is not tried again: Jenkins may have queued the build.
Once Jenkins answered with its queue item, the item's URL is recorded at once (a drainer
killed after that never triggers the build again), then the queue item is followed for a
bounded time to record the build's URL too. The run is ``succeeded`` once Jenkins has
the build; the build's own result is Jenkins' to show.

The connection (JENKINS_URL, JENKINS_USER, JENKINS_TOKEN) comes from the drainer's
environment when the run is triggered: the queue holds the job and its parameters only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from trainchain.adapters.jenkins import Connection, JenkinsClient, JenkinsError
from trainchain.core.errors import ConfigError
from trainchain.core.status import RunState
from trainchain.triggers.queue import RunStatus, TriggerQueue, now_iso, retry_waits

HTTP_TIMEOUT_S = 30.0  # each call to Jenkins
FOLLOW_S = 60.0  # how long the queue item is followed to its build (to record its URL)
FOLLOW_POLL_S = 1.0


def _log_line(handle: IO[bytes], text: str) -> None:
    handle.write(f"trainchain: {text}\n".encode())
    handle.flush()


def _failed(status: RunStatus, error: str) -> RunStatus:
    return status.with_(state=RunState.FAILED, finished_at=now_iso(), error=error)


def trigger_build(
    queue: TriggerQueue,
    token: str,
    status: RunStatus,
    *,
    env: Mapping[str, str],
    sleep: Callable[[float], None] = time.sleep,
    http_timeout: float = HTTP_TIMEOUT_S,
    follow_s: float = FOLLOW_S,
) -> RunStatus:
    """Trigger the Jenkins build of the run ``token`` claims, with bounded retries, and
    record the outcome (which takes the repository's next queued run)."""
    job = status.jenkins_job or ""
    params = dict(status.jenkins_params or {})
    waits = retry_waits(status.jenkins_retries)
    log_path = Path(status.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # recorded before the first call: a drainer killed from here on never triggers it again
    status = status.with_(started_at=now_iso())
    queue.started(token, status)
    with log_path.open("ab") as out:
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        _log_line(out, f"run {status.run_id}: Jenkins job {job} with {shown}")
        try:
            connection = Connection.from_env(env, timeout=http_timeout)
        except ConfigError as err:
            final = _failed(status, f"cannot reach Jenkins: {err.message} ({err.hint})")
            _log_line(out, final.error or "")
            queue.finish(token, final)
            return final
        _log_line(out, f"Jenkins: {connection.base} as {connection.user}")
        for attempt in range(1, len(waits) + 2):
            status = status.with_(attempts=attempt)
            try:
                with JenkinsClient(connection) as client:
                    number = client.trigger(job, params)
                    queue_url = client.queue_url(number)
                    status = status.with_(jenkins_queue_url=queue_url, error=None)
                    queue.started(token, status)
                    _log_line(out, f"queued {job}: {queue_url}")
                    status = _follow(client, status, number, out, follow_s)
            except JenkinsError as err:
                error = f"attempt {attempt} of {len(waits) + 1}: {err.message}"
                if err.transient and attempt <= len(waits):
                    wait = waits[attempt - 1]
                    _log_line(out, f"{error}; trying again in {wait:g} s")
                    queue.started(token, status.with_(error=f"{error}; trying again"))
                    sleep(wait)
                    continue
                if err.transient:
                    error += f" (gave up after {attempt} attempts)"
                elif err.hint:
                    error += f" ({err.hint})"
                final = _failed(status, error)
                _log_line(out, f"failed: {error}")
                queue.finish(token, final)
                return final
            final = status.with_(state=RunState.SUCCEEDED, finished_at=now_iso())
            _log_line(out, f"run {status.run_id} finished: Jenkins has the build of {job}")
            queue.finish(token, final)
            return final
    raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover


def _follow(
    client: JenkinsClient, status: RunStatus, number: int, out: IO[bytes], follow_s: float
) -> RunStatus:
    """The run with its build's URL once the queue item became a build within
    ``follow_s``; as it is otherwise (the build is Jenkins' to run, queued or not)."""
    job = status.jenkins_job or ""
    try:
        build = client.wait_until_started(job, number, timeout=follow_s, poll=FOLLOW_POLL_S)
    except JenkinsError as err:
        _log_line(out, f"not following the queue item further: {err.message}")
        return status
    _log_line(out, f"started {build.job} #{build.number}: {build.url}")
    return status.with_(jenkins_build_url=build.url)
