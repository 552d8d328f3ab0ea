"""Job 1: the git adapter. A model repository, at one exact commit, in a workspace.

Runs the ``git`` program (no GitPython). Every call has a timeout, git never prompts
for credentials (``GIT_TERMINAL_PROMPT=0``), and every message and log line has the
secrets of its URLs redacted (:func:`trainchain.core.redaction.redact`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from trainchain.adapters import procgroup
from trainchain.adapters.locks import flock_within
from trainchain.core.errors import PullError
from trainchain.core.redaction import HIDDEN, redact, url_secrets, without_credentials

log = logging.getLogger(__name__)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHA = re.compile(r"^[0-9a-fA-F]{4,40}$")
# Set by git hooks and wrappers; inherited, they would point our git calls at another repository.
_REPO_ENV = frozenset(
    {
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_CONFIG",
        "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT",
        "GIT_OBJECT_DIRECTORY",
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_IMPLICIT_WORK_TREE",
        "GIT_GRAFT_FILE",
        "GIT_INDEX_FILE",
        "GIT_NO_REPLACE_OBJECTS",
        "GIT_REPLACE_REF_BASE",
        "GIT_PREFIX",
        "GIT_INTERNAL_SUPER_PREFIX",
        "GIT_SHALLOW_FILE",
        "GIT_COMMON_DIR",
        "GIT_QUARANTINE_PATH",
    }
)
_ACCESS_HINT = (
    "check the URL or path and that this machine can read it; git never prompts here "
    "(GIT_TERMINAL_PROMPT=0): use an SSH key or a credential helper for private repositories"
)
_SOURCE_HINT = (
    "a model folder holds trainchain.yaml (--subdir names one inside a repository); a git "
    "URL is what `git clone` takes: https://..., ssh://..., host:path, file://..., or the path "
    "of a repository"
)
_BOILERPLATE = frozenset(
    {"Please make sure you have the correct access rights", "and the repository exists."}
)
LOCK_POLL_S = 0.1
SHOWN_REFS = 5


@dataclass(frozen=True)
class PullResult:
    path: Path  # the workspace, checked out (detached) at ``commit``
    commit: str  # full sha
    repository: str  # as given; a local path made absolute; a password redacted
    ref: str  # as given, or the remote's default branch when none was given


@dataclass(frozen=True)
class SourceInfo:
    repository: str  # origin URL (redacted), else the work tree's top level, else the folder
    commit: str  # HEAD's sha, or "none"
    dirty: bool  # uncommitted changes in the folder (True when unknown)


def is_url(repo: str) -> bool:
    """``scheme://...``, or ``host:path`` as git reads it; anything else is a local path."""
    head = repo.split(":", 1)[0]
    return bool(_URL.match(repo)) or (":" in repo and "/" not in head)


def normalise(repo: str) -> str:
    """A URL as given; a local path absolute."""
    return repo if is_url(repo) else str(Path(repo).expanduser().resolve())


def workspace_name(repository: str) -> str:
    """``<readable slug>-<short hash>``; the same repository with other credentials, same name."""
    bare = without_credentials(repository).rstrip("/")
    stem = re.split(r"[/:\\]", bare)[-1].removesuffix(".git")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-")[:40] or "repo"
    return f"{slug}-{hashlib.sha256(bare.encode()).hexdigest()[:12]}"


