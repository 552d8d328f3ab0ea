"""The Jenkins side: jobs/ (Jenkins Job Builder YAML) and the Jenkinsfile.

No Jenkins runs here, so these tests hold the definitions to what Jenkins will be
given: the XML JJB renders (compared with reviewed copies, then read for the
chain's structure), and every `trainchain` command line in a shell step, expanded
by a real `sh` and parsed by the real CLI parser, so the jobs stay in step with it.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import itertools
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from trainchain.cli.main import build_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
JOBS = REPO_ROOT / "jobs"
EXPECTED = REPO_ROOT / "tests" / "expected" / "jobs"
JENKINSFILE = REPO_ROOT / "Jenkinsfile"

CHAIN = [
    "trainchain-1-pull",
    "trainchain-2-detect",
    "trainchain-3-train",
    "trainchain-4-tune",
    "trainchain-5-notify",
]
WATCHDOG = "trainchain-6-watchdog"
FREESTYLE = [*CHAIN, WATCHDOG]
VIEW = "trainchain-chain"
PIPELINE = "trainchain-pipeline"

# What each job writes with `--properties trainchain.properties` (the CLI's contract).
WRITES = {
    "trainchain-1-pull": {"REPOSITORY", "COMMIT"},
    "trainchain-2-detect": {"FAMILY", "IMAGE"},
    "trainchain-3-train": {"RUN_ID"},
    "trainchain-4-tune": {"CHAIN", "STATUS"},
}

# Values a build would have: parameters, and what upstream jobs or stages wrote.
SAMPLE_ENV = {
    "REPOSITORY": "https://github.com/example/eeg-model.git",
    "COMMIT": "0123456789abcdef0123456789abcdef01234567",
    "MODEL_COMMIT": "0123456789abcdef0123456789abcdef01234567",
    "SUBDIR": "models/motor imagery",
    "FAMILY": "eeg",
    "IMAGE": "trainchain/eeg:0.1.0",
    "RUN_ID": "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e",
    "CHAIN": "eeg-motor-20250101-120000",
    "STATUS": "succeeded",
    "THRESHOLD": "0.8",
    "MAX_TRIALS": "12",
    "WORKERS": "3",
}

# The tuning step as the Jenkinsfile runs it in each branch: WORKER 1 leads, 2.. join.
LEADER, JOINER = {"WORKER": "1"}, {"WORKER": "2"}
WORKER_ENVS = (LEADER, JOINER, {"WORKER": "12"})

PT = "hudson.plugins.parameterizedtrigger."

# A shell function stands in for the trainchain program: it records each call's
# arguments exactly as the shell expanded them (fields \x1f, calls \x1e).
_STUB = 'trainchain() { printf "%s\\037" "$@"; printf "\\036"; }\n'


# ---- helpers ----------------------------------------------------------------------
def _render(out: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONWARNINGS": "ignore", "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "jenkins_jobs", "-l", "error", "test", str(JOBS), "-o", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    proc = _render(out, tmp_path_factory.mktemp("jjb-cache"))
    assert proc.returncode == 0, f"jenkins-jobs test failed:\n{proc.stderr}"
    return out


def _xml(rendered: Path, name: str) -> ET.Element:
    return ET.parse(rendered / name).getroot()  # noqa: S314 - XML we rendered ourselves


def _shell_steps(job: ET.Element) -> list[ET.Element]:
    return job.findall("./builders/hudson.tasks.Shell")


def _parameters(job: ET.Element) -> list[str]:
    defs = job.find("./properties/hudson.model.ParametersDefinitionProperty/parameterDefinitions")
    return [] if defs is None else [d.findtext("name", "") for d in defs]


def _triggers(job: ET.Element) -> list[ET.Element]:
    return job.findall(f"./publishers/{PT}BuildTrigger/configs/{PT}BuildTriggerConfig")


def _calls(script: str, env: dict[str, str]) -> tuple[int, list[list[str]]]:
    """Run a shell step as Jenkins does (`sh -xe`), trainchain stubbed; its calls' argv.

    Like Jenkins 2.448 with a freestyle build, a parameter whose value is the empty
    string is left out of the environment (measured on the real controller)."""
    proc = subprocess.run(
        ["sh", "-xe", "-c", _STUB + script],
        env={"PATH": os.environ["PATH"], **{k: v for k, v in env.items() if v}},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    calls = [record.split("\x1f")[:-1] for record in proc.stdout.split("\x1e")[:-1]]
    return proc.returncode, calls


def _parse_error(argv: list[str]) -> str | None:
    """None when the real CLI parser accepts `trainchain ARGV`, else why not."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(argv)
    except SystemExit:
        return f"`trainchain {shlex.join(argv)}`: {err.getvalue().strip()}"
    return None


