"""The Jenkins controller as code: jenkins/Dockerfile, plugins.txt, casc.yaml, agent image.

The pinned controller image cannot be built here (no container registry to pull it
from), so these tests read the files the way Jenkins, jenkins-plugin-cli and Docker
would, and check what each one promises: pinned versions, Configuration as Code that
sets up what the jobs need, and no secret anywhere but a ${VAR} placeholder. The jobs
themselves run on a real, older Jenkins in the jenkins tier (tests/test_jenkins_live.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import unavailable

REPO_ROOT = Path(__file__).resolve().parents[1]
JENKINS = REPO_ROOT / "jenkins"

# ${VAR} as Configuration as Code and docker-compose substitute it (with an optional
# default or error form, ${VAR:-x}, ${VAR?x}); PLACEHOLDER is a whole value that is one.
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")
PLACEHOLDER = re.compile(r"\$\{[A-Z_][A-Z0-9_]*\}")
SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token", "privatekey", "apikey")

REQUIRED_PLUGINS = {
    "workflow-aggregator",
    "pipeline-graph-view",
    "git",
    "github",
    "email-ext",
    "credentials-binding",
    "configuration-as-code",
    "build-pipeline-plugin",
    "parameterized-trigger",
    "timestamper",
    "build-timeout",
    "lockable-resources",
    "pipeline-utility-steps",
    "ssh-slaves",
    "matrix-auth",
    "job-dsl",
    "mailer",
    "workflow-basic-steps",
    "ws-cleanup",
}


def is_secret_key(key: object) -> bool:
    """A key whose value is a secret: password, token, privateKey, ... (not credentialsId)."""
    k = str(key).lower().replace("_", "").replace("-", "")
    if k.endswith(("id", "ids")):
        return False
    return any(word in k for word in SECRET_WORDS)


def scalars(node: Any, path: str = "") -> Iterator[tuple[str, object, object]]:
    """Every (path, key, value) of a parsed YAML tree whose value is not a mapping or list."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict | list):
                yield from scalars(value, f"{path}/{key}")
            else:
                yield f"{path}/{key}", key, value
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from scalars(value, f"{path}[{i}]")


def literal_secrets(tree: Any) -> list[str]:
    """The paths of secret-ish keys whose value is anything but exactly one ${VAR}."""
    return [
        f"{path}={value!r}"
        for path, key, value in scalars(tree)
        if is_secret_key(key) and not PLACEHOLDER.fullmatch(str(value))
    ]


