"""`trainchain jenkins ...` as a user runs it, against tests/fake_jenkins.py.

A Jenkins server cannot run on this machine, so a stand-in HTTP server on 127.0.0.1
answers the documented Jenkins REST endpoints (see its docstring); rendering uses
the real Jenkins Job Builder, and the client is the real python-jenkins. The same
commands run against a real Jenkins in tests/test_jenkins_live.py.
"""

from __future__ import annotations

import json
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_jenkins import FakeJenkins, Script
from trainchain.cli import main
from trainchain.jenkins import same_config

JOBS_YAML = """
- job:
    name: demo-1-pull
    parameters:
      - string: {name: REPOSITORY, default: ""}
      - string: {name: COMMIT, default: main}
    builders:
      - shell: trainchain pull "$REPOSITORY" --ref "$COMMIT"
    publishers:
      - trigger-parameterized-builds:
          - project: demo-2-tune
            current-parameters: true
- job:
    name: demo-2-tune
    triggers:
      - timed: "H/5 * * * *"
    builders:
      - shell: trainchain tune .
- job:
    name: demo-pipeline
    project-type: pipeline
    dsl: "node {{ sh 'trainchain run .' }}"
"""

VIEW_YAML = """
- view:
    name: demo-chain
    view-type: pipeline
    first-job: demo-1-pull
"""

ALL = ["demo-1-pull", "demo-2-tune", "demo-pipeline", "demo-chain"]


@pytest.fixture(autouse=True)
def no_jenkins_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("JENKINS_URL", "JENKINS_USER", "JENKINS_TOKEN", "JENKINS_API_EXTRA_HEADERS"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    d = tmp_path / "jobs"
    d.mkdir()
    (d / "chain.yaml").write_text(textwrap.dedent(JOBS_YAML))
    (d / "view.yml").write_text(textwrap.dedent(VIEW_YAML))
    return d


@pytest.fixture
def fake() -> Iterator[FakeJenkins]:
    with FakeJenkins() as server:
        yield server


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def conn(fake: FakeJenkins) -> list[str]:
    return ["--url", fake.url, "--user", fake.user, "--token", fake.token]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- render ---------------------------------------------------------------------
def test_render_writes_one_file_per_job_and_view(
    jobs_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """render --out writes one file per job and view, named as `jenkins-jobs test -o`
    names them, and prints one line per file."""
    out = tmp_path / "out"
    code, stdout, _ = cli(capsys, "jenkins", "render", "--jobs", str(jobs_dir), "--out", str(out))
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL)
    assert stdout.splitlines() == [str(out / n) for n in ALL]
    assert "trainchain pull &quot;$REPOSITORY&quot;" in (out / "demo-1-pull").read_text()
    assert (out / "demo-pipeline").read_text().splitlines()[1].startswith("<flow-definition")
    assert "<firstJob>demo-1-pull</firstJob>" in (out / "demo-chain").read_text()


def test_render_prints_the_xml_without_out(
    jobs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """render without --out prints every item's XML, jobs then views."""
    code, stdout, _ = cli(capsys, "jenkins", "render", "--jobs", str(jobs_dir))
    assert code == 0
    assert stdout.count('<?xml version="1.0" encoding="utf-8"?>') == 4
    assert stdout.index("<flow-definition") < stdout.index("BuildPipelineView")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("- job:\n    name: x\n    builders:\n      - no-such-builder: 1\n", "no-such-builder"),
        ("- job:\n    name: x\n   builders: [\n", "expected <block end>"),
    ],
    ids=["unknown-module", "yaml-syntax"],
)
def test_render_bad_yaml_names_the_file_and_jjb_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, message: str
) -> None:
    """A job definition JJB rejects exits 2 with the file's path and JJB's message."""
    (tmp_path / "bad.yaml").write_text(yaml_text)
    code, _, err = cli(capsys, "jenkins", "render", "--jobs", str(tmp_path))
    assert code == 2
    assert str(tmp_path / "bad.yaml") in err and message in err


