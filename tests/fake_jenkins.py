"""A stand-in for a Jenkins server, for the tests of `trainchain jenkins`.

A Jenkins controller cannot run on this machine (no Java, and no container registry to
pull ``jenkins/jenkins`` from), so this is a real HTTP server on 127.0.0.1 (stdlib
``ThreadingHTTPServer`` in a thread) that answers the documented Jenkins REST
endpoints python-jenkins and trainchain call, with state. The same commands run
against a real Jenkins in tests/test_jenkins_live.py when JENKINS_URL, JENKINS_USER
and JENKINS_TOKEN are set.

Endpoints (every one needs HTTP basic auth with the user and API token, else 401;
every answer carries ``X-Jenkins``):

- ``GET /api/json``: jobs and views
- ``GET /crumbIssuer/api/json``: a CSRF crumb; a POST without it gets 403
- ``GET /me/api/json``: the authenticated user (python-jenkins ``get_whoami``)
- ``GET /job/NAME/api/json``: name, parameters (read from config.xml), ``lastBuild``,
  ``inQueue``; ``?tree=name`` is what ``job_exists`` asks
- ``GET|POST /job/NAME/config.xml``; ``POST /createItem?name=NAME``
- ``GET /view/NAME/api/json``; ``GET|POST /view/NAME/config.xml``;
  ``POST /createView?name=NAME``
- ``POST /job/NAME/build`` and ``/job/NAME/buildWithParameters?K=V``: 201 with
  ``Location: ROOT/queue/item/N/``
- ``GET /queue/item/N/api/json``: ``why`` while waiting, then ``executable`` with the
  build's number and URL, or ``cancelled``
- ``GET /job/NAME/N/api/json``: ``building``, then ``result`` and ``duration``
- ``GET /job/NAME/N/logText/progressiveText?start=B``: the console from byte B,
  ``X-Text-Size`` and ``X-More-Data: true`` while the build runs

Like Jenkins (which stores a posted config.xml through XStream), a stored config.xml
is served back re-written: an XML 1.1 declaration, plugin versions in ``plugin``
attributes, no ``class="vector"`` on trigger lists, ``<disabled>false</disabled>``
added to jobs. Time plays no part: a build advances one console chunk each time a
client polls it, and a queue item starts after a set number of polls, so tests never
wait for a clock.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

JENKINS_VERSION = "2.516.3"


@dataclass
class Script:
    """How the builds of one job behave."""

    console: list[bytes] = field(
        default_factory=lambda: [b"Started by user alice\n", b"Finished: SUCCESS\n"]
    )
    result: str = "SUCCESS"
    queue_polls: int | None = 1  # polls answered with `why` before it starts; None: never
    cancel: bool = False  # the queue item is cancelled instead of starting


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes


@dataclass
class FakeBuild:
    job: str
    number: int
    params: dict[str, str]
    script: Script
    step: int = 0  # console chunks produced so far

    @property
    def building(self) -> bool:
        return self.step < len(self.script.console)

    def advance(self) -> None:
        self.step = min(self.step + 1, len(self.script.console))

    @property
    def text(self) -> bytes:
        return b"".join(self.script.console[: self.step])


@dataclass
class QueueItem:
    id: int
    job: str
    params: dict[str, str]
    polls: int = 0
    build: FakeBuild | None = None
    cancelled: bool = False


def as_jenkins_stores(xml: bytes, kind: str) -> str:
    """The config.xml as Jenkins serves it back after storing it."""
    root = ET.fromstring(xml)  # noqa: S314 - the tests' own XML
    for element in root.iter():
        plugin = element.get("plugin")
        if plugin and "@" not in plugin:
            element.set("plugin", f"{plugin}@1.0")
        if element.get("class") == "vector":  # the default type of a trigger list
            del element.attrib["class"]
    if kind == "job" and root.find("disabled") is None:
        ET.SubElement(root, "disabled").text = "false"
    ET.indent(root, "  ")
    return "<?xml version='1.1' encoding='UTF-8'?>\n" + ET.tostring(root, encoding="unicode")


def parameters_of(config: str) -> list[dict[str, Any]]:
    root = ET.fromstring(config.encode("utf-8"))  # noqa: S314 - the tests' own XML
    found = []
    for element in root.iter():
        if element.tag.endswith("ParameterDefinition") and element.find("name") is not None:
            choices = [c.text or "" for c in element.iter("string")]
            default = element.findtext("defaultValue") or (choices[0] if choices else None)
            found.append(
                {
                    "_class": element.tag,
                    "name": element.findtext("name"),
                    "type": element.tag.rsplit(".", 1)[-1],
                    "defaultParameterValue": {"value": default},
                }
            )
    return found


class FakeJenkins:
    """The server's state and the server; use as a context manager."""

    def __init__(self, user: str = "alice", token: str = "11aa22bb33cc") -> None:  # noqa: S107
        self.user = user
        self.token = token
        self.jobs: dict[str, str] = {}  # name -> stored config.xml
        self.views: dict[str, str] = {}
        self.builds: dict[str, list[FakeBuild]] = {}
        self.queue: dict[int, QueueItem] = {}
        self.scripts: dict[str, Script] = {}
        self.requests: list[Recorded] = []
        self.crumb = secrets.token_hex(8)
        self.root_url = ""  # Jenkins' configured root URL; default: where it listens
        self._next_queue_id = 100
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/"

    @property
    def root(self) -> str:
        return self.root_url or self.url

    def __enter__(self) -> FakeJenkins:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # -- what the tests look at --
    def posts_to(self, pattern: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and re.search(pattern, r.path)]

    def add_job(self, name: str, config: str) -> None:
        with self.lock:
            self.jobs[name] = as_jenkins_stores(config.encode("utf-8"), "job")

    # -- request handling, under the lock --
    def handle(self, method: str, raw_path: str, headers: Any, body: bytes) -> _Answer:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        with self.lock:
            self.requests.append(Recorded(method, path, query, body))
            expected = "Basic " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
            if headers.get("Authorization") != expected:
                return _Answer(
                    401,
                    b"<html><body>Unauthorized</body></html>",
                    "text/html",
                    {"WWW-Authenticate": 'Basic realm="Jenkins"'},
                )
            if method == "POST" and headers.get("Jenkins-Crumb") != self.crumb:
                return _Answer(403, b"No valid crumb was included in the request", "text/plain")
            return self._route(method, path, query, body)

    def _route(  # noqa: PLR0911, PLR0912 - one branch per endpoint
        self, method: str, path: str, query: dict[str, list[str]], body: bytes
    ) -> _Answer:
        if path == "/api/json" and method == "GET":
            return _json(
                {
                    "_class": "hudson.model.Hudson",
                    "jobs": [{"name": n, "url": self._job_url(n)} for n in self.jobs],
                    "views": [{"name": "all", "url": self.root}]
                    + [{"name": n, "url": f"{self.root}view/{quote(n)}/"} for n in self.views],
                }
            )
        if path == "/crumbIssuer/api/json" and method == "GET":
            return _json({"crumb": self.crumb, "crumbRequestField": "Jenkins-Crumb"})
        if path == "/me/api/json" and method == "GET":
            return _json({"_class": "hudson.model.User", "id": self.user, "fullName": self.user})
        if path in {"/createItem", "/createView"} and method == "POST":
            return self._create(path, query, body)
        if m := re.fullmatch(r"/queue/item/(\d+)/api/json", path):
            return self._queue_item(int(m[1]))
        if m := re.fullmatch(r"/(job|view)/([^/]+)/config\.xml", path):
            return self._config(m[1], m[2], method, body)
        if m := re.fullmatch(r"/view/([^/]+)/api/json", path):
            if m[1] not in self.views:
                return _not_found()
            return _json({"name": m[1], "url": f"{self.root}view/{quote(m[1])}/", "jobs": []})
        if m := re.fullmatch(r"/job/([^/]+)/api/json", path):
            return self._job_info(m[1], query)
        if m := re.fullmatch(r"/job/([^/]+)/(build|buildWithParameters)", path):
            if method != "POST":
                return _Answer(405, b"POST required", "text/plain")
            return self._build(m[1], m[2], query)
        if m := re.fullmatch(r"/job/([^/]+)/(\d+)/api/json", path):
            return self._build_info(m[1], int(m[2]))
        if m := re.fullmatch(r"/job/([^/]+)/(\d+)/logText/progressiveText", path):
            return self._progressive(m[1], int(m[2]), int(query.get("start", ["0"])[0]))
        return _not_found()

    def _job_url(self, name: str) -> str:
        return f"{self.root}job/{quote(name)}/"

    def _create(self, path: str, query: dict[str, list[str]], body: bytes) -> _Answer:
        name = query.get("name", [""])[0]
        kind, store = ("job", self.jobs) if path == "/createItem" else ("view", self.views)
        if not name:
            return _Answer(400, b"Query parameter 'name' is required", "text/plain")
        if name in store:
            return _Answer(
                400, f"A {kind} already exists with the name {name}".encode(), "text/plain"
            )
        try:
            store[name] = as_jenkins_stores(body, kind)
        except ET.ParseError as err:
            return _Answer(500, f"could not read the XML: {err}".encode(), "text/plain")
        return _Answer(200, b"", "text/plain")

    def _config(self, kind: str, name: str, method: str, body: bytes) -> _Answer:
        store = self.jobs if kind == "job" else self.views
        if name not in store:
            return _not_found()
        if method == "POST":
            try:
                store[name] = as_jenkins_stores(body, kind)
            except ET.ParseError as err:
                return _Answer(500, f"could not read the XML: {err}".encode(), "text/plain")
            return _Answer(200, b"", "text/plain")
        return _Answer(200, store[name].encode("utf-8"), "application/xml;charset=UTF-8")

    def _job_info(self, name: str, query: dict[str, list[str]]) -> _Answer:
        if name not in self.jobs:
            return _not_found()
        if query.get("tree") == ["name"]:
            return _json({"name": name})
        config = self.jobs[name]
        builds = self.builds.get(name, [])
        last = builds[-1] if builds else None
        klass = (
            "org.jenkinsci.plugins.workflow.job.WorkflowJob"
            if config.split("?>", 1)[-1].lstrip().startswith("<flow-definition")
            else "hudson.model.FreeStyleProject"
        )
        params = parameters_of(config)
        return _json(
            {
                "_class": klass,
                "name": name,
                "fullName": name,
                "url": self._job_url(name),
                "buildable": True,
                "inQueue": any(
                    q.job == name and q.build is None and not q.cancelled
                    for q in self.queue.values()
                ),
                "lastBuild": None
                if last is None
                else {"number": last.number, "url": f"{self._job_url(name)}{last.number}/"},
                "nextBuildNumber": len(builds) + 1,
                "property": [
                    {
                        "_class": "hudson.model.ParametersDefinitionProperty",
                        "parameterDefinitions": params,
                    }
                ]
                if params
                else [],
            }
        )

    def _build(self, name: str, endpoint: str, query: dict[str, list[str]]) -> _Answer:
        if name not in self.jobs:
            return _not_found()
        parameterized = bool(parameters_of(self.jobs[name]))
        if endpoint == "buildWithParameters" and not parameterized:
            return _Answer(400, f"{name} is not parameterized".encode(), "text/plain")
        if endpoint == "build" and parameterized:
            return _Answer(400, b"This page expects a form submission", "text/plain")
        params = {
            p["name"]: p["defaultParameterValue"]["value"] or ""
            for p in parameters_of(self.jobs[name])
        }
        params.update({k: v[-1] for k, v in query.items()})
        item = QueueItem(self._next_queue_id, name, params)
        self._next_queue_id += 1
        self.queue[item.id] = item
        return _Answer(201, b"", "text/plain", {"Location": f"{self.root}queue/item/{item.id}/"})

    def _queue_item(self, number: int) -> _Answer:
        item = self.queue.get(number)
        if item is None:
            return _not_found()
        script = self.scripts.get(item.job, Script())
        task = {"name": item.job, "url": self._job_url(item.job)}
        if item.build is None and not item.cancelled:
            if script.cancel:
                item.cancelled = True
            elif script.queue_polls is not None and item.polls >= script.queue_polls:
                builds = self.builds.setdefault(item.job, [])
                item.build = FakeBuild(item.job, len(builds) + 1, item.params, script)
                builds.append(item.build)
            item.polls += 1
        if item.cancelled:
            return _json(
                {
                    "_class": "hudson.model.Queue$LeftItem",
                    "id": number,
                    "cancelled": True,
                    "executable": None,
                    "task": task,
                }
            )
        if item.build is None:
            return _json(
                {
                    "_class": "hudson.model.Queue$BuildableItem",
                    "id": number,
                    "blocked": False,
                    "buildable": True,
                    "why": "Waiting for next available executor",
                    "task": task,
                }
            )
        return _json(
            {
                "_class": "hudson.model.Queue$LeftItem",
                "id": number,
                "cancelled": False,
                "why": None,
                "executable": {
                    "_class": "hudson.model.FreeStyleBuild",
                    "number": item.build.number,
                    "url": f"{self._job_url(item.job)}{item.build.number}/",
                },
                "task": task,
            }
        )

    def _find_build(self, name: str, number: int) -> FakeBuild | None:
        return next((b for b in self.builds.get(name, []) if b.number == number), None)

    def _build_info(self, name: str, number: int) -> _Answer:
        build = self._find_build(name, number)
        if build is None:
            return _not_found()
        build.advance()
        return _json(
            {
                "_class": "hudson.model.FreeStyleBuild",
                "number": number,
                "url": f"{self._job_url(name)}{number}/",
                "building": build.building,
                "result": None if build.building else build.script.result,
                "duration": 0 if build.building else 83_000,
                "timestamp": 1_700_000_000_000,
                "actions": [
                    {
                        "_class": "hudson.model.ParametersAction",
                        "parameters": [{"name": k, "value": v} for k, v in build.params.items()],
                    }
                ],
            }
        )

    def _progressive(self, name: str, number: int, start: int) -> _Answer:
        build = self._find_build(name, number)
        if build is None:
            return _not_found()
        build.advance()
        text = build.text
        headers = {"X-Text-Size": str(len(text))}
        if build.building:
            headers["X-More-Data"] = "true"
        return _Answer(200, text[start:], "text/plain;charset=UTF-8", headers)


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def _json(data: Any) -> _Answer:
    return _Answer(200, json.dumps(data).encode("utf-8"), "application/json;charset=utf-8")


def _not_found() -> _Answer:
    return _Answer(404, b"<html><body>Not Found</body></html>", "text/html")


def _handler(fake: FakeJenkins) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            answer = fake.handle(method, self.path, self.headers, body)
            self.send_response(answer.status)
            self.send_header("X-Jenkins", JENKINS_VERSION)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for key, value in answer.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(answer.body)

        def do_GET(self) -> None:
            self._answer("GET")

        def do_POST(self) -> None:
            self._answer("POST")

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler
