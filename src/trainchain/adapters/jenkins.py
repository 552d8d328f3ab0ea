"""The Jenkins adapter: Jenkins Job Builder renders the job definitions offline,
python-jenkins installs them, triggers builds and follows them.

Bounded everywhere: every HTTP call has a timeout, every wait a deadline. A failed
call becomes a :class:`JenkinsError` that names the URL, the HTTP status and what to
check. The API token never appears in a message, a log line or a repr.
"""

from __future__ import annotations

import codecs
import enum
import importlib
import logging
import re
import tempfile
import time
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

import requests

from trainchain.core.errors import ConfigError, TrainchainError
from trainchain.core.redaction import redact
from trainchain.core.status import ExitCode

with warnings.catch_warnings():
    # Jenkins Job Builder 6.5 imports pkg_resources, which warns on import.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    from jenkins_jobs.alphanum import AlphanumSort
    from jenkins_jobs.config import JJBConfig
    from jenkins_jobs.errors import JenkinsJobsException
    from jenkins_jobs.loader import load_files
    from jenkins_jobs.registry import ModuleRegistry
    from jenkins_jobs.roots import Roots
    from jenkins_jobs.xml_config import XmlJobGenerator, XmlViewGenerator

log = logging.getLogger(__name__)

# python-jenkins is the top-level module `jenkins`. It is imported by name because the
# repository's own jenkins/ folder (the controller image) is a namespace package to mypy,
# which puts the working directory on its search path; Python itself prefers the
# installed regular package.
python_jenkins: Any = importlib.import_module("jenkins")

# The settings `jenkins-jobs test` uses without a config file, written out so that no
# ~/.config/jenkins_jobs or /etc/jenkins_jobs file changes what we render.
_JJB_INI = """\
[job_builder]
keep_descriptions=False
recursive=False
allow_duplicates=False
allow_empty_variables=False
retain_anchors=False

[jenkins]
url=http://localhost:8080/
query_plugins_info=False
"""

_CREDENTIALS_HINT = (
    "check JENKINS_USER (--user) and JENKINS_TOKEN (--token): the token is an API token "
    "made on the user's Security page in Jenkins, not the password"
)
_INSTALL_HINT = "check the job name; `trainchain jenkins install` creates the trainchain jobs"


class JenkinsError(TrainchainError):
    """Jenkins could not be reached, refused a call, or a build could not be followed."""

    exit_code = ExitCode.JENKINS

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        url: str | None = None,
        status: int | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message, hint)
        self.url = url
        self.status = status
        self.unreachable = unreachable  # no connection was made: nothing reached Jenkins

    @property
    def transient(self) -> bool:
        """Worth trying again shortly: Jenkins could not be connected to (down, restarting)
        or answered 5xx (a proxy in front of a Jenkins that is down, or Jenkins starting).
        A timeout is not: the call may have been carried out without an answer."""
        return self.unreachable or (self.status is not None and self.status >= 500)


ENV_VARS = {"url": "JENKINS_URL", "user": "JENKINS_USER", "token": "JENKINS_TOKEN"}
_ENV_HINTS = {
    "url": "the Jenkins root, e.g. http://jenkins.example.com:8080/",
    "user": "the Jenkins user the jobs are installed and triggered as",
    "token": "an API token of that user (Jenkins: the user's Security page > API Token)",
}


@dataclass(frozen=True)
class Connection:
    url: str
    user: str
    token: str = field(repr=False)  # never in repr, logs or messages
    timeout: float = 30.0  # seconds, for each HTTP call

    def __post_init__(self) -> None:
        if urlsplit(self.url).scheme not in {"http", "https"} or not urlsplit(self.url).netloc:
            raise ConfigError(
                f"Jenkins URL {redact(self.url)!r} is not an http(s) URL",
                hint="pass the Jenkins root, e.g. --url http://jenkins.example.com:8080/",
            )
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be positive but got {self.timeout:g}")

    @property
    def base(self) -> str:
        return self.url if self.url.endswith("/") else self.url + "/"

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        *,
        timeout: float = 30.0,
        given: Mapping[str, str | None] | None = None,
    ) -> Connection:
        """The connection from ``given`` (command-line options, when the command takes them),
        else from JENKINS_URL, JENKINS_USER and JENKINS_TOKEN in ``env`` (the environment
        an entry point read)."""
        values: dict[str, str] = {}
        for key, var in ENV_VARS.items():
            value = ((given or {}).get(key) or env.get(var, "")).strip()
            if not value:
                option = f" and --{key} was not given" if given is not None else ""
                raise ConfigError(
                    f"{var} is not set{option}",
                    hint=f"set {var}{f' (or pass --{key})' if given is not None else ''} "
                    f"to {_ENV_HINTS[key]}",
                )
            values[key] = value
        return cls(values["url"], values["user"], values["token"], timeout=timeout)


