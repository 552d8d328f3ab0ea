"""The Jenkins layer on a real Jenkins, as a platform engineer uses it (the jenkins tier).

The controller is ../shared/jenkins (2.448 and its plugins), started once per session
with an SSH agent labelled `docker trainchain` that runs every build, as
jenkins/casc.yaml sets up docker-agent-1 (tests/jenkins_real.py; the `live_jenkins`
fixture skips where it cannot run, and fails where CI is set). Builds have trainchain
on PATH, their own TRAINCHAIN_HOME, and an SMTP server on loopback, which receives
trainchain's emails and Jenkins' own. The jobs are this checkout's jobs/ with
trainchain-pipeline reading this checkout's Jenkinsfile; the model is the EEG example
on a small synthetic recording. Tests that train need the Docker engine and the EEG
image too (the Docker tier). The tests of WORKERS add two more SSH agents for their build
(agent-1 offline meanwhile) and train a stdlib toy in the Docker tier's toy image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import (
    REPO_ROOT,
    TOY_TRAIN,
    eventually,
    git,
    git_init,
    require_image,
    run_cli,
)
from tests.jenkins_real import (
    AGENT,
    JENKINS_SENDER,
    RECIPIENT,
    Live,
    causes,
    parameters,
    start_trainchain,
)
from tests.jenkins_real import free_port as closed_port
from tests.jenkins_real import wait_done as finished_process
from tests.test_jobs import CHAIN, PIPELINE, VIEW, WATCHDOG

pytestmark = pytest.mark.jenkins

ITEMS = [*CHAIN, WATCHDOG, PIPELINE, VIEW]  # what install reports, in its order
EEG_IMAGE = "trainchain/train-eeg:0.1.0"
MODEL = "eeg-motor-imagery"
BUILD_S = 900.0  # bounds one build or chain; they take a minute on a quiet machine
MAIL_S = 60.0  # an email after its build finished


# ---- what the tier works on ---------------------------------------------------------------
@pytest.fixture(scope="module")
def jenkinsfile_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare repository holding this checkout's Jenkinsfile (trainchain-pipeline's SCM)."""
    root = tmp_path_factory.mktemp("trainchain-repo")
    work = root / "trainchain"
    work.mkdir()
    shutil.copy(REPO_ROOT / "Jenkinsfile", work / "Jenkinsfile")
    git_init(work)
    bare = root / "trainchain.git"
    git(root, "clone", "-q", "--bare", str(work), str(bare))
    return bare


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory, jenkinsfile_repo: Path) -> Path:
    """jobs/ with trainchain-repository set to the Jenkinsfile's repository, as README's
    step 1 tells a user to set it."""
    folder = tmp_path_factory.mktemp("jobs") / "jobs"
    shutil.copytree(REPO_ROOT / "jobs", folder)
    return _replace_once(
        folder / "defaults.yaml",
        "trainchain-repository: https://github.com/example/trainchain.git",
        f"trainchain-repository: {jenkinsfile_repo}",
    ).parent


