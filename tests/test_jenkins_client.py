"""`trainchain jenkins ...` without a Jenkins: rendering (the real Jenkins Job Builder),
the comparison install decides with, the connection settings, and what a real
controller cannot be made to do on demand: refuse the connection, accept it and never
answer, answer 5xx, split a character between two reads of a console. Those last two
use a stand-in HTTP server on 127.0.0.1, and say so.

Everything else `trainchain jenkins` does is tested against the real Jenkins of the
jenkins tier: tests/test_jenkins_commands.py and tests/test_jenkins_live.py.
"""

from __future__ import annotations

import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import pytest

from trainchain.adapters.jenkins import (
    Build,
    Connection,
    JenkinsClient,
    keep_pipeline_state,
    same_config,
)
from trainchain.cli.main import main

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


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


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


# ---- the comparison install decides with ------------------------------------------------
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


def test_same_config_allows_what_xstream_leaves_out() -> None:
    """An empty value, and a field the class no longer has (JJB's legacy git fields),
    are left out when Jenkins saves a job: that is no change; a value is."""
    ours = (
        "<project><scm class='hudson.plugins.git.GitSCM'><remotePoll>false</remotePoll>"
        "<url>u</url></scm><defaultValue/><description>d</description></project>"
    )
    saved = "<project><scm class='hudson.plugins.git.GitSCM'><url>u</url></scm></project>"
    assert not same_config(ours, saved)  # the description is a value
    saved = saved.replace("</project>", "<description>d</description></project>")
    assert same_config(ours, saved)
    assert not same_config(ours.replace("<defaultValue/>", "<defaultValue>x</defaultValue>"), saved)
    other = saved.replace("hudson.plugins.git.GitSCM", "hudson.scm.NullSCM")
    assert not same_config(ours.replace("GitSCM", "NullSCM"), other)  # not a dropped field


REPOSITORY = """
        <hudson.model.StringParameterDefinition>
          <name>REPOSITORY</name><description>r</description><defaultValue/>
        </hudson.model.StringParameterDefinition>"""
NEW = """
        <hudson.model.StringParameterDefinition>
          <name>NEW</name><description>n</description><defaultValue>1</defaultValue>
        </hudson.model.StringParameterDefinition>"""


def pipeline_job(*parameters: str, script: str = "Jenkinsfile") -> str:
    """A Pipeline job's config.xml as JJB renders it."""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<flow-definition plugin="workflow-job">
  <properties>
    <hudson.model.ParametersDefinitionProperty>
      <parameterDefinitions>{"".join(parameters)}
      </parameterDefinitions>
    </hudson.model.ParametersDefinitionProperty>
  </properties>
  <definition class="org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition">
    <scriptPath>{script}</scriptPath>
  </definition>
</flow-definition>
"""


AFTER_A_BUILD = """<?xml version='1.1' encoding='UTF-8'?>
<flow-definition plugin="workflow-job@1400.v7fd111b_ec82f">
  <actions>
    <org.jenkinsci.plugins.pipeline.modeldefinition.actions.DeclarativeJobPropertyTrackerAction>
      <parameters><string>REPOSITORY</string></parameters>
    </org.jenkinsci.plugins.pipeline.modeldefinition.actions.DeclarativeJobPropertyTrackerAction>
  </actions>
  <properties>
    <hudson.model.ParametersDefinitionProperty>
      <parameterDefinitions>
        <hudson.model.StringParameterDefinition>
          <name>REPOSITORY</name><description>r</description>
          <defaultValue>https://git.example.com/m.git</defaultValue><trim>true</trim>
        </hudson.model.StringParameterDefinition>
      </parameterDefinitions>
    </hudson.model.ParametersDefinitionProperty>
  </properties>
  <definition class="org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition">
    <scriptPath>Jenkinsfile</scriptPath>
  </definition>
  <disabled>false</disabled>
