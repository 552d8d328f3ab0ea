"""The git adapter against real git repositories made in tmp_path."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from trainchain.adapters.gitrepo import PullResult, SourceInfo, describe, pull, workspace_name
from trainchain.core.errors import PullError
from trainchain.core.redaction import redact

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git program")

IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def git(cwd: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | IDENTITY
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def commit(repo: Path, name: str, text: str, message: str) -> str:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No git work tree above tmp_path counts, whatever machine the tests run on."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """main: one commit, annotated tag v1; dev: one more commit."""
    repo = tmp_path / "upstream"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit(repo, "train.py", "print('v1')\n", "first")
    git(repo, "tag", "-a", "v1", "-m", "release 1")
    git(repo, "checkout", "-q", "-b", "dev")
    commit(repo, "train.py", "print('dev')\n", "dev work")
    git(repo, "checkout", "-q", "main")
    return repo


@pytest.fixture
def workspaces(tmp_path: Path) -> Path:
    return tmp_path / "workspaces"


def test_pull_without_ref_checks_out_the_default_branch(upstream: Path, workspaces: Path) -> None:
    """Without a ref, pull checks out the default branch into a named workspace."""
    result = pull(str(upstream), None, workspaces)
    assert result == PullResult(
        path=result.path,
        commit=git(upstream, "rev-parse", "main"),
        repository=str(upstream.resolve()),
        ref="main",
    )
    assert result.path.parent == workspaces
    assert result.path.name.startswith("upstream-")
    assert (result.path / "train.py").read_text() == "print('v1')\n"


def test_pull_by_branch(upstream: Path, workspaces: Path) -> None:
    """A branch name pulls that branch's head commit."""
    result = pull(str(upstream), "dev", workspaces)
    assert (result.commit, result.ref) == (git(upstream, "rev-parse", "dev"), "dev")
    assert (result.path / "train.py").read_text() == "print('dev')\n"


def test_pull_by_annotated_tag_gives_the_commit(upstream: Path, workspaces: Path) -> None:
    """An annotated tag resolves to the commit it points at, not the tag object."""
    result = pull(str(upstream), "v1", workspaces)
    assert result.commit == git(upstream, "rev-parse", "v1^{commit}")


def test_pull_by_full_and_short_sha(upstream: Path, workspaces: Path) -> None:
    """A full or short SHA pulls that commit, reporting the full SHA and the ref as given."""
    sha = git(upstream, "rev-parse", "dev")
    assert pull(str(upstream), sha, workspaces).commit == sha
    short = pull(str(upstream), sha[:8], workspaces)
    assert (short.commit, short.ref) == (sha, sha[:8])
    assert (short.path / "train.py").read_text() == "print('dev')\n"


def test_pull_by_sha_that_no_branch_contains(upstream: Path, workspaces: Path) -> None:
    """A SHA reachable only from a non-branch ref (a pull request head) can be pulled."""
    git(upstream, "checkout", "-q", "--detach")
    orphan = commit(upstream, "train.py", "print('pr')\n", "pull request head")
    git(upstream, "update-ref", "refs/pull/1/head", orphan)
    git(upstream, "checkout", "-q", "main")
    assert pull(str(upstream), orphan, workspaces).commit == orphan


def test_second_pull_fetches_new_commits_into_the_same_workspace(
    upstream: Path, workspaces: Path
) -> None:
    """A second pull fetches new commits and tags into the same workspace, discarding local
    edits and untracked files."""
    first = pull(str(upstream), "main", workspaces)
    (first.path / "train.py").write_text("edited in the workspace\n")
    (first.path / "stray.txt").write_text("untracked\n")
    new = commit(upstream, "train.py", "print('v2')\n", "second")
    git(upstream, "tag", "v2")
    second = pull(str(upstream), "main", workspaces)
    assert second.path == first.path
    assert second.commit == new != first.commit
    assert (second.path / "train.py").read_text() == "print('v2')\n"
    assert not (second.path / "stray.txt").exists()
    assert pull(str(upstream), "v2", workspaces).commit == new
    assert [p.name for p in workspaces.iterdir() if p.is_dir()] == [first.path.name]