# Groovy: `sh '...'`, `sh(script: '''...''')`, `sh(returnStatus: true, script: '''...''')`.
_SH_STEP = re.compile(
    r"\bsh\s*(?:\(\s*(?:returnStatus:\s*true\s*,\s*)?script:\s*)?"
    r"(?:'''(?P<long>.*?)'''|'(?P<short>[^'\n]*)')",
    re.S,
)


def _jenkinsfile_sh_scripts() -> list[str]:
    text = JENKINSFILE.read_text()
    scripts = [
        # in a ''' string, a backslash before a newline joins the lines (Groovy)
        (m["long"] if m["long"] is not None else m["short"]).replace("\\\n", "")
        for m in _SH_STEP.finditer(text)
    ]
    # every sh step is a single-quoted literal: the shell expands the parameters,
    # Groovy never interpolates them into a command
    assert len(scripts) == len(re.findall(r"\bsh\s*[('\"]", text)), "an sh step is not '...'"
    return scripts


def _jenkinsfile_parameters() -> list[tuple[str, str, str]]:
    """(kind, name, description) of each parameter the Jenkinsfile declares, in order."""
    found = []
    calls = re.findall(r"\b(string|choice)\(name: '(\w+)',(.*?)\)\n", JENKINSFILE.read_text(), re.S)
    for kind, name, rest in calls:
        description = re.search(r"description: (['\"])(.*?)\1", rest, re.S)
        assert description, f"parameter {name} has no description"
        found.append((kind, name, description[2]))
    return found


# ---- the rendered XML is the reviewed XML -----------------------------------------
def test_render_is_byte_identical_to_the_reviewed_xml(rendered: Path) -> None:
    """jobs/ renders exactly the files in tests/expected/jobs, each byte for byte."""
    got = sorted(p.name for p in rendered.iterdir())
    want = sorted(p.name for p in EXPECTED.iterdir() if p.name != "README.md")
    assert got == want
    assert got == sorted([*FREESTYLE, VIEW, PIPELINE])
    for name in got:
        new, old = (rendered / name).read_bytes(), (EXPECTED / name).read_bytes()
        if new != old:
            diff = difflib.unified_diff(
                old.decode().splitlines(),
                new.decode().splitlines(),
                f"expected/{name}",
                f"rendered/{name}",
                lineterm="",
            )
            pytest.fail(
                "rendered XML differs from the reviewed copy; review, then regenerate "
                "(tests/expected/jobs/README.md):\n" + "\n".join(diff)
            )


# ---- the chain's structure ------------------------------------------------------------
def test_the_six_jobs_are_freestyle_the_view_and_pipeline_job_have_their_types(
    rendered: Path,
) -> None:
    """Six freestyle jobs, a Build Pipeline view and a Pipeline (workflow) job."""
    for number, name in enumerate(FREESTYLE, start=1):
        job = _xml(rendered, name)
        assert job.tag == "project", name
        assert job.findtext("description", "").startswith(f"Job {number} of the trainchain chain")
    assert _xml(rendered, VIEW).tag.endswith("buildpipeline.BuildPipelineView")
    assert _xml(rendered, PIPELINE).tag == "flow-definition"


def test_each_job_triggers_the_next_with_its_parameters_and_properties(rendered: Path) -> None:
    """1->2->3->4 on SUCCESS needing the properties file; 4->5 ALWAYS without needing it;
    every trigger passes the current parameters plus trainchain.properties."""
    conditions = ["SUCCESS", "SUCCESS", "SUCCESS", "ALWAYS"]
    for (upstream, downstream), condition in zip(
        itertools.pairwise(CHAIN), conditions, strict=True
    ):
        (trigger,) = _triggers(_xml(rendered, upstream))
        assert trigger.findtext("projects") == downstream
        assert trigger.findtext("condition") == condition
        configs = trigger.find("configs")
        assert configs is not None
        assert configs.find(f"{PT}CurrentBuildParameters") is not None, upstream
        file_params = configs.find(f"{PT}FileBuildParameters")
        assert file_params is not None, upstream
        assert file_params.findtext("propertiesFile") == "trainchain.properties"
        must_exist = "false" if condition == "ALWAYS" else "true"
        assert file_params.findtext("failTriggerOnMissing") == must_exist, upstream
    for last in (CHAIN[-1], WATCHDOG):
        assert _triggers(_xml(rendered, last)) == []