def test_render_without_definitions_says_pass_jobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --jobs folder that is missing, or holds no YAML, is an error with the hint."""
    code, _, err = cli(capsys, "jenkins", "render", "--jobs", str(tmp_path / "nope"))
    assert code == 2 and "pass --jobs DIR" in err
    code, _, err = cli(capsys, "jenkins", "render", "--jobs", str(tmp_path))
    assert code == 2 and "no job definitions" in err and "pass --jobs DIR" in err


# ---- install --------------------------------------------------------------------
def test_install_twice_changes_nothing_the_second_time(
    jobs_dir: Path, fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """install creates every job and view; run again, it reports all unchanged and
    posts nothing, although Jenkins serves the configs back re-written."""
    code, out, _ = cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))
    assert code == 0
    assert out.splitlines() == [f"created {n}" for n in ALL]
    assert set(fake.jobs) == set(ALL[:3]) and set(fake.views) == {"demo-chain"}
    assert fake.jobs["demo-2-tune"].startswith("<?xml version='1.1'")  # not our text

    before = len(fake.requests)
    code, out, _ = cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))
    assert code == 0
    assert out.splitlines() == [f"unchanged {n}" for n in ALL]
    assert [r for r in fake.requests[before:] if r.method == "POST"] == []


def test_install_updates_only_a_changed_definition(
    jobs_dir: Path, fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """A definition changed in jobs/ is reconfigured; the others are left alone."""
    assert cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))[0] == 0
    yaml_file = jobs_dir / "chain.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("trainchain tune .", "trainchain tune ./m"))
    before = len(fake.requests)
    code, out, _ = cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))
    assert code == 0
    assert out.splitlines() == [
        "unchanged demo-1-pull",
        "updated demo-2-tune",
        "unchanged demo-pipeline",
        "unchanged demo-chain",
    ]
    posts = [r.path for r in fake.requests[before:] if r.method == "POST"]
    assert posts == ["/job/demo-2-tune/config.xml"]
    assert "trainchain tune ./m" in fake.jobs["demo-2-tune"]


def test_install_restores_a_job_edited_on_the_server(
    jobs_dir: Path, fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job edited by hand in Jenkins is put back to its definition."""
    assert cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))[0] == 0
    fake.jobs["demo-2-tune"] = fake.jobs["demo-2-tune"].replace("tune .", "tune --max-trials 1 .")
    code, out, _ = cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))
    assert code == 0 and "updated demo-2-tune" in out.splitlines()
    assert "--max-trials" not in fake.jobs["demo-2-tune"]


def test_same_config_reads_through_jenkins_rewriting() -> None:
    """The comparison ignores what Jenkins adds on storing, and sees real changes."""
    ours = (
        '<?xml version="1.0" encoding="utf-8"?>\n<project><description>d</description>'
        "<builders><hudson.tasks.Shell><command>a</command></hudson.tasks.Shell></builders>"
        '<wrap plugin="ws-cleanup"/><triggers class="vector"><t>x</t></triggers></project>'
    )
    stored = (
        "<?xml version='1.1' encoding='UTF-8'?>\n<project>\n  <wrap plugin='ws-cleanup@0.48'/>"
        "\n  <builders>\n    <hudson.tasks.Shell>\n      <command>a</command>\n"
        "    </hudson.tasks.Shell>\n  </builders>\n  <description>d</description>\n"
        "  <disabled>false</disabled>\n  <triggers>\n    <t>x</t>\n  </triggers>\n"
        "  <buildWrappers/>\n</project>"
    )
    assert same_config(ours, stored)
    assert not same_config(ours, stored.replace("<command>a<", "<command>b<"))
    extra_builder = "<hudson.tasks.Shell><command>x</command></hudson.tasks.Shell></builders>"
    assert not same_config(ours, stored.replace("</builders>", extra_builder))
    extra_block = "<publishers><p><x>1</x></p></publishers></project>"
    assert not same_config(ours, stored.replace("</project>", extra_block))
    assert not same_config(ours, stored.replace("ws-cleanup@0.48", "other@0.48"))
    assert not same_config(ours, "not xml")


# ---- trigger --------------------------------------------------------------------
def test_trigger_sends_the_parameters_and_prints_the_queue_item(
    jobs_dir: Path, fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """trigger --param queues a build with those parameters and prints its queue item."""
    assert cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))[0] == 0
    code, out, _ = cli(
        capsys,
        "jenkins",
        "trigger",
        "demo-1-pull",
        "--param",
        "REPOSITORY=https://git.example.com/m.git",
        "--param",
        "COMMIT=v1=rc",
        *conn(fake),
    )
    assert code == 0
    assert out.strip() == f"queued demo-1-pull: {fake.url}queue/item/100/"
    (post,) = fake.posts_to("/build")
    assert post.path == "/job/demo-1-pull/buildWithParameters"
    assert post.query == {"REPOSITORY": ["https://git.example.com/m.git"], "COMMIT": ["v1=rc"]}