# ---- rendering: Jenkins Job Builder, offline ------------------------------------


@dataclass(frozen=True)
class RenderedItem:
    kind: Literal["job", "view"]
    name: str
    xml: str


def default_jobs_dir() -> Path:
    """``jobs/`` of the trainchain checkout (the repository root of this src layout)."""
    return Path(__file__).resolve().parents[3] / "jobs"


def _jjb_config() -> Any:
    with tempfile.TemporaryDirectory(prefix="trainchain-jjb-") as tmp:
        ini = Path(tmp) / "jenkins_jobs.ini"
        ini.write_text(_JJB_INI)
        return JJBConfig(str(ini))


def render(jobs_dir: Path) -> list[RenderedItem]:
    """The job and view XML of the JJB YAML files in ``jobs_dir``, as
    ``jenkins-jobs test`` makes it: jobs, then views, each in JJB's name order."""
    if not jobs_dir.is_dir():
        raise ConfigError(f"no job definitions: {jobs_dir} is not a folder", hint="pass --jobs DIR")
    files = sorted(p for p in jobs_dir.iterdir() if p.suffix in {".yaml", ".yml"})
    if not files:
        raise ConfigError(
            f"no job definitions in {jobs_dir}: expected Jenkins Job Builder YAML files "
            "(*.yaml, *.yml)",
            hint="pass --jobs DIR",
        )
    config = _jjb_config()
    try:
        roots = Roots(config)
        load_files(config, roots, [jobs_dir])
        registry = ModuleRegistry(config, config.builder["plugins_info"])
        registry.set_macros(roots.macros)
        jobs = roots.generate_jobs()
        views = roots.generate_views()
        registry.amend_job_dicts(jobs)
        xml_jobs = XmlJobGenerator(registry).generateXML(jobs)
        xml_views = XmlViewGenerator(registry).generateXML(views)
    except JenkinsJobsException as err:
        lines = list(err.lines)
        where = "" if any(str(jobs_dir) in line for line in lines) else f" (in {jobs_dir})"
        raise ConfigError(
            f"Jenkins Job Builder cannot render the job definitions{where}:\n"
            + "\n".join("    " + line for line in lines),
            hint="fix the YAML named above; the JJB documentation lists each module's keys",
        ) from None
    except Exception as err:  # YAML syntax errors and JJB's own bugs, with their messages
        raise ConfigError(
            f"Jenkins Job Builder cannot read the job definitions in {jobs_dir}:\n"
            + "\n".join("    " + line for line in str(err).splitlines()),
            hint="fix the YAML named above",
        ) from None
    xml_jobs.sort(key=AlphanumSort)
    xml_views.sort(key=AlphanumSort)
    items = [RenderedItem("job", j.name, j.output().decode("utf-8")) for j in xml_jobs]
    items += [RenderedItem("view", v.name, v.output().decode("utf-8")) for v in xml_views]
    return items


def write_rendered(items: Sequence[RenderedItem], out: Path) -> list[Path]:
    """One file per item, named as ``jenkins-jobs test -o OUT`` names them."""
    written = []
    for item in items:
        path = out / item.name  # a folder/name item goes into a sub-folder, as in JJB
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item.xml, encoding="utf-8")
        written.append(path)
    return written


# ---- comparing configurations ------------------------------------------------------


def _parse(xml: str) -> ET.Element:
    # Our own rendering, or the config.xml of the server we authenticated to; expat
    # (2.4.1 and later, bundled with Python 3.11) resolves no external entities and
    # bounds entity expansion.
    return ET.fromstring(xml.encode("utf-8"))  # noqa: S314


def _plugin_name(value: str) -> str:
    return value.split("@", 1)[0]


def _attributes_covered(server: ET.Element, ours: ET.Element) -> bool:
    for key, value in ours.attrib.items():
        theirs = server.attrib.get(key)
        if theirs is None and key == "class":
            continue  # XStream writes no class for a field's default type (JJB's "vector")
        if theirs is None:
            return False
        if key == "plugin" and _plugin_name(theirs) == _plugin_name(value):
            continue
        if theirs != value:
            return False
    return True