def test_each_downstream_job_declares_every_parameter_it_receives(rendered: Path) -> None:
    """Jenkins drops undeclared parameters: a downstream job declares its upstream's
    parameters and every key its upstream writes to trainchain.properties."""
    assert _parameters(_xml(rendered, CHAIN[0]))[:3] == ["REPOSITORY", "COMMIT", "SUBDIR"]
    for upstream, downstream in itertools.pairwise(CHAIN):
        received = set(_parameters(_xml(rendered, upstream))) | WRITES[upstream]
        assert received <= set(_parameters(_xml(rendered, downstream))), downstream
    defaults = {
        p.findtext("name"): p.findtext("defaultValue") or ""
        for p in _xml(rendered, CHAIN[0]).iter("hudson.model.StringParameterDefinition")
    }
    assert defaults == {
        "REPOSITORY": "",
        "COMMIT": "main",
        "SUBDIR": "",
        "REASON": "",
        "WORKERS": "1",
    }
    assert _parameters(_xml(rendered, WATCHDOG)) == []


def test_training_and_watchdog_jobs_run_on_docker_agents(rendered: Path) -> None:
    """Jobs 3, 4 and 6 are pinned to the `docker` label; 1, 2 and 5 run on any agent."""
    for name in ("trainchain-3-train", "trainchain-4-tune", WATCHDOG):
        job = _xml(rendered, name)
        assert job.findtext("assignedNode") == "docker", name
        assert job.findtext("canRoam") == "false", name
    for name in ("trainchain-1-pull", "trainchain-2-detect", "trainchain-5-notify"):
        assert _xml(rendered, name).find("assignedNode") is None, name


def test_tuning_and_watchdog_run_one_at_a_time_and_watchdog_every_five_minutes(
    rendered: Path,
) -> None:
    """Job 4 and job 6 never run concurrently; job 6 has a timer trigger H/5."""
    for name in ("trainchain-4-tune", WATCHDOG):
        assert _xml(rendered, name).findtext("concurrentBuild") == "false", name
    specs = [
        t.findtext("spec") for t in _xml(rendered, WATCHDOG).iter("hudson.triggers.TimerTrigger")
    ]
    assert specs == ["H/5 * * * *"]


def test_goal_not_reached_marks_the_tune_job_unstable(rendered: Path) -> None:
    """Job 4's shell step turns exit status 3 (goal not reached) into UNSTABLE, not FAILURE."""
    (step,) = _shell_steps(_xml(rendered, "trainchain-4-tune"))
    assert step.findtext("unstableReturn") == "3"


def test_every_job_has_timestamps_a_timeout_history_limits_and_a_failure_email(
    rendered: Path,
) -> None:
    """Timestamps, a failing timeout (long for 3 and 4, short otherwise), a build
    discarder, a stale-properties cleanup, and an email-ext failure backstop with the end
    of the console, on all six."""
    for name in FREESTYLE:
        job = _xml(rendered, name)
        wrappers = job.find("buildWrappers")
        assert wrappers is not None
        assert wrappers.find("hudson.plugins.timestamper.TimestamperBuildWrapper") is not None
        timeout = wrappers.find("hudson.plugins.build__timeout.BuildTimeoutWrapper")
        assert timeout is not None, name
        minutes = int(timeout.findtext("strategy/timeoutMinutes", "0"))
        long_job = name in ("trainchain-3-train", "trainchain-4-tune")
        assert minutes >= 240 if long_job else 0 < minutes <= 30, (name, minutes)
        assert (
            timeout.find("operationList/hudson.plugins.build__timeout.operations.FailOperation")
            is not None
        )
        cleanup = wrappers.findtext("hudson.plugins.ws__cleanup.PreBuildCleanup/patterns/*/pattern")
        assert cleanup == "trainchain.properties", name
        rotator = job.find("properties/jenkins.model.BuildDiscarderProperty/strategy")
        assert rotator is not None, name
        assert (rotator.findtext("numToKeep"), rotator.findtext("artifactNumToKeep")) == (
            "30",
            "10",
        )
        email = job.find("publishers/hudson.plugins.emailext.ExtendedEmailPublisher")
        assert email is not None, name
        assert (
            email.find("configuredTriggers/hudson.plugins.emailext.plugins.trigger.FailureTrigger")
            is not None
        )
        assert email.findtext("recipientList") == "$TRAINCHAIN_SMTP_TO"
        assert "${BUILD_LOG, maxLines=30}" in email.findtext("defaultContent", ""), name