def test_trigger_with_defaults_only_and_unknown_parameters(
    jobs_dir: Path, fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """A parameterized job triggered without --param takes its defaults; a parameter
    the job does not have is refused before anything is queued."""
    assert cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))[0] == 0
    code, _, _ = cli(
        capsys, "jenkins", "trigger", "demo-1-pull", "--wait", "--poll", "0.01", *conn(fake)
    )
    assert code == 0
    assert fake.builds["demo-1-pull"][0].params == {"REPOSITORY": "", "COMMIT": "main"}

    code, _, err = cli(
        capsys, "jenkins", "trigger", "demo-1-pull", "--param", "REPO=x", *conn(fake)
    )
    assert code == 10 and "has no parameter REPO" in err and "REPOSITORY, COMMIT" in err
    code, _, err = cli(capsys, "jenkins", "trigger", "demo-2-tune", "--param", "A=1", *conn(fake))
    assert code == 10 and "takes no parameters" in err
    assert len(fake.queue) == 1


@pytest.mark.parametrize(
    ("result", "exit_code"),
    [("SUCCESS", 0), ("UNSTABLE", 3), ("FAILURE", 1), ("ABORTED", 130), ("NOT_BUILT", 1)],
)
def test_follow_streams_the_console_once_and_exits_with_the_result(
    jobs_dir: Path,
    fake: FakeJenkins,
    capsys: pytest.CaptureFixture[str],
    result: str,
    exit_code: int,
) -> None:
    """--follow prints the whole console exactly once, in order, as it grows (a
    character split between two reads included), then exits with the build's result."""
    assert cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))[0] == 0
    chunks = [
        b"Started by user alice\n",
        b"[trainchain] trial 0: val_accuracy 0.71\n",
        b"caf\xc3",  # a UTF-8 character split between two reads
        b"\xa9 au lait\n",
        f"Finished: {result}\n".encode(),
    ]
    fake.scripts["demo-2-tune"] = Script(console=chunks, result=result, queue_polls=2)
    fake.root_url = "http://jenkins.example.invalid/"  # what Jenkins calls itself
    code, out, _ = cli(
        capsys, "jenkins", "trigger", "demo-2-tune", "--follow", "--poll", "0.01", *conn(fake)
    )
    assert code == exit_code
    console = b"".join(chunks).decode("utf-8")
    assert out.count(console) == 1
    for line in console.splitlines():
        assert out.count(line) == 1
    assert "waiting: Waiting for next available executor" in out
    assert out.index("started demo-2-tune #1") < out.index(console)
    assert out.rstrip().endswith(
        f"demo-2-tune #1: {result} in 1m 23s (http://jenkins.example.invalid/job/demo-2-tune/1/)"
    )
    reads = [r for r in fake.requests if r.path.endswith("/logText/progressiveText")]
    starts = [int(r.query["start"][0]) for r in reads]
    sizes = [sum(len(c) for c in chunks[:i]) for i in range(len(chunks))]
    assert starts == sizes  # one read per new chunk, each from where the last ended


def test_wait_prints_the_result_without_the_console(
    jobs_dir: Path, fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """--wait waits for the build and prints its result, not its console."""
    assert cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))[0] == 0
    fake.scripts["demo-2-tune"] = Script(console=[b"secret step\n", b"done\n"], result="UNSTABLE")
    code, out, _ = cli(
        capsys, "jenkins", "trigger", "demo-2-tune", "--wait", "--poll", "0.01", "-q", *conn(fake)
    )
    assert code == 3
    assert "secret step" not in out
    assert out.splitlines() == [
        f"demo-2-tune #1: UNSTABLE in 1m 23s ({fake.url}job/demo-2-tune/1/)"
    ]