class _Git:
    """Runs git with a deadline shared by all calls of one operation, redacting its output."""

    def __init__(self, timeout: float, repository: str = "") -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.shown = redact(repository)
        self.secrets = url_secrets(repository)

    def clean(self, text: str) -> str:
        text = redact(text)
        for secret in self.secrets:
            text = text.replace(secret, HIDDEN)
        return text

    def run(self, *args: str, cwd: Path | None = None, fail: str = "") -> str:
        """git's stdout, stripped; with ``fail``, a non-zero exit is ``PullError(fail: stderr)``."""
        code, out, err = self.call(*args, cwd=cwd)
        if code != 0 and fail:
            detail = _last_words(self.clean(err)) or f"git {args[0]} exited with status {code}"
            raise PullError(f"{fail}: {detail}", hint=_ACCESS_HINT)
        return out.strip() if code == 0 else ""

    def call(self, *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out(args[0])
        env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV}
        env |= {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}
        log.debug("git %s", self.clean(" ".join(args)))
        try:
            # its own session: no terminal for ssh to prompt on, and a timeout kills git
            # with its helpers (ssh, git-remote-https)
            proc = procgroup.spawn(
                ["git", *args], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
            )
        except FileNotFoundError:
            raise PullError(
                "git is not installed: no `git` program on PATH",
                hint="install git (Debian: apt-get install git) and run again",
            ) from None
        try:
            out, err = proc.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            procgroup.stop_group(proc, grace=0)
            proc.communicate()
            raise self._timed_out(args[0]) from None
        return proc.returncode, out, err

    def _timed_out(self, command: str) -> PullError:
        return PullError(
            f"git {command}{' of ' + self.shown if self.shown else ''} did not finish "
            f"within {self.timeout:g} s",
            hint="check that the repository is reachable, or allow more time (timeout)",
        )


def pull(repo: str, ref: str | None, workspaces: Path, *, timeout: float = 300) -> PullResult:
    """Clone or fetch ``repo`` into ``workspaces`` and check out ``ref`` (default: remote HEAD)."""
    repository = normalise(repo)
    shown = redact(repository)
    if ref is not None and (
        not ref.strip() or ref.startswith("-") or re.search(r"[\s~^:?*\[\\]", ref)
    ):
        raise PullError(f"{ref!r} is not a valid ref", hint="pass a branch, a tag or a commit sha")
    if not is_url(repository) and not Path(repository).exists():
        raise PullError(
            f"{repository} does not exist: give a model folder or a git URL", hint=_SOURCE_HINT
        )
    git = _Git(timeout, repository)
    workspaces = Path(workspaces).expanduser().resolve()
    workspaces.mkdir(parents=True, exist_ok=True)
    name = workspace_name(repository)
    path = workspaces / name
    with _locked(workspaces / f"{name}.lock", git, shown):
        if (path / ".git").is_dir():
            log.info("fetching %s into %s", shown, path)
            git.run("remote", "set-url", "origin", repository, cwd=path, fail="cannot set origin")
        else:
            log.info("cloning %s into %s", shown, path)
            _clone(git, repository, path, shown)
        git.run(
            "fetch", "--quiet", "--force", "--prune", "--prune-tags", "--tags", "origin",
            "+refs/heads/*:refs/remotes/origin/*",
            cwd=path, fail=f"cannot fetch {shown}",
        )  # fmt: skip
        commit, ref = _resolve(git, path, ref, shown)
        git.run(
            "checkout",
            "--quiet",
            "--force",
            "--detach",
            commit,
            cwd=path,
            fail=f"cannot check out {commit}",
        )
        git.run("clean", "-ffdxq", cwd=path, fail=f"cannot clean {path}")
    log.info("%s at %s (%s) in %s", shown, commit, ref, path)
    return PullResult(path=path, commit=commit, repository=shown, ref=ref)


def describe(path: Path, *, timeout: float = 30) -> SourceInfo:
    """Lineage of a plain folder: its repository, HEAD commit and whether it has local changes."""
    folder = Path(path).expanduser().resolve()
    unknown = SourceInfo(repository=str(folder), commit="none", dirty=True)
    cwd = folder if folder.is_dir() else folder.parent
    git = _Git(timeout)
    try:
        top = git.run("rev-parse", "--show-toplevel", cwd=cwd)
        if not top:
            return unknown
        commit = git.run("rev-parse", "--verify", "--quiet", "HEAD", cwd=cwd) or "none"
        origin = git.run("config", "--get", "remote.origin.url", cwd=cwd)
        spec = "." if folder.is_dir() else folder.name
        code, status, err = git.call("status", "--porcelain", "--", spec, cwd=cwd)
    except PullError as err:  # git missing or too slow: the source is unknown, not clean
        log.warning("cannot describe %s: %s", folder, err.message)
        return unknown
    dirty = code != 0 or bool(status.strip()) or commit == "none"
    return SourceInfo(repository=redact(origin) if origin else top, commit=commit, dirty=dirty)