def test_every_shell_step_is_one_thin_trainchain_call(rendered: Path) -> None:
    """Each job has one shell step: `set -e` and one trainchain call, nothing else (no
    `set -u`: Jenkins leaves empty parameters out of the environment)."""
    expected = {name: name.split("-")[-1] for name in FREESTYLE}
    for name in FREESTYLE:
        (step,) = _shell_steps(_xml(rendered, name))
        lines = [line for line in step.findtext("command", "").splitlines() if line.strip()]
        assert lines[0] == "set -e", name
        assert len(lines) == 2 and lines[1].startswith("trainchain "), (name, lines)
        status, calls = _calls(step.findtext("command", ""), SAMPLE_ENV)
        assert status == 0, name
        assert [argv[0] for argv in calls] == [expected[name]], name


def test_jobs_pass_the_chain_along_and_train_in_docker(rendered: Path) -> None:
    """Each job builds REPOSITORY at COMMIT in SUBDIR; 3 and 4 use the docker executor
    and the detected IMAGE; 4 runs WORKERS trial workers (1 when empty) and promotes
    (and passes REASON, when set, to the report and email); 1-4 write
    trainchain.properties; 5 notifies CHAIN."""
    argv: dict[str, list[str]] = {}
    for name in FREESTYLE:
        (step,) = _shell_steps(_xml(rendered, name))
        _, (argv[name],) = _calls(step.findtext("command", ""), SAMPLE_ENV)
    source = ["--ref", SAMPLE_ENV["COMMIT"], "--subdir", SAMPLE_ENV["SUBDIR"]]
    written = ["--properties", "trainchain.properties"]
    docker = ["--executor", "docker", "--image", SAMPLE_ENV["IMAGE"]]
    assert argv["trainchain-1-pull"] == ["pull", SAMPLE_ENV["REPOSITORY"], *source[:2], *written]
    assert argv["trainchain-2-detect"] == ["detect", SAMPLE_ENV["REPOSITORY"], *source, *written]
    assert argv["trainchain-3-train"] == [
        "train",
        SAMPLE_ENV["REPOSITORY"],
        *source,
        *docker,
        *written,
    ]
    assert argv["trainchain-4-tune"] == [
        "tune",
        SAMPLE_ENV["REPOSITORY"],
        *source,
        *docker,
        "--workers",
        SAMPLE_ENV["WORKERS"],
        "--promote",
        *written,
    ]
    assert argv["trainchain-5-notify"] == ["notify", "--chain", SAMPLE_ENV["CHAIN"]]
    assert argv[WATCHDOG] == ["watchdog", "--once"]
    (tune,) = _shell_steps(_xml(rendered, "trainchain-4-tune"))
    why = "drift alert TrainchainInputDrift for eeg: mu C3 +2.1 sd"
    _, (asked,) = _calls(tune.findtext("command", ""), SAMPLE_ENV | {"REASON": why})
    assert asked == [*argv["trainchain-4-tune"], "--reason", why]  # a retrain request's why
    _, (one,) = _calls(tune.findtext("command", ""), SAMPLE_ENV | {"WORKERS": ""})
    assert one[one.index("--workers") + 1] == "1"


def test_notify_job_without_a_chain_id_never_asks_for_the_latest_chain(rendered: Path) -> None:
    """Job 5 with an empty CHAIN (job 4 stopped before a chain started) passes an explicit
    empty --chain, which notify refuses, never no --chain, which means the latest chain."""
    (step,) = _shell_steps(_xml(rendered, "trainchain-5-notify"))
    _, (argv,) = _calls(step.findtext("command", ""), SAMPLE_ENV | {"CHAIN": ""})
    assert argv == ["notify", "--chain", ""]
    assert build_parser().parse_args(argv).chain == ""


def test_view_starts_at_job_1(rendered: Path) -> None:
    """The Build Pipeline view draws the chain from trainchain-1-pull, with a title."""
    view = _xml(rendered, VIEW)
    assert view.findtext("gridBuilder/firstJob") == "trainchain-1-pull"
    assert view.findtext("name") == VIEW
    assert view.findtext("buildViewTitle")
    assert int(view.findtext("noOfDisplayedBuilds", "0")) > 1