def _by_tag(element: ET.Element) -> dict[str, list[ET.Element]]:
    groups: dict[str, list[ET.Element]] = {}
    for child in element:
        groups.setdefault(child.tag, []).append(child)
    return groups


# Fields Jenkins Job Builder 6.5 writes that their classes no longer have: Jenkins
# reads and ignores them, and leaves them out when it next saves the job (each build
# of a Pipeline job saves it). Measured on Jenkins 2.448 with git 5.2.1 and
# workflow-cps 3883.
_DROPPED_FIELDS = {
    "hudson.plugins.git.GitSCM": frozenset(
        {
            "disableSubmodules",
            "recursiveSubmodules",
            "remotePoll",
            "reference",
            "gitConfigName",
            "gitConfigEmail",
        }
    ),
    "org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition": frozenset({"sandbox"}),
}


def _covers(server: ET.Element, ours: ET.Element) -> bool:
    """Whether ``server`` holds everything ``ours`` asks for.

    Jenkins stores a posted config.xml through XStream and serves it back re-written:
    another XML declaration and indentation, plugin versions in ``plugin="name@1.2"``,
    no ``class`` where it is the field's default type, fields in class order, and
    defaults we did not write (``<disabled>false</disabled>``,
    ``<triggers/>``), no element for a null field (an empty default value) or for a
    field the class no longer has (:data:`_DROPPED_FIELDS`). So: our attributes, text
    and children must all be there (but for those missing ones); children
    of one tag match in order and in number (a builder added or removed is a change);
    extra leaf elements on the server are defaults (or the job's disabled state, which JJB
    leaves alone too), while an extra element with children is a change.
    """
    if server.tag != ours.tag or not _attributes_covered(server, ours):
        return False
    if len(ours) == 0 and (ours.text or "").strip() != (server.text or "").strip():
        return False
    theirs, mine = _by_tag(server), _by_tag(ours)
    dropped = _DROPPED_FIELDS.get(ours.get("class", ""), frozenset())
    for tag, children in mine.items():
        if tag not in theirs and (tag in dropped or all(_is_empty(c) for c in children)):
            continue
        if len(theirs.get(tag, [])) != len(children):
            return False
        if not all(_covers(t, m) for t, m in zip(theirs[tag], children, strict=True)):
            return False
    extra = [child for tag, group in theirs.items() if tag not in mine for child in group]
    return all(len(child) == 0 for child in extra)


def _is_empty(element: ET.Element) -> bool:
    return not element.attrib and len(element) == 0 and not (element.text or "").strip()


def same_config(ours: str, server: str) -> bool:
    """Whether the server's config.xml already is our rendered one (see :func:`_covers`)."""
    try:
        return _covers(_parse(server), _parse(ours))
    except ET.ParseError:
        return False  # unreadable on the server: write ours


_PARAMETER_DEFINITIONS = "properties/hudson.model.ParametersDefinitionProperty/parameterDefinitions"


def keep_pipeline_state(ours: str, server: str) -> str:
    """``ours`` with what a Pipeline job's own builds wrote into the job on ``server``.

    Each build of a declarative Pipeline rewrites its job's parameters from the
    Jenkinsfile (as Jenkins writes them, defaults included: the Jenkinsfile's REPOSITORY
    default is the last build's value, which a push-started build reuses), and records
    in the job's ``<actions>`` which properties it set. Those belong to the builds:
    jobs/ gives the first definitions (so the first build can take parameters) and any
    parameter the builds have not defined yet; install neither reports the builds'
    definitions as a change nor writes over them. Any other job, or a server config
    that cannot be read, leaves ``ours`` as it is.
    """
    try:
        mine, theirs = _parse(ours), _parse(server)
    except ET.ParseError:
        return ours
    if mine.tag != "flow-definition" or theirs.tag != mine.tag:
        return ours
    actions = theirs.find("actions")
    if actions is not None:
        for old in mine.findall("actions"):
            mine.remove(old)
        mine.insert(0, actions)
    built = {(d.tag, d.findtext("name")): d for d in theirs.iterfind(f"{_PARAMETER_DEFINITIONS}/*")}
    definitions = mine.find(_PARAMETER_DEFINITIONS)
    if definitions is not None:
        for i, definition in enumerate(list(definitions)):
            key = (definition.tag, definition.findtext("name"))
            if key in built:
                definitions[i] = built[key]
    return "<?xml version='1.1' encoding='UTF-8'?>\n" + ET.tostring(mine, encoding="unicode")