def test_a_cancelled_queue_item_is_a_clear_error(
    jobs_dir: Path, fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build cancelled while queued ends the wait with a message saying so."""
    assert cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))[0] == 0
    fake.scripts["demo-2-tune"] = Script(cancel=True)
    code, _, err = cli(
        capsys, "jenkins", "trigger", "demo-2-tune", "--wait", "--poll", "0.01", *conn(fake)
    )
    assert code == 10
    assert "cancelled in the queue" in err and f"{fake.url}queue/item/100/" in err


def test_a_build_that_stays_queued_ends_the_wait_with_the_reason(
    jobs_dir: Path, fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """A build that never leaves the queue ends the wait at --queue-timeout with Jenkins'
    reason, and says the item stays queued."""
    assert cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir), *conn(fake))[0] == 0
    fake.scripts["demo-2-tune"] = Script(queue_polls=None)
    code, _, err = cli(
        capsys,
        "jenkins",
        "trigger",
        "demo-2-tune",
        "--follow",
        "--queue-timeout",
        "0.2",
        "--poll",
        "0.02",
        *conn(fake),
    )
    assert code == 10
    assert "still queued after 0.2 s: Waiting for next available executor" in err
    assert "agent" in err and "stays queued" in err


# ---- errors ---------------------------------------------------------------------
def test_a_wrong_token_names_the_url_and_401(
    jobs_dir: Path, fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong API token exits 10 naming the URL, HTTP 401 and the variables to check,
    and the token is printed nowhere."""
    wrong = "s3cr3t-wrong-token"
    for command in (["install", "--jobs", str(jobs_dir)], ["trigger", "demo-2-tune"]):
        code, out, err = cli(
            capsys, "jenkins", *command, "--url", fake.url, "--user", "alice", "--token", wrong
        )
        assert code == 10
        assert "HTTP 401" in err and fake.url in err and "user 'alice'" in err
        assert "JENKINS_TOKEN" in err and "JENKINS_USER" in err
        assert wrong not in out + err
    assert fake.jobs == {}


def test_an_unreachable_url_is_a_clear_error(
    jobs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listening at the URL: exit 10, the URL, and that Jenkins must be up."""
    url = f"http://127.0.0.1:{closed_port()}/"
    code, _, err = cli(
        capsys,
        "jenkins",
        "install",
        "--jobs",
        str(jobs_dir),
        "--url",
        url,
        "--user",
        "a",
        "--token",
        "t",
    )
    assert code == 10
    assert f"cannot connect to Jenkins at {url} (connection refused)" in err
    assert "Jenkins is up" in err


def test_a_server_that_does_not_answer_times_out(
    jobs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that accepts the connection but never answers ends at --timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # connections queue up; nobody answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        code, _, err = cli(
            capsys,
            "jenkins",
            "status",
            "demo-1-pull",
            "--timeout",
            "0.3",
            "--url",
            url,
            "--user",
            "a",
            "--token",
            "t",
        )
    assert code == 10
    assert "no answer from Jenkins within 0.3 s" in err and url in err


def test_a_job_that_does_not_exist_says_to_install(
    fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """Triggering a job Jenkins does not have: 404, its URL, and the hint to install."""
    code, _, err = cli(capsys, "jenkins", "trigger", "trainchain-9-nope", *conn(fake))
    assert code == 10
    assert "HTTP 404" in err and f"{fake.url}job/trainchain-9-nope/api/json" in err
    assert "trainchain jenkins install" in err


def test_a_missing_token_names_the_variable(
    jobs_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --token and JENKINS_TOKEN, the error names JENKINS_TOKEN (exit 2)."""
    monkeypatch.setenv("JENKINS_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("JENKINS_USER", "alice")
    code, _, err = cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir))
    assert code == 2 and "JENKINS_TOKEN is not set" in err


# ---- status ---------------------------------------------------------------------
def test_status_shows_each_jobs_last_build(
    jobs_dir: Path,
    fake: FakeJenkins,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """status lists every defined job's last build (number, result, duration, building),
    as a table or JSON, with the connection from the environment."""
    monkeypatch.setenv("JENKINS_URL", fake.url)
    monkeypatch.setenv("JENKINS_USER", fake.user)
    monkeypatch.setenv("JENKINS_TOKEN", fake.token)
    assert cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir))[0] == 0
    fake.scripts["demo-2-tune"] = Script(result="FAILURE")
    assert cli(capsys, "jenkins", "trigger", "demo-2-tune", "--wait", "--poll", "0.01")[0] == 1

    code, out, _ = cli(capsys, "jenkins", "status", "--jobs", str(jobs_dir), "--json")
    assert code == 0
    rows = {r["job"]: r for r in json.loads(out)}
    assert list(rows) == ["demo-1-pull", "demo-2-tune", "demo-pipeline"]
    assert rows["demo-2-tune"] | {"url": None} == {
        "job": "demo-2-tune",
        "exists": True,
        "in_queue": False,
        "last_build": 1,
        "result": "FAILURE",
        "building": False,
        "duration_s": 83.0,
        "url": None,
    }
    assert rows["demo-1-pull"]["last_build"] is None

    code, out, _ = cli(capsys, "jenkins", "status", "--jobs", str(jobs_dir))
    assert code == 0
    line = next(x for x in out.splitlines() if "demo-2-tune" in x)
    assert "#1" in line and "FAILURE" in line and "1m 23s" in line
    assert "never built" in next(x for x in out.splitlines() if "demo-1-pull" in x)


def test_status_of_a_job_not_on_the_server(
    fake: FakeJenkins, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job missing on the server shows as not installed, and status exits 1 with the hint."""
    code, out, err = cli(capsys, "jenkins", "status", "trainchain-1-pull", *conn(fake))
    assert code == 1
    assert "not installed" in out and "trainchain jenkins install" in err