def test_pipeline_job_runs_the_jenkinsfile_from_scm_on_push(rendered: Path) -> None:
    """trainchain-pipeline reads Jenkinsfile from the trainchain repository's main branch
    (lightweight), is triggered by GitHub pushes and never runs two builds at once."""
    job = _xml(rendered, PIPELINE)
    definition = job.find("definition")
    assert definition is not None
    assert definition.get("class", "").endswith("CpsScmFlowDefinition")
    assert definition.findtext("scriptPath") == "Jenkinsfile"
    assert definition.findtext("lightweight") == "true"
    url = definition.findtext("scm/userRemoteConfigs/*/url", "")
    assert url.startswith("https://") and "{" not in url  # the JJB default variable expanded
    assert definition.findtext("scm/branches/*/name") == "main"
    props = job.find("properties")
    assert props is not None
    assert (
        props.find(
            "org.jenkinsci.plugins.workflow.job.properties.DisableConcurrentBuildsJobProperty"
        )
        is not None
    )
    assert next(props.iter("com.cloudbees.jenkins.GitHubPushTrigger"), None) is not None


# ---- in step with the CLI ---------------------------------------------------------
def test_every_job_command_parses_with_the_cli(rendered: Path) -> None:
    """Every trainchain call in the rendered shell steps is accepted by the real parser
    (an unknown or renamed flag fails here, not in Jenkins), with every parameter set and
    with the optional ones empty (so absent from the environment, as under Jenkins)."""
    errors = []
    optional_empty = {
        "SUBDIR": "",
        "RUN_ID": "",
        "CHAIN": "",
        "STATUS": "",
        "FAMILY": "",
        "WORKERS": "",
    }
    for name in FREESTYLE:
        for step in _shell_steps(_xml(rendered, name)):
            for env in (SAMPLE_ENV, SAMPLE_ENV | optional_empty):
                status, calls = _calls(step.findtext("command", ""), env)
                assert status == 0 and len(calls) == 1, (name, env)
                errors += [f"{name}: {e}" for argv in calls if (e := _parse_error(argv))]
    assert not errors, "\n".join(errors)


def test_every_jenkinsfile_command_parses_with_the_cli() -> None:
    """Every trainchain call in the Jenkinsfile's sh steps is accepted by the real parser,
    with and without the optional THRESHOLD and MAX_TRIALS, as the tuning leader (WORKER
    1) and as a worker that joins it."""
    scripts = _jenkinsfile_sh_scripts()
    errors, commands = [], set()
    optional_empty = {"THRESHOLD": "", "MAX_TRIALS": "", "SUBDIR": ""}
    for script in scripts:
        for env in itertools.product((SAMPLE_ENV, SAMPLE_ENV | optional_empty), WORKER_ENVS):
            status, calls = _calls(script, env[0] | env[1])
            assert status == 0 and calls, script
            commands.update(argv[0] for argv in calls)
            errors += [e for argv in calls if (e := _parse_error(argv))]
    assert not errors, "\n".join(errors)
    assert commands == {"detect", "tune", "promote", "notify"}


def _jenkinsfile_tune() -> str:
    """The Jenkinsfile's one `trainchain tune` step (every worker runs it)."""
    (tune,) = [s for s in _jenkinsfile_sh_scripts() if _calls(s, SAMPLE_ENV)[1][0][0] == "tune"]
    return tune


def test_jenkinsfile_passes_budget_overrides_only_when_given() -> None:
    """THRESHOLD and MAX_TRIALS reach `trainchain tune` when set and are left out when
    empty (trainchain.yaml decides); so does REASON (a retrain request's why, for the
    report and email); the tune call builds MODEL_COMMIT in docker."""
    tune = _jenkinsfile_tune()
    _, (argv,) = _calls(tune, SAMPLE_ENV | LEADER)
    assert argv[:2] == ["tune", SAMPLE_ENV["REPOSITORY"]]
    assert argv[argv.index("--ref") + 1] == SAMPLE_ENV["MODEL_COMMIT"]
    assert argv[argv.index("--image") + 1] == SAMPLE_ENV["IMAGE"]
    assert argv[argv.index("--executor") + 1] == "docker"
    assert argv[-4:] == ["--threshold", "0.8", "--max-trials", "12"]
    _, (bare,) = _calls(tune, SAMPLE_ENV | LEADER | {"THRESHOLD": "", "MAX_TRIALS": ""})
    assert "--threshold" not in bare and "--max-trials" not in bare
    assert bare[-2:] == ["--properties", "chain.properties"]
    why = "drift alert TrainchainInputDrift for eeg: mu C3 +2.1 sd"
    _, (asked,) = _calls(tune, SAMPLE_ENV | LEADER | {"REASON": why})
    assert asked[-2:] == ["--reason", why] and not _parse_error(asked)