def env_example_keys() -> set[str]:
    keys = set()
    for line in (REPO_ROOT / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keys.add(line.split("=", 1)[0].strip())
    return keys


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


def build_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    return dict(arg.split("=", 1) for kind, arg in instructions if kind == "ARG" and "=" in arg)


@pytest.fixture(scope="module")
def casc() -> dict[str, Any]:
    data = yaml.safe_load((JENKINS / "casc.yaml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def seed_script(casc: dict[str, Any]) -> str:
    scripts = [job["script"] for job in casc["jobs"] if "trainchain-seed" in job["script"]]
    assert len(scripts) == 1, "casc.yaml's jobs: should define the trainchain-seed job once"
    return str(scripts[0])


def plugin_lines() -> list[str]:
    text = (JENKINS / "plugins.txt").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


# ---- jenkins/Dockerfile -------------------------------------------------------------


def test_controller_image_is_an_exact_lts_tag_on_jdk21() -> None:
    """The controller's FROM is an ARG whose default is one exact jenkins/jenkins LTS JDK 21 tag."""
    steps = dockerfile_instructions(JENKINS / "Dockerfile")
    image = build_args(steps)["JENKINS_IMAGE"]
    assert re.fullmatch(r"jenkins/jenkins:\d+\.\d+\.\d+-lts-jdk21", image), image
    assert ("FROM", "${JENKINS_IMAGE}") in steps


def test_controller_image_installs_plugins_txt_with_plugin_cli() -> None:
    """The image copies plugins.txt and installs exactly that file with jenkins-plugin-cli."""
    steps = dockerfile_instructions(JENKINS / "Dockerfile")
    copies = [arg.split()[-2:] for kind, arg in steps if kind == "COPY"]
    target = dict(copies)["plugins.txt"]
    runs = [arg for kind, arg in steps if kind == "RUN"]
    assert any(
        run.startswith("jenkins-plugin-cli") and f"--plugin-file {target}" in run for run in runs
    ), runs


def test_controller_image_reads_casc_yaml_without_setup_wizard() -> None:
    """The image copies casc.yaml where CASC_JENKINS_CONFIG points, and skips the setup wizard."""
    steps = dockerfile_instructions(JENKINS / "Dockerfile")
    copies = dict(arg.split()[-2:] for kind, arg in steps if kind == "COPY")
    env = dict(arg.split("=", 1) for kind, arg in steps if kind == "ENV")
    assert env["CASC_JENKINS_CONFIG"] == copies["casc.yaml"]
    assert "-Djenkins.install.runSetupWizard=false" in env["JAVA_OPTS"]


def test_agent_image_pins_its_bases_and_installs_trainchain_where_casc_puts_it(
    casc: dict[str, Any],
) -> None:
    """The agent image pins its base images and installs trainchain in the venv builds run."""
    steps = dockerfile_instructions(JENKINS / "agent" / "Dockerfile")
    args = build_args(steps)
    assert re.fullmatch(r"jenkins/ssh-agent:\d+\.\d+\.\d+-jdk21", args["SSH_AGENT_IMAGE"])
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", args["PYTHON_IMAGE"])
    runs = " ".join(arg for kind, arg in steps if kind == "RUN")
    assert "/opt/trainchain/scripts/setup.sh" in runs
    env = casc["jenkins"]["globalNodeProperties"][0]["envVars"]["env"]
    path = {e["key"]: e["value"] for e in env}["PATH+TRAINCHAIN"]
    assert path == "/opt/trainchain/.venv/bin"


# ---- jenkins/plugins.txt ------------------------------------------------------------


def test_every_plugin_is_pinned_to_an_exact_version() -> None:
    """Each plugins.txt entry is id:version with an exact version (no latest, no range)."""
    lines = plugin_lines()
    assert lines
    exact = re.compile(r"[a-z0-9][a-z0-9._-]*:\d[0-9A-Za-z._-]*")
    assert [ln for ln in lines if not exact.fullmatch(ln)] == []


def test_no_plugin_is_listed_twice() -> None:
    """No plugin id appears twice in plugins.txt (two pins of one plugin would conflict)."""
    ids = [ln.split(":", 1)[0] for ln in plugin_lines()]
    assert sorted(i for i in set(ids) if ids.count(i) > 1) == []


def test_every_plugin_of_the_image_is_on_the_controller_the_tier_tests_on() -> None:
    """Each plugin of jenkins/plugins.txt is also on ../shared/jenkins, the older Jenkins
    the jenkins tier runs the jobs on (so they are tested with every plugin they may
    use), except configuration-as-code, which that Jenkins has not: there its
    init.groovy.d does what casc.yaml does."""
    shared = REPO_ROOT.parent / "shared" / "jenkins" / "plugins.txt"
    if not shared.is_file():
        unavailable(f"no {shared} (../shared/jenkins beside the checkout)", "jenkins")
    tested = {ln.split(":", 1)[0] for ln in shared.read_text().split() if ":" in ln}
    ids = {ln.split(":", 1)[0] for ln in plugin_lines()}
    assert ids - tested == {"configuration-as-code"}


def test_the_plugins_trainchain_uses_are_installed() -> None:
    """plugins.txt holds every plugin the jobs, the Jenkinsfile and casc.yaml rely on."""
    ids = {ln.split(":", 1)[0] for ln in plugin_lines()}
    assert REQUIRED_PLUGINS - ids == set()


# ---- jenkins/casc.yaml --------------------------------------------------------------


def test_controller_runs_no_builds(casc: dict[str, Any]) -> None:
    """The controller has no executors: every build runs on an agent."""
    assert casc["jenkins"]["numExecutors"] == 0


def test_only_the_admin_exists_and_nobody_signs_up(casc: dict[str, Any]) -> None:
    """The security realm is Jenkins's own user database, signup off, admin password from env."""
    local = casc["jenkins"]["securityRealm"]["local"]
    assert local["allowsSignup"] is False
    users = {u["id"]: u for u in local["users"]}
    assert PLACEHOLDER.fullmatch(users["admin"]["password"])


def test_admin_administers_and_signed_in_users_read_and_build(casc: dict[str, Any]) -> None:
    """Matrix authorisation: admin may administer; any signed-in user may read and build jobs."""
    entries = casc["jenkins"]["authorizationStrategy"]["globalMatrix"]["entries"]
    granted = {
        (kind, entry["name"]): set(entry["permissions"])
        for item in entries
        for kind, entry in item.items()
    }
    assert "Overall/Administer" in granted[("user", "admin")]
    assert {"Overall/Read", "Job/Read", "Job/Build"} <= granted[("group", "authenticated")]
    assert not any(name == "anonymous" for _, name in granted)


def test_a_docker_agent_is_launched_over_ssh(casc: dict[str, Any]) -> None:
    """At least one permanent agent has the docker label and an SSH launcher with a key."""
    nodes = [n["permanent"] for n in casc["jenkins"]["nodes"]]
    docker = [n for n in nodes if "docker" in n["labelString"].split()]
    assert docker
    for node in docker:
        ssh = node["launcher"]["ssh"]
        assert PLACEHOLDER.fullmatch(ssh["host"])
        assert ssh["credentialsId"] == "agent-ssh-key"
        assert node["remoteFS"] == "/home/jenkins/agent"


def test_builds_get_trainchain_and_its_settings(casc: dict[str, Any]) -> None:
    """Every build's environment puts trainchain on PATH and passes its settings from env."""
    env = casc["jenkins"]["globalNodeProperties"][0]["envVars"]["env"]
    values = {e["key"]: e["value"] for e in env}
    for name in (
        "TRAINCHAIN_TRACKING_URI",
        "TRAINCHAIN_STUDY_STORAGE",
        "TRAINCHAIN_SMTP_HOST",
        "TRAINCHAIN_SMTP_PORT",
        "TRAINCHAIN_SMTP_FROM",
        "TRAINCHAIN_SMTP_TO",
    ):
        assert values[name] == "${" + name + "}"


def test_jenkins_mail_goes_through_the_configured_smtp_server(casc: dict[str, Any]) -> None:
    """Both mailer and email-ext name an SMTP host and port; email-ext logs in by credential."""
    unclassified = casc["unclassified"]
    mailer = unclassified["mailer"]
    account = unclassified["extendedEmailPublisher"]["mailAccount"]
    for config in (mailer, account):
        assert PLACEHOLDER.fullmatch(config["smtpHost"])
        assert PLACEHOLDER.fullmatch(config["smtpPort"])
    assert account["credentialsId"] == "trainchain-smtp"


def test_github_webhooks_are_checked_against_a_secret_credential(casc: dict[str, Any]) -> None:
    """The GitHub plugin verifies webhooks with github-webhook-secret, a secret-text credential."""
    hooks = casc["unclassified"]["gitHubPluginConfig"]["hookSecretConfigs"]
    assert [h["credentialsId"] for h in hooks] == ["github-webhook-secret"]
    credentials = casc["credentials"]["system"]["domainCredentials"][0]["credentials"]
    strings = {c["string"]["id"]: c["string"] for c in credentials if "string" in c}
    assert PLACEHOLDER.fullmatch(strings["github-webhook-secret"]["secret"])


def test_every_credential_the_configuration_uses_is_defined(
    casc: dict[str, Any], seed_script: str
) -> None:
    """Each credentials id named in casc.yaml (seed job and the Jenkinsfile's model
    checkout included) is a defined credential."""
    credentials = casc["credentials"]["system"]["domainCredentials"][0]["credentials"]
    defined = {body["id"] for item in credentials for body in item.values()}
    used = {str(v) for _, key, v in scalars(casc) if key in ("credentialsId", "credentials")}
    env = casc["jenkins"]["globalNodeProperties"][0]["envVars"]["env"]
    used.add({e["key"]: e["value"] for e in env}["TRAINCHAIN_GIT_CREDENTIALS"])  # Jenkinsfile
    used |= set(re.findall(r"credentials\('([^']+)'\)", seed_script))
    used |= set(re.findall(r"usernamePassword\([^)]*'([^']+)'\)", seed_script))
    assert {"agent-ssh-key", "trainchain-smtp", "github-webhook-secret"} <= used
    assert "jenkins-api-token" in used
    assert used - defined == set()


def test_seed_job_installs_the_jobs_with_trainchain(seed_script: str) -> None:
    """The seed job checks trainchain out on a trainchain agent and runs its `jenkins install`."""
    assert "freeStyleJob('trainchain-seed')" in seed_script
    assert "label('trainchain')" in seed_script
    assert "url('${TRAINCHAIN_REPOSITORY}')" in seed_script
    assert "shell('trainchain jenkins install --jobs jobs/')" in seed_script
    assert "usernamePassword('JENKINS_USER', 'JENKINS_TOKEN', 'jenkins-api-token')" in seed_script


def test_seed_job_runs_again_when_the_repository_changes(seed_script: str) -> None:
    """The seed job is triggered by a GitHub push and, where no webhook arrives, by polling."""
    triggers = seed_script.split("triggers {", 1)[1].split("}", 1)[0]
    assert "githubPush()" in triggers
    assert re.search(r"scm\('[^']+'\)", triggers)


def test_the_seed_jobs_agent_label_exists(casc: dict[str, Any], seed_script: str) -> None:
    """Some agent carries the label the seed job asks for, so it is not queued forever."""
    label = re.search(r"label\('([^']+)'\)", seed_script)
    assert label
    labels = {
        word
        for node in casc["jenkins"]["nodes"]
        for word in node["permanent"]["labelString"].split()
    }
    assert label.group(1) in labels


def test_the_gpu_lock_the_jenkinsfile_takes_is_declared(casc: dict[str, Any]) -> None:
    """The lockable resource casc.yaml declares is the one the Jenkinsfile locks."""
    jenkinsfile = REPO_ROOT / "Jenkinsfile"
    if not jenkinsfile.exists():
        pytest.skip("no Jenkinsfile in this checkout")
    resources = casc["unclassified"]["lockableResourcesManager"]["declaredResources"]
    names = [r["name"] for r in resources]
    assert names
    text = jenkinsfile.read_text()
    assert all(f"'{name}'" in text or f'"{name}"' in text for name in names), names


def test_casc_holds_no_literal_secret(casc: dict[str, Any]) -> None:
    """Every password, secret, token or key in casc.yaml is exactly one ${VAR} placeholder."""
    assert any(is_secret_key(key) for _, key, _ in scalars(casc))
    assert literal_secrets(casc) == []


def test_no_private_key_or_token_is_committed_in_the_jenkins_files() -> None:
    """No file of the controller or compose setup holds key material or a GitHub token."""
    files = [*JENKINS.rglob("*"), REPO_ROOT / "docker-compose.yml", REPO_ROOT / ".env.example"]
    leaks = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|gh[pousr]_[A-Za-z0-9]{20,}")
    assert [p.name for p in files if p.is_file() and leaks.search(p.read_text())] == []


def variables_used(tree: Any) -> set[str]:
    """The names of every ${VAR} in the values of a parsed YAML tree (comments don't count)."""
    return {name for _, _, value in scalars(tree) for name in VARIABLE.findall(str(value))}


def test_every_casc_variable_is_documented_in_env_example(casc: dict[str, Any]) -> None:
    """Each ${VAR} casc.yaml reads from the environment is listed in .env.example."""
    used = variables_used(casc)
    assert used
    assert used - env_example_keys() == set()


def test_every_plugin_the_job_xml_names_is_pinned() -> None:
    """Each plugin the reviewed job XML refers to is in plugins.txt (or comes with Pipeline)."""
    with_pipeline = {"workflow-cps", "workflow-job"}  # parts of workflow-aggregator
    named = set()
    for path in (REPO_ROOT / "tests" / "expected" / "jobs").iterdir():
        if path.suffix != ".md":
            named |= set(re.findall(r'plugin="([A-Za-z0-9_.-]+?)(?:@[^"]*)?"', path.read_text()))
    assert named, "no plugin attribute found in the expected job XML"
    pinned = {line.split(":", 1)[0] for line in plugin_lines()}
    missing = named - pinned - with_pipeline
    assert not missing, f"jenkins/plugins.txt lacks {sorted(missing)}"