</flow-definition>
"""


def test_a_pipelines_own_parameters_and_actions_are_kept() -> None:
    """What a Pipeline's builds wrote into its job (the Jenkinsfile's parameter definitions,
    declarative's actions) is kept in what install writes; parameters the builds have not
    defined yet and everything else are ours."""
    assert not same_config(pipeline_job(REPOSITORY), AFTER_A_BUILD)  # the default differs
    kept = keep_pipeline_state(pipeline_job(REPOSITORY), AFTER_A_BUILD)
    assert "<defaultValue>https://git.example.com/m.git</defaultValue>" in kept
    assert "DeclarativeJobPropertyTrackerAction" in kept
    assert same_config(kept, AFTER_A_BUILD)
    kept = keep_pipeline_state(pipeline_job(REPOSITORY, NEW), AFTER_A_BUILD)
    assert "<name>NEW</name>" in kept and not same_config(kept, AFTER_A_BUILD)
    kept = keep_pipeline_state(pipeline_job(REPOSITORY, script="ci/Jenkinsfile"), AFTER_A_BUILD)
    assert not same_config(kept, AFTER_A_BUILD)
    freestyle = "<project><description>d</description></project>"
    assert keep_pipeline_state(freestyle, AFTER_A_BUILD) == freestyle


# ---- what a real controller cannot be made to do -----------------------------------------
class StandIn(BaseHTTPRequestHandler):
    """A stand-in HTTP server's handler: GET answers from ``answers``, keyed by path, each
    a list of (status, headers, body) given out in turn (the last one repeats)."""

    answers: ClassVar[dict[str, list[tuple[int, dict[str, str], bytes]]]] = {}

    def do_GET(self) -> None:
        queue = self.answers.get(urlsplit(self.path).path) or [(404, {}, b"")]
        status, headers, body = queue.pop(0) if len(queue) > 1 else queue[0]
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def stand_in() -> Iterator[tuple[str, type[StandIn]]]:
    handler = type("Answers", (StandIn,), {"answers": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", handler
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_a_5xx_names_the_url_and_the_status(
    stand_in: tuple[str, type[StandIn]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A proxy answering 503 in front of a Jenkins that is down (a stand-in: Jenkins
    itself cannot be made to answer 5xx on demand): exit 10 with the URL and the status."""
    url, handler = stand_in
    handler.answers["/me/api/json"] = [(503, {}, b"<html>Service Unavailable</html>")]
    code, _, err = cli(
        capsys, "jenkins", "status", "x", "--url", url, "--user", "a", "--token", "t"
    )
    assert code == 10
    assert f"Jenkins answered HTTP 503 Service Unavailable to GET {url}me/api/json" in err
    assert "Jenkins log" in err


def test_the_console_stream_decodes_a_character_split_between_two_reads(
    stand_in: tuple[str, type[StandIn]],
) -> None:
    """A UTF-8 character whose bytes arrive in two reads of progressiveText is printed
    whole, once; each read starts where the last ended (a stand-in: Jenkins cannot be made
    to cut its log inside a character on demand)."""
    url, handler = stand_in
    chunks = [b"Started\ncaf\xc3", b"\xa9 au lait\n", b"Finished: SUCCESS\n"]
    sizes = [sum(len(c) for c in chunks[: i + 1]) for i in range(len(chunks))]
    handler.answers["/job/j/1/logText/progressiveText"] = [
        (200, {"X-Text-Size": str(size), "X-More-Data": str(i < 2).lower()}, chunk)
        for i, (chunk, size) in enumerate(zip(chunks, sizes, strict=True))
    ]
    written: list[str] = []
    with JenkinsClient(Connection(url, "a", "t")) as client:
        client.stream_console(
            Build("j", 1, f"{url}job/j/1/"),
            written.append,
            deadline=time.monotonic() + 30,
            poll=0.01,
        )
    assert "".join(written) == "Started\ncafé au lait\nFinished: SUCCESS\n"
    assert all("\ufffd" not in w for w in written)


# ---- errors ---------------------------------------------------------------------
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


def test_a_missing_token_names_the_variable(
    jobs_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --token and JENKINS_TOKEN, the error names JENKINS_TOKEN (exit 2)."""
    monkeypatch.setenv("JENKINS_URL", "http://127.0.0.1:9/")
    monkeypatch.setenv("JENKINS_USER", "alice")
    code, _, err = cli(capsys, "jenkins", "install", "--jobs", str(jobs_dir))
    assert code == 2 and "JENKINS_TOKEN is not set" in err