# ---- talking to Jenkins --------------------------------------------------------


class Action(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Build:
    job: str
    number: int
    url: str  # as Jenkins reports it (its configured root URL)


@dataclass(frozen=True)
class BuildState:
    job: str
    number: int
    url: str
    building: bool
    result: str | None  # SUCCESS, UNSTABLE, FAILURE, ABORTED, NOT_BUILT; None while building
    duration_s: float  # elapsed so far while building


@dataclass(frozen=True)
class JobStatus:
    job: str
    exists: bool
    last_build: BuildState | None
    in_queue: bool = False


class _RecordingJenkins(python_jenkins.Jenkins):  # type: ignore[misc]
    """python-jenkins, remembering the last request's method, URL and HTTP status.

    python-jenkins turns many failures into a bare message ("job[x] does not exist");
    what it last asked and what the server answered make the message useful."""

    last_method = ""
    last_url = ""
    last_status: int | None = None

    def _request(self, req: requests.Request, stream: bool | None = None) -> requests.Response:
        self.last_method, self.last_url, self.last_status = str(req.method), str(req.url), None
        response: requests.Response = super()._request(req, stream)
        self.last_status = response.status_code
        return response


def job_path(name: str) -> str:
    """``job/a/job/b/`` for the job ``a/b`` (a job in a folder)."""
    return "".join(f"job/{quote(part, safe='')}/" for part in name.split("/"))


def _status_hint(status: int | None, method: str, url: str, not_found_hint: str) -> str:
    if status == 401:
        return _CREDENTIALS_HINT
    if status == 403:
        return (
            "the user may lack the permission this needs (Overall/Read, Job/Configure, "
            "Job/Create, Job/Build, View/Configure) or the token is wrong; " + _CREDENTIALS_HINT
        )
    if status == 404:
        return not_found_hint
    if status in {400, 500} and method == "POST" and ("config.xml" in url or "create" in url):
        return (
            "Jenkins could not load the XML: check that the plugins the job uses are "
            "installed (jenkins/plugins.txt) and read the Jenkins log"
        )
    return "read the Jenkins log (Manage Jenkins > System Log) for the cause"


class JenkinsClient:
    """One Jenkins server, through python-jenkins; every call bounded by the timeout."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.server = connection.base
        self._jenkins = _RecordingJenkins(
            connection.url, connection.user, connection.token, timeout=connection.timeout
        )

    def close(self) -> None:
        self._jenkins._session.close()

    def __enter__(self) -> JenkinsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- errors --
    @contextmanager
    def _call(self, what: str, not_found_hint: str | None = None) -> Iterator[None]:
        """Turn python-jenkins' and requests' exceptions into one JenkinsError."""
        j = self._jenkins
        server = redact(self.server)
        try:
            yield
        except JenkinsError:
            raise
        except (python_jenkins.TimeoutException, requests.Timeout):
            raise JenkinsError(
                f"{what}: no answer from Jenkins within {self.connection.timeout:g} s "
                f"({j.last_method} {redact(j.last_url)})",
                hint=f"check that Jenkins is up at {server} and answers from here; "
                "a slow server needs a longer --timeout",
                url=j.last_url,
            ) from None
        except requests.ConnectionError as err:
            reason = str(err)
            errno = re.search(r"\[Errno -?\d+\] [^'\")]+", reason)
            if "refused" in reason.lower():
                reason = "connection refused"
            elif errno:
                reason = errno[0]
            raise JenkinsError(
                f"{what}: cannot connect to Jenkins at {server} ({_short(reason)})",
                hint="check the URL (JENKINS_URL or --url) and that Jenkins is up and "
                "reachable from this machine",
                url=j.last_url or self.server,
                unreachable=True,
            ) from None
        except (python_jenkins.JenkinsException, requests.RequestException, ValueError) as err:
            status = j.last_status
            url = redact(j.last_url or self.server)
            if status is None or 200 <= status < 300:
                raise JenkinsError(
                    f"{what}: {j.last_method} {url}: {_short(str(err))}",
                    hint=f"check that {server} is the root of a Jenkins (not a proxy's or a "
                    "login page), then read the Jenkins log (Manage Jenkins > System Log)",
                    url=j.last_url,
                    status=status,
                ) from None
            try:
                reason = HTTPStatus(status).phrase
            except ValueError:
                reason = ""
            who = f" (user {self.connection.user!r})" if status in {401, 403} else ""
            hint = _status_hint(
                status,
                j.last_method,
                j.last_url,
                not_found_hint
                or f"check the URL: {server} should be the Jenkins root "
                "(e.g. http://host:8080/ or http://host/jenkins/)",
            )
            raise JenkinsError(
                f"{what}: Jenkins answered HTTP {status} {reason}{who} to {j.last_method} {url}",
                hint=hint,
                url=j.last_url,
                status=status,
            ) from None

    # -- identity --
    def whoami(self) -> str:
        with self._call(f"checking the credentials on {redact(self.server)}"):
            me = self._jenkins.get_whoami()
        return str(me.get("id") or me.get("fullName") or "")

    # -- install --
    def install(self, items: Sequence[RenderedItem]) -> Iterator[tuple[Action, RenderedItem]]:
        """Create or reconfigure each item; leave it alone when the server has it already."""
        for item in items:
            yield self._install_one(item), item

    def _install_one(self, item: RenderedItem) -> Action:
        j = self._jenkins
        is_job = item.kind == "job"
        exists, get, create, reconfig = (
            (j.job_exists, j.get_job_config, j.create_job, j.reconfig_job)
            if is_job
            else (j.view_exists, j.get_view_config, j.create_view, j.reconfig_view)
        )
        with self._call(f"installing {item.kind} {item.name!r}"):
            if not exists(item.name):
                create(item.name, item.xml)
                return Action.CREATED
            server = get(item.name)
            wanted = keep_pipeline_state(item.xml, server) if is_job else item.xml
            if same_config(wanted, server):
                return Action.UNCHANGED
            reconfig(item.name, wanted)
            return Action.UPDATED

    # -- trigger --
    def job_info(self, job: str) -> dict[str, Any]:
        with self._call(f"reading job {job!r}", not_found_hint=_INSTALL_HINT):
            info: dict[str, Any] = self._jenkins.get_job_info(job)
        return info

    def trigger(self, job: str, params: Mapping[str, str]) -> int:
        """Queue a build of ``job`` with ``params``; the queue item's number."""
        defined = parameter_names(self.job_info(job))
        if params and not defined:
            raise JenkinsError(
                f"job {job!r} takes no parameters, but got {', '.join(params)}",
                hint="drop --param, or define the parameters in jobs/ and run "
                "`trainchain jenkins install`",
            )
        unknown = [k for k in params if k not in defined]
        if unknown:
            raise JenkinsError(
                f"job {job!r} has no parameter {', '.join(unknown)}: its parameters are "
                + ", ".join(defined),
                hint="Jenkins ignores unknown parameters; check the names",
            )
        with self._call(f"triggering {job!r}", not_found_hint=_INSTALL_HINT):
            if params or not defined:
                return int(self._jenkins.build_job(job, dict(params) or None))
            # parameterized, all defaults: /build would want a form, buildWithParameters not
            url = f"{self.server}{job_path(job)}buildWithParameters"
            response = self._jenkins.jenkins_request(requests.Request("POST", url))
            location = response.headers.get("Location", "")
            try:
                return int(location.rstrip("/").rsplit("/", 1)[-1])
            except ValueError:
                raise JenkinsError(
                    f"triggering {job!r}: Jenkins sent no queue item (Location: {location!r})",
                    url=url,
                ) from None

    def queue_url(self, number: int) -> str:
        return f"{self.server}queue/item/{number}/"

    def wait_until_started(
        self,
        job: str,
        queue_number: int,
        *,
        timeout: float,
        poll: float,
        on_waiting: Callable[[str], None] = lambda why: None,
    ) -> Build:
        """Follow the queue item to its build; bounded by ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        why = ""
        while True:
            with self._call(f"following queue item {queue_number} of {job!r}"):
                item: dict[str, Any] = self._jenkins.get_queue_item(queue_number)
            if item.get("cancelled"):
                raise JenkinsError(
                    f"the build of {job!r} was cancelled in the queue "
                    f"({self.queue_url(queue_number)})",
                    hint="someone cancelled it in Jenkins, or the job was disabled or "
                    "deleted; trigger it again",
                    url=self.queue_url(queue_number),
                )
            executable = item.get("executable")
            if executable and executable.get("number") is not None:
                return Build(job, int(executable["number"]), str(executable.get("url", "")))
            now_why = str(item.get("why") or "waiting in the queue")
            if _reason_kind(now_why) != _reason_kind(why):
                on_waiting(now_why)  # once per reason, not per countdown step
            why = now_why
            if time.monotonic() >= deadline:
                raise JenkinsError(
                    f"the build of {job!r} is still queued after {timeout:g} s: {why}",
                    hint="check that an agent with the job's label is online and has a free "
                    f"executor; the item stays queued ({self.queue_url(queue_number)}): "
                    "cancel it in Jenkins or wait longer with --queue-timeout",
                    url=self.queue_url(queue_number),
                )
            time.sleep(poll)

    def build_state(self, job: str, number: int) -> BuildState:
        with self._call(f"reading build #{number} of {job!r}", not_found_hint=_INSTALL_HINT):
            info: dict[str, Any] = self._jenkins.get_build_info(job, number)
        building = bool(info.get("building"))
        if building and info.get("timestamp"):
            duration = max(0.0, time.time() - float(info["timestamp"]) / 1000)
        else:
            duration = float(info.get("duration") or 0) / 1000
        return BuildState(
            job=job,
            number=int(info.get("number", number)),
            url=str(info.get("url", "")),
            building=building,
            result=info.get("result"),
            duration_s=duration,
        )

    def stream_console(
        self, build: Build, write: Callable[[str], None], *, deadline: float, poll: float
    ) -> None:
        """Write the build's console as it grows, each byte once, until it is complete.

        Jenkins' progressive text: ``logText/progressiveText?start=N`` answers the text
        from byte N, ``X-Text-Size`` the next N, and ``X-More-Data: true`` while the log
        may still grow."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        start = 0
        base = f"{self.server}{job_path(build.job)}{build.number}/logText/progressiveText"
        while True:
            url = f"{base}?{urlencode({'start': start})}"
            with self._call(
                f"reading the console of {build.job} #{build.number}",
                not_found_hint=f"build #{build.number} of {build.job!r} may have been deleted",
            ):
                response = self._jenkins.jenkins_request(requests.Request("GET", url))
            body = response.content
            text = decoder.decode(body)
            if text:
                write(text)
            size = response.headers.get("X-Text-Size")
            start = int(size) if size and size.isdigit() else start + len(body)
            if response.headers.get("X-More-Data", "").lower() != "true":
                rest = decoder.decode(b"", final=True)
                if rest:
                    write(rest)
                return
            if time.monotonic() >= deadline:
                raise _still_running(build)
            time.sleep(poll)

    def wait_for_result(self, build: Build, *, deadline: float, poll: float) -> BuildState:
        """Poll the build until it has finished and has a result."""
        while True:
            state = self.build_state(build.job, build.number)
            if not state.building and state.result is not None:
                return state
            if time.monotonic() >= deadline:
                raise _still_running(build)
            time.sleep(poll)

    # -- status --
    def status(self, job: str) -> JobStatus:
        try:
            info = self.job_info(job)
        except JenkinsError as err:
            if err.status == 404:
                return JobStatus(job, exists=False, last_build=None)
            raise
        last = info.get("lastBuild")
        state = self.build_state(job, int(last["number"])) if last else None
        return JobStatus(job, exists=True, last_build=state, in_queue=bool(info.get("inQueue")))


def parameter_names(job_info: Mapping[str, Any]) -> list[str]:
    """The names of a job's build parameters, from its ``api/json``."""
    names: list[str] = []
    for group in ("property", "actions"):
        for entry in job_info.get(group) or []:
            for definition in (entry or {}).get("parameterDefinitions") or []:
                name = definition.get("name")
                if name and name not in names:
                    names.append(str(name))
    return names


def _reason_kind(why: str) -> str:
    """A queue item's reason without its numbers ("In the quiet period. Expires in 4.9
    sec" and "... 3.9 sec" are one reason)."""
    return re.sub(r"\d+(?:\.\d+)?", "#", why)


def _still_running(build: Build) -> JenkinsError:
    return JenkinsError(
        f"{build.job} #{build.number} is still running at the end of --timeout; it goes on "
        f"in Jenkins: {build.url}",
        hint="follow it in Jenkins, or again with a longer --timeout",
        url=build.url,
    )


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
