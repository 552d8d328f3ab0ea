"""`trainchain jenkins install|trigger|status` against the real Jenkins of the jenkins
tier (tests/jenkins_real.py), with small jobs of their own.

The jobs here are named ``selftest-*``; they echo, exit as asked, or wait for a label
no node has. What a real controller cannot be made to do on demand (never answer,
refuse the connection, answer 5xx) is in tests/test_jenkins_client.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually, run_cli
from tests.jenkins_real import AGENT, Live, parameters, start_trainchain
from tests.jenkins_real import wait_done as finished_process

pytestmark = pytest.mark.jenkins

JOBS_YAML = """
- job:
    name: selftest-echo
    description: A trainchain self-test job (tests/test_jenkins_commands.py).
    parameters:
      - string: {name: GREETING, default: hello}
      - choice: {name: OUTCOME, choices: [pass, unstable, fail]}
    builders:
      - shell:
          command: |
            echo "selftest says $GREETING"
            for i in 1 2 3; do echo "line $i"; done
            case "$OUTCOME" in unstable) exit 3 ;; fail) exit 1 ;; esac
          unstable-return: 3
- job:
    name: selftest-nowhere
    description: A trainchain self-test job that no node can run.
    node: no-such-label
    builders:
      - shell: "true"
"""

VIEW_YAML = """
- view:
    name: selftest-view
    view-type: list
    job-name: [selftest-echo, selftest-nowhere]
"""

ITEMS = ["selftest-echo", "selftest-nowhere", "selftest-view"]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("selftest-jobs")
    (folder / "jobs.yaml").write_text(JOBS_YAML)
    (folder / "view.yaml").write_text(VIEW_YAML)
    return folder


@pytest.fixture(scope="module")
def live(live_jenkins: Live, jobs: Path) -> Iterator[Live]:
    """The controller with the selftest jobs installed; they are deleted afterwards."""
    first = cli(live_jenkins, "install", "--jobs", str(jobs))
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"created {name}" for name in ITEMS]
    yield live_jenkins
    for name in ITEMS[:2]:
        live_jenkins.controller.post(f"job/{name}/doDelete")
    live_jenkins.controller.post("view/selftest-view/doDelete")


def cli(
    live: Live, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`trainchain jenkins ARGS` with the controller's connection (or ``env``'s)."""
    return run_cli("jenkins", *args, env=env if env is not None else live.controller.env)