def test_jenkinsfile_workers_join_the_leaders_chain_with_its_command() -> None:
    """Worker 1 leads (`--properties chain.properties`, no --join); every other worker
    runs the leader's command word for word (same source, commit, image, executor and
    budget, so the same study) with `--join open` in place of --properties."""
    tune = _jenkinsfile_tune()
    for env in (SAMPLE_ENV, SAMPLE_ENV | {"THRESHOLD": "", "MAX_TRIALS": "", "SUBDIR": ""}):
        _, (leader,) = _calls(tune, env | LEADER)
        assert "--join" not in leader
        i = leader.index("--properties")
        assert leader[i : i + 2] == ["--properties", "chain.properties"]
        for joiner_env in WORKER_ENVS[1:]:
            _, (joiner,) = _calls(tune, env | joiner_env)
            assert "--properties" not in joiner
            assert joiner == [*leader[:i], "--join", "open", *leader[i + 2 :]]


# ---- the Jenkinsfile ------------------------------------------------------------------
def test_jenkinsfile_is_declarative_with_the_chain_stages_and_options() -> None:
    """Declarative, on an agent, pushed-triggered; timeout, timestamps, build discarder, no
    concurrent builds; the four stages in order; training retried on a lost agent under a
    lock; goal not reached is UNSTABLE; notify on success and failure."""
    text = JENKINSFILE.read_text()
    assert text.lstrip().startswith("//") and "\npipeline {\n" in text
    assert re.search(r"pipeline \{\n(\s*//[^\n]*\n)*\s*agent any\n", text)
    assert re.findall(r"stage\('([^']+)'\)", text) == [
        "Checkout",
        "Detect",
        "Train and tune",
        "Promote",
    ]
    for needle in (
        "githubPush()",
        "timeout(time: 6, unit: 'HOURS')",
        "timestamps()",
        "buildDiscarder(logRotator(numToKeepStr: '30', artifactNumToKeepStr: '10'))",
        "disableConcurrentBuilds()",
        "skipDefaultCheckout()",
        "node(params.AGENT_LABEL)",
        "parallel(branches)",
        "failFast: true",
        "workerCount(params.WORKERS)",
        "lock(",
        "unstable('goal not reached')",
        "readProperties(file: 'detect.properties')",
        ".GIT_COMMIT",
    ):
        assert needle in text, needle
    assert re.search(r"retry\(count: \d+, conditions: \[agent\(\)", text)
    post = text[text.rindex("\n    post {") :]
    assert re.search(r"success \{\s*sh 'trainchain notify", post)
    assert re.search(r"failure \{\s*reportFailure\(\)", post)
    assert "emailext(" in text and "env.TRAINCHAIN_SMTP_TO" in text


def test_jenkinsfile_parameters_equal_the_pipeline_jobs(rendered: Path) -> None:
    """The Jenkinsfile declares the Pipeline job's parameters: same names, order, kinds,
    descriptions and choices (each build rewrites the job's parameters from it, so a
    difference would flip the job's form between installs and builds)."""
    declared = _jenkinsfile_parameters()
    defs = _xml(rendered, PIPELINE).find(
        "./properties/hudson.model.ParametersDefinitionProperty/parameterDefinitions"
    )
    assert defs is not None
    kinds = {
        "hudson.model.StringParameterDefinition": "string",
        "hudson.model.ChoiceParameterDefinition": "choice",
    }
    in_job = [(kinds[d.tag], d.findtext("name"), d.findtext("description")) for d in defs]
    assert declared == in_job
    assert [name for _, name, _ in declared] == [
        "REPOSITORY",
        "COMMIT",
        "SUBDIR",
        "AGENT_LABEL",
        "WORKERS",
        "THRESHOLD",
        "MAX_TRIALS",
        "REASON",
    ]
    choices = [c.text for c in defs.iter("string")]
    assert choices == ["docker", "gpu"]
    assert "choices: ['docker', 'gpu']" in JENKINSFILE.read_text()