def committer_email(repo: Path, commit: str, *, timeout: float = 30) -> str | None:
    """The committer's email of ``commit`` in ``repo`` (a bare one too); None when git cannot
    tell (no such commit, git missing or too slow)."""
    try:
        code, out, _ = _Git(timeout).call("log", "-1", "--format=%ce", commit, "--", cwd=repo)
    except PullError as err:
        log.warning("cannot read the committer of %s: %s", commit[:12], err.message)
        return None
    return (out.strip() or None) if code == 0 else None


def _last_words(stderr: str) -> str:
    """git's last stderr line, without its boilerplate; with the cause (ssh's) when git has none."""
    lines = [line.strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and line not in _BOILERPLATE]
    if lines and lines[-1] == "fatal: Could not read from remote repository.":
        return "; ".join(lines[-2:])
    return lines[-1] if lines else ""


def _clone(git: _Git, repository: str, path: Path, shown: str) -> None:
    """Clone next to ``path`` and rename: an interrupted clone never looks like a workspace."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    # mkdtemp's 0700 would lock out a training container's non-root user: a workspace is
    # code, readable as a plain `git clone` leaves it
    tmp.chmod(0o755)
    try:
        try:
            git.run(
                "clone",
                "--quiet",
                "--no-checkout",
                "--",
                repository,
                str(tmp),
                fail=f"cannot clone {shown}",
            )
        except PullError as err:
            # git's words for a folder that is no repository (the parent of model folders)
            if Path(repository).is_dir() and err.message.endswith("does not exist"):
                raise PullError(
                    f"{shown} is not a git repository: give a model folder or a git URL",
                    hint=_SOURCE_HINT,
                ) from None
            raise
        if path.exists():  # a folder that is not a clone: replace it
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _resolve(git: _Git, path: Path, ref: str | None, shown: str) -> tuple[str, str]:
    """(full sha, ref): a branch first, then a tag, then a commit sha."""
    if ref is None:
        git.run("remote", "set-head", "origin", "--auto", cwd=path)  # the remote's current default
        head = git.run("symbolic-ref", "--quiet", "--short", "refs/remotes/origin/HEAD", cwd=path)
        if not head:
            raise PullError(f"{shown} has no default branch (is it empty?)", hint="pass a ref")
        ref = head.removeprefix("origin/")
    candidates = [
        "refs/remotes/origin/" + ref.removeprefix("refs/heads/"),
        "refs/tags/" + ref.removeprefix("refs/tags/"),
    ]
    if _SHA.match(ref):
        candidates.append(ref)
    for _ in range(2):
        for candidate in candidates:
            sha = git.run("rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}", cwd=path)
            if sha:
                return sha, ref
        if len(ref) != 40 or not _SHA.match(ref):
            break
        git.run("fetch", "--quiet", "origin", ref, cwd=path)  # a full sha no branch contains
    raise PullError(f"ref {ref!r} not found in {shown}", hint=_known_refs(git, path))


def _known_refs(git: _Git, path: Path) -> str:
    out = git.run("for-each-ref", "--sort=-committerdate", "--format=%(refname)", cwd=path)
    refs = out.splitlines()
    branches = [
        r.removeprefix("refs/remotes/origin/") for r in refs if r.startswith("refs/remotes/")
    ]
    branches = [b for b in branches if b != "HEAD"][:SHOWN_REFS]
    tags = [r.removeprefix("refs/tags/") for r in refs if r.startswith("refs/tags/")][:SHOWN_REFS]
    return (
        f"pass a branch ({', '.join(branches) or 'none'}), a tag ({', '.join(tags) or 'none'}) "
        "or a commit sha that exists in the repository"
    )


def _locked(lock: Path, git: _Git, shown: str) -> AbstractContextManager[None]:
    """One pull per workspace at a time, across processes (``flock``), within the deadline."""
    return flock_within(
        lock,
        git.deadline - time.monotonic(),
        lambda: PullError(
            f"another pull of {shown} still holds {lock}",
            hint="wait for it to finish, or allow more time (timeout)",
        ),
        LOCK_POLL_S,
    )