def trigger(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(live, "trigger", *args, "--poll", "0.5", "--timeout", "300")


# ---- install ----------------------------------------------------------------------------
def test_install_again_changes_nothing_then_only_what_changed(live: Live, jobs: Path) -> None:
    """A second install finds every item unchanged; a changed definition, and a job
    edited by hand on the server, are each put back and nothing else is touched."""
    out = cli(live, "install", "--jobs", str(jobs))
    assert out.stdout.splitlines() == [f"unchanged {name}" for name in ITEMS]

    changed = jobs.parent / "changed"
    shutil.copytree(jobs, changed)
    yaml = changed / "jobs.yaml"
    yaml.write_text(yaml.read_text().replace("for i in 1 2 3", "for i in 1 2 3 4"))
    out = cli(live, "install", "--jobs", str(changed))
    assert out.stdout.splitlines() == [
        "updated selftest-echo",
        "unchanged selftest-nowhere",
        "unchanged selftest-view",
    ]
    assert "for i in 1 2 3 4" in live.controller.get("job/selftest-echo/config.xml").text

    edited = live.controller.get("job/selftest-nowhere/config.xml").text
    live.controller.post(
        "job/selftest-nowhere/config.xml",
        data=edited.replace("<command>true</command>", "<command>false</command>").encode(),
        headers={"Content-Type": "application/xml"},
    )
    out = cli(live, "install", "--jobs", str(jobs))
    assert out.stdout.splitlines() == [
        "updated selftest-echo",
        "updated selftest-nowhere",
        "unchanged selftest-view",
    ]
    assert "<command>true</command>" in live.controller.get("job/selftest-nowhere/config.xml").text


# ---- trigger ----------------------------------------------------------------------------
def test_follow_streams_the_console_once_and_exits_0(live: Live) -> None:
    """trigger --param --follow: the build gets the parameter, the console is printed
    once as it is in Jenkins, and the exit status is 0 for SUCCESS."""
    before = live.controller.last_build("selftest-echo")
    out = trigger(live, "selftest-echo", "--param", "GREETING=bonjour", "--follow")
    assert out.returncode == 0, out.stderr
    number = before + 1
    console = live.controller.console("selftest-echo", number)
    start = out.stdout.index("\n", out.stdout.index(f"started selftest-echo #{number}:")) + 1
    assert out.stdout[start:].startswith(console)
    assert out.stdout.count("selftest says bonjour") == console.count("selftest says bonjour")
    assert "\r" not in out.stdout
    assert out.stdout.splitlines()[-1].startswith(f"selftest-echo #{number}: SUCCESS in ")
    build = live.controller.build("selftest-echo", number)
    assert parameters(build) == {"GREETING": "bonjour", "OUTCOME": "pass"}
    assert build["builtOn"] == AGENT


@pytest.mark.parametrize(
    ("outcome", "result", "code"), [("unstable", "UNSTABLE", 3), ("fail", "FAILURE", 1)]
)
def test_wait_prints_only_the_result_and_exits_with_it(
    live: Live, outcome: str, result: str, code: int
) -> None:
    """trigger --wait -q prints the result line, not the console, and exits 3 for
    UNSTABLE and 1 for FAILURE."""
    number = live.controller.last_build("selftest-echo") + 1
    out = trigger(live, "selftest-echo", "--param", f"OUTCOME={outcome}", "--wait", "-q")
    assert out.returncode == code, out.stderr
    assert len(out.stdout.splitlines()) == 1
    assert out.stdout.startswith(f"selftest-echo #{number}: {result} in ")


def test_trigger_without_parameters_takes_the_defaults(live: Live) -> None:
    """A parameterized job triggered without --param runs with its defaults."""
    number = live.controller.last_build("selftest-echo") + 1
    out = trigger(live, "selftest-echo", "--wait")
    assert out.returncode == 0, out.stderr
    build = live.controller.build("selftest-echo", number)
    assert parameters(build) == {"GREETING": "hello", "OUTCOME": "pass"}


def test_an_unknown_parameter_is_refused_before_anything_is_queued(live: Live) -> None:
    """A parameter the job does not have: exit 10 naming the job's parameters; no build."""
    before = live.controller.last_build("selftest-echo")
    out = trigger(live, "selftest-echo", "--param", "GREET=hi", "--wait")
    assert out.returncode == 10
    assert "has no parameter GREET: its parameters are GREETING, OUTCOME" in out.stderr
    out = trigger(live, "selftest-nowhere", "--param", "A=1")
    assert out.returncode == 10 and "takes no parameters" in out.stderr
    assert live.controller.last_build("selftest-echo") == before
    assert queued_item(live, "selftest-nowhere") == 0


def queued_item(live: Live, job: str) -> int:
    items = live.controller.json("queue", tree="items[id,task[name]]")["items"]
    ids = [int(i["id"]) for i in items if i["task"].get("name") == job]
    return ids[0] if ids else 0


def test_a_build_that_stays_queued_ends_the_wait_with_jenkins_reason(live: Live) -> None:
    """No node has the job's label: --queue-timeout ends the wait with exit 10 and
    Jenkins' own reason, and says the item stays queued."""
    try:
        out = trigger(live, "selftest-nowhere", "--wait", "--queue-timeout", "3")
        assert out.returncode == 10
        assert "still queued after 3 s: " in out.stderr and "no-such-label" in out.stderr
        assert "stays queued" in out.stderr
    finally:
        if item := queued_item(live, "selftest-nowhere"):
            live.controller.post("queue/cancelItem", params={"id": item})


def test_a_build_cancelled_in_the_queue_is_a_clear_error(live: Live) -> None:
    """The queue item cancelled in Jenkins while trigger waits: exit 10, saying so."""
    proc = start_trainchain(
        live.controller.env,
        *("jenkins", "trigger", "selftest-nowhere", "--wait", "--poll", "0.5"),
        *("--queue-timeout", "120"),
    )
    item = eventually(lambda: queued_item(live, "selftest-nowhere"), "the queue item", 60)
    live.controller.post("queue/cancelItem", params={"id": item})
    code, _, err = finished_process(proc, 60)
    assert code == 10
    assert "was cancelled in the queue" in err and f"queue/item/{item}/" in err


# ---- errors -------------------------------------------------------------------------------
def test_a_wrong_token_is_refused_with_401_and_never_printed(live: Live, jobs: Path) -> None:
    """A wrong API token: exit 10 naming the URL, HTTP 401 and what to check; the token
    appears nowhere."""
    wrong = "11aa22bb33cc44dd55ee66ff77aa88bb99"
    env = {**live.controller.env, "JENKINS_TOKEN": wrong}
    for command in (["install", "--jobs", str(jobs)], ["trigger", "selftest-echo"], ["status"]):
        out = cli(live, *command, env=env)
        assert out.returncode == 10, command
        assert "HTTP 401" in out.stderr and live.controller.url in out.stderr
        assert "JENKINS_TOKEN" in out.stderr and "JENKINS_USER" in out.stderr
        assert wrong not in out.stdout + out.stderr


def test_a_job_that_does_not_exist_says_to_install(live: Live) -> None:
    """Triggering a job Jenkins does not have: 404, its URL, and the hint to install."""
    out = trigger(live, "trainchain-9-nope")
    assert out.returncode == 10
    assert "HTTP 404" in out.stderr and "job/trainchain-9-nope/api/json" in out.stderr
    assert "trainchain jenkins install" in out.stderr


# ---- status ---------------------------------------------------------------------------------
def test_status_shows_each_jobs_last_build(live: Live, jobs: Path) -> None:
    """status lists each job's last build (number, result, duration), as JSON or a table;
    a job never built says so; a job not on the server exits 1 with the hint."""
    number = live.controller.last_build("selftest-echo") + 1
    assert trigger(live, "selftest-echo", "--param", "OUTCOME=fail", "--wait").returncode == 1
    out = cli(live, "status", "--jobs", str(jobs), "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["job"]: r for r in json.loads(out.stdout)}
    assert list(rows) == ["selftest-echo", "selftest-nowhere"]
    echo = rows["selftest-echo"]
    assert (echo["last_build"], echo["result"], echo["building"]) == (number, "FAILURE", False)
    assert echo["url"] == f"{live.controller.url}job/selftest-echo/{number}/"
    assert 0 < echo["duration_s"] < 300
    assert rows["selftest-nowhere"]["last_build"] is None

    out = cli(live, "status", "--jobs", str(jobs))
    line = next(x for x in out.stdout.splitlines() if "selftest-echo" in x)
    assert f"#{number}" in line and "FAILURE" in line
    assert "never built" in next(x for x in out.stdout.splitlines() if "selftest-nowhere" in x)

    out = cli(live, "status", "selftest-missing")
    assert out.returncode == 1
    assert "not installed" in out.stdout and "trainchain jenkins install" in out.stderr