def _replace_once(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert text.count(old) == 1, f"{path} should hold {old!r} once"
    path.write_text(text.replace(old, new))
    return path


def install(live: Live, jobs: Path) -> list[str]:
    """`trainchain jenkins install --jobs JOBS`: its output lines (it must exit 0)."""
    out = run_cli("jenkins", "install", "--jobs", str(jobs), env=live.controller.env)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.fixture(scope="module")
def installed(live_jenkins: Live, jobs: Path) -> tuple[list[str], list[str]]:
    """The jobs installed twice on the fresh controller: both outputs."""
    return install(live_jenkins, jobs), install(live_jenkins, jobs)


@pytest.fixture(scope="module")
def eeg_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The EEG example as a model repository of its own: a small, easy synthetic
    recording, a budget of two trials."""
    from trainchain.families.eeg_synth import write_synthetic_dataset

    root = tmp_path_factory.mktemp("eeg")
    write_synthetic_dataset(
        root / "data", subjects=1, difficulty="easy", seed=0, trials_per_class=60
    )
    repo = root / "eeg-model"
    shutil.copytree(REPO_ROOT / "examples" / "eeg-motor-imagery", repo)
    config = repo / "trainchain.yaml"
    _replace_once(
        config,
        "path: ${TRAINCHAIN_HOME:-~/.trainchain}/data/eeg-synth-medium-288",
        f"path: {root}/data",
    )
    _replace_once(config, "budget: {max_trials: 25,", "budget: {max_trials: 2,")
    git_init(repo)
    return repo


@pytest.fixture
def eeg_image() -> str:
    require_image(EEG_IMAGE, "scripts/build-images.sh eeg")
    return EEG_IMAGE


def new_commit(repo: Path, text: str) -> str:
    with (repo / "train.py").open("a") as f:
        f.write(f"# {text}\n")
    git(repo, "commit", "-q", "-am", text)
    return git(repo, "rev-parse", "HEAD")


# ---- driving it -------------------------------------------------------------------------
@dataclass
class Followed:
    """`trainchain jenkins trigger JOB --follow`: exit status, output, the build."""

    code: int
    out: str
    err: str
    job: str
    number: int
    console: str  # the build's consoleText, read after it finished

    @property
    def streamed(self) -> str:
        """What --follow printed of the console: between the "started" line and the
        result line."""
        start = self.out.index("\n", self.out.index(f"started {self.job} #{self.number}:")) + 1
        return self.out[start : self.out.rindex(f"{self.job} #{self.number}: ")]


def follow(live: Live, job: str, *params: str) -> Followed:
    proc = trigger_process(live, job, *params)
    code, out, err = finished_process(proc, BUILD_S + 60)
    return followed(live, job, code, out, err)


def trigger_process(live: Live, job: str, *params: str) -> subprocess.Popen[str]:
    """`trainchain jenkins trigger JOB --param ... --follow`, started in the background."""
    argv = ["jenkins", "trigger", job, "--follow", "--poll", "1", "--timeout", f"{BUILD_S:g}"]
    for param in params:
        argv += ["--param", param]
    return start_trainchain(live.controller.env, *argv)


def followed(live: Live, job: str, code: int, out: str, err: str) -> Followed:
    started = [line for line in out.splitlines() if line.startswith(f"started {job} #")]
    assert len(started) == 1, f"no build started:\n{out}\n{err}"
    number = int(started[0].split("#", 1)[1].split(":", 1)[0])
    return Followed(code, out, err, job, number, live.controller.console(job, number))


def assert_streamed_once(run: Followed, result: str, code: int) -> None:
    """--follow printed the build's whole console exactly once (no line twice, none
    left out, no carriage return), then the result, and exited with the documented
    status for it."""
    assert run.code == code, run.out + run.err
    assert run.streamed == run.console
    assert "\r" not in run.out
    assert run.out.rstrip().splitlines()[-1].startswith(f"{run.job} #{run.number}: {result} in ")
    waiting = [line for line in run.out.splitlines() if line.startswith("waiting: ")]
    assert len(waiting) == len(set(waiting))


def mail(live: Live, what: str, match: Callable[[EmailMessage], bool]) -> EmailMessage:
    """The one email the SMTP server received that ``match`` picks (bounded wait)."""

    def found() -> list[EmailMessage]:
        return [m for m in live.inbox.messages() if match(m)]

    messages = eventually(found, what, MAIL_S)
    assert len(messages) == 1, [m["Subject"] for m in messages]
    return messages[0]


def chain_mail(live: Live, chain: str) -> EmailMessage:
    return mail(
        live, f"trainchain's email of chain {chain}", lambda m: m["X-Trainchain-Chain"] == chain
    )


# How email-ext's $BUILD_STATUS words a failed freestyle build; the Jenkinsfile's own
# email says currentBuild.currentResult.
FREESTYLE_FAILED = ("Failure", "Still Failing")


def jenkins_mail(live: Live, job: str, number: int, results: tuple[str, ...]) -> EmailMessage:
    """Jenkins' own email about build ``number`` of ``job``, whose subject ends with one
    of ``results``."""
    prefix = f"trainchain: {job} #{number}: "
    message = mail(
        live, f"Jenkins' email {prefix!r}", lambda m: str(m["Subject"]).startswith(prefix)
    )
    assert str(message["Subject"]).removeprefix(prefix) in results, message["Subject"]
    assert message["From"] == JENKINS_SENDER and message["To"] == RECIPIENT
    return message


def text(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    content: str = body.get_content()
    return content


def chain_of(console: str) -> str:
    """The chain id a tune printed ("chain:     <id>")."""
    (line,) = [x for x in console.splitlines() if "chain:     " in x]
    return line.split("chain:     ", 1)[1].strip()


# ---- install -------------------------------------------------------------------------------
def test_install_creates_every_item_and_a_second_install_changes_nothing(
    installed: tuple[list[str], list[str]],
) -> None:
    """On a fresh controller every job and the view load; the second install finds each
    unchanged (Jenkins' re-written config.xml compares equal to ours)."""
    first, second = installed
    assert first == [f"created {name}" for name in ITEMS]
    assert second == [f"unchanged {name}" for name in ITEMS]


# ---- the classic chain from a push -----------------------------------------------------------
@dataclass
class Chain:
    sha: str
    hub: Path
    pushed: str
    builds: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def classic_chain(
    live_jenkins: Live,
    installed: Any,
    eeg_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Chain:
    """`trainchain hooks install HUB --jenkins-job trainchain-1-pull`, then a real `git
    push` to HUB with the Jenkins connection in the pusher's environment; jobs 1 to 5
    once they finished."""
    require_image(EEG_IMAGE, "scripts/build-images.sh eeg")
    live = live_jenkins
    root = tmp_path_factory.mktemp("push")
    hub = root / "hub.git"
    git(root, "clone", "-q", "--bare", str(eeg_model), str(hub))
    hook = run_cli(
        "hooks", "install", str(hub), "--jenkins-job", CHAIN[0], "--home", str(root / "home")
    )
    assert hook.returncode == 0, hook.stderr
    before = {job: live.controller.last_build(job) for job in CHAIN}
    sha = new_commit(eeg_model, "a change to push")
    push = subprocess.run(
        ["git", "push", str(hub), "main"],
        cwd=eeg_model,
        capture_output=True,
        text=True,
        env={**os.environ, **live.controller.env},
        timeout=120,
        check=True,
    )
    builds: dict[str, dict[str, Any]] = {}
    for job in CHAIN:  # in order; a job that failed triggers no next one (but job 4 does)
        builds[job] = live.controller.finished(job, before[job] + 1, BUILD_S)
        if builds[job]["result"] != "SUCCESS" and job != CHAIN[3]:
            break
    return Chain(sha, hub, push.stderr, builds)


@pytest.mark.docker
def test_a_push_runs_the_classic_chain_to_a_champion_and_an_email(
    live_jenkins: Live, classic_chain: Chain
) -> None:
    """A git push to a repository with trainchain's hook starts job 1; jobs 1 to 5 all
    succeed on the SSH agent with one commit id (the default SUBDIR included); the model
    becomes champion with the tune build in its lineage; trainchain's email arrives."""
    from mlflow import MlflowClient

    live, chain = live_jenkins, classic_chain
    assert f"triggering Jenkins job {CHAIN[0]} for {chain.sha[:12]}" in chain.pushed
    assert f"queued {CHAIN[0]}: " in chain.pushed
    for job, build in chain.builds.items():
        assert build["result"] == "SUCCESS", live.controller.console(job, build["number"])
        assert build["builtOn"] == AGENT, job
        assert parameters(build)["COMMIT"] == chain.sha, job
        assert parameters(build)["REPOSITORY"] == str(chain.hub), job
        assert parameters(build)["SUBDIR"] == "", job
    assert list(chain.builds) == CHAIN
    tune = chain.builds["trainchain-4-tune"]
    chain_id = parameters(chain.builds["trainchain-5-notify"])["CHAIN"]
    assert parameters(chain.builds["trainchain-5-notify"])["STATUS"] == "succeeded"

    client = MlflowClient(f"sqlite:///{live.home / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.tags["trainchain.commit"] == chain.sha
    assert champion.tags["trainchain.jenkins_build_url"] == tune["url"]
    message = chain_mail(live, chain_id)
    assert message["X-Trainchain-Status"] == "succeeded"
    assert f"v{champion.version} is champion" in message["Subject"]
    assert tune["url"] in text(message)


@pytest.mark.docker
def test_the_build_pipeline_view_lists_the_chain_and_its_builds(
    live_jenkins: Live, classic_chain: Chain
) -> None:
    """The Build Pipeline view's page shows each job of the chain and this chain's build
    of it."""
    page = live_jenkins.controller.get(f"view/{VIEW}/").text
    for job, build in classic_chain.builds.items():
        assert f"job/{job}/{build['number']}/" in page, job
    assert classic_chain.sha in page  # the parameters in the row's header


# ---- the Pipeline ---------------------------------------------------------------------------
@dataclass
class GitHttp:
    """Bare repositories served over git's dumb HTTP protocol by a static HTTP server."""

    root: Path
    url: str

    def publish(self, repo: Path, path: str) -> str:
        bare = self.root / f"{path}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        git(repo, "push", "-q", str(bare) if bare.exists() else str(_init_bare(bare)), "main")
        git(bare, "update-server-info")
        return f"{self.url}/{path}.git"


def _init_bare(bare: Path) -> Path:
    git(bare.parent, "init", "-q", "--bare", "-b", "main", str(bare))
    return bare


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def git_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitHttp]:
    root = tmp_path_factory.mktemp("www")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2})
    thread.start()
    try:
        yield GitHttp(root, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@dataclass
class PipelineRuns:
    url: str
    by_hand: Followed
    reinstalled: list[str]
    pushed_sha: str
    push_build: dict[str, Any]
    push_console: str


@pytest.fixture(scope="module")
def pipeline_runs(
    live_jenkins: Live, installed: Any, jobs: Path, eeg_model: Path, git_http: GitHttp
) -> PipelineRuns:
    """trainchain-pipeline started once by hand for a repository served over HTTP, the
    jobs installed again, then a push to that repository announced by a GitHub push event
    POSTed to Jenkins' /github-webhook/."""
    require_image(EEG_IMAGE, "scripts/build-images.sh eeg")
    live = live_jenkins
    url = git_http.publish(eeg_model, "team/eeg")
    by_hand = follow(live, PIPELINE, f"REPOSITORY={url}")
    reinstalled = install(live, jobs)
    sha = new_commit(eeg_model, "pushed to GitHub")
    git_http.publish(eeg_model, "team/eeg")
    before = live.controller.last_build(PIPELINE)
    event = {
        "ref": "refs/heads/main",
        "before": "0" * 40,
        "after": sha,
        "repository": {
            "name": "eeg",
            "full_name": "team/eeg",
            "html_url": f"{git_http.url}/team/eeg",
            "url": f"{git_http.url}/team/eeg",
            "clone_url": url,
            "owner": {"name": "team", "login": "team"},
        },
        "pusher": {"name": "alice", "email": "alice@example.com"},
    }
    response = requests.post(
        f"{live.controller.url}github-webhook/",
        data=json.dumps(event),
        headers={"Content-Type": "application/json", "X-GitHub-Event": "push"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    build = live.controller.finished(PIPELINE, before + 1, BUILD_S)
    return PipelineRuns(
        url, by_hand, reinstalled, sha, build, live.controller.console(PIPELINE, before + 1)
    )


STAGES = [
    ("Checkout", "SUCCESS"),
    ("Detect", "SUCCESS"),
    ("Train and tune", "SUCCESS"),
    ("Promote", "SUCCESS"),
]


def real_stages(live: Live, number: int) -> list[tuple[str, str]]:
    return [s for s in live.controller.stages(PIPELINE, number) if not s[0].endswith("*")]


@pytest.mark.docker
def test_the_pipeline_by_hand_runs_every_stage_and_follow_streams_it_once(
    live_jenkins: Live, pipeline_runs: PipelineRuns, jenkinsfile_repo: Path
) -> None:
    """Triggered by hand and followed: exit 0 on SUCCESS, the console streamed once;
    every stage succeeded (read back through the Pipeline Graph View API); only the model
    repository was checked out (not the Jenkinsfile's, and no credentials looked for);
    the training stage ran on the SSH agent."""
    live, run = live_jenkins, pipeline_runs.by_hand
    assert_streamed_once(run, "SUCCESS", 0)
    assert real_stages(live, run.number) == STAGES
    assert "Checkout SCM" not in [name for name, _ in live.controller.stages(PIPELINE, run.number)]
    assert run.console.count(str(jenkinsfile_repo)) == 1  # "Obtained Jenkinsfile from git ..."
    assert f"Obtained Jenkinsfile from git {jenkinsfile_repo}" in run.console
    assert run.console.count("Checking out Revision ") == 1  # the model, once
    assert "could not be found" not in run.console
    assert run.console.count(f"Running on {AGENT} in ") == 2  # top level and training stage
    message = chain_mail(live, chain_of(run.console))
    assert message["X-Trainchain-Status"] == "succeeded"


@pytest.mark.docker
def test_install_after_a_pipeline_build_changes_nothing(pipeline_runs: PipelineRuns) -> None:
    """The Pipeline's build rewrote its job's parameters (REPOSITORY's default is now the
    repository it built); install leaves that alone and reports every item unchanged."""
    assert pipeline_runs.reinstalled == [f"unchanged {name}" for name in ITEMS]


@pytest.mark.docker
def test_a_github_push_event_starts_the_pipeline_for_the_repository_it_built(
    live_jenkins: Live, pipeline_runs: PipelineRuns
) -> None:
    """A push event for the repository the job built last starts a build by itself (the
    github plugin behind githubPush()); it builds that repository (install kept the
    default) at the pushed commit, through every stage."""
    build, console = pipeline_runs.push_build, pipeline_runs.push_console
    assert "Started by GitHub push by alice" in causes(build)
    assert build["result"] == "SUCCESS", console
    assert parameters(build)["REPOSITORY"] == pipeline_runs.url
    assert f"Checking out Revision {pipeline_runs.pushed_sha}" in console
    assert real_stages(live_jenkins, build["number"]) == STAGES


# ---- unhappy paths ----------------------------------------------------------------------------
@pytest.mark.docker
def test_goal_not_reached_makes_the_pipeline_unstable_and_the_email_says_why(
    live_jenkins: Live, pipeline_runs: PipelineRuns, eeg_image: str
) -> None:
    """THRESHOLD out of reach: the build is UNSTABLE (follow exits 3), Promote is skipped,
    and trainchain's email says the goal was not reached."""
    live = live_jenkins
    run = follow(
        live, PIPELINE, f"REPOSITORY={pipeline_runs.url}", "THRESHOLD=0.999", "MAX_TRIALS=1"
    )
    assert_streamed_once(run, "UNSTABLE", 3)
    stages = dict(real_stages(live, run.number))
    assert stages["Train and tune"] == "UNSTABLE"
    assert stages["Promote"] == "skipped"
    message = chain_mail(live, chain_of(run.console))
    assert message["X-Trainchain-Status"] == "goal_not_reached"
    assert "ran out below the goal (val_accuracy >= 0.999) after 1 of 1 trials" in text(message)


@pytest.mark.docker
def test_goal_not_reached_makes_job_4_unstable_and_job_5_emails_why(
    live_jenkins: Live, installed: Any, eeg_model: Path, eeg_image: str
) -> None:
    """Job 4 on a model whose goal is out of reach: UNSTABLE; job 5 still runs and
    trainchain's email says the goal was not reached."""
    live = live_jenkins
    _replace_once(eeg_model / "trainchain.yaml", "threshold: 0.80", "threshold: 0.999")
    _replace_once(eeg_model / "trainchain.yaml", "max_trials: 2,", "max_trials: 1,")
    git(eeg_model, "checkout", "-q", "-b", "out-of-reach")
    git(eeg_model, "commit", "-q", "-am", "a goal out of reach")
    sha = git(eeg_model, "rev-parse", "HEAD")
    git(eeg_model, "checkout", "-q", "main")
    notify_before = live.controller.last_build(CHAIN[4])
    run = follow(live, CHAIN[3], f"REPOSITORY={eeg_model}", f"COMMIT={sha}", f"IMAGE={eeg_image}")
    assert_streamed_once(run, "UNSTABLE", 3)
    notify = live.controller.finished(CHAIN[4], notify_before + 1, BUILD_S)
    assert notify["result"] == "SUCCESS"
    assert parameters(notify)["STATUS"] == "goal_not_reached"
    message = chain_mail(live, parameters(notify)["CHAIN"])
    assert message["X-Trainchain-Status"] == "goal_not_reached"
    assert "ran out below the goal (val_accuracy >= 0.999) after 1 of 1 trials" in text(message)


def test_an_uncloneable_repository_fails_job_1_and_jenkins_emails_why(
    live_jenkins: Live, installed: Any, tmp_path: Path
) -> None:
    """Job 1 on a repository that cannot be cloned: FAILURE (follow exits 1), the chain
    goes no further, and Jenkins' email names the repository and quotes the error."""
    live = live_jenkins
    missing = tmp_path / "missing.git"
    detect_before = live.controller.last_build(CHAIN[1])
    run = follow(live, CHAIN[0], f"REPOSITORY={missing}")
    assert_streamed_once(run, "FAILURE", 1)
    assert live.controller.last_build(CHAIN[1]) == detect_before
    body = text(jenkins_mail(live, CHAIN[0], run.number, FREESTYLE_FAILED))
    assert f"Repository: {missing} at main" in body
    assert f"error: {missing} does not exist: give a model folder or a git URL" in body


def test_a_tune_that_fails_before_a_chain_reaches_job_5_which_says_why(
    live_jenkins: Live, installed: Any, tmp_path: Path
) -> None:
    """Job 4 failing before a chain started (its repository cannot be cloned) still
    triggers job 5 with no CHAIN; job 5 fails with notify's own reason, not the shell's,
    and both failures are emailed by Jenkins."""
    live = live_jenkins
    missing = tmp_path / "missing.git"
    notify_before = live.controller.last_build(CHAIN[4])
    run = follow(live, CHAIN[3], f"REPOSITORY={missing}", f"IMAGE={EEG_IMAGE}")
    assert_streamed_once(run, "FAILURE", 1)
    notify = live.controller.finished(CHAIN[4], notify_before + 1, BUILD_S)
    console = live.controller.console(CHAIN[4], notify["number"])
    assert notify["result"] == "FAILURE"
    assert "error: --chain is empty: no chain id was handed on" in console
    assert "parameter not set" not in console
    assert f"error: {missing} does not exist: give a model folder or a git URL" in text(
        jenkins_mail(live, CHAIN[3], run.number, FREESTYLE_FAILED)
    )
    assert "--chain is empty" in text(
        jenkins_mail(live, CHAIN[4], notify["number"], FREESTYLE_FAILED)
    )


def test_an_uncloneable_repository_fails_the_pipeline_and_jenkins_emails_why(
    live_jenkins: Live, installed: Any, tmp_path: Path
) -> None:
    """The Pipeline on a repository that cannot be cloned: FAILURE at Checkout; no chain
    began, so Jenkins' email says so, with the repository and the end of the console."""
    live = live_jenkins
    missing = tmp_path / "missing.git"
    run = follow(live, PIPELINE, f"REPOSITORY={missing}")
    assert_streamed_once(run, "FAILURE", 1)
    assert dict(real_stages(live, run.number))["Checkout"] == "FAILURE"
    assert "MissingContextVariableException" not in run.console
    body = text(jenkins_mail(live, PIPELINE, run.number, ("FAILURE",)))
    assert "No chain was started" in body and f"Repository: {missing} at main" in body
    assert f"fatal: '{missing}' does not appear to be a git repository" in body


def test_a_pipeline_aborted_while_it_waits_for_an_agent_ends_cleanly_and_emails(
    live_jenkins: Live, installed: Any, tmp_path: Path
) -> None:
    """With the agent offline the build waits for an executor; aborted there, follow exits
    130 (ABORTED), `post` runs without a workspace and fails nothing, and Jenkins' email
    says no chain was started."""
    live = live_jenkins
    number = live.controller.last_build(PIPELINE) + 1
    live.controller.set_offline(AGENT, True)
    try:
        proc = trigger_process(live, PIPELINE, f"REPOSITORY={tmp_path / 'never-cloned.git'}")

        def waiting_for_an_agent() -> bool:
            items = live.controller.json("queue", tree="items[task[name]]")["items"]
            return any(f"{PIPELINE} #{number}" in i["task"].get("name", "") for i in items)

        eventually(waiting_for_an_agent, f"{PIPELINE} #{number} to wait for an agent", 120)
        live.controller.post(f"job/{PIPELINE}/{number}/stop")
        run = followed(live, PIPELINE, *finished_process(proc, 120))
    finally:
        live.controller.set_offline(AGENT, False)
    assert run.number == number
    assert_streamed_once(run, "ABORTED", 130)
    assert "MissingContextVariableException" not in run.console
    assert "No chain was started" in text(jenkins_mail(live, PIPELINE, number, ("ABORTED",)))


# ---- a training container killed mid-build ----------------------------------------------------
SLOW_TRAIN = """
import json, time
from trainchain import task

ckpt = task.checkpoint_dir() / "state.json"
start = json.loads(ckpt.read_text())["epoch"] + 1 if ckpt.exists() else 0
print(f"slow: attempt {task.attempt()} starting at epoch {start}", flush=True)
for epoch in range(start, 8):
    time.sleep(1)  # the work of an epoch
    task.atomic_write_bytes(ckpt, json.dumps({"epoch": epoch}).encode())
    task.report(epoch, val_accuracy=0.9)
    print(f"slow: epoch {epoch} done", flush=True)

import mlflow.sklearn
import numpy as np
from sklearn.linear_model import LogisticRegression

# a model that beats the majority class on 40 held-out examples, and per-fold scores of the
# plan (the search's folds, or the confirmation's fresh ones), so the goal can be confirmed
X = np.arange(-20.0, 20.0).reshape(-1, 1)
y = np.where(X[:, 0] < 0, "a", "b")
model = LogisticRegression().fit(X, y)
np.savez(task.heldout_path(), X=X, y=y)
mlflow.sklearn.save_model(
    model, task.model_dir(), serialization_format="cloudpickle", pip_requirements=["scikit-learn"]
)
plan = task.validation()
n = plan["folds"] * plan["repeats"]
folds = [0.9 + 0.01 * (i % 3 - 1) for i in range(n)]
task.write_metrics({
    "val_accuracy": sum(folds) / n,
    "val_accuracy_folds": folds,
    "val_folds_id": task.folds_id([[plan["seed"], i] for i in range(n)]),
    "test_accuracy": float(model.score(X, y)),
})
"""

SLOW_YAML = f"""
name: slow-model
entrypoint: train.py
image: {EEG_IMAGE}
data: {{path: data}}
goal: {{metric: accuracy, threshold: 0.5}}
budget: {{max_trials: 1}}
pruning: {{enabled: false}}
search_space: {{x: {{type: float, low: 0, high: 1, default: 0.5}}}}
watchdog: {{max_restarts: 2, backoff: 0}}
"""


@pytest.mark.docker
def test_a_training_container_killed_mid_build_resumes_and_the_build_completes(
    live_jenkins: Live, installed: Any, eeg_image: str, tmp_path: Path
) -> None:
    """The training container of a Pipeline build is killed (SIGKILL) after two epochs;
    trainchain starts it again from its checkpoint and the build succeeds."""
    from trainchain.adapters.containers import connect

    live = live_jenkins
    repo = tmp_path / "slow-model"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "x.txt").write_text("x")
    (repo / "train.py").write_text(SLOW_TRAIN)
    (repo / "trainchain.yaml").write_text(SLOW_YAML)
    git_init(repo)
    client = connect(timeout=60)
    proc = trigger_process(live, PIPELINE, f"REPOSITORY={repo}")
    try:

        def two_epochs_done() -> Any:
            for c in client.containers.list(filters={"label": "trainchain.model=slow-model"}):
                if b"slow: epoch 1 done" in c.logs():
                    return c
            return None

        container = eventually(two_epochs_done, "the training container's second epoch", 600)
        container.kill()
        run = followed(live, PIPELINE, *finished_process(proc, BUILD_S))
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_streamed_once(run, "SUCCESS", 0)
    assert "killed by SIGKILL (exit 137); restarted as attempt 2" in run.console
    logs = sorted(live.home.glob("runs/slow-model-*/trial-0000/attempt-*/train.log"))
    assert [p.parent.name for p in logs] == ["attempt-1", "attempt-2"]
    resumed = logs[1].read_text()
    assert "slow: attempt 2 starting at epoch " in resumed
    assert "starting at epoch 0" not in resumed  # resumed, not started over
    assert "slow: epoch 7 done" in resumed


# ---- the watchdog ----------------------------------------------------------------------------
def test_the_watchdog_job_emails_when_it_fails(live_jenkins: Live, installed: Any) -> None:
    """Job 6 with its Docker engine unreachable (the agent's DOCKER_HOST pointed at a
    closed port for this build): FAILURE, and Jenkins' email says why."""
    live = live_jenkins
    live.controller.set_node_env(AGENT, {"DOCKER_HOST": f"tcp://127.0.0.1:{closed_port()}"})
    try:
        run = follow(live, WATCHDOG)
    finally:
        live.controller.set_node_env(AGENT, {})
    assert_streamed_once(run, "FAILURE", 1)
    body = text(jenkins_mail(live, WATCHDOG, run.number, FREESTYLE_FAILED))
    assert "Job 6 supervises the training containers of this Docker host." in body
    (error,) = [line for line in run.console.splitlines() if line.startswith("error: ")]
    assert error in body


@pytest.mark.docker
def test_the_watchdog_runs_on_its_timer(
    live_jenkins: Live, jobs: Path, eeg_image: str, tmp_path: Path
) -> None:
    """Job 6's timer trigger starts it by itself. The schedule is H/5 (every five
    minutes); installed with a once-a-minute schedule for this test, a build "Started by
    timer" succeeds on the agent within two minutes; then the real schedule is put back."""
    live = live_jenkins
    every_minute = tmp_path / "jobs"
    shutil.copytree(jobs, every_minute)
    _replace_once(every_minute / "chain.yaml", 'timed: "H/5 * * * *"', 'timed: "* * * * *"')
    before = live.controller.last_build(WATCHDOG)
    assert install(live, every_minute) == [
        f"{'updated' if name == WATCHDOG else 'unchanged'} {name}" for name in ITEMS
    ]
    try:

        def timer_build() -> dict[str, Any] | None:
            for number in range(before + 1, live.controller.last_build(WATCHDOG) + 1):
                build = live.controller.build(WATCHDOG, number)
                if "Started by timer" in causes(build):
                    return build
            return None

        build = eventually(timer_build, "a timer-started watchdog build", 150, poll=2)
        build = live.controller.finished(WATCHDOG, build["number"], BUILD_S)
    finally:
        assert f"updated {WATCHDOG}" in install(live, jobs)
    assert build["result"] == "SUCCESS", live.controller.console(WATCHDOG, build["number"])
    assert build["builtOn"] == AGENT


# ---- one chain tuned on two agents -------------------------------------------------------------
# The stdlib toy (tests/conftest.py) with a second of work per step, so that its trials last
# long enough for two workers to share the budget; its best score (x at 0.5) is 0.8.
WORKERS_TRAIN = textwrap.dedent(TOY_TRAIN).replace(
    "    task.report(step, val_accuracy=0.5)\n",
    "    task.report(step, val_accuracy=0.5)\n    time.sleep(1)  # the work of a step\n",
)

WORKERS_YAML = """
name: {name}
entrypoint: train.py
image: {image}
data: {{path: data}}
goal: {{metric: accuracy, threshold: 0.95, direction: maximize}}
budget: {{max_trials: 6, timeout: 600, seed: 1}}
pruning: {{enabled: false}}
search_space:
  x: {{type: float, low: 0.0, high: 0.5, default: 0.1}}
train: {{timeout: 120, max_attempts: 1}}
"""
WORKERS_BUDGET = 6
TUNING_AGENTS = ("agent-2", "agent-3")


def workers_toy(root: Path, image: str, name: str = "workers-toy") -> Path:
    """The toy model repository of these tests, training in ``image``; a test of its own
    gives it a ``name`` of its own, so that its chain has a study of its own."""
    repo = root / name
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "values.txt").write_text("1 2 3\n")
    (repo / "train.py").write_text(WORKERS_TRAIN)
    (repo / "trainchain.yaml").write_text(WORKERS_YAML.format(image=image, name=name))
    git_init(repo)
    return repo


@contextmanager
def two_tuning_agents(live: Live) -> Iterator[tuple[str, ...]]:
    """Two more SSH agents labelled `docker` in place of agent-1 (offline meanwhile):
    agent-2 with two executors (one for the Pipeline's top-level agent, one for a worker)
    and agent-3 with one that runs only `docker` work, so the two workers of the
    training stage get an executor each, on different agents. Afterwards both are removed
    and agent-1 is back online."""
    controller = live.controller
    controller.set_offline(live.agent, True)
    try:
        for name, executors, exclusive in zip(TUNING_AGENTS, (2, 1), (False, True), strict=True):
            controller.add_ssh_agent(
                name,
                live.sshd,
                labels="docker",
                executors=executors,
                remote_fs=live.root / name,
                exclusive=exclusive,
            )
        yield TUNING_AGENTS
    finally:
        for name in TUNING_AGENTS:
            controller.remove_node(name)
        controller.set_offline(live.agent, False)


@pytest.mark.docker
def test_workers_2_tune_one_chain_on_two_agents_and_the_leader_alone_concludes_it(
    live_jenkins: Live, installed: Any, tmp_path: Path
) -> None:
    """WORKERS=2: the training stage runs a worker on each of two agents; worker 1 leads
    the chain, worker 2 joins it (`--join open`), both run trials of its one study, which
    counts them across both (the budget of 6, no more), and the chain concludes once: one
    chain.properties, one email, the verdict (goal not reached: UNSTABLE, no promotion)."""
    import optuna

    from tests.docker_toy import ensure_toy_image
    from trainchain.adapters.containers import connect
    from trainchain.adapters.studies import WORKER_ATTR

    live = live_jenkins
    image = ensure_toy_image(connect(timeout=60), tmp_path / "toy-image")
    repo = workers_toy(tmp_path, image)
    with two_tuning_agents(live) as agents:
        run = follow(live, PIPELINE, f"REPOSITORY={repo}", "WORKERS=2")
    assert_streamed_once(run, "UNSTABLE", 3)
    stages = dict(real_stages(live, run.number))
    assert stages["Train and tune"] == "UNSTABLE" and stages["Promote"] == "skipped"

    # a worker on each agent (the Jenkinsfile's line for each); worker 2 joined the chain
    placed = dict(re.findall(r"^.*worker (\d+) \(.*\) runs on (\S+)$", run.console, re.M))
    assert sorted(placed) == ["1", "2"], run.console
    assert sorted(placed.values()) == list(agents)
    chain = chain_of(run.console)
    (joiner,) = re.findall(rf"tune worker (\S+) joined chain {re.escape(chain)}\b", run.console)
    assert "worker 2 stopped" not in run.console, run.console  # no worker failed

    # both ran trials of the one study, which counted them across both
    study = optuna.load_study(study_name=chain, storage=f"sqlite:///{live.home / 'optuna.db'}")
    assert len(study.trials) == WORKERS_BUDGET
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    ran = Counter(t.user_attrs[WORKER_ATTR] for t in study.trials)
    assert len(ran) == 2 and joiner in ran, ran  # the leader's trials and the joiner's
    assert f"worker:    ran {ran[joiner]} trial(s) of chain {chain};" in run.console

    # concluded once, by the leader
    artifacts = live.controller.build(PIPELINE, run.number)["artifacts"]
    assert sorted(a["relativePath"] for a in artifacts) == ["chain.properties", "detect.properties"]
    message = chain_mail(live, chain)  # exactly one
    assert message["X-Trainchain-Status"] == "goal_not_reached"
    assert f"after {WORKERS_BUDGET} of {WORKERS_BUDGET} trials" in text(message)


def test_workers_out_of_range_fails_the_pipeline_before_any_worker_and_jenkins_emails_why(
    live_jenkins: Live, installed: Any, tmp_path: Path
) -> None:
    """WORKERS=0: the training stage fails before it asks for an agent (no worker, no
    chain), and Jenkins' email quotes why (Jenkins writes error()'s own line when the build
    ends, after `post` sent the email)."""
    live = live_jenkins
    repo = workers_toy(tmp_path, "trainchain/never-pulled:0")
    run = follow(live, PIPELINE, f"REPOSITORY={repo}", "WORKERS=0")
    assert_streamed_once(run, "FAILURE", 1)
    assert dict(real_stages(live, run.number))["Train and tune"] == "FAILURE"
    assert "trainchain tune" not in run.console
    why = "WORKERS must be a whole number from 1 to 32, not '0'"
    assert f"ERROR: {why}" in run.console
    body = text(jenkins_mail(live, PIPELINE, run.number, ("FAILURE",)))
    assert "No chain was started" in body and why in body


@pytest.mark.docker
def test_job_4_with_workers_2_runs_two_workers_of_one_chain_on_its_agent(
    live_jenkins: Live, installed: Any, tmp_path: Path
) -> None:
    """Job 4 with WORKERS=2: two trial workers on its agent share the chain's budget (the
    study's trials name two workers); job 4 alone concludes it: UNSTABLE on the goal out
    of reach, job 5's one email says so."""
    import optuna

    from tests.docker_toy import ensure_toy_image
    from trainchain.adapters.containers import connect
    from trainchain.adapters.studies import WORKER_ATTR

    live = live_jenkins
    image = ensure_toy_image(connect(timeout=60), tmp_path / "toy-image")
    repo = workers_toy(tmp_path, image, "workers-toy-4")
    notify_before = live.controller.last_build(CHAIN[4])
    run = follow(live, CHAIN[3], f"REPOSITORY={repo}", f"IMAGE={image}", "WORKERS=2")
    assert_streamed_once(run, "UNSTABLE", 3)
    notify = live.controller.finished(CHAIN[4], notify_before + 1, BUILD_S)
    chain = parameters(notify)["CHAIN"]
    assert parameters(notify)["STATUS"] == "goal_not_reached"
    study = optuna.load_study(study_name=chain, storage=f"sqlite:///{live.home / 'optuna.db'}")
    assert len(study.trials) == WORKERS_BUDGET
    assert len({t.user_attrs[WORKER_ATTR] for t in study.trials}) == 2
    assert chain_mail(live, chain)["X-Trainchain-Status"] == "goal_not_reached"