def test_pull_from_a_file_url(upstream: Path, workspaces: Path) -> None:
    """A file:// URL is pulled and reported as given."""
    url = upstream.resolve().as_uri()
    result = pull(url, "dev", workspaces)
    assert result.repository == url
    assert result.commit == git(upstream, "rev-parse", "dev")


def test_relative_and_absolute_paths_share_a_workspace(
    upstream: Path, workspaces: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative and an absolute path to one repository pull into the same workspace."""
    monkeypatch.chdir(upstream.parent)
    assert pull("upstream", None, workspaces).path == pull(str(upstream), None, workspaces).path


def test_unknown_ref_is_one_clear_error_listing_refs(upstream: Path, workspaces: Path) -> None:
    """An unknown ref is a PullError (exit code 5) whose hint lists the refs that exist."""
    with pytest.raises(PullError) as info:
        pull(str(upstream), "nope", workspaces)
    assert info.value.message == f"ref 'nope' not found in {upstream.resolve()}"
    assert "main" in (info.value.hint or "")
    assert "dev" in (info.value.hint or "")
    assert "v1" in (info.value.hint or "")
    assert info.value.exit_code == 5


def test_a_ref_that_looks_like_an_option_is_refused(upstream: Path, workspaces: Path) -> None:
    """A ref starting with '-' is refused, so it cannot inject a git option."""
    with pytest.raises(PullError, match="not a valid ref"):
        pull(str(upstream), "--upload-pack=touch /tmp/x", workspaces)


def test_a_local_path_that_does_not_exist_is_called_that(tmp_path: Path, workspaces: Path) -> None:
    """A local path that does not exist is a PullError saying so and what to give instead,
    with no hint about credentials, and leaves no workspace."""
    missing = tmp_path / "no-such-repo"
    with pytest.raises(PullError) as info:
        pull(str(missing), "main", workspaces)
    assert info.value.message == f"{missing} does not exist: give a model folder or a git URL"
    assert "credential" not in (info.value.hint or "")
    assert "trainchain.yaml" in (info.value.hint or "")
    assert [p for p in workspaces.glob("*") if p.is_dir()] == []  # no half-made workspace


def test_a_folder_that_is_no_repository_is_called_that(tmp_path: Path, workspaces: Path) -> None:
    """An existing folder that is not a git repository (the folder above a model, say) is
    named as such, not as a repository that does not exist."""
    folder = tmp_path / "models"
    folder.mkdir()
    with pytest.raises(PullError) as info:
        pull(str(folder), None, workspaces)
    assert info.value.message == (
        f"{folder} is not a git repository: give a model folder or a git URL"
    )
    assert [p for p in workspaces.iterdir() if p.is_dir()] == []


def test_a_url_that_cannot_be_cloned_keeps_gits_reason(tmp_path: Path, workspaces: Path) -> None:
    """A URL (here file://) to nothing is a clone failure with git's own last line."""
    url = f"file://{tmp_path / 'no-such-repo'}"
    with pytest.raises(PullError) as info:
        pull(url, "main", workspaces)
    assert info.value.message.startswith(f"cannot clone {url}: ")
    assert "does not appear to be a git repository" in info.value.message
    assert info.value.exit_code == 5


def test_password_never_shows_in_errors_or_logs(
    workspaces: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A password in the URL is redacted in the error and in every log record."""
    url = "https://alice:s3cr3t-pw@127.0.0.1:9/team/model.git"  # nothing listens on port 9
    caplog.set_level(logging.DEBUG, logger="trainchain.adapters.gitrepo")
    with pytest.raises(PullError) as info:
        pull(url, "main", workspaces, timeout=60)
    shown = str(info.value)
    assert "s3cr3t-pw" not in shown
    assert "https://alice:***@127.0.0.1:9/team/model.git" in shown
    assert "s3cr3t-pw" not in caplog.text
    assert caplog.records  # the pull did log, redacted


def test_a_silent_server_times_out_with_a_clear_error(workspaces: Path) -> None:
    """A server that accepts but never answers makes the clone time out with an error saying so."""
    with socket.socket() as server:  # accepts connections (backlog), never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"git://127.0.0.1:{server.getsockname()[1]}/model.git"
        with pytest.raises(PullError) as info:
            pull(url, "main", workspaces, timeout=1)
    assert info.value.message == f"git clone of {url} did not finish within 1 s"


def test_ssh_failure_names_the_cause(workspaces: Path) -> None:
    """An SSH clone failure names the URL and git's cause, without git's boilerplate."""
    with pytest.raises(PullError) as info:  # nothing listens on port 1
        pull("ssh://git@127.0.0.1:1/team/model.git", None, workspaces, timeout=60)
    message = info.value.message
    assert message.startswith("cannot clone ssh://git@127.0.0.1:1/team/model.git: ")
    assert "repository exists" not in message  # git's boilerplate is dropped


def test_redact_hides_passwords_and_http_tokens() -> None:
    """redact hides URL passwords and HTTP tokens and leaves plain users and paths alone."""
    assert redact("fatal: https://u:p%40ss@h/r.git") == "fatal: https://u:***@h/r.git"
    assert redact("https://ghp_token@github.com/o/r") == "https://***@github.com/o/r"
    assert redact("ssh://git@host/o/r.git") == "ssh://git@host/o/r.git"
    assert redact("/srv/git/repo") == "/srv/git/repo"


def test_workspace_name_is_readable_and_ignores_credentials() -> None:
    """A workspace name starts with the repository's name and does not depend on credentials."""
    name = workspace_name("https://u:one@host/team/eeg-model.git")
    assert name.startswith("eeg-model-")
    assert name == workspace_name("https://u:two@host/team/eeg-model.git")
    assert name != workspace_name("https://host/other/eeg-model.git")


def test_concurrent_pulls_of_one_repository_do_not_interleave(
    upstream: Path, workspaces: Path
) -> None:
    """Concurrent pulls of one repository share a workspace and leave it clean at the commit."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda ref: pull(str(upstream), ref, workspaces), ["main"] * 3))
    assert {r.path for r in results} == {results[0].path}
    assert {r.commit for r in results} == {git(upstream, "rev-parse", "main")}
    assert git(results[0].path, "status", "--porcelain") == ""


def test_inherited_git_dir_does_not_redirect_the_pull(
    upstream: Path, workspaces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A GIT_DIR inherited from the environment (as in a git hook) does not redirect the pull."""
    other = tmp_path / "hook-repo"
    other.mkdir()
    git(other, "init", "-q")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))  # as inside a git hook
    result = pull(str(upstream), "dev", workspaces)
    assert result.commit == git(upstream, "rev-parse", "dev")


def test_git_missing_is_a_clear_error(
    upstream: Path, workspaces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without git on the PATH, pull fails with an error saying git is not installed."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(PullError, match="git is not installed"):
        pull(str(upstream), None, workspaces)


def test_describe_clean_repository(upstream: Path) -> None:
    """describe gives a clean repository's path and HEAD commit, not dirty."""
    assert describe(upstream) == SourceInfo(
        repository=str(upstream.resolve()), commit=git(upstream, "rev-parse", "HEAD"), dirty=False
    )


def test_describe_dirty_repository_limited_to_the_folder(upstream: Path) -> None:
    """describe counts only changes inside the described folder, untracked files included, as
    dirty."""
    commit(upstream, "model/net.py", "x = 1\n", "model")
    (upstream / "train.py").write_text("changed\n")
    assert describe(upstream).dirty is True
    assert describe(upstream / "model").dirty is False  # the change is outside this folder
    (upstream / "model" / "new.py").write_text("y = 2\n")
    assert describe(upstream / "model").dirty is True


def test_describe_pulled_workspace_names_the_origin(upstream: Path, workspaces: Path) -> None:
    """describe of a pulled workspace names its origin URL as the repository."""
    result = pull(upstream.resolve().as_uri(), "dev", workspaces)
    assert describe(result.path) == SourceInfo(
        repository=upstream.resolve().as_uri(), commit=result.commit, dirty=False
    )


def test_describe_redacts_the_origin_password(upstream: Path) -> None:
    """describe redacts the password in the origin URL."""
    git(upstream, "remote", "add", "origin", "https://bob:hunter22@example.com/m.git")
    assert describe(upstream).repository == "https://bob:***@example.com/m.git"


def test_describe_non_git_folder(tmp_path: Path) -> None:
    """describe of a folder outside git gives commit 'none', dirty."""
    folder = tmp_path / "plain"
    folder.mkdir()
    assert describe(folder) == SourceInfo(repository=str(folder), commit="none", dirty=True)
