"""A real Jenkins for the `jenkins` test tier: the controller of ../shared/jenkins
(2.448 and its plugins) with an SSH agent on loopback, and what tests need to drive it.

- :class:`Sshd`: Debian's OpenSSH server (scripts/install-sshd.sh installs it) on a free
  loopback port, with its own configuration, host key and the one client key Jenkins
  logs in with; stopped afterwards. Nothing of the system's sshd is used or changed.
- :class:`Controller`: ../shared/jenkins/start.sh in a home of its own, stopped with
  stop.sh; configured through Jenkins' script console (``/scriptText``), the way its
  init.groovy.d is (this Jenkins has no configuration-as-code plugin): its mail goes to
  an SMTP server on loopback, and an SSH agent carries the labels the jobs ask for, as
  jenkins/casc.yaml sets up docker-agent-1. Its REST API answers what tests check.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from tests.conftest import REPO_ROOT, eventually, start_script
from tests.smtp_server import Inbox

SHARED_JENKINS = REPO_ROOT.parent / "shared" / "jenkins"
SSHD = Path("/usr/sbin/sshd")
HTTP_TIMEOUT_S = 30.0
START_TIMEOUT_S = 300.0

# As jenkins/casc.yaml sets up docker-agent-1: the controller runs no builds, one SSH
# agent labelled `docker trainchain` runs them all (two executors would do: a Pipeline
# holds one for its top-level agent while its training stage takes a second).
AGENT = "agent-1"
AGENT_LABELS = "docker trainchain"
AGENT_EXECUTORS = 3
RECIPIENT = "ml-team@example.com"  # TRAINCHAIN_SMTP_TO of every build
JENKINS_SENDER = "jenkins@example.com"  # Jenkins' own mail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- an SSH server for the agent ---------------------------------------------------------
@dataclass
class Sshd:
    """An sshd on 127.0.0.1 that lets in one key, as the user running the tests."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def client_key(self) -> str:
        return (self.folder / "client_key").read_text()

    @property
    def host_key(self) -> str:
        """The public host key as Jenkins' manually-provided-key verifier takes it."""
        return " ".join((self.folder / "host_key.pub").read_text().split()[:2])

    @classmethod
    def start(cls, folder: Path) -> Sshd:
        folder.mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "client_key"):
            keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"trainchain-{key}"]
            subprocess.run([*keygen, "-f", str(folder / key)], check=True, timeout=60)
        shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
        port = free_port()
        (folder / "sshd_config").write_text(
            "\n".join(
                [
                    "ListenAddress 127.0.0.1",
                    f"Port {port}",
                    f"HostKey {folder / 'host_key'}",
                    f"PidFile {folder / 'sshd.pid'}",
                    f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    # the keys live under /tmp, which is world-writable
                    "StrictModes no",
                    # the ssh-slaves plugin copies remoting.jar over SFTP
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        # sshd's privilege separation folder (the Debian service makes it at start)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with (folder / "sshd.log").open("wb") as log:  # the child keeps its own copy
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(folder / "sshd_config")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        sshd = cls(folder, port, process)

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"sshd exited: {(folder / 'sshd.log').read_text()}")
            return "Server listening" in (folder / "sshd.log").read_text()

        eventually(listening, "sshd to listen", 30, poll=0.1)
        return sshd

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# ---- the controller --------------------------------------------------------------------
# Groovy run through the script console. Values come in as base64 JSON in place of
# {header} (no quoting of keys or paths into Groovy source); each script prints "done"
# when it finished.
_GROOVY_HEADER = """
def cfg = new groovy.json.JsonSlurper().parseText(new String('CFG'.decodeBase64(), 'UTF-8'))
"""

CONFIGURE = """
import jenkins.model.Jenkins
import jenkins.model.JenkinsLocationConfiguration
{header}
// Jenkins' own mail (mailer and email-ext) goes to the SMTP server of the tests.
def mailer = hudson.tasks.Mailer.descriptor()
mailer.setSmtpHost(cfg.smtpHost)
mailer.setSmtpPort(cfg.smtpPort)
mailer.save()
def ext = Jenkins.get().getDescriptorByType(
    hudson.plugins.emailext.ExtendedEmailPublisherDescriptor)
ext.getMailAccount().setSmtpHost(cfg.smtpHost)
ext.getMailAccount().setSmtpPort(cfg.smtpPort)
ext.save()
JenkinsLocationConfiguration.get().setAdminAddress(cfg.sender)
JenkinsLocationConfiguration.get().save()
// Builds start at once: the default 5 s quiet period would only add to every build.
Jenkins.get().setQuietPeriod(0)
Jenkins.get().save()
println('done')
"""

ADD_SSH_AGENT = """
import com.cloudbees.jenkins.plugins.sshcredentials.impl.BasicSSHUserPrivateKey
import com.cloudbees.plugins.credentials.CredentialsScope
import com.cloudbees.plugins.credentials.SystemCredentialsProvider
import com.cloudbees.plugins.credentials.domains.Domain
import hudson.model.Node
import hudson.plugins.sshslaves.SSHLauncher
import hudson.plugins.sshslaves.verifiers.ManuallyProvidedKeyVerificationStrategy
import hudson.slaves.DumbSlave
import hudson.slaves.RetentionStrategy
import jenkins.model.Jenkins
{header}
def key = new BasicSSHUserPrivateKey(CredentialsScope.SYSTEM, cfg.credentialsId, cfg.user,
    new BasicSSHUserPrivateKey.DirectEntryPrivateKeySource(cfg.privateKey), null,
    'SSH key of the test agent')
SystemCredentialsProvider.getInstance().getStore().addCredentials(Domain.global(), key)
def launcher = new SSHLauncher(cfg.host, cfg.port as int, cfg.credentialsId)
launcher.setJavaPath(cfg.javaPath)
launcher.setSshHostKeyVerificationStrategy(new ManuallyProvidedKeyVerificationStrategy(cfg.hostKey))
launcher.setLaunchTimeoutSeconds(60)
launcher.setMaxNumRetries(3)
launcher.setRetryWaitTime(5)
def agent = new DumbSlave(cfg.name, cfg.remoteFS, launcher)
agent.setLabelString(cfg.labels)
agent.setNumExecutors(cfg.executors as int)
// EXCLUSIVE: only builds that ask for one of its labels (never `agent any`)
agent.setMode(cfg.exclusive ? Node.Mode.EXCLUSIVE : Node.Mode.NORMAL)
agent.setRetentionStrategy(new RetentionStrategy.Always())
Jenkins.get().addNode(agent)
println('done')
"""

REMOVE_NODE = """
import jenkins.model.Jenkins
{header}
def node = Jenkins.get().getNode(cfg.name)
if (node != null) {
    Jenkins.get().removeNode(node)
}
println('done')
"""

SET_NODE_ENV = """
import hudson.slaves.EnvironmentVariablesNodeProperty
import jenkins.model.Jenkins
{header}
def node = Jenkins.get().getNode(cfg.name)
node.getNodeProperties().removeAll(EnvironmentVariablesNodeProperty)
if (cfg.env) {
    def entries = cfg.env.collect { k, v -> new EnvironmentVariablesNodeProperty.Entry(k, v) }
    node.getNodeProperties().add(new EnvironmentVariablesNodeProperty(entries))
}
Jenkins.get().updateNode(node)
println('done')
"""


@dataclass
class Controller:
    """A Jenkins started by ../shared/jenkins/start.sh, and its REST API."""

    url: str
    user: str
    token: str = field(repr=False)
    home: Path
    http: requests.Session = field(default_factory=requests.Session, repr=False)

    def __post_init__(self) -> None:
        self.http.auth = (self.user, self.token)

    @property
    def env(self) -> dict[str, str]:
        """JENKINS_URL, JENKINS_USER and JENKINS_TOKEN, as `trainchain jenkins` reads them."""
        return {"JENKINS_URL": self.url, "JENKINS_USER": self.user, "JENKINS_TOKEN": self.token}

    @classmethod
    def start(
        cls, home: Path, *, labels: str, executors: int, env: Mapping[str, str]
    ) -> Controller:
        argv = [str(SHARED_JENKINS / "start.sh"), "--home", str(home), "--labels", labels]
        argv += ["--executors", str(executors)]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        exported = start_script(argv, timeout=START_TIMEOUT_S + 30)
        return cls(
            exported["JENKINS_URL"],
            exported["JENKINS_USER"],
            exported["JENKINS_TOKEN"],
            Path(exported["JENKINS_HOME"]),
        )

    def stop(self) -> None:
        self.http.close()
        subprocess.run([str(SHARED_JENKINS / "stop.sh"), str(self.home)], check=False, timeout=120)

    # -- HTTP --
    def get(self, path: str, **params: Any) -> requests.Response:
        response = self.http.get(self.url + path, params=params, timeout=HTTP_TIMEOUT_S)
        response.raise_for_status()
        return response

    def json(self, path: str, **params: Any) -> Any:
        return self.get(path.rstrip("/") + "/api/json", **params).json()

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        response = self.http.post(self.url + path, timeout=HTTP_TIMEOUT_S, **kwargs)
        response.raise_for_status()
        return response

    def groovy(self, template: str, **cfg: Any) -> None:
        """Run a script of this module in the script console with ``cfg``."""
        encoded = base64.b64encode(json.dumps(cfg).encode()).decode()
        script = template.replace("{header}", _GROOVY_HEADER.replace("CFG", encoded))
        out = self.post("scriptText", data={"script": script}).text
        if out.strip().splitlines()[-1:] != ["done"]:
            raise AssertionError(f"the script console answered:\n{out}")

    # -- set-up --
    def configure(self, *, smtp_port: int, sender: str) -> None:
        self.groovy(CONFIGURE, smtpHost="127.0.0.1", smtpPort=str(smtp_port), sender=sender)

    def add_ssh_agent(
        self,
        name: str,
        sshd: Sshd,
        *,
        labels: str,
        executors: int,
        remote_fs: Path,
        exclusive: bool = False,
    ) -> None:
        """An SSH agent through ``sshd``, online when this returns; ``exclusive``: it runs
        only what asks for one of its labels."""
        java = shutil.which("java")
        assert java, "start.sh installs Java; it is gone"
        self.groovy(
            ADD_SSH_AGENT,
            name=name,
            labels=labels,
            executors=executors,
            remoteFS=str(remote_fs),
            host="127.0.0.1",
            port=sshd.port,
            hostKey=sshd.host_key,
            user=getpass.getuser(),
            credentialsId=f"{name}-ssh-key",
            privateKey=sshd.client_key,
            javaPath=java,
            exclusive=exclusive,
        )
        self.wait_online(name)

    def remove_node(self, name: str) -> None:
        """Remove an agent (its running builds lose it); nothing when there is none."""
        self.groovy(REMOVE_NODE, name=name)

    def wait_online(self, name: str, timeout: float = 120) -> None:
        eventually(
            lambda: not self.json(f"computer/{quote(name)}")["offline"],
            f"agent {name} to come online (its log: {self.url}computer/{name}/log)",
            timeout,
        )

    def set_offline(self, name: str, offline: bool) -> None:
        """Mark an agent temporarily offline (Jenkins' "Mark this node temporarily
        offline"), or back online."""
        if self.json(f"computer/{quote(name)}")["temporarilyOffline"] != offline:
            self.post(f"computer/{quote(name)}/toggleOffline", params={"offlineMessage": "test"})
        if not offline:
            self.wait_online(name)

    def set_node_env(self, name: str, env: Mapping[str, str]) -> None:
        """The agent's own environment variables for builds (none: ``{}``)."""
        self.groovy(SET_NODE_ENV, name=name, env=dict(env))

    # -- jobs and builds --
    def last_build(self, job: str) -> int:
        """The job's last build number; 0 before its first build."""
        last = self.json(f"job/{quote(job)}", tree="lastBuild[number]")["lastBuild"]
        return int(last["number"]) if last else 0

    def build(self, job: str, number: int) -> dict[str, Any]:
        info: dict[str, Any] = self.json(f"job/{quote(job)}/{number}")
        return info

    def console(self, job: str, number: int) -> str:
        return self.get(f"job/{quote(job)}/{number}/consoleText").text

    def finished(self, job: str, number: int, timeout: float) -> dict[str, Any]:
        """Build ``number`` of ``job`` once it exists and has finished (bounded)."""

        def done() -> dict[str, Any] | None:
            if self.last_build(job) < number:
                return None
            info = self.build(job, number)
            return None if info["building"] or info["result"] is None else info

        return eventually(done, f"{job} #{number} to finish", timeout, poll=1)

    def stages(self, job: str, number: int) -> list[tuple[str, str]]:
        """(name, state) of each stage a Pipeline build ran, from the Pipeline Graph
        View plugin's API; the synthetic ones declarative adds are marked with a '*'."""
        tree = self.get(f"job/{quote(job)}/{number}/pipeline-graph/tree").json()["data"]
        return [(s["name"] + ("*" if s["synthetic"] else ""), s["state"]) for s in tree["stages"]]


def parameters(build: Mapping[str, Any]) -> dict[str, str]:
    """A build's parameters, from its api/json."""
    return {
        p["name"]: str(p.get("value", ""))
        for action in build.get("actions") or []
        for p in (action or {}).get("parameters") or []
    }


def causes(build: Mapping[str, Any]) -> list[str]:
    """What started a build, as Jenkins words it ("Started by timer", ...)."""
    return [
        c["shortDescription"]
        for action in build.get("actions") or []
        for c in (action or {}).get("causes") or []
    ]


def start_trainchain(env: Mapping[str, str], *args: str) -> subprocess.Popen[str]:
    """`trainchain ARGS` in the background, with ``env`` over this process's environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "trainchain", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def wait_done(process: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """A `trainchain` subprocess's exit status and output, once it ended (bounded)."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"still running after {timeout:g} s:\n{out}\n{err}") from None
    return process.returncode, out, err


@dataclass
class Live:
    """The running tier: the controller, its agent, the SMTP inbox both trainchain and
    Jenkins send to, and ``home``, the TRAINCHAIN_HOME of every build."""

    controller: Controller
    inbox: Inbox
    home: Path
    sshd: Sshd  # more agents may log in through it too
    root: Path  # a folder of the tier's own (agents' remote folders, ...)
    agent: str = AGENT


@contextmanager
def live_jenkins(root: Path, inbox: Inbox, smtp_port: int) -> Iterator[Live]:
    """Start sshd, the controller (no executors of its own) and its SSH agent; builds get
    trainchain on PATH (this interpreter's environment), their own TRAINCHAIN_HOME and
    the SMTP server; stop all of it afterwards."""
    sshd = Sshd.start(root / "sshd")
    try:
        home = root / "trainchain-home"
        controller = Controller.start(
            root / "jenkins-home",
            labels="controller",
            executors=0,
            env={
                "PATH+TRAINCHAIN": str(Path(sys.executable).parent),
                "TRAINCHAIN_HOME": str(home),
                "TRAINCHAIN_SMTP_HOST": "127.0.0.1",
                "TRAINCHAIN_SMTP_PORT": str(smtp_port),
                "TRAINCHAIN_SMTP_FROM": "trainchain@example.com",
                "TRAINCHAIN_SMTP_TO": RECIPIENT,
            },
        )
        try:
            controller.configure(smtp_port=smtp_port, sender=JENKINS_SENDER)
            controller.add_ssh_agent(
                AGENT,
                sshd,
                labels=AGENT_LABELS,
                executors=AGENT_EXECUTORS,
                remote_fs=root / "agent",
            )
            yield Live(controller, inbox, home, sshd, root)
        finally:
            controller.stop()
            # the bulk of a Jenkins home is its copies of the war and the plugins
            for bulky in ("war", "plugins"):
                shutil.rmtree(controller.home / bulky, ignore_errors=True)
    finally:
        sshd.stop()
